//! CQL text from clients (/api/v1/cql, `{"cql"}` on /query and the bus):
//! lexing, parsing and lowering never panic; a syntax error's position lies
//! inside the text; an accepted plan passes its own checks and can be explained
//! and split into index lookups without panicking.
#![no_main]

use chronicle_engine::select::{explain, Side};
use chronicle_engine::{cql, EngineError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 4096 {
        return;
    }
    match cql::parse(text) {
        Ok(q) => {
            q.plan.validate().expect("an accepted plan is valid");
            let _ = explain(&q.plan, i64::MIN);
            let _ = q.plan.left_filter().series_selection(Side::Left);
            let _ = q.plan.filter.series_selection(Side::Right);
            let _ = q.plan.filter.time_bounds(i64::MIN);
            let _ = q.plan.pushdown();
        }
        Err(EngineError::Syntax { line, column, .. }) => {
            let lines = text.split('\n').count() as u64;
            assert!(line >= 1 && line <= lines, "line {line} of {lines}");
            let len = text
                .split('\n')
                .nth(line as usize - 1)
                .map_or(0, |l| l.chars().count());
            assert!(
                column >= 1 && column as usize <= len + 1,
                "column {column} of {len}"
            );
        }
        Err(_) => {}
    }
});
