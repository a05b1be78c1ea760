//! The correlation fields of JSON log lines: `trace_id`, `span_id`, `order_id`,
//! `correlation_id` and `step`.
//!
//! [`LogFieldsLayer`] remembers, per span, the order id, correlation id and step it or its
//! ancestors declared (`order_id` or `order.id`, `correlation_id` or `correlation.id`, `step`), so
//! a log line deep inside an HTTP client span still names its order. [`JsonWithIds`] wraps the
//! stock JSON formatter and appends those fields, plus the OpenTelemetry trace and span ids of the
//! span the event happens in (present when traces are exported), to each line. A field the event
//! declares itself is not repeated.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The correlation fields of a span, inherited from its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFields {
    pub order_id: Option<Arc<str>>,
    pub correlation_id: Option<Arc<str>>,
    pub step: Option<Arc<str>>,
}

impl LogFields {
    fn is_empty(&self) -> bool {
        self.order_id.is_none() && self.correlation_id.is_none() && self.step.is_none()
    }
}

struct FieldVisitor<'a>(&'a mut LogFields);

impl FieldVisitor<'_> {
    fn set(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "order_id" | "order.id" => &mut self.0.order_id,
            "correlation_id" | "correlation.id" => &mut self.0.correlation_id,
            "step" => &mut self.0.step,
            _ => return,
        };
        if !value.is_empty() {
            *slot = Some(Arc::from(value));
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if matches!(
            field.name(),
            "order_id" | "order.id" | "correlation_id" | "correlation.id" | "step"
        ) {
            let text = format!("{value:?}");
            // `?value` of a string prints it quoted.
            let text = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(&text);
            self.set(field, text);
        }
    }
}

fn declares_any(fields: &tracing::field::FieldSet) -> bool {
    fields.iter().any(|f| {
        matches!(
            f.name(),
            "order_id" | "order.id" | "correlation_id" | "correlation.id" | "step"
        )
    })
}

/// Stores [`LogFields`] in each span's extensions, inherited from the parent span.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFieldsLayer;

impl<S> Layer<S> for LogFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = span
            .parent()
            .and_then(|parent| parent.extensions().get::<LogFields>().cloned())
            .unwrap_or_default();
        if declares_any(attrs.metadata().fields()) {
            attrs.record(&mut FieldVisitor(&mut fields));
        }
        if !fields.is_empty() {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = span
            .extensions()
            .get::<LogFields>()
            .cloned()
            .unwrap_or_default();
        let before = fields.clone();
        values.record(&mut FieldVisitor(&mut fields));
        if fields != before {
            let mut extensions = span.extensions_mut();
            extensions.remove::<LogFields>();
            extensions.insert(fields);
        }
    }
}

/// The stock JSON format plus the correlation fields.
#[derive(Debug)]
pub struct JsonWithIds {
    inner: Format<Json, SystemTime>,
}

impl JsonWithIds {
    pub fn new(inner: Format<Json, SystemTime>) -> Self {
        Self { inner }
    }
}

fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    match serde_json::to_string(value) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    }
}

/// The extra fields of one event, each as `,"name":"value"`.
pub fn extra_fields(current: Option<&LogFields>, event: &Event<'_>) -> String {
    let declared = |name: &str| event.metadata().fields().field(name).is_some();
    let mut extra = String::new();
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        if !declared("trace_id") {
            push_field(&mut extra, "trace_id", &span_context.trace_id().to_string());
        }
        if !declared("span_id") {
            push_field(&mut extra, "span_id", &span_context.span_id().to_string());
        }
    }
    if let Some(fields) = current {
        for (name, value) in [
            ("order_id", &fields.order_id),
            ("correlation_id", &fields.correlation_id),
            ("step", &fields.step),
        ] {
            if let Some(value) = value {
                if !declared(name) {
                    push_field(&mut extra, name, value);
                }
            }
        }
    }
    extra
}

impl<S> FormatEvent<S, JsonFields> for JsonWithIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let in_span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .is_some();
        // The common line (no span, as every per-event line of the bridge) is written straight
        // into the layer's buffer: the stock formatter goes through serde_json's io::Write
        // adaptor (a UTF-8 check per piece) and a second buffer here. Lines in a span (the
        // stock `span`/`spans` keys) and `log`-crate records (normalised metadata) keep the
        // stock path.
        if !in_span && event.metadata().fields().field("log.target").is_none() {
            return self.format_flat(&mut writer, event);
        }
        let mut line = String::with_capacity(512);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let current = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
            .and_then(|span| span.extensions().get::<LogFields>().cloned());
        let extra = extra_fields(current.as_ref(), event);
        let trimmed = line.trim_end();
        match trimmed.strip_suffix('}') {
            Some(body) if !extra.is_empty() => {
                writer.write_str(body)?;
                writer.write_str(&extra)?;
                writer.write_str("}\n")
            }
            _ => writer.write_str(&line),
        }
    }
}

