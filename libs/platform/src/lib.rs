//! Shared plumbing for every service of the pipeline, written once:
//!
//! - [`config`]: environment variables with errors that name the variable.
//! - [`cli`]: `--help` and `--version` for the service binaries (configured by environment only).
//! - [`nats`]: connecting (URLs, auth, TLS from the contract's variables), creating streams and
//!   KV buckets when absent.
//! - [`telemetry`]: tracing subscriber (JSON or pretty), OpenTelemetry export over OTLP, and W3C
//!   trace-context propagation through NATS headers.
//! - [`publish`]: the contract's headers, the producer span and the JetStream publish, for every
//!   message a service sends.
//! - [`deadletter`]: `provisioning.deadletter.<service>` for stream messages.
//! - [`http`]: the `/health`, `/livez` and `/metrics` listener.
//! - [`logfields`]: correlation fields (`trace_id`, `order_id`, ...) on JSON log lines.
//! - [`metrics`]: metrics shared by services (outbound API calls, time since an event).
//! - [`service`]: the runtime of the three services (connect, serve, ensure resources, the
//!   ordered shutdown's tail) and their binaries' `main`.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`streams`]: the pipeline's JetStream resources (streams, buckets, durable consumers).
//! - [`backoff`]: exponential backoff with full jitter, and start-up retries that stop on a
//!   permanent error.
//! - [`supervise`]: background tasks whose unexpected end stops the service (and `/livez`).
//! - [`error`]: an error with its causes on one log line.

pub mod backoff;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod error;
pub mod http;
pub mod logfields;
pub mod metrics;
pub mod nats;
pub mod publish;
pub mod service;
pub mod shutdown;
pub mod streams;
pub mod supervise;
pub mod sync;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;
