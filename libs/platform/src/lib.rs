//! Shared plumbing for every service of the pipeline, written once:
//!
//! - [`config`]: environment variables with errors that name the variable.
//! - [`nats`]: connecting (URLs, auth, TLS from the contract's variables), creating streams and
//!   KV buckets when absent.
//! - [`telemetry`]: tracing subscriber (JSON or pretty), OpenTelemetry export over OTLP, and W3C
//!   trace-context propagation through NATS headers.
//! - [`http`]: the `/health` and `/metrics` listener.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`streams`]: the pipeline's stream definitions.
//! - [`backoff`]: exponential backoff with full jitter.

pub mod backoff;
pub mod config;
pub mod http;
pub mod nats;
pub mod shutdown;
pub mod streams;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;
