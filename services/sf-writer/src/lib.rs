//! sf-writer: applies `sf.order.update.<OrderId>` messages to Salesforce Orders — batched,
//! retried, and ordered per Order across any number of replicas.
//!
//! - [`config`]: the service's settings (docs/contract.md §2 plus `SF_WRITER_*`).
//! - [`app`]: wiring: streams, bucket and consumer, the Salesforce client, the HTTP listener.
//! - [`consumer`]: the pull loop: batches of up to 200 updates, gathered with a short linger.
//! - [`batch`]: validation of bodies, grouping by Order and merging an Order's updates.
//! - [`ordering`]: the per-Order applied sequence and write claim in KV (compare-and-swap), which
//!   keeps an older update from overwriting a newer one, also across replicas and retries.
//! - [`gate`]: one circuit per replica: while Salesforce is unhealthy, one request probes and the
//!   rest wait, with exponential backoff.
//! - [`request`]: single-record and sObject Collections writes and the classification of their
//!   results (applied, permanent, transient, Salesforce-level).
//! - [`writer`]: one batch from messages to acks, dead letters and retries.
//! - [`metrics`]: what `/metrics` shows.

pub mod app;
pub mod batch;
pub mod config;
pub mod consumer;
pub mod gate;
pub mod metrics;
pub mod ordering;
pub mod request;
pub mod writer;

pub use app::App;
pub use config::WriterSettings;

/// The service name on the dead-letter subject and in logs.
pub const SERVICE: &str = "sf-writer";