impl JsonWithIds {
    /// Exactly what `Format<Json, SystemTime>` with `flatten_event(true)` writes for an event
    /// outside any span, with timestamp, level and target shown and file, line and thread
    /// hidden (the options platform::telemetry sets): `{"timestamp":..,"level":..,<the
    /// event's fields in order>,"target":..<correlation fields>}` and a newline. Field values
    /// follow tracing-serde's `SerdeMapVisitor`: numbers and booleans as JSON, `str` and
    /// everything else (`Debug`) as JSON strings with serde_json's escaping.
    fn format_flat(&self, writer: &mut Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(writer, std::time::SystemTime::now())?;
        writer.write_char('"')?;
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARN",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::TRACE => "TRACE",
        };
        writer.write_str(",\"level\":\"")?;
        writer.write_str(level)?;
        writer.write_str("\"")?;
        let mut visitor = FlatVisitor {
            writer: &mut *writer,
            state: Ok(()),
        };
        event.record(&mut visitor);
        visitor.state?;
        writer.write_str(",\"target\":")?;
        write_json_str(writer, event.metadata().target())?;
        writer.write_str(&extra_fields(None, event))?;
        writer.write_str("}\n")
    }
}

thread_local! {
    /// The second of the last line written on this thread and its text up to the seconds
    /// (`2026-12-01T06:07:24`): lines come many to a second, so the calendar arithmetic and
    /// the padded formatting are done once a second.
    static SECOND: std::cell::RefCell<(u64, String)> = const {
        std::cell::RefCell::new((u64::MAX, String::new()))
    };
}

/// `now` as tracing-subscriber's `SystemTime` timer writes it (its `DateTime` display):
/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`, UTC, microseconds. Times before 1970 or beyond what the
/// `time` crate holds take the stock timer (which reads the clock itself).
fn write_timestamp(out: &mut dyn fmt::Write, now: std::time::SystemTime) -> fmt::Result {
    let Ok(since_epoch) = now.duration_since(std::time::UNIX_EPOCH) else {
        return stock_timestamp(out);
    };
    let secs = since_epoch.as_secs();
    // `try_with`: a line written while the thread's locals are being torn down takes the
    // stock timer rather than panicking.
    let written = SECOND.try_with(|cell| -> Option<fmt::Result> {
        let mut cached = cell.try_borrow_mut().ok()?;
        if cached.0 != secs {
            let at = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())?;
            let text = &mut cached.1;
            text.clear();
            let year = at.year();
            let written = if year > 9999 {
                write!(text, "+{year}")
            } else if year < 0 {
                write!(text, "{year:05}")
            } else {
                write!(text, "{year:04}")
            }
            .and_then(|()| {
                write!(
                    text,
                    "-{:02}-{:02}T{:02}:{:02}:{:02}",
                    u8::from(at.month()),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second()
                )
            });
            if written.is_err() {
                return None;
            }
            cached.0 = secs;
        }
        Some(out.write_str(&cached.1))
    });
    let written = written.ok().flatten();
    match written {
        Some(result) => result?,
        None => return stock_timestamp(out),
    }
    let micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        // `rest % 10` is below 10, so the cast keeps it whole.
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.write_char('.')?;
    for digit in digits {
        out.write_char(char::from(digit))?;
    }
    out.write_char('Z')
}

fn stock_timestamp(out: &mut dyn fmt::Write) -> fmt::Result {
    use tracing_subscriber::fmt::time::FormatTime;
    let mut text = String::with_capacity(32);
    SystemTime.format_time(&mut Writer::new(&mut text))?;
    out.write_str(&text)
}

/// Writes `value` as a JSON string, escaped as serde_json escapes it.
fn write_json_str(out: &mut dyn fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    JsonEscape(out).write_str(value)?;
    out.write_char('"')
}

/// A `fmt::Write` that escapes what passes through as serde_json does inside a string:
/// `"` and `\\`, the short forms `\b \t \n \f \r`, other bytes below 0x20 as `\u00xx`.
struct JsonEscape<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            let short = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                0x08 => "\\b",
                b'\t' => "\\t",
                b'\n' => "\\n",
                0x0c => "\\f",
                b'\r' => "\\r",
                0x00..=0x1f => "",
                _ => continue,
            };
            // Escaped bytes are ASCII, so these slice bounds are character boundaries.
            self.0.write_str(&s[start..i])?;
            if short.is_empty() {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                self.0.write_str("\\u00")?;
                self.0.write_char(char::from(HEX[usize::from(byte >> 4)]))?;
                self.0
                    .write_char(char::from(HEX[usize::from(byte & 0x0f)]))?;
            } else {
                self.0.write_str(short)?;
            }
            start = i + 1;
        }
        self.0.write_str(&s[start..])
    }
}

/// tracing-serde's `SerdeMapVisitor`, writing text instead of driving a serializer.
struct FlatVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    state: fmt::Result,
}

impl FlatVisitor<'_, '_> {
    fn key(&mut self, field: &Field) -> fmt::Result {
        self.writer.write_char(',')?;
        write_json_str(self.writer, field.name())?;
        self.writer.write_char(':')
    }
}

