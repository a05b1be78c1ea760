//! The provisioner's job journal entry, as stored in the KV bucket (default
//! `provisioning_jobs`, key `order.<OrderId>`), and the `provisioning.status.v1` answer made from
//! it. The provisioner writes entries (its claim and fencing rules live there); the status API
//! and `provctl` only read them, through this one type.

use serde::{Deserialize, Serialize};

use crate::bodies::ProvisioningStatusV1;
use crate::headers::trace_id_of;

/// The journal key of an order (its canonical 18-character id).
pub fn key(order_id: &str) -> String {
    format!("{KEY_PREFIX}{order_id}")
}

/// What every order entry's key starts with (other keys, such as `skipped.<event>`, are not
/// order entries).
pub const KEY_PREFIX: &str = "order.";

/// The Order an entry's key names (`order.<OrderId>`); `None` for the bucket's other keys, and
/// for a key with more tokens after the id.
pub fn order_id_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(KEY_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('.'))
}

/// The key recording that an event started no job (`skipped.<event id>`, the value is the Order
/// id). Event ids are Salesforce UUIDs; anything outside `[-_a-zA-Z0-9]` becomes `_`, so a
/// hostile id cannot address another key.
pub fn skipped_key(event_id: &str) -> String {
    let safe: String = event_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("skipped.{safe}")
}

/// The key of the recovery scan's watermark for a consumer (`reconciled.<consumer>`): every
/// message of the stream up to it is known to have its outcome.
pub fn watermark_key(consumer: &str) -> String {
    format!("reconciled.{consumer}")
}

/// The value under [`watermark_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub stream_sequence: u64,
}

/// Where a job is. `running` is the only state that is not final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Activated,
    Failed,
    Skipped,
    Interrupted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Activated => "activated",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Interrupted => "interrupted",
        }
    }

    /// Whether nothing more will happen to the job (a later event may start a new one).
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

impl std::str::FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "running" => Ok(Self::Running),
            "activated" => Ok(Self::Activated),
            "failed" => Ok(Self::Failed),
            "skipped" => Ok(Self::Skipped),
            "interrupted" => Ok(Self::Interrupted),
            other => Err(format!(
                "unknown job state {other:?} (running, activated, failed, skipped, interrupted)"
            )),
        }
    }
}

/// One order's journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub order_id: String,
    pub state: JobState,
    /// The event that claimed the current (or last) job.
    pub event_id: String,
    pub idem_key: Option<String>,
    pub correlation_id: String,
    /// Last step reached (contract §5 names).
    pub step: String,
    pub worker: Option<String>,
    /// Informational only (operators read it); no decision compares it with another clock.
    pub lease_until_ms: Option<i64>,
    pub whmcs_client_id: Option<u64>,
    pub whmcs_order_id: Option<u64>,
    #[serde(default)]
    pub whmcs_service_ids: Vec<u64>,
    pub whmcs_invoice_id: Option<u64>,
    pub error_code: Option<String>,
    /// The error message of a failed job, or the reason of a skipped one.
    #[serde(default)]
    pub error_message: Option<String>,
    pub attempts: u32,
    #[serde(default)]
    pub processed_event_ids: Vec<String>,
    #[serde(default)]
    pub processed_idem_keys: Vec<String>,
    /// The claiming event's trace context, so recovery can report in the same trace.
    pub traceparent: Option<String>,
    pub started_at: String,
    pub updated_at: String,
    /// When the job reached its final state (set by the closing write).
    #[serde(default)]
    pub finished_at: Option<String>,
}

impl JobRecord {
    /// An empty running entry for `order_id`, before any claim filled it in.
    pub fn new(order_id: &str) -> Self {
        Self {
            order_id: order_id.to_owned(),
            state: JobState::Running,
            event_id: String::new(),
            idem_key: None,
            correlation_id: String::new(),
            step: String::new(),
            worker: None,
            lease_until_ms: None,
            whmcs_client_id: None,
            whmcs_order_id: None,
            whmcs_service_ids: Vec::new(),
            whmcs_invoice_id: None,
            error_code: None,
            error_message: None,
            attempts: 0,
            processed_event_ids: Vec::new(),
            processed_idem_keys: Vec::new(),
            traceparent: None,
            started_at: String::new(),
            updated_at: String::new(),
            finished_at: None,
        }
    }

    /// Whether the event has been handled under this entry (claimed, whatever came of it).
    pub fn has_processed(&self, event_id: &str) -> bool {
        self.processed_event_ids.iter().any(|id| id == event_id)
    }

