//! OTLP metrics over HTTP (`POST /v1/metrics`): an `ExportMetricsServiceRequest`
//! as protobuf or JSON, turned into points by OpenTelemetry's rules for
//! Prometheus ("Prometheus and OpenMetrics Compatibility"):
//!
//! - names: characters outside `[a-zA-Z0-9_:]` become `_` (runs collapse), a
//!   leading digit gets `_`; the unit is appended (`By` → `bytes`, `s` →
//!   `seconds`, `1` on a gauge → `ratio`, `{...}` annotations dropped), then
//!   `_total` for monotonic cumulative sums;
//! - labels: the data point's attributes; `job` (`service.namespace/` and
//!   `service.name`) and `instance` (`service.instance.id`) from the resource;
//!   the resource attributes listed in [`OtlpOptions`]; `otel_scope_name` /
//!   `otel_scope_version` and the scope's attributes as `otel_scope_<key>`.
//!   Label names are sanitised like metric names, and one starting with a
//!   digit gets `key_`;
//! - the resource's other attributes: one `target_info` point (value 1, with
//!   `job` and `instance`) per resource, at its latest data point's time, as
//!   the Collector's Prometheus exporters write it;
//! - gauges and sums: one point; histograms: classic `_bucket{le}` (cumulative),
//!   `_sum`, `_count` (exponential histograms are turned into classic buckets at
//!   their bucket boundaries); summaries: `{quantile}`, `_sum`, `_count`;
//! - a point flagged "no recorded value" is a staleness marker.
//!
//! Delta sums have no Prometheus form; their increments are stored as they
//! come, under the name without `_total` (docs/http-api.md, `POST /v1/metrics`).

use chronicle_storage::model::{validate, Label, Limits, STALE_NAN_BITS};
use chronicle_storage::PointBatch;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
    NumberDataPoint, SummaryDataPoint,
};
use prost::Message;

use crate::{IngestError, RequestBudget};

/// The body's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    Protobuf,
    Json,
}

impl OtlpEncoding {
    /// From the Content-Type: `application/x-protobuf` or `application/json`.
    pub fn from_content_type(ct: Option<&str>) -> Result<Self, IngestError> {
        let ct = ct.unwrap_or("application/x-protobuf");
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/x-protobuf" | "application/protobuf" => Ok(Self::Protobuf),
            "application/json" => Ok(Self::Json),
            other => Err(IngestError::BadRequest(format!(
                "OTLP bodies are application/x-protobuf or application/json, not {other:?}"
            ))),
        }
    }
}

/// How resources become labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpOptions {
    /// Resource attributes, by their OpenTelemetry names (`k8s.namespace.name`),
    /// copied as labels onto every series of their resource (they also stay on
    /// `target_info`). A data point's own attribute of the same name wins.
    pub promote_resource_attributes: Vec<String>,
}

/// The name of the series holding each resource's attributes.
const TARGET_INFO: &str = "target_info";

/// The resource attributes that make `job` and `instance`.
const IDENTIFYING: [&str; 3] = ["service.name", "service.namespace", "service.instance.id"];

/// Decodes an export request and converts it into points, all or nothing.
/// `now_ns` stamps data points without a time.
pub fn parse_otlp_metrics(
    body: &[u8],
    encoding: OtlpEncoding,
    now_ns: i64,
    limits: &Limits,
    options: &OtlpOptions,
) -> Result<PointBatch, IngestError> {
    let request = match encoding {
        OtlpEncoding::Protobuf => ExportMetricsServiceRequest::decode(body)
            .map_err(|e| IngestError::BadRequest(format!("invalid OTLP protobuf: {e}")))?,
        OtlpEncoding::Json => serde_json::from_slice(body)
            .map_err(|e| IngestError::BadRequest(format!("invalid OTLP JSON: {e}")))?,
    };
    convert(&request, now_ns, limits, options)
}

