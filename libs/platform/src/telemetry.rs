//! Logs and traces.
//!
//! Logs go to stdout as JSON (default) or human-readable text. Traces go through
//! `tracing-opentelemetry` and are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set; the `traceparent` header then carries the order's trace from service to service. Without
//! an endpoint the OpenTelemetry layer is not installed at all (no per-span cost), and published
//! messages carry a fresh root `traceparent`.
//!
//! Order attributes: the span that starts an order's work in a service joins the order with
//! [`join_order`] (its parent context then carries the order and correlation ids), and every span
//! started beneath it gets `order.id` and `correlation.id` from a span processor, including the
//! HTTP client spans of the Salesforce and WHMCS clients, which know nothing of orders. JSON log
//! lines carry `trace_id`, `span_id`, `order_id`, `correlation_id` and `step` from the span the
//! event happens in (see [`crate::logfields`]).

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

use crate::config::{ConfigError, Env};

/// Whether the OpenTelemetry layer is installed (an OTLP endpoint is configured).
static TRACES_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`init`] installed the W3C propagator (tools that never call it have none).
static W3C_PROPAGATOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint is configured). When they are not, a span kept
/// only for traces ([`TRACE_ONLY`]) has no use, and a hot path can skip making it.
pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Target for spans that exist for traces only: the log formatter skips them, so a span per
/// message on a hot path costs no field formatting. Events inside such a span carry their own
/// identifying fields.
pub const TRACE_ONLY: &str = "trace_only";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub service_name: String,
    pub otlp_endpoint: Option<String>,
    pub log_filter: String,
    pub log_format: LogFormat,
}

impl TelemetrySettings {
    pub fn from_env(env: &Env, binary_name: &str) -> Result<Self, ConfigError> {
        let log_format = match env
            .string_or("LOG_FORMAT", "json")
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => LogFormat::Json,
            "pretty" | "text" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("must be json or pretty, not {other:?}"),
                ))
            }
        };
        let otlp_endpoint = match env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            None => None,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Some(url),
            Some(url) => {
                return Err(ConfigError::new(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("must start with http:// or https://, not {url:?}"),
                ))
            }
        };
        let log_filter = env.string_or("RUST_LOG", "info");
        EnvFilter::try_new(&log_filter)
            .map_err(|e| ConfigError::new("RUST_LOG", format!("is not a valid filter: {e}")))?;
        Ok(Self {
            service_name: env.string_or("OTEL_SERVICE_NAME", binary_name),
            otlp_endpoint,
            log_filter,
            log_format,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter")]
pub struct TelemetryError(#[source] opentelemetry_otlp::ExporterBuildError);

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] flushes the last spans. Dropping
/// it (after `shutdown`, or on an early return) writes out the log lines still buffered.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    _logs: FlushLogsOnDrop,
}

/// Log lines are written to stdout in batches rather than one write(2) each: at `info` a busy
/// service logs a line per message, and a system call per line cost more than formatting it.
/// A line waits at most [`LOG_FLUSH_INTERVAL`] (a flusher thread), lines at `warn` and `error`
/// go out at once with everything before them, and the buffer is written out when it reaches
/// [`LOG_FLUSH_BYTES`], on [`TelemetryGuard`]'s drop (a normal stop) and on a panic. Only a
/// process killed outright can lose the last interval's lines.
static LOG_BUFFER: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
const LOG_FLUSH_BYTES: usize = 32 * 1024;
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Writes out the buffered log lines (the flusher thread, shutdown).
pub fn flush_logs() {
    let mut lines = crate::sync::lock(&LOG_BUFFER);
    write_out(&mut lines);
}

fn write_out(lines: &mut Vec<u8>) {
    use std::io::Write as _;
    if lines.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    // A closed or failing stdout loses the lines, as the unbuffered writer did: logging never
    // stops the service.
    let _ = out.write_all(lines);
    let _ = out.flush();
    lines.clear();
    // A burst (a long backtrace, say) does not keep its memory.
    if lines.capacity() > 4 * LOG_FLUSH_BYTES {
        lines.shrink_to(LOG_FLUSH_BYTES);
    }
}

#[derive(Debug)]
struct FlushLogsOnDrop;

impl Drop for FlushLogsOnDrop {
    fn drop(&mut self) {
        flush_logs();
    }
}

/// The fmt layer's writer: one per event, which it writes whole in one `write_all`.
#[derive(Debug, Clone, Copy)]
struct BufferedStdout;

struct LogLine {
    urgent: bool,
}

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut lines = crate::sync::lock(&LOG_BUFFER);
        lines.extend_from_slice(buf);
        if self.urgent || lines.len() >= LOG_FLUSH_BYTES {
            write_out(&mut lines);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStdout {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LogLine {
        LogLine {
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// Starts the flusher thread and the panic hook's flush, once per process.
fn start_log_flushing() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("log-flush".to_owned())
            .spawn(|| loop {
                std::thread::sleep(LOG_FLUSH_INTERVAL);
                flush_logs();
            });
        if let Err(err) = spawned {
            // Lines then wait for the buffer to fill, a warning, or the stop.
            eprintln!("cannot start the log flusher thread: {err}");
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // try_lock: a panic while the buffer is being written must not deadlock here.
            if let Ok(mut lines) = LOG_BUFFER.try_lock() {
                write_out(&mut lines);
            }
            previous(info);
        }));
    });
}

