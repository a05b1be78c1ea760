//! Header names. NATS header names are compared case-sensitively, so these exact spellings are
//! part of the contract.

/// The order's correlation id (`CorrelationId__c`, or generated once by sf-bridge).
pub const CORRELATION_ID: &str = "Correlation-Id";
/// W3C trace context, lowercase as the W3C propagator writes and reads it.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// JetStream de-duplication id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The body's schema name, so a consumer can route without parsing the body.
pub const SCHEMA: &str = "Schema";

/// The trace id (32 lowercase hex digits) of a W3C `traceparent` value, if it is well formed
/// and not the all-zero invalid id.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}