/// The points an export request stands for.
pub fn convert(
    request: &ExportMetricsServiceRequest,
    now_ns: i64,
    limits: &Limits,
    options: &OtlpOptions,
) -> Result<PointBatch, IngestError> {
    let mut out = Emitter {
        points: PointBatch::new(),
        now_ns,
        limits,
        index: 0,
        latest: None,
        budget: RequestBudget::new(limits),
    };
    // A request may repeat a resource: one `target_info` point per time.
    let mut target_infos = std::collections::HashSet::new();
    for rm in &request.resource_metrics {
        let attributes = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let identity = identity_labels(attributes);
        let promoted: Vec<Label> = options
            .promote_resource_attributes
            .iter()
            .filter_map(|name| attributes.iter().find(|kv| &kv.key == name))
            .map(|kv| Label::new(label_name(&kv.key), attribute_text(kv.value.as_ref())))
            .collect();
        out.latest = None;
        for sm in &rm.scope_metrics {
            let mut shared = Shared {
                identity: identity.clone(),
                fill: promoted.clone(),
            };
            if let Some(scope) = &sm.scope {
                if !scope.name.is_empty() {
                    shared.fill.push(Label::new("otel_scope_name", &scope.name));
                }
                if !scope.version.is_empty() {
                    shared
                        .fill
                        .push(Label::new("otel_scope_version", &scope.version));
                }
                for kv in &scope.attributes {
                    shared.fill.push(Label::new(
                        format!("otel_scope_{}", label_name(&kv.key)),
                        attribute_text(kv.value.as_ref()),
                    ));
                }
            }
            for metric in &sm.metrics {
                out.metric(metric, &shared)?;
            }
        }
        out.target_info(attributes, identity, &mut target_infos)?;
    }
    Ok(out.points)
}

/// Labels every point of a scope gets beside its own attributes.
#[derive(Debug, Clone, Default)]
struct Shared {
    /// `job` and `instance`: they name the series' source, so they win over
    /// a data point's attributes of the same name.
    identity: Vec<Label>,
    /// Promoted resource attributes and the scope's labels: they fill in what
    /// the data point's attributes lack.
    fill: Vec<Label>,
}

struct Emitter<'a> {
    points: PointBatch,
    now_ns: i64,
    limits: &'a Limits,
    /// The metric's position in the request, for errors.
    index: usize,
    /// The latest time of the current resource's points (its `target_info` time).
    latest: Option<i64>,
    /// What the request created so far: every point carries its resource's
    /// and scope's labels, so a large resource over many points is bounded here.
    budget: RequestBudget,
}

