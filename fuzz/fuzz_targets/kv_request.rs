//! State requests from the bus or HTTP: never a panic; what is accepted
//! names a valid namespace and keeps within the limits.
#![no_main]

use chronicle_kv::{parse, KvRequest, OPS};
use chronicle_storage::state::{validate_namespace, MAX_STATE_VALUE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let op = OPS[which as usize % OPS.len()];
    match parse(op, body) {
        Ok(request) => {
            assert!(validate_namespace(request.namespace()).is_ok());
            if let KvRequest::Put { value, .. } = &request {
                assert!(value.len() <= MAX_STATE_VALUE_BYTES);
            }
        }
        Err(answer) => assert!((400..500).contains(&answer.status)),
    }
});