    /// Whether the job finished less than `within` ago (by this host's clock: a margin of hours
    /// makes skew irrelevant). An entry of an older version has no `finished_at` and is not.
    pub fn finished_within(&self, within: time::Duration) -> bool {
        self.finished_at
            .as_deref()
            .and_then(|at| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_some_and(|at| time::OffsetDateTime::now_utc() - at < within)
    }

    /// Whether the job claimed by `event_id` is still running under this entry.
    pub fn runs(&self, event_id: &str) -> bool {
        self.state == JobState::Running && self.event_id == event_id
    }

    /// The `provisioning.status.v1` answer for this entry: what a portal or an operator may see
    /// (no worker names, leases or processed-event lists).
    pub fn status(&self) -> ProvisioningStatusV1 {
        ProvisioningStatusV1 {
            schema: ProvisioningStatusV1::SCHEMA.to_owned(),
            order_id: self.order_id.clone(),
            state: self.state,
            r#final: self.state.is_final(),
            step: self.step.clone(),
            error_code: self.error_code.clone(),
            error_message: self.error_message.clone(),
            whmcs_order_id: self.whmcs_order_id,
            whmcs_service_ids: self.whmcs_service_ids.clone(),
            whmcs_invoice_id: self.whmcs_invoice_id,
            correlation_id: self.correlation_id.clone(),
            trace_id: self.traceparent.as_deref().and_then(trace_id_of),
            attempts: self.attempts,
            started_at: self.started_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_an_entry_names_its_state_and_trace_and_hides_the_internals() {
        let mut record = JobRecord::new("801000000000001AAA");
        record.traceparent =
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned());
        record.worker = Some("worker-1".to_owned());
        record.processed_event_ids.push("e1".to_owned());
        let running = record.status();
        assert_eq!(running.state, JobState::Running);
        assert!(!running.r#final);
        assert_eq!(
            running.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let json = serde_json::to_value(&running).unwrap();
        assert_eq!(json["schema"], "provisioning.status.v1");
        assert_eq!(json["final"], false);
        assert_eq!(json["state"], "running");
        assert!(json.get("worker").is_none() && json.get("processed_event_ids").is_none());

        record.state = JobState::Interrupted;
        assert!(record.status().r#final);
    }

    #[test]
    fn states_parse_from_their_names() {
        for state in [
            JobState::Running,
            JobState::Activated,
            JobState::Failed,
            JobState::Skipped,
            JobState::Interrupted,
        ] {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("done".parse::<JobState>().is_err());
    }

    /// What deployed journals hold: these keys must keep their exact bytes.
    #[test]
    fn keys_are_pinned() {
        assert_eq!(key("801000000000001AAA"), "order.801000000000001AAA");
        assert_eq!(
            order_id_of_key("order.801000000000001AAA"),
            Some("801000000000001AAA")
        );
        for other in [
            "order.",
            "order.801000000000001AAA.extra",
            "skipped.e",
            "reconciled.p",
        ] {
            assert_eq!(order_id_of_key(other), None, "{other}");
        }
        assert_eq!(
            skipped_key("5b0f3d4e-1c2a-4d6b-9e8f-0a1b2c3d4e5f"),
            "skipped.5b0f3d4e-1c2a-4d6b-9e8f-0a1b2c3d4e5f"
        );
        assert_eq!(skipped_key("a.b>*/c d"), "skipped.a_b___c_d");
        assert_eq!(watermark_key("provisioner"), "reconciled.provisioner");
        let mark = br#"{"stream_sequence":17}"#;
        let parsed: Watermark = serde_json::from_slice(mark).unwrap();
        assert_eq!(parsed.stream_sequence, 17);
        assert_eq!(serde_json::to_vec(&parsed).unwrap(), mark);
    }

    #[test]
    fn a_stored_entry_keeps_its_fields() {
        let mut record = JobRecord::new("801000000000001AAA");
        record.whmcs_service_ids = vec![7];
        record.finished_at = Some("2024-01-02T03:04:05Z".to_owned());
        let bytes = serde_json::to_vec(&record).unwrap();
        let back: JobRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, record);
        // An entry of an older version, without the fields added since, still parses.
        let mut old = serde_json::to_value(&record).unwrap();
        for added in [
            "whmcs_service_ids",
            "error_message",
            "processed_event_ids",
            "processed_idem_keys",
            "finished_at",
        ] {
            old.as_object_mut().unwrap().remove(added);
        }
        let parsed: JobRecord = serde_json::from_value(old).unwrap();
        assert_eq!(parsed.finished_at, None);
        assert!(parsed.whmcs_service_ids.is_empty());
    }
}