impl Emitter<'_> {
    /// The resource's attributes other than the identifying ones, as one
    /// `target_info` point beside `job` and `instance` at the resource's
    /// latest point. As in the Collector: none for a resource without points,
    /// without other attributes, or without `job` and `instance`.
    fn target_info(
        &mut self,
        attributes: &[KeyValue],
        identity: Vec<Label>,
        written: &mut std::collections::HashSet<(Vec<Label>, i64)>,
    ) -> Result<(), IngestError> {
        let Some(t) = self.latest else {
            return Ok(());
        };
        let others: Vec<KeyValue> = attributes
            .iter()
            .filter(|kv| !IDENTIFYING.contains(&kv.key.as_str()))
            .cloned()
            .collect();
        let shared = Shared {
            identity,
            fill: Vec::new(),
        };
        let labels = point_labels(&others, &shared);
        let identified = |l: &Label| l.name == "job" || l.name == "instance";
        if !labels.iter().any(identified) || labels.iter().all(identified) {
            return Ok(());
        }
        if written.insert((labels.clone(), t)) {
            self.push(TARGET_INFO, labels, 1.0, t)?;
        }
        Ok(())
    }

    fn metric(&mut self, m: &Metric, shared: &Shared) -> Result<(), IngestError> {
        self.index += 1;
        let Some(data) = &m.data else {
            return Ok(());
        };
        let base = metric_name(&m.name);
        if base.is_empty() {
            return Err(self.problem(format!("metric name {:?} has no usable characters", m.name)));
        }
        match data {
            Data::Gauge(g) => {
                let name = with_unit(&base, &m.unit, true);
                for p in &g.data_points {
                    self.number(&name, p, shared)?;
                }
            }
            Data::Sum(s) => {
                let cumulative =
                    s.aggregation_temporality == AggregationTemporality::Cumulative as i32;
                let counter = s.is_monotonic && cumulative;
                // A counter's `_total` goes after the unit (`jobs_total` in
                // seconds is `jobs_seconds_total`).
                let stem = match base.strip_suffix("_total") {
                    Some(stem) if counter && !stem.is_empty() => stem,
                    _ => base.as_str(),
                };
                let mut name = with_unit(stem, &m.unit, false);
                if counter {
                    name.push_str("_total");
                }
                for p in &s.data_points {
                    self.number(&name, p, shared)?;
                }
            }
            Data::Histogram(h) => {
                let name = with_unit(&base, &m.unit, false);
                for p in &h.data_points {
                    self.histogram(&name, p, shared)?;
                }
            }
            Data::ExponentialHistogram(h) => {
                let name = with_unit(&base, &m.unit, false);
                for p in &h.data_points {
                    self.exponential(&name, p, shared)?;
                }
            }
            Data::Summary(s) => {
                let name = with_unit(&base, &m.unit, false);
                for p in &s.data_points {
                    self.summary(&name, p, shared)?;
                }
            }
        }
        Ok(())
    }

    fn problem(&self, reason: String) -> IngestError {
        IngestError::Point {
            index: self.index,
            reason,
        }
    }

    fn time(&self, t: u64) -> Result<i64, IngestError> {
        if t == 0 {
            return Ok(self.now_ns);
        }
        i64::try_from(t).map_err(|_| self.problem(format!("time {t} ns is out of range")))
    }

    /// Pushes one point after checking its name and labels against the limits.
    fn push(
        &mut self,
        name: &str,
        labels: Vec<Label>,
        value: f64,
        t: i64,
    ) -> Result<(), IngestError> {
        validate(name, &labels, self.limits)
            .map_err(|p| self.problem(format!("{name}: {}: {p}", p.field())))?;
        self.budget.charge(
            1,
            crate::label_bytes(
                name,
                labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
            ),
        )?;
        self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
        // Each OTLP point (each bucket of a histogram) is a series of its own.
        let series = self.points.add_series(name, labels);
        self.points.push(series, t, value);
        Ok(())
    }

    fn number(
        &mut self,
        name: &str,
        p: &NumberDataPoint,
        shared: &Shared,
    ) -> Result<(), IngestError> {
        let value = if no_recorded_value(p.flags) {
            f64::from_bits(STALE_NAN_BITS)
        } else {
            match p.value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => return Err(self.problem(format!("{name}: a data point without a value"))),
            }
        };
        let t = self.time(p.time_unix_nano)?;
        self.push(name, point_labels(&p.attributes, shared), value, t)
    }

    fn histogram(
        &mut self,
        name: &str,
        p: &HistogramDataPoint,
        shared: &Shared,
    ) -> Result<(), IngestError> {
        let t = self.time(p.time_unix_nano)?;
        let labels = point_labels(&p.attributes, shared);
        let stale = no_recorded_value(p.flags);
        if !p.bucket_counts.is_empty() && p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
            return Err(self.problem(format!(
                "{name}: {} bucket counts for {} bounds (want one more count than bounds)",
                p.bucket_counts.len(),
                p.explicit_bounds.len()
            )));
        }
        // No bucket counts: only the total is known (`+Inf`, `_sum`, `_count`),
        // not zero in every bucket.
        let mut cumulative = 0u64;
        let mut buckets = Vec::new();
        if !p.bucket_counts.is_empty() {
            for (i, bound) in p.explicit_bounds.iter().enumerate() {
                cumulative = cumulative.saturating_add(p.bucket_counts[i]);
                buckets.push((*bound, cumulative));
            }
        }
        self.classic(name, &labels, &buckets, p.count, p.sum, stale, t)
    }

    /// `_bucket{le}` for each (upper bound, cumulative count) and `+Inf`, `_sum`
    /// (when known) and `_count`.
    #[allow(clippy::too_many_arguments)]
    fn classic(
        &mut self,
        name: &str,
        labels: &[Label],
        buckets: &[(f64, u64)],
        count: u64,
        sum: Option<f64>,
        stale: bool,
        t: i64,
    ) -> Result<(), IngestError> {
        let v = |x: f64| {
            if stale {
                f64::from_bits(STALE_NAN_BITS)
            } else {
                x
            }
        };
        for (bound, c) in buckets {
            let mut l = labels.to_vec();
            l.push(Label::new("le", format_bound(*bound)));
            self.push(&format!("{name}_bucket"), l, v(*c as f64), t)?;
        }
        let mut l = labels.to_vec();
        l.push(Label::new("le", "+Inf"));
        self.push(&format!("{name}_bucket"), l, v(count as f64), t)?;
        if let Some(s) = sum {
            self.push(&format!("{name}_sum"), labels.to_vec(), v(s), t)?;
        }
        self.push(
            &format!("{name}_count"),
            labels.to_vec(),
            v(count as f64),
            t,
        )
    }

    /// Base-2 exponential buckets at scale `s` have bounds `2^(i·2^-s)`: bucket
    /// `i` holds values in `(base^i, base^(i+1)]`, negative ones mirrored, and the
    /// zero bucket `[-z, z]`. Their upper bounds become classic `le` bounds.
    fn exponential(
        &mut self,
        name: &str,
        p: &ExponentialHistogramDataPoint,
        shared: &Shared,
    ) -> Result<(), IngestError> {
        let t = self.time(p.time_unix_nano)?;
        let labels = point_labels(&p.attributes, shared);
        if !(-10..=20).contains(&p.scale) {
            return Err(self.problem(format!(
                "{name}: exponential scale {} is out of range (-10..=20)",
                p.scale
            )));
        }
        // Each bound straight from its index (no accumulated rounding):
        // 2^(i·2^-scale).
        let step = 2f64.powi(-p.scale);
        let bound = |i: f64| (i * step).exp2();
        let empty = Buckets::default();
        let negative = p.negative.as_ref().unwrap_or(&empty);
        let positive = p.positive.as_ref().unwrap_or(&empty);
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        let mut cumulative = 0u64;
        // At extreme scales bounds overflow to infinity or underflow onto their
        // neighbours; such a bucket's count joins the next bucket that has a
        // bound of its own (or +Inf), which keeps the counts cumulative.
        let push = |le: f64, cumulative: u64, buckets: &mut Vec<(f64, u64)>| {
            if !le.is_finite() {
                return;
            }
            match buckets.last_mut() {
                Some((last, c)) if le <= *last => *c = cumulative,
                _ => buckets.push((le, cumulative)),
            }
        };
        // Most negative first: bucket i covers [-base^(i+1), -base^i).
        for (k, c) in negative.bucket_counts.iter().enumerate().rev() {
            cumulative = cumulative.saturating_add(*c);
            push(
                -bound(f64::from(negative.offset) + k as f64),
                cumulative,
                &mut buckets,
            );
        }
        cumulative = cumulative.saturating_add(p.zero_count);
        push(p.zero_threshold.abs(), cumulative, &mut buckets);
        for (k, c) in positive.bucket_counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*c);
            push(
                bound(f64::from(positive.offset) + k as f64 + 1.0),
                cumulative,
                &mut buckets,
            );
        }
        self.classic(
            name,
            &labels,
            &buckets,
            p.count,
            p.sum,
            no_recorded_value(p.flags),
            t,
        )
    }

    fn summary(
        &mut self,
        name: &str,
        p: &SummaryDataPoint,
        shared: &Shared,
    ) -> Result<(), IngestError> {
        let t = self.time(p.time_unix_nano)?;
        let labels = point_labels(&p.attributes, shared);
        let stale = no_recorded_value(p.flags);
        let v = |x: f64| {
            if stale {
                f64::from_bits(STALE_NAN_BITS)
            } else {
                x
            }
        };
        for q in &p.quantile_values {
            let mut l = labels.clone();
            l.push(Label::new("quantile", format_bound(q.quantile)));
            self.push(name, l, v(q.value), t)?;
        }
        self.push(&format!("{name}_sum"), labels.clone(), v(p.sum), t)?;
        self.push(&format!("{name}_count"), labels, v(p.count as f64), t)
    }
}

