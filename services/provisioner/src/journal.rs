//! The job journal: one KV entry per Salesforce Order (keyed by its canonical 18-character id),
//! updated only with compare-and-swap.
//!
//! It is what makes WHMCS side effects happen once and every event end with one outcome:
//! - **Claim.** A job starts only by creating the entry, or by replacing a *finished* one, at the
//!   revision it read. Two replicas handling the same order race on that write; one wins.
//! - **Fence.** Every later write of the job is a compare-and-swap at the revision of its own
//!   previous write. A job writes (a checkpoint) before each side effect — AddOrder, AcceptOrder,
//!   the final report — so a job whose entry was taken over by recovery learns it before it acts,
//!   never after.
//! - **Memory.** The entry remembers the event ids and `IdemKey__c` values already processed,
//!   and the WHMCS order id as soon as AddOrder returned it, so a retry resumes with AcceptOrder
//!   instead of creating a second order.
//! - **Outbox.** A job is closed (final state, result, message) *before* its outcome and update
//!   are published, so an operator's retry that arrives right after the outcome finds the entry
//!   finished. The closed entry holds everything needed to publish the outcome again (the
//!   messages' ids make that idempotent), which the reconciler and the next claim do if the
//!   worker died between the two.
//!
//! No decision rests on comparing two hosts' clocks: a running job proves it is alive by moving
//! its entry's revision (renewals), and recovery measures staleness on its own monotonic clock.

use std::time::Duration;

use async_nats::jetstream::kv;
use messages::ProvisioningRequestedV1;

use crate::steps::{codes, JobResult};

/// How many processed event ids and idempotency keys an entry remembers.
const REMEMBERED: usize = 50;

pub use messages::journal::{JobRecord, JobState};

/// Closing an entry with a job's result (the provisioner's rule; the entry's type is shared
/// with the readers in `messages::journal`).
pub trait Close {
    /// Closes the entry with a job's result: the final state (a failure coded `INTERRUPTED` is
    /// `interrupted`), code and message, the WHMCS ids of an activation, and when. The step is
    /// the caller's to set: the worker records where it ended, recovery keeps where it stopped.
    fn close(&mut self, result: &JobResult);
}

impl Close for JobRecord {
    fn close(&mut self, result: &JobResult) {
        self.state = match result {
            JobResult::Activated { .. } => JobState::Activated,
            JobResult::Failed { code, .. } if code == codes::INTERRUPTED => JobState::Interrupted,
            JobResult::Failed { .. } => JobState::Failed,
            JobResult::Skipped { .. } => JobState::Skipped,
        };
        self.worker = None;
        self.lease_until_ms = None;
        self.error_code = result.error_code().map(str::to_owned);
        self.error_message = match result {
            JobResult::Failed { message, .. } => Some(message.clone()),
            JobResult::Skipped { reason } => Some(reason.clone()),
            JobResult::Activated { .. } => None,
        };
        if let JobResult::Activated {
            whmcs_order_id,
            service_ids,
            invoice_id,
        } = result
        {
            self.whmcs_order_id = Some(*whmcs_order_id);
            self.whmcs_service_ids.clone_from(service_ids);
            self.whmcs_invoice_id = *invoice_id;
        }
        self.finished_at = Some(now_rfc3339());
    }
}

/// Why a delivered event does not start a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotClaimed {
    /// This exact event (same `ProducerEvent.id`) was already handled.
    DuplicateEvent,
    /// An event with this `IdemKey__c` was already handled for the order.
    IdemKeyProcessed,
    /// A job for this order is running right now (its final status will reach Salesforce).
    InProgress { worker: Option<String> },
}

impl NotClaimed {
    pub fn message(&self) -> String {
        match self {
            Self::DuplicateEvent => "event already processed".to_owned(),
            Self::IdemKeyProcessed => "IdemKey__c already processed for this order".to_owned(),
            Self::InProgress { worker } => {
                format!(
                    "a job for this order is running on {}",
                    worker.as_deref().unwrap_or("another worker")
                )
            }
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::DuplicateEvent => "duplicate_event",
            Self::IdemKeyProcessed => "idem_key_processed",
            Self::InProgress { .. } => "in_progress",
        }
    }
}

/// What the entry as read says about a new event for its order.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start a job (creating the entry, or replacing a finished one).
    Claim,
    NotClaimed(NotClaimed),
}