impl Visit for FlatVisitor<'_, '_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.state.is_ok() {
            self.state = self
                .key(field)
                .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.state.is_ok() {
            self.state = self
                .key(field)
                .and_then(|()| write!(self.writer, "{value}"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.state.is_ok() {
            self.state = self
                .key(field)
                .and_then(|()| write!(self.writer, "{value}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.state.is_ok() {
            // serde_json's float form (ryu; `null` when not finite): rare, so no hand copy.
            let text = serde_json::to_string(&value).map_err(|_| fmt::Error);
            self.state = self
                .key(field)
                .and(text)
                .and_then(|text| self.writer.write_str(&text));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.state.is_ok() {
            self.state = self
                .key(field)
                .and_then(|()| write_json_str(self.writer, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.state.is_ok() {
            self.state = self.key(field).and_then(|()| {
                self.writer.write_char('"')?;
                write!(JsonEscape(self.writer), "{value:?}")?;
                self.writer.write_char('"')
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Ok(mut inner) = self.0.lock() {
                inner.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_order_fields_of_their_spans() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(LogFieldsLayer).with(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .map_event_format(JsonWithIds::new)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!("job", order_id = "801x", correlation_id = "c-1");
            let _job = job.enter();
            let step = tracing::info_span!("stage", step = "guard");
            let _step = step.enter();
            let http = tracing::info_span!("http");
            let _http = http.enter();
            tracing::info!(step = "explicit", "inside");
        });
        let text = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["order_id"], "801x");
        assert_eq!(line["correlation_id"], "c-1");
        assert_eq!(line["step"], "explicit", "{text}");
        assert_eq!(line["message"], "inside");
        assert_eq!(
            text.matches("\"step\":").count(),
            2,
            "the event's own step plus the span list's: {text}"
        );
    }

    fn lines_of(
        with_ids: bool,
        emit: impl Fn(),
    ) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true);
        if with_ids {
            let subscriber = tracing_subscriber::registry().with(LogFieldsLayer).with(
                layer
                    .map_event_format(JsonWithIds::new)
                    .with_writer(move || writer.clone()),
            );
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let subscriber = tracing_subscriber::registry()
                .with(LogFieldsLayer)
                .with(layer.with_writer(move || writer.clone()));
            tracing::subscriber::with_default(subscriber, emit);
        }
        let text = String::from_utf8(buffer.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert!(text.ends_with('\n'), "{text}");
        text.lines()
            .map(|line| {
                // Byte for byte, but for the time each line was written.
                let (head, rest) = line.split_once("\",\"level\"").expect("timestamp first");
                assert!(head.starts_with("{\"timestamp\":\""), "{line}");
                let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
                let mut map = value.as_object().cloned().expect("object");
                map.insert("rest".into(), rest.into());
                map.remove("timestamp");
                map
            })
            .collect()
    }

    #[test]
    fn lines_outside_spans_match_the_stock_formatter_byte_for_byte() {
        #[derive(Debug)]
        struct Odd;
        let emit = || {
            let odd = "quote \" back \\ nl \n tab \t cr \r bell \u{7} ff \u{c} bs \u{8} é ✓ \u{7f}";
            tracing::info!(
                order_id = Some("801x"),
                correlation_id = %odd,
                event_id = odd,
                stream_sequence = 7_u64,
                negative = -3_i64,
                flag = true,
                ratio = 0.25_f64,
                nan = f64::NAN,
                big = 1_u128 << 100,
                absent = None::<&str>,
                debug = ?Odd,
                "Platform Event enqueued for provisioning {}",
                odd
            );
            tracing::warn!(target: "some::target", "plain");
            tracing::error!(error = %std::io::Error::other("boom \"x\""), "failed");
        };
        let fast = lines_of(true, emit);
        let stock = lines_of(false, emit);
        assert_eq!(fast.len(), 3);
        assert_eq!(fast, stock);
    }

    fn timestamp_of(at: std::time::SystemTime) -> String {
        let mut text = String::new();
        write_timestamp(&mut text, at).expect("formats");
        text
    }

    #[test]
    fn timestamps_are_written_as_the_stock_timer_writes_them() {
        use std::time::{Duration, UNIX_EPOCH};
        use tracing_subscriber::fmt::time::FormatTime;
        for (secs, nanos, expected) in [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (1_700_000_000, 123_456_789, "2023-11-14T22:13:20.123456Z"),
            (951_782_400, 999_999_999, "2000-02-29T00:00:00.999999Z"),
            (1_700_000_000, 5_000, "2023-11-14T22:13:20.000005Z"),
            (1_700_000_001, 0, "2023-11-14T22:13:21.000000Z"),
        ] {
            let at = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(timestamp_of(at), expected);
        }
        // Now, between two readings of the stock timer: same form, so text order is time order.
        let stock = || {
            let mut text = String::new();
            SystemTime
                .format_time(&mut Writer::new(&mut text))
                .expect("formats");
            text
        };
        let before = stock();
        let ours = timestamp_of(std::time::SystemTime::now());
        let after = stock();
        assert_eq!(ours.len(), before.len(), "{ours} against {before}");
        assert!(before <= ours && ours <= after, "{before} {ours} {after}");
    }
}