/// `FLAG_NO_RECORDED_VALUE`.
fn no_recorded_value(flags: u32) -> bool {
    flags & 1 == 1
}

/// Bounds as Prometheus writes them (`0.5`, `1`, `+Inf`).
fn format_bound(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".into()
    } else if b == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        b.to_string()
    }
}

/// `job` and `instance` replace the attributes of their names; the data point's
/// other attributes come next, and the promoted and scope labels fill in.
fn point_labels(attributes: &[KeyValue], shared: &Shared) -> Vec<Label> {
    let mut labels: Vec<Label> = attributes
        .iter()
        .map(|kv| Label::new(label_name(&kv.key), attribute_text(kv.value.as_ref())))
        .filter(|l| !shared.identity.iter().any(|i| i.name == l.name))
        .collect();
    labels.extend(shared.identity.iter().cloned());
    for l in &shared.fill {
        if !labels.iter().any(|x| x.name == l.name) {
            labels.push(l.clone());
        }
    }
    labels.retain(|l| !l.value.is_empty());
    labels.sort();
    labels.dedup_by(|a, b| a.name == b.name);
    labels
}

/// `job` from `service.namespace/service.name` (or `service.name` alone) and
/// `instance` from `service.instance.id`, each when the resource has it.
fn identity_labels(attributes: &[KeyValue]) -> Vec<Label> {
    let get = |k: &str| {
        attributes
            .iter()
            .find(|kv| kv.key == k)
            .map(|kv| attribute_text(kv.value.as_ref()))
    };
    let mut labels = Vec::new();
    if let Some(service) = get("service.name") {
        let job = match get("service.namespace") {
            Some(ns) if !ns.is_empty() => format!("{ns}/{service}"),
            _ => service,
        };
        labels.push(Label::new("job", job));
    }
    if let Some(instance) = get("service.instance.id") {
        labels.push(Label::new("instance", instance));
    }
    labels
}

