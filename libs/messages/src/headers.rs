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
