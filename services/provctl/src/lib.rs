//! `provctl`: the operator's view of the pipeline's JetStream state, and the few deliberate
//! interventions an operator makes (docs/runbook.md, "provctl").
//!
//! - [`Ctl::status`]: sf-bridge lease holder, replay cursor and its age, stream and consumer lag,
//!   dead letters per service.
//! - [`Ctl::order`]: an order's journal entry, last outcome, trace id and Jaeger link.
//! - [`Ctl::cursor_set`]: move the bridge's replay cursor for a deliberate backfill or skip.
//! - [`Ctl::check`]: the status report judged: problems that need attention (`status --check`).
//! - [`Ctl::orders`]: the journal's orders in one state, newest first.
//! - [`Ctl::deadletter_list`], [`Ctl::deadletter_show`], [`Ctl::deadletter_replay`],
//!   [`Ctl::deadletter_replay_plan`] (`--dry-run`).
//!
//! Exit codes are [`exit::Exit`]. The command line (clap) and running a command: [`cli`].
//!
//! Every command returns a report that serialises to JSON (`--json`) and renders as text.
//! Resource names follow the services' variables ([`settings::Names`]).

pub mod check;
pub mod cli;
pub mod cursor;
pub mod deadletter;
pub mod duration;
pub mod exit;
pub mod order;
pub mod orders;
pub mod settings;
pub mod status;
pub mod table;

use async_nats::jetstream::{self, kv, stream};

pub use check::{CheckReport, CheckSettings, Problem, ProblemKind};
pub use cursor::{CursorSetReport, CursorTarget};
pub use deadletter::{DeadLetterDetail, DeadLetterList, ReplayPlan, ReplayReport};
pub use exit::Exit;
pub use order::OrderReport;
pub use orders::{OrdersQuery, OrdersReport};
pub use settings::{CtlSettings, Names};
pub use status::StatusReport;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A NATS or JetStream request failed; what failed is the source.
    #[error("{what}")]
    JetStream {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0:?} is not a Salesforce Order id")]
    InvalidOrderId(String, #[source] messages::salesforce_id::InvalidId),
    #[error("{0:?} is not a replay id: give the base64 of Salesforce's replay id bytes, as /health/sf-events and `provctl status` show it")]
    InvalidReplayId(String),
    #[error("sf-bridge replica {holder} holds the subscription lease: it would overwrite the cursor with its own on the next event. Stop every sf-bridge replica first (scale to 0), or pass --force")]
    LeaseHeld { holder: String },
    #[error("KV bucket {0} does not exist: sf-bridge creates it on its first start (or pre-create it, docs/deployment.md)")]
    BucketMissing(String),
    #[error("stream {0} does not exist: the services create it on their first start (or pre-create it, docs/deployment.md)")]
    StreamMissing(String),
    #[error("no message with sequence {seq} in stream {stream}")]
    MessageNotFound { stream: String, seq: u64 },
    #[error("message {seq} in {stream} is not a provisioning.deadletter.v1 body: {detail}")]
    NotADeadLetter {
        stream: String,
        seq: u64,
        detail: String,
    },
    #[error("dead letter {seq} cannot be replayed: {reason}")]
    ReplayRefused { seq: u64, reason: String },
}

impl CtlError {
    fn js(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::JetStream {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// A connected provctl: JetStream context plus the resource names.
#[derive(Debug, Clone)]
pub struct Ctl {
    js: jetstream::Context,
    names: Names,
    jaeger_ui_url: String,
    /// `JETSTREAM_REPLICAS`: resources with fewer replicas are flagged in `status`.
    wanted_replicas: usize,
}

impl Ctl {
    /// Streams and buckets with fewer replicas than `replicas` (`JETSTREAM_REPLICAS`) are
    /// reported as under-replicated by `status`.
    pub fn with_wanted_replicas(mut self, replicas: usize) -> Self {
        self.wanted_replicas = replicas;
        self
    }

    pub fn new(client: async_nats::Client, names: Names, jaeger_ui_url: &str) -> Self {
        Self {
            js: jetstream::new(client),
            names,
            jaeger_ui_url: jaeger_ui_url.trim_end_matches('/').to_owned(),
            wanted_replicas: 1,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The stream, or `None` when it does not exist.
    async fn stream(&self, name: &str) -> Result<Option<stream::Stream>, CtlError> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match self.js.get_stream(name).await {
            Ok(stream) => Ok(Some(stream)),
            Err(err) => match err.kind() {
                GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(CtlError::js(format!("cannot read stream {name}"), err)),
            },
        }
    }

    /// The KV bucket, or `None` when it does not exist.
    async fn bucket(&self, name: &str) -> Result<Option<kv::Store>, CtlError> {
        if self.stream(&format!("KV_{name}")).await?.is_none() {
            return Ok(None);
        }
        self.js
            .get_key_value(name)
            .await
            .map(Some)
            .map_err(|e| CtlError::js(format!("cannot open KV bucket {name}"), e))
    }

    /// The current holder of the sf-bridge subscription lease, if any.
    async fn lease_holder(&self) -> Result<Option<String>, CtlError> {
        let Some(bucket) = self.bucket(&self.names.lease_bucket).await? else {
            return Ok(None);
        };
        let key = messages::kv::lease::key(&self.names.channel);
        let value = bucket
            .get(&key)
            .await
            .map_err(|e| CtlError::js(format!("cannot read lease {key}"), e))?;
        Ok(value.map(|v| messages::kv::lease::holder(&v)))
    }
}

/// Whether a raw-message lookup failed because there is no such message.
fn is_no_message(err: &stream::RawMessageError) -> bool {
    match err.kind() {
        stream::RawMessageErrorKind::NoMessageFound => true,
        stream::RawMessageErrorKind::JetStream(e) => {
            e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
        }
        _ => false,
    }
}

pub use messages::headers::trace_id_of;

/// RFC 3339 of a JetStream timestamp.
fn rfc3339(at: time::OffsetDateTime) -> String {
    messages::bodies::rfc3339(at)
}

/// Seconds since an RFC 3339 timestamp, if it parses.
fn age_secs(rfc3339: &str) -> Option<i64> {
    let at = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some((time::OffsetDateTime::now_utc() - at).whole_seconds())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn age_of_a_timestamp() {
        assert!(age_secs("2020-01-01T00:00:00Z").is_some_and(|a| a > 0));
        assert_eq!(age_secs("yesterday"), None);
    }
}
