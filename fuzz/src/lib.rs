//! Input framing shared by the fuzz targets: how a byte string from libFuzzer becomes a NATS
//! message (subject, headers, payload), gRPC trailers or an HTTP status. The framing is text with
//! a binary tail, so seeds stay readable and the mutator can still reach every byte of a body.

use std::str::FromStr;
use std::sync::Once;

/// A NATS message as the consumers receive it.
#[derive(Debug)]
pub struct NatsMessage {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

/// `subject\nName: value\n...\n\npayload`: the first line is the subject, header lines follow up
/// to the first empty line, and everything after it is the payload (any bytes). Header lines
/// async-nats would refuse (bad name or value) are skipped: a client can never receive them.
pub fn nats_message(data: &[u8]) -> NatsMessage {
    let (head, payload) = match find(data, b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let subject = lines.next().unwrap_or_default().to_owned();
    let mut headers = async_nats::HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            async_nats::header::HeaderName::from_str(name.trim()),
            async_nats::HeaderValue::from_str(value.trim_start()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    NatsMessage {
        subject,
        headers,
        payload: bytes::Bytes::copy_from_slice(payload),
    }
}

/// HTTP/2 trailers (or headers): `name: value` lines, values as raw bytes. Lines `http` refuses
/// are skipped, as hyper would never hand them over.
pub fn header_map(data: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// The statuses a reply is tried with: mostly success, plus the failures the parsers branch on.
pub const STATUSES: [u16; 12] = [200, 200, 200, 201, 204, 400, 401, 403, 404, 429, 500, 503];

/// One selector byte and the rest: `(selector, rest)`; an empty input selects 0.
pub fn split_selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (*first, rest),
        None => (0, data),
    }
}

/// The W3C trace-context propagator the services install at start (platform::telemetry::init),
/// so header extraction runs the production path rather than the no-op default.
pub fn install_propagator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    });
}

/// What a consumer reads from the headers: the parent trace context, exactly as it extracts it.
pub fn read_trace_headers(headers: &async_nats::HeaderMap) {
    use opentelemetry::trace::TraceContextExt as _;
    install_propagator();
    let context = platform::telemetry::extract_trace_context(headers);
    let span = context.span();
    let span_context = span.span_context();
    // A context taken from headers is remote, and valid only with non-zero ids.
    if span_context.is_valid() {
        assert!(span_context.is_remote());
        assert_ne!(
            span_context.trace_id(),
            opentelemetry::trace::TraceId::INVALID
        );
    }
}

/// An accepted Order id must be the canonical 18-character form (docs/contract.md §4).
pub fn assert_canonical_id(id: &str) {
    assert_eq!(id.len(), 18, "{id:?}");
    assert_eq!(
        messages::salesforce_id::canonical(id).as_deref(),
        Ok(id),
        "{id:?} is not its own canonical form"
    );
}

/// An accepted message's Order id is canonical and is the one its subject's last token names
/// (read here independently of the consumers' own subject check).
pub fn assert_named_by_subject(subject: &str, id: &str) {
    assert_canonical_id(id);
    let named = subject
        .rsplit('.')
        .next()
        .and_then(|token| messages::salesforce_id::canonical(token).ok());
    assert_eq!(named.as_deref(), Some(id), "{subject:?}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
