//! sf-bridge: Salesforce Platform Events into JetStream, with a durable replay cursor.
//!
//! - [`config`]: the service's settings (docs/contract.md §2).
//! - [`app`]: wiring: NATS resources, the health/metrics listener, the ingest under the lease.
//! - [`lease`]: one active subscriber per channel, through a KV lease with compare-and-swap; runs
//!   the leader's work while this replica holds it.
//! - [`cursor`]: the replay cursor in KV, written only after JetStream acknowledged the events up
//!   to it.
//! - [`ingest`]: the leader's Subscribe sessions: flow control, decoding, publishing, cursor
//!   advancement.
//! - [`event`]: Platform Event → `provisioning.requested.v1`, or the reason it is poison.
//! - [`status`] and [`metrics`]: what `/health/sf-events` and `/metrics` show.

pub mod app;
pub mod config;
pub mod cursor;
pub mod event;
pub mod ingest;
pub mod lease;
pub mod metrics;
pub mod status;

pub use app::App;
pub use config::BridgeSettings;