fn attribute_text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(|v| attribute_text(Some(v))).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(l)) => {
            let items: Vec<String> = l
                .values
                .iter()
                .map(|kv| format!("{}={}", kv.key, attribute_text(kv.value.as_ref())))
                .collect();
            format!("{{{}}}", items.join(","))
        }
        #[allow(unreachable_patterns)]
        Some(_) => String::new(),
    }
}

/// Replaces characters outside `allowed` with `_`, collapsing runs.
fn sanitize(name: &str, allowed: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let c = if allowed(c) { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    out
}

fn metric_name(name: &str) -> String {
    let s = sanitize(name, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{s}")
    } else {
        s
    }
}

fn label_name(key: &str) -> String {
    let s = sanitize(key, |c| c.is_ascii_alphanumeric() || c == '_');
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{s}")
    } else {
        s
    }
}

/// The unit's Prometheus spelling, appended unless the name already ends with it.
fn with_unit(name: &str, unit: &str, gauge: bool) -> String {
    // `{requests}` and the like are annotations, not units.
    let unit: String = {
        let mut depth = 0;
        unit.chars()
            .filter(|c| match c {
                '{' => {
                    depth += 1;
                    false
                }
                '}' => {
                    depth -= 1;
                    false
                }
                _ => depth == 0,
            })
            .collect()
    };
    let unit = unit.trim();
    let word = match unit {
        "" => return name.to_string(),
        "1" if gauge => "ratio".to_string(),
        "1" => return name.to_string(),
        other => match other.split_once('/') {
            Some((a, b)) => format!("{}_per_{}", unit_word(a), per_unit_word(b)),
            None => unit_word(other),
        },
    };
    let word = sanitize(&word, |c| c.is_ascii_alphanumeric() || c == '_');
    let word = word.trim_matches('_');
    if word.is_empty()
        || name.ends_with(&format!("_{word}"))
        || name.ends_with(&format!("_{word}_total"))
    {
        name.to_string()
    } else {
        format!("{name}_{word}")
    }
}

fn unit_word(u: &str) -> String {
    match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        other => other,
    }
    .to_string()
}