/// The claim rules, on the entry as read (`None`: no entry yet).
pub fn decide(current: Option<&JobRecord>, request: &ProvisioningRequestedV1) -> Decision {
    let Some(current) = current else {
        return Decision::Claim;
    };
    if current.has_processed(&request.event_id) {
        return Decision::NotClaimed(NotClaimed::DuplicateEvent);
    }
    if let Some(idem) = &request.idem_key {
        if current.processed_idem_keys.iter().any(|k| k == idem) {
            return Decision::NotClaimed(NotClaimed::IdemKeyProcessed);
        }
    }
    if current.state == JobState::Running {
        return Decision::NotClaimed(NotClaimed::InProgress {
            worker: current.worker.clone(),
        });
    }
    Decision::Claim
}

/// The entry as stored.
#[derive(Debug)]
pub enum Stored {
    Absent,
    Record(Box<JobRecord>, u64),
    /// Bytes that do not parse as a record, with their revision (so a claim can replace them).
    Unreadable {
        revision: u64,
        raw: Vec<u8>,
        error: serde_json::Error,
    },
}

/// What the KV store answered; kept as the journal error's source.
pub type StoreError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("job journal unavailable")]
    Store(#[source] StoreError),
    #[error("the journal entry changed under this worker (revision {0} is stale)")]
    Conflict(u64),
    #[error("the journal entry already exists")]
    Exists,
    #[error("cannot encode the journal entry")]
    Encode(#[from] serde_json::Error),
}

impl JournalError {
    /// The KV store failed (did not answer, or refused for a reason other than a conflict).
    pub fn store(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Store(Box::new(err))
    }

    /// A store error may pass; a conflict means another writer owns the entry now.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The `lease_until_ms` a job writes when it claims or renews: informational only.
pub fn lease_deadline(lease: Duration) -> i64 {
    now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

pub fn now_rfc3339() -> String {
    messages::bodies::rfc3339(time::OffsetDateTime::now_utc())
}

fn remember(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
    let excess = list.len().saturating_sub(REMEMBERED);
    list.drain(..excess);
}

/// The running entry a claim writes for `request`, over what was there (`previous`).
pub fn claimed_record(
    previous: Option<&JobRecord>,
    request: &ProvisioningRequestedV1,
    worker: &str,
    lease: Duration,
    traceparent: Option<String>,
) -> JobRecord {
    let mut record = previous
        .cloned()
        .unwrap_or_else(|| JobRecord::new(&request.order_id));
    record.order_id.clone_from(&request.order_id);
    record.state = JobState::Running;
    record.event_id.clone_from(&request.event_id);
    record.idem_key.clone_from(&request.idem_key);
    record.correlation_id.clone_from(&request.correlation_id);
    record.step = "validation".to_owned();
    record.worker = Some(worker.to_owned());
    record.lease_until_ms = Some(lease_deadline(lease));
    record.error_code = None;
    record.error_message = None;
    record.finished_at = None;
    record.attempts += 1;
    remember(&mut record.processed_event_ids, &request.event_id);
    if let Some(idem) = &request.idem_key {
        remember(&mut record.processed_idem_keys, idem);
    }
    record.traceparent = traceparent;
    record.started_at = now_rfc3339();
    record.updated_at.clone_from(&record.started_at);
    record
}

#[derive(Debug, Clone)]
pub struct Journal {
    kv: kv::Store,
    lease: Duration,
    /// Counts successful writes, for the benchmark's writes-per-order figure.
    writes: prometheus_client::metrics::counter::Counter,
}

impl Journal {
    pub fn new(
        kv: kv::Store,
        lease: Duration,
        writes: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self { kv, lease, writes }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    pub fn key(order_id: &str) -> String {
        messages::journal::key(order_id)
    }

    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// The current entry and its revision.
    pub async fn read(&self, order_id: &str) -> Result<Stored, JournalError> {
        let entry = self
            .kv
            .entry(Self::key(order_id))
            .await
            .map_err(JournalError::store)?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                match serde_json::from_slice(&entry.value) {
                    Ok(record) => Stored::Record(Box::new(record), entry.revision),
                    Err(err) => Stored::Unreadable {
                        revision: entry.revision,
                        raw: entry.value.to_vec(),
                        error: err,
                    },
                }
            }
            _ => Stored::Absent,
        })
    }

    /// Writes `record` as a new entry (`None`) or over `revision`; `Exists` / `Conflict` when
    /// another writer got there first.
    pub async fn write(
        &self,
        record: &mut JobRecord,
        revision: Option<u64>,
    ) -> Result<u64, JournalError> {
        record.updated_at = now_rfc3339();
        let bytes = serde_json::to_vec(record)?;
        let key = Self::key(&record.order_id);
        let written = match revision {
            None => self.kv.create(&key, bytes.into()).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    JournalError::Exists
                } else {
                    JournalError::store(e)
                }
            }),
            Some(rev) => self.kv.update(&key, bytes.into(), rev).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    JournalError::Conflict(rev)
                } else {
                    JournalError::store(e)
                }
            }),
        }?;
        self.writes.inc();
        Ok(written)
    }

    /// Writes `record` over `revision`; fails with `Conflict` if the entry moved.
    pub async fn replace(
        &self,
        record: &mut JobRecord,
        revision: u64,
    ) -> Result<u64, JournalError> {
        self.write(record, Some(revision)).await
    }

    /// Records that `event_id` started no job (repeated `IdemKey__c`, job in progress), before
    /// its `skipped` outcome is published: an event that is not in its order's entry is then
    /// still known to be handled. Not part of the order's entry, so the running job's
    /// compare-and-swap chain is untouched.
    pub async fn record_skipped(&self, event_id: &str, order_id: &str) -> Result<(), JournalError> {
        match self
            .kv
            .create(
                messages::journal::skipped_key(event_id),
                order_id.as_bytes().to_vec().into(),
            )
            .await
        {
            Ok(_) => {
                self.writes.inc();
                Ok(())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(JournalError::store(e)),
        }
    }

    /// Whether `event_id` was recorded as skipped.
    pub async fn was_skipped(&self, event_id: &str) -> Result<bool, JournalError> {
        self.kv
            .get(messages::journal::skipped_key(event_id))
            .await
            .map(|value| value.is_some())
            .map_err(JournalError::store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(event: &str, idem: Option<&str>) -> ProvisioningRequestedV1 {
        ProvisioningRequestedV1 {
            schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
            event_id: event.to_owned(),
            replay_id: String::new(),
            channel: String::new(),
            schema_id: String::new(),
            order_id: "801000000000001AAA".to_owned(),
            idem_key: idem.map(str::to_owned),
            correlation_id: "c".to_owned(),
            requested_by: None,
            version: None,
            created_at: None,
            created_by_id: None,
            received_at: String::new(),
        }
    }

    #[test]
    fn remembered_lists_are_bounded_and_unique() {
        let mut list = Vec::new();
        for i in 0..60 {
            remember(&mut list, &format!("k{i}"));
        }
        remember(&mut list, "k59");
        assert_eq!(list.len(), REMEMBERED);
        assert_eq!(list.first().map(String::as_str), Some("k10"));
        assert_eq!(list.last().map(String::as_str), Some("k59"));
    }

    #[test]
    fn a_running_entry_is_in_progress_whatever_its_lease_says() {
        let first = request("e1", Some("k1"));
        let mut record = claimed_record(None, &first, "w1", Duration::from_secs(30), None);
        // A lease deadline in the past (another host's clock) does not make it claimable.
        record.lease_until_ms = Some(0);
        assert_eq!(
            decide(Some(&record), &request("e2", Some("k2"))),
            Decision::NotClaimed(NotClaimed::InProgress {
                worker: Some("w1".to_owned())
            })
        );
        record.state = JobState::Failed;
        assert_eq!(
            decide(Some(&record), &request("e2", Some("k2"))),
            Decision::Claim
        );
        assert_eq!(
            decide(Some(&record), &request("e1", Some("k9"))),
            Decision::NotClaimed(NotClaimed::DuplicateEvent)
        );
        assert_eq!(
            decide(Some(&record), &request("e3", Some("k1"))),
            Decision::NotClaimed(NotClaimed::IdemKeyProcessed)
        );
    }

    #[test]
    fn a_claim_over_a_finished_job_keeps_its_whmcs_memory() {
        let first = request("e1", None);
        let mut record = claimed_record(None, &first, "w1", Duration::from_secs(30), None);
        record.whmcs_order_id = Some(7);
        record.state = JobState::Failed;
        record.error_message = Some("boom".to_owned());
        let next = claimed_record(
            Some(&record),
            &request("e2", None),
            "w2",
            Duration::from_secs(30),
            None,
        );
        assert_eq!(next.whmcs_order_id, Some(7));
        assert_eq!(next.state, JobState::Running);
        assert_eq!(next.error_message, None);
        assert_eq!(next.attempts, 2);
        assert!(next.has_processed("e1") && next.runs("e2"));
    }
}
