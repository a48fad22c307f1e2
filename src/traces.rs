//! Traces: with an OTLP endpoint configured, the node's `tracing` spans are
//! exported as OTLP/HTTP (protobuf) in batches, and the W3C trace context
//! travels on bus messages (`chronicle_bus::trace`), so one request's spans
//! form one trace across nodes (docs/observability.md, "Traces").

use std::time::Duration;

use async_trait::async_trait;
use chronicle_bus::trace::TraceHooks;
use chronicle_bus::Headers;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry::KeyValue;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's HTTP client: ureq, the client the CLI uses already. The
/// batch processor exports from its own thread, where blocking is fine.
#[derive(Debug)]
struct Ureq(ureq::Agent);

#[async_trait]
impl HttpClient for Ureq {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut call = self.0.post(parts.uri.to_string());
        for (name, value) in &parts.headers {
            call = call.header(name.as_str(), value.to_str().unwrap_or_default());
        }
        let mut response = call.send(&body[..])?;
        let status = response.status();
        // The collector's answer is short; a longer one is cut, not buffered.
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()?;
        Ok(Response::builder()
            .status(status)
            .body(Bytes::from(bytes))?)
    }
}

/// The OTLP/HTTP traces URL: `endpoint` as given when it names a path,
/// else `<endpoint>/v1/traces` (as `OTEL_EXPORTER_OTLP_ENDPOINT` means).
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: an http:// or https:// URL such as http://127.0.0.1:4318"
        ));
    }
    Ok(match uri.path() {
        "" | "/" => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        _ => endpoint.to_string(),
    })
}

/// The tracer provider exporting to `endpoint`, its spans naming this node
/// (`service.instance.id`); and the bus hooks installed.
pub fn provider(endpoint: &str, instance: &str) -> Result<SdkTracerProvider, String> {
    let url = traces_url(endpoint)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(EXPORT_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Ureq(agent))
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let resource = Resource::builder()
        .with_service_name("chronicle")
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    chronicle_bus::trace::install(TraceHooks { inject, adopt });
    Ok(provider)
}

static PROVIDER: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// Keeps the process's provider for [`shutdown`].
pub fn keep(provider: SdkTracerProvider) {
    let _ = PROVIDER.set(provider);
}

/// Exports the spans still queued and stops exporting (at the node's stop).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            eprintln!("traces: the last spans were not exported: {e}");
        }
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("chronicle"))
}

struct Inject<'a>(&'a mut Headers);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

struct Extract<'a>(&'a Headers);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

fn inject(headers: &mut Headers) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Inject(headers));
    }
}

fn adopt(headers: &Headers, span: &tracing::Span) {
    let cx = TraceContextPropagator::new().extract(&Extract(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the W3C context in an HTTP request's headers.
pub fn adopt_http(headers: &actix_web::http::header::HeaderMap, span: &tracing::Span) {
    let mut carried = Headers::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            carried.insert(name, v);
        }
    }
    chronicle_bus::trace::adopt(&carried, span);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gets_the_traces_path_unless_it_names_one() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/v1/traces").unwrap(),
            "https://c/otlp/v1/traces"
        );
        for bad in ["", "c:4318", "ftp://c", "http://"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
