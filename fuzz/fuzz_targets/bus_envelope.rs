//! Node-to-node envelopes from the wire: a hostile payload is an error, never
//! undefined behaviour or a panic; what decodes re-encodes to the same value.
#![no_main]

use chronicle_bus::envelope::{decode, encode};
use libfuzzer_sys::fuzz_target;
use rkyv::{Archive, Deserialize, Serialize};

/// Shaped like a Raft append: integers, nested byte vectors, a string, an option.
#[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
struct Append {
    term: u64,
    entries: Vec<Vec<u8>>,
    leader: String,
    commit: Option<u64>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = decode::<Append>(data) {
        let again = encode(&value).expect("a decoded value encodes");
        assert_eq!(decode::<Append>(&again).expect("round trip"), value);
    }
});
