//! The line protocol parser the ingest path used before
//! [`crate::line_protocol`]: the `influxdb-line-protocol` crate (InfluxDB
//! IOx's port of the Go parser) and the same naming and conversion rules.
//! Kept as the reference the new parser is compared against (a property test
//! here, a fuzz target), not used by the node.

use std::sync::Arc;

use chronicle_storage::model::{validate, Label, Limits};
use chronicle_storage::PointBatch;
use influxdb_line_protocol::FieldValue;

use crate::parse::Precision;
use crate::{label_bytes, IngestError, RequestBudget};

/// Largest integer magnitude an f64 holds exactly.
const MAX_EXACT: u64 = 1 << 53;

/// Parses line protocol into points, all or nothing: the first bad line is an error
/// naming its number (1-based) and the reason.
pub fn parse_line_protocol_reference(
    text: &str,
    precision: Precision,
    now_ns: i64,
    limits: &Limits,
) -> Result<PointBatch, IngestError> {
    let mut points = PointBatch::new();
    let mut budget = RequestBudget::new(limits);
    for (index, raw) in influxdb_line_protocol::split_lines(text).enumerate() {
        let line_no = index + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let bad = |reason: String| IngestError::Line {
            line: line_no,
            reason,
        };
        let parsed = influxdb_line_protocol::parse_lines(trimmed)
            .next()
            .ok_or_else(|| bad("not a line protocol line".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let timestamp = match parsed.timestamp {
            Some(t) => t
                .checked_mul(precision.factor())
                .ok_or_else(|| bad(format!("timestamp {t} overflows at this precision")))?,
            None => now_ns,
        };
        let measurement = parsed.series.measurement.as_str();
        let mut labels: Vec<Label> = parsed
            .series
            .tag_set
            .iter()
            .flatten()
            .map(|(k, v)| Label::new(k.as_str(), v.as_str()))
            .collect();
        labels.sort();
        // Every field is a series with the line's tags: counted per field
        // before anything is built (the batch shares one copy between them,
        // storage keeps one per series).
        let tag_bytes = label_bytes(
            measurement,
            labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
        );
        budget.charge(
            parsed.field_set.len(),
            tag_bytes.saturating_mul(parsed.field_set.len()),
        )?;
        let labels: Arc<[Label]> = labels.into();
        for (field, value) in &parsed.field_set {
            let value = match value {
                FieldValue::F64(v) => *v,
                FieldValue::I64(v) if v.unsigned_abs() <= MAX_EXACT => *v as f64,
                FieldValue::U64(v) if *v <= MAX_EXACT => *v as f64,
                FieldValue::I64(v) => {
                    return Err(bad(format!(
                        "field {field}: integer {v} is beyond 2^53 and would lose precision"
                    )))
                }
                FieldValue::U64(v) => {
                    return Err(bad(format!(
                        "field {field}: integer {v} is beyond 2^53 and would lose precision"
                    )))
                }
                FieldValue::Boolean(b) => f64::from(u8::from(*b)),
                FieldValue::String(_) => {
                    return Err(bad(format!(
                        "field {field}: string fields cannot be stored in a numeric series"
                    )))
                }
            };
            let metric = if field.as_str() == "value" {
                measurement.to_string()
            } else {
                format!("{measurement}_{}", field.as_str())
            };
            validate(&metric, &labels, limits).map_err(|p| bad(format!("{}: {p}", p.field())))?;
            let series = points.add_series(metric, labels.clone());
            points.push(series, timestamp, value);
        }
    }
    Ok(points)
}
