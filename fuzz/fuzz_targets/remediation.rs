//! Remediation actions and rules as operators (or a hostile admin client)
//! send them to `/api/remediation/*`: no panic; an accepted one passes its
//! checks and survives a round trip through its JSON unchanged; a rule's
//! matching never panics on any anomaly.
#![no_main]

use chronicle_detect::anomaly::Anomaly;
use chronicle_remediation::model::{Action, Rule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Action::parse(data) {
        assert!(a.check().is_ok());
        let again = Action::parse(&serde_json::to_vec(&a).unwrap()).expect("its own JSON parses");
        assert_eq!(again, a);
    }
    if let Ok(r) = Rule::parse(data) {
        assert!(r.check().is_ok());
        let again = Rule::parse(&serde_json::to_vec(&r).unwrap()).expect("its own JSON parses");
        assert_eq!(again, r);
        let probe = br#"{"id":"1","type":"spike","metric":"cpu_seconds","labels":{"pod":"a"},"severity":"high","score":9.5,"start":0}"#;
        let anomaly = Anomaly::parse(probe).unwrap();
        let _ = r.applies(&anomaly, i64::MAX);
        let _ = r.applies(&anomaly, i64::MIN);
    }
});