impl TelemetryGuard {
    /// Flushes and stops the exporter. Call once, last, on the way out.
    ///
    /// The batch processor's last export needs Tokio workers to drive the gRPC client: on a
    /// multi-thread runtime this worker is handed over (`block_in_place`) while waiting, so the
    /// flush works even with a single worker.
    pub fn shutdown(self) {
        let TelemetryGuard { provider, _logs } = self;
        let flush = move || provider.shutdown();
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        };
        if let Err(err) = result {
            tracing::warn!(error = %crate::error::Chain(&err), "Flushing spans on shutdown failed.");
        }
    }
}

/// Installs the global subscriber and propagator. Later calls in the same process (tests that run
/// several apps) keep the first subscriber and still return a working guard.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    W3C_PROPAGATOR.store(true, std::sync::atomic::Ordering::Relaxed);
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(KeyValue::new("service.instance.id", instance_id()))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(TelemetryError)?;
        builder = builder
            .with_span_processor(OrderAttributes)
            .with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(settings.service_name.clone());
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Without an endpoint there is nothing to export: skip the OpenTelemetry layer entirely
    // (no span bookkeeping per event). Messages still get a fresh `traceparent`.
    let otel_layer = settings
        .otlp_endpoint
        .is_some()
        .then(|| tracing_opentelemetry::layer().with_tracer(tracer));
    if otel_layer.is_some() {
        TRACES_EXPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // Trace-only spans skip the log machinery altogether: no field formatting, no correlation
    // bookkeeping (events inside them carry their own identifying fields).
    let not_trace_only = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target() == TRACE_ONLY)
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(crate::logfields::LogFieldsLayer.with_filter(not_trace_only.clone()));
    let installed = match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(BufferedStdout)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true)
                    .map_event_format(crate::logfields::JsonWithIds::new)
                    .with_filter(not_trace_only),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(BufferedStdout)
                    .with_filter(not_trace_only),
            )
            .try_init(),
    };
    if installed.is_ok() {
        start_log_flushing();
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(TelemetryGuard {
        provider,
        _logs: FlushLogsOnDrop,
    })
}

/// The order a span works for, carried as a value of its OpenTelemetry context so that every
/// span started beneath it is tagged (see [`OrderAttributes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderIds {
    pub order_id: Option<String>,
    pub correlation_id: Option<String>,
}

/// Span attribute with the Salesforce Order id, on every span of an order.
pub const ORDER_ID: &str = "order.id";
/// Span attribute with the correlation id, on every span of an order.
pub const CORRELATION_ID: &str = "correlation.id";

/// Makes `span` the start of an order's work in this service: its parent becomes `parent` (the
/// context extracted from the message, or a new root when `None`), and it and every span started
/// beneath it carry `order.id` and `correlation.id`. Call before the span is first entered.
///
/// Spans joined this way must not declare `order.id` / `correlation.id` themselves (they would
/// carry them twice); declare the log fields `order_id` / `correlation_id` instead.
pub fn join_order(
    span: &tracing::Span,
    parent: Option<opentelemetry::Context>,
    order_id: Option<&str>,
    correlation_id: Option<&str>,
) {
    if !TRACES_EXPORTED.load(std::sync::atomic::Ordering::Relaxed) {
        // No OpenTelemetry layer: nothing to join, and nothing to allocate on a hot path.
        return;
    }
    let ids = OrderIds {
        order_id: order_id.filter(|s| !s.is_empty()).map(str::to_owned),
        correlation_id: correlation_id.filter(|s| !s.is_empty()).map(str::to_owned),
    };
    let context = parent.unwrap_or_default().with_value(ids);
    match span.set_parent(context) {
        Ok(()) => {}
        // No OpenTelemetry layer (no endpoint) or a filtered span: nothing to join.
        Err(
            tracing_opentelemetry::SetParentError::LayerNotFound
            | tracing_opentelemetry::SetParentError::SpanDisabled,
        ) => {}
        Err(err) => {
            tracing::warn!(error = %err, "Span started before its parent was set; it starts a new trace.")
        }
    }
}