fn per_unit_word(u: &str) -> String {
    match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_storage::model::Point;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Histogram, ResourceMetrics, ScopeMetrics, Sum,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", "api"),
                        kv("service.namespace", "shop"),
                        kv("service.instance.id", "pod-1"),
                        kv("host.name", "h1"),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "io.meter".into(),
                        version: "1.2".into(),
                        ..Default::default()
                    }),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn number(v: f64, t: u64, attrs: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            time_unix_nano: t,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn emitter(limits: &Limits) -> Emitter<'_> {
        Emitter {
            points: PointBatch::new(),
            now_ns: 0,
            limits,
            index: 0,
            latest: None,
            budget: RequestBudget::new(limits),
        }
    }

    fn labels(p: &Point) -> Vec<(String, String)> {
        p.labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect()
    }

    #[test]
    fn names_units_and_labels_follow_the_prometheus_rules() {
        let req = request(vec![
            Metric {
                name: "http.server.request.duration".into(),
                unit: "s".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![number(3.0, 1_000, vec![kv("http.method", "GET")])],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "cpu.utilization".into(),
                unit: "1".into(),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![number(0.5, 2_000, vec![kv("1cpu", "0")])],
                })),
                ..Default::default()
            },
            Metric {
                name: "queue.size".into(),
                unit: "{items}".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![number(7.0, 3_000, vec![])],
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
        ]);
        let points = convert(&req, 99, &Limits::default(), &OtlpOptions::default())
            .unwrap()
            .to_points();
        let names: Vec<&str> = points.iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(
            names,
            [
                "http_server_request_duration_seconds_total",
                "cpu_utilization_ratio",
                "queue_size",
                "target_info"
            ]
        );
        // `host.name` is on `target_info` only.
        assert_eq!(
            labels(&points[0]),
            [
                ("http_method".into(), "GET".into()),
                ("instance".into(), "pod-1".into()),
                ("job".into(), "shop/api".into()),
                ("otel_scope_name".into(), "io.meter".into()),
                ("otel_scope_version".into(), "1.2".into()),
            ]
        );
        assert!(labels(&points[1]).contains(&("key_1cpu".into(), "0".into())));
        assert_eq!((points[0].value, points[0].timestamp), (3.0, 1_000));
    }

    #[test]
    fn histograms_become_classic_buckets() {
        let req = request(vec![Metric {
            name: "latency".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    time_unix_nano: 5,
                    count: 6,
                    sum: Some(42.0),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![10.0, 100.0],
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        }]);
        let points = convert(&req, 0, &Limits::default(), &OtlpOptions::default())
            .unwrap()
            .to_points();
        let got: Vec<(String, Option<String>, f64)> = points
            .iter()
            .map(|p| {
                (
                    p.metric.clone(),
                    p.labels
                        .iter()
                        .find(|l| l.name == "le")
                        .map(|l| l.value.clone()),
                    p.value,
                )
            })
            .collect();
        let e = |m: &str, le: Option<&str>, v: f64| (m.to_string(), le.map(str::to_string), v);
        assert_eq!(
            got,
            [
                e("latency_milliseconds_bucket", Some("10"), 1.0),
                e("latency_milliseconds_bucket", Some("100"), 3.0),
                e("latency_milliseconds_bucket", Some("+Inf"), 6.0),
                e("latency_milliseconds_sum", None, 42.0),
                e("latency_milliseconds_count", None, 6.0),
                e("target_info", None, 1.0),
            ]
        );
    }

    #[test]
    fn exponential_buckets_become_cumulative_bounds() {
        let p = ExponentialHistogramDataPoint {
            time_unix_nano: 1,
            count: 6,
            sum: Some(10.0),
            scale: 0,
            zero_count: 1,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2, 3],
            }),
            ..Default::default()
        };
        let limits = Limits::default();
        let mut e = emitter(&limits);
        e.exponential("x", &p, &Shared::default()).unwrap();
        let got: Vec<(String, f64)> = e
            .points
            .to_points()
            .into_iter()
            .filter(|p| p.metric == "x_bucket")
            .map(|p| {
                (
                    p.labels
                        .iter()
                        .find(|l| l.name == "le")
                        .unwrap()
                        .value
                        .clone(),
                    p.value,
                )
            })
            .collect();
        // Scale 0: base 2; bucket 0 is (1, 2], bucket 1 is (2, 4].
        assert_eq!(
            got,
            [
                ("0".into(), 1.0),
                ("2".into(), 3.0),
                ("4".into(), 6.0),
                ("+Inf".into(), 6.0)
            ]
        );
    }

    #[test]
    fn what_a_request_creates_is_bounded_before_it_is_kept() {
        // A histogram of 64 buckets whose point carries 40 attributes of 2 KB:
        // every bucket series copies them (66 points x ~80 KB).
        let attributes: String = (0..40)
            .map(|i| {
                format!(
                    r#"{{"key":"a{i:02}","value":{{"stringValue":"{}"}}}}"#,
                    "v".repeat(2000)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let bounds: Vec<String> = (1..64).map(|b| b.to_string()).collect();
        let counts: Vec<String> = (0..64).map(|_| "\"1\"".to_string()).collect();
        let json = format!(
            r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"lat","histogram":{{"aggregationTemporality":2,"dataPoints":[
              {{"timeUnixNano":"1700000000000000000","count":"64","sum":1.0,"bucketCounts":[{}],"explicitBounds":[{}],"attributes":[{}]}}]}}}}]}}]}}]}}"#,
            counts.join(","),
            bounds.join(","),
            attributes
        );
        let tight = Limits {
            max_request_label_bytes: 1 << 20,
            ..Limits::default()
        };
        let err = parse_otlp_metrics(
            json.as_bytes(),
            OtlpEncoding::Json,
            0,
            &tight,
            &OtlpOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
        let few = Limits {
            max_request_points: 10,
            ..Limits::default()
        };
        let err = parse_otlp_metrics(
            json.as_bytes(),
            OtlpEncoding::Json,
            0,
            &few,
            &OtlpOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::TooLarge(_)), "{err}");
        // Within the defaults it is accepted.
        let points = parse_otlp_metrics(
            json.as_bytes(),
            OtlpEncoding::Json,
            0,
            &Limits::default(),
            &OtlpOptions::default(),
        )
        .unwrap()
        .to_points();
        assert!(points.len() > 64, "{}", points.len());
    }

    #[test]
    fn json_and_protobuf_decode_alike() {
        let json = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
          "scopeMetrics":[{"metrics":[{"name":"temp","unit":"Cel","gauge":{"dataPoints":[
            {"timeUnixNano":"1700000000000000000","asDouble":21.5,"attributes":[{"key":"room","value":{"stringValue":"k"}}]},
            {"timeUnixNano":"1700000001000000000","asInt":"22"}]}}]}]}]}"#;
        let from_json = parse_otlp_metrics(
            json.as_bytes(),
            OtlpEncoding::Json,
            0,
            &Limits::default(),
            &OtlpOptions::default(),
        )
        .unwrap()
        .to_points();
        assert_eq!(from_json.len(), 2);
        assert_eq!(from_json[0].metric, "temp_celsius");
        assert_eq!((from_json[0].value, from_json[1].value), (21.5, 22.0));
        assert_eq!(from_json[1].timestamp, 1_700_000_001_000_000_000);
        let req: ExportMetricsServiceRequest = serde_json::from_str(json).unwrap();
        let from_proto = parse_otlp_metrics(
            &req.encode_to_vec(),
            OtlpEncoding::Protobuf,
            0,
            &Limits::default(),
            &OtlpOptions::default(),
        )
        .unwrap()
        .to_points();
        assert_eq!(from_json, from_proto);
    }

    #[test]
    fn counters_put_total_after_the_unit_and_empty_histograms_keep_only_totals() {
        let req = request(vec![
            Metric {
                name: "jobs_total".into(),
                unit: "s".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![number(1.0, 1, vec![])],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "h".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        explicit_bounds: vec![1.0, 2.0],
                        ..Default::default()
                    }],
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            },
        ]);
        let points = convert(&req, 1, &Limits::default(), &OtlpOptions::default())
            .unwrap()
            .to_points();
        let names: Vec<&str> = points.iter().map(|p| p.metric.as_str()).collect();
        assert_eq!(
            names,
            ["jobs_seconds_total", "h_bucket", "h_count", "target_info"]
        );
        assert!(points[1]
            .labels
            .iter()
            .any(|l| l.name == "le" && l.value == "+Inf"));
    }

    #[test]
    fn extreme_exponential_scales_keep_bounds_increasing() {
        for scale in [-10, 20] {
            let p = ExponentialHistogramDataPoint {
                count: 10,
                scale,
                zero_count: 1,
                positive: Some(Buckets {
                    offset: -3,
                    bucket_counts: vec![1, 2, 3],
                }),
                negative: Some(Buckets {
                    offset: 0,
                    bucket_counts: vec![1, 2],
                }),
                ..Default::default()
            };
            let limits = Limits::default();
            let mut e = emitter(&limits);
            e.exponential("x", &p, &Shared::default()).unwrap();
            let buckets: Vec<(f64, f64)> = e
                .points
                .to_points()
                .into_iter()
                .filter(|p| p.metric == "x_bucket")
                .map(|p| {
                    let le = &p.labels.iter().find(|l| l.name == "le").unwrap().value;
                    (le.parse::<f64>().unwrap_or(f64::INFINITY), p.value)
                })
                .collect();
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{scale}: {buckets:?}"
            );
            assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 10.0));
        }
    }

    fn gauge(name: &str, t: u64, attrs: Vec<KeyValue>) -> Metric {
        Metric {
            name: name.into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![number(1.0, t, attrs)],
            })),
            ..Default::default()
        }
    }

    fn resource_metrics(attributes: Vec<KeyValue>, metrics: Vec<Metric>) -> ResourceMetrics {
        ResourceMetrics {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn resource_attributes_go_to_target_info_unless_promoted() {
        let resource = vec![
            kv("service.name", "api"),
            kv("service.namespace", "shop"),
            kv("service.instance.id", "pod-1"),
            kv("host.name", "h1"),
            kv("k8s.pod.name", "p-7"),
        ];
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![
                resource_metrics(
                    resource.clone(),
                    vec![
                        // A point's own `job` gives way to the resource's; its
                        // own `k8s_pod_name` wins over the promoted one.
                        gauge("a", 3_000, vec![kv("job", "mine"), kv("x", "1")]),
                        gauge("b", 5_000, vec![kv("k8s_pod_name", "own")]),
                        gauge("c", 0, vec![]),
                    ],
                ),
                // The same resource again, up to the same time: its
                // `target_info` point is not repeated.
                resource_metrics(resource, vec![gauge("d", 5_000, vec![])]),
                // Nothing beyond job and instance: no `target_info`.
                resource_metrics(
                    vec![kv("service.name", "solo")],
                    vec![gauge("e", 1, vec![])],
                ),
                // Neither job nor instance: no `target_info`.
                resource_metrics(vec![kv("host.name", "h2")], vec![gauge("f", 1, vec![])]),
            ],
        };
        let options = OtlpOptions {
            promote_resource_attributes: vec!["k8s.pod.name".into(), "absent".into()],
        };
        let points = convert(&req, 4_000, &Limits::default(), &options)
            .unwrap()
            .to_points();
        let by_name =
            |n: &str| -> Vec<&Point> { points.iter().filter(|p| p.metric == n).collect() };
        let l = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            labels(by_name("a")[0]),
            l(&[
                ("instance", "pod-1"),
                ("job", "shop/api"),
                ("k8s_pod_name", "p-7"),
                ("x", "1")
            ])
        );
        assert_eq!(
            labels(by_name("b")[0]),
            l(&[
                ("instance", "pod-1"),
                ("job", "shop/api"),
                ("k8s_pod_name", "own")
            ])
        );
        assert_eq!(labels(by_name("e")[0]), l(&[("job", "solo")]));
        assert_eq!(labels(by_name("f")[0]), l(&[]));
        // At the resource's latest point's time (`c`, without a time, is at
        // `now`, 4 000).
        let info = by_name("target_info");
        assert_eq!(info.len(), 1, "{info:?}");
        assert_eq!((info[0].value, info[0].timestamp), (1.0, 5_000));
        let expected = l(&[
            ("host_name", "h1"),
            ("instance", "pod-1"),
            ("job", "shop/api"),
            ("k8s_pod_name", "p-7"),
        ]);
        assert_eq!(labels(info[0]), expected);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse_otlp_metrics(
            b"\xff\xff",
            OtlpEncoding::Protobuf,
            0,
            &Limits::default(),
            &OtlpOptions::default()
        )
        .is_err());
        assert!(parse_otlp_metrics(
            b"{",
            OtlpEncoding::Json,
            0,
            &Limits::default(),
            &OtlpOptions::default()
        )
        .is_err());
        assert!(OtlpEncoding::from_content_type(Some("text/plain")).is_err());
        assert_eq!(
            OtlpEncoding::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            OtlpEncoding::Json
        );
    }
}
