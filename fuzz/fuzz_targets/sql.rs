//! SQL text from clients (`{"sql"}` on /query and the bus, `chronicle query
//! --sql`): parsing and lowering never panic; a syntax error's position lies
//! inside the text; an accepted plan passes its own checks and can be
//! explained and split into index lookups without panicking.
#![no_main]

use chronicle_engine::select::{explain, Side};
use chronicle_engine::{sql, EngineError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 4096 {
        return;
    }
    match sql::parse(text) {
        Ok(q) => {
            q.plan.validate().expect("an accepted plan is valid");
            let _ = explain(&q.plan, 1_700_000_000_000_000_000);
            let _ = q.plan.left_filter().series_selection(Side::Left);
            let _ = q.plan.filter.time_bounds(i64::MAX);
            let _ = q.plan.pushdown();
        }
        Err(EngineError::Syntax { line, .. }) => {
            assert!(line as usize <= text.lines().count().max(1) + 1);
        }
        Err(_) => {}
    }
});
