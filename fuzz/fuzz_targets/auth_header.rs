//! `Authorization` headers from any client: never a panic; what is accepted
//! is non-empty and no longer than the header; token splitting only yields
//! ids and secrets of the documented shape.
#![no_main]

use chronicle_auth::token::{credential_from_header, split_token, MAX_CREDENTIAL_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(credential) = credential_from_header(data) {
        assert!(!credential.is_empty());
        assert!(data.len() <= MAX_CREDENTIAL_BYTES);
        if let Some((id, secret)) = split_token(&credential) {
            assert_eq!(id.len(), 16);
            assert_eq!(secret.len(), 43);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some((id, secret)) = split_token(text) {
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!secret.contains('_') || secret.len() == 43);
        }
    }
});