/// Marks `span` failed: status error with `message`, and `error.code` (the contract's code).
pub fn record_error(span: &tracing::Span, code: &str, message: &str) {
    span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
    span.set_attribute("error.code", code.to_owned());
    span.set_attribute("error.type", code.to_owned());
}

/// Tags spans started under a context that carries [`OrderIds`].
#[derive(Debug)]
struct OrderAttributes;

impl SpanProcessor for OrderAttributes {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        if let Some(ids) = cx.get::<OrderIds>() {
            if let Some(order_id) = &ids.order_id {
                span.set_attribute(KeyValue::new(ORDER_ID, order_id.clone()));
            }
            if let Some(correlation_id) = &ids.correlation_id {
                span.set_attribute(KeyValue::new(CORRELATION_ID, correlation_id.clone()));
            }
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// A URL's authority (host and port) for a client span's `server.address`; `None` when the
/// URL has no scheme or no host.
pub fn server_address(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    (!authority.is_empty()).then_some(authority)
}

/// A URL fit for `url.full`: user info removed, and the values of query parameters that may
/// carry credentials redacted.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(at) => rest.split_at(at),
                None => (rest, ""),
            };
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => base.to_owned(),
    };
    let Some(query) = query else {
        return base;
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let lower = key.to_ascii_lowercase();
            if [
                "secret",
                "password",
                "token",
                "key",
                "signature",
                "assertion",
            ]
            .iter()
            .any(|s| lower.contains(s))
            {
                format!("{key}=REDACTED")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{base}?{}", redacted.join("&"))
}

/// Host name and process id: distinguishes replicas in traces and in lease ownership.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            key.parse::<async_nats::HeaderName>(),
            value.parse::<async_nats::HeaderValue>(),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Writes the W3C trace context of `span` into NATS headers. When the span has no trace context
/// (telemetry not initialised, as in some tools), a new root context is written instead, so
/// every message still carries a `traceparent` as the contract requires.
pub fn inject_trace_context(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    if W3C_PROPAGATOR.load(std::sync::atomic::Ordering::Relaxed) && !traces_exported() {
        // No OpenTelemetry layer, so no span has a context: a new root, written as the W3C
        // propagator writes it, without building a context or taking the global propagator's
        // lock (a publish per event on the bridge's hot path).
        // Static names and the owned value moved in: no name parsed and allocated, no value
        // copied (the W3C header names are constants; the value is hex and dashes).
        const TRACEPARENT: async_nats::HeaderName =
            async_nats::HeaderName::from_static("traceparent");
        const TRACESTATE: async_nats::HeaderName =
            async_nats::HeaderName::from_static("tracestate");
        headers.insert(TRACEPARENT, new_root_traceparent());
        headers.insert(TRACESTATE, String::new());
        return;
    }
    let mut context = span.context();
    if !context.span().span_context().is_valid() {
        let span_context = SpanContext::new(
            TraceId::from_bytes(rand::random::<[u8; 16]>()),
            SpanId::from_bytes(rand::random::<[u8; 8]>()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        context = opentelemetry::Context::new().with_remote_span_context(span_context);
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// `00-<random trace id>-<random span id>-01`: version 0, sampled.
fn new_root_traceparent() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let trace_id = rand::random::<[u8; 16]>();
    let span_id = rand::random::<[u8; 8]>();
    let hex = |out: &mut String, bytes: &[u8]| {
        for byte in bytes {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    };
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    hex(&mut out, &trace_id);
    out.push('-');
    hex(&mut out, &span_id);
    out.push_str("-01");
    out
}

/// Reads the W3C trace context from NATS headers, for use as a parent or a link.
pub fn extract_trace_context(headers: &async_nats::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// The trace context a stored `traceparent` names (the provisioner's journal keeps the
/// request's), for use as a parent; `None` when the text cannot be a header value.
pub fn context_from_traceparent(traceparent: &str) -> Option<opentelemetry::Context> {
    let mut headers = async_nats::HeaderMap::new();
    crate::nats::insert_header(&mut headers, messages::headers::TRACEPARENT, traceparent)
        .then(|| extract_trace_context(&headers))
}

/// The trace id of a span as 32 hex characters, or `None` when it has no valid context.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_is_the_urls_authority() {
        let cases = [
            (
                "https://example.my.salesforce.com",
                Some("example.my.salesforce.com"),
            ),
            (
                "http://127.0.0.1:8080/includes/api.php?x=1",
                Some("127.0.0.1:8080"),
            ),
            ("https://host?query", Some("host")),
            ("https:///path", None),
            ("no-scheme.example.com/path", None),
        ];
        for (url, address) in cases {
            assert_eq!(server_address(url), address, "{url}");
        }
    }

    #[test]
    fn every_span_under_a_joined_order_carries_its_ids_once() {
        use opentelemetry_sdk::trace::InMemorySpanExporter;
        // What `init` records when it installs the OpenTelemetry layer.
        TRACES_EXPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(OrderAttributes)
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!("job", order_id = "801A");
            join_order(&job, None, Some("801A"), Some("corr-1"));
            job.in_scope(|| {
                let step = tracing::info_span!("step");
                step.in_scope(|| {
                    let http = tracing::info_span!("http");
                    record_error(&http, "503", "busy");
                    http.in_scope(|| {});
                });
            });
            let other = tracing::info_span!("unrelated");
            other.in_scope(|| {});
        });
        let spans = exporter.get_finished_spans().unwrap_or_default();
        assert_eq!(spans.len(), 4);
        let attr = |span: &SpanData, key: &str| {
            span.attributes
                .iter()
                .filter(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
                .collect::<Vec<_>>()
        };
        let trace = spans
            .iter()
            .find(|s| s.name == "job")
            .map(|s| s.span_context.trace_id());
        for span in spans.iter().filter(|s| s.name != "unrelated") {
            assert_eq!(
                attr(span, ORDER_ID),
                vec!["801A".to_owned()],
                "{}",
                span.name
            );
            assert_eq!(attr(span, CORRELATION_ID), vec!["corr-1".to_owned()]);
            assert_eq!(Some(span.span_context.trace_id()), trace);
        }
        let http = spans.iter().find(|s| s.name == "http");
        assert!(http.is_some_and(|s| matches!(
            s.status,
            opentelemetry::trace::Status::Error { .. }
        ) && attr(s, "error.code") == vec!["503".to_owned()]));
        let unrelated = spans.iter().find(|s| s.name == "unrelated");
        assert!(unrelated.is_some_and(|s| attr(s, ORDER_ID).is_empty()));
    }

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(
            redact_url("https://user:pw@whmcs.example.com/includes/api.php"),
            "https://whmcs.example.com/includes/api.php"
        );
        assert_eq!(
            redact_url("http://h/x?q=SELECT+Id&access_token=abc"),
            "http://h/x?q=SELECT+Id&access_token=REDACTED"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn a_directly_written_root_traceparent_is_valid_w3c() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        let mut headers = async_nats::HeaderMap::new();
        HeaderInjector(&mut headers).set("traceparent", new_root_traceparent());
        let context = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = context.span();
        let extracted = span.span_context();
        assert!(extracted.is_valid() && extracted.is_sampled());
        assert_eq!(
            headers.get("traceparent").map(|v| v.as_str().to_owned()),
            Some(format!(
                "00-{}-{}-01",
                extracted.trace_id(),
                extracted.span_id()
            ))
        );
    }

    #[test]
    fn a_message_gets_a_traceparent_even_without_a_tracer() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let mut headers = async_nats::HeaderMap::new();
        inject_trace_context(&tracing::Span::none(), &mut headers);
        let traceparent = headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(
            traceparent.starts_with("00-") && traceparent.ends_with("-01"),
            "{traceparent:?}"
        );
        let extracted = extract_trace_context(&headers);
        use opentelemetry::trace::TraceContextExt;
        assert!(extracted.span().span_context().is_valid());
    }
}
