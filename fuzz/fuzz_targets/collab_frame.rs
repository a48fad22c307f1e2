//! Frames from collaborative-session participants (y-protocols, binary
//! WebSocket messages on /api/collab/ws): never a panic, and no allocation
//! sized by an untrusted count (libFuzzer's 2 GiB RSS limit catches one);
//! every update the checker accepts applies to a document, and the
//! document's state re-encodes and reloads to the same text.
#![no_main]

use chronicle_collab::doc::SessionDoc;
use chronicle_collab::wire::{decode_frame, dependencies, ClientMessage, FrameLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(messages) = decode_frame(data, &FrameLimits::default()) else {
        return;
    };
    let mut doc = SessionDoc::new();
    doc.set_query("sum(rate(x[5m]))");
    for m in messages {
        match m {
            ClientMessage::SyncStep1(sv) => {
                let _ = doc.diff(&sv);
            }
            ClientMessage::SyncStep2(u) | ClientMessage::Update(u) => {
                // As a session does: an update that does not apply fully
                // (it builds on what never came) is refused before yrs
                // sees it; checked updates may still be refused by yrs (a
                // bad reference), never panic.
                let deps = dependencies(&u).expect("decode_frame checked it");
                if deps.missing(&doc.state_vector()).is_none() {
                    // As a session does: undone when yrs refused it part
                    // way, or when a copy read back from the state would
                    // differ.
                    let before = doc.encode_state();
                    if doc.apply(&u).is_err() || !doc.reloads_the_same() {
                        doc = SessionDoc::from_state(&before).expect("its own state reloads");
                    }
                }
            }
            ClientMessage::Awareness(a) => assert!(a.clients.len() <= 64),
            ClientMessage::QueryAwareness | ClientMessage::Auth => {}
        }
    }
    let state = doc.encode_state();
    let again = SessionDoc::from_state(&state).expect("a document's own state reloads");
    assert_eq!(again.query_text(), doc.query_text());
    let _ = doc.annotations();
    let _ = doc.language();
});
