//! The job journal: one KV entry per Salesforce Order, updated only with compare-and-swap.
//!
//! It is what makes WHMCS side effects happen once:
//! - **Claim.** A job starts only by creating the entry, or by replacing a finished one, at the
//!   revision it read. Two replicas handling the same order race on that write; one wins.
//! - **Memory.** The entry remembers the event ids and `IdemKey__c` values already processed,
//!   and the WHMCS order id as soon as AddOrder returned it, so a retry resumes with AcceptOrder
//!   instead of creating a second order.
//! - **Lease.** A running entry names its worker and a lease deadline; a worker that disappears
//!   leaves an expired lease behind, which recovery turns into `Failed / INTERRUPTED`.
//!
//! Writes per order: the claim, the WHMCS order id once known, and the finish. Lease renewals
//! only for jobs that run longer than a third of the lease.

use std::time::Duration;

use async_nats::jetstream::kv;
use messages::ProvisioningRequestedV1;
use serde::{Deserialize, Serialize};

/// How many processed event ids and idempotency keys an entry remembers.
const REMEMBERED: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Activated,
    Failed,
    Skipped,
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub order_id: String,
    pub state: JobState,
    /// The event that claimed the current (or last) job.
    pub event_id: String,
    pub idem_key: Option<String>,
    pub correlation_id: String,
    /// Last step reached (CONTRACT §5 names).
    pub step: String,
    pub worker: Option<String>,
    /// Epoch milliseconds after which a running job counts as abandoned.
    pub lease_until_ms: Option<i64>,
    pub whmcs_client_id: Option<u64>,
    pub whmcs_order_id: Option<u64>,
    #[serde(default)]
    pub whmcs_service_ids: Vec<u64>,
    pub whmcs_invoice_id: Option<u64>,
    pub error_code: Option<String>,
    pub attempts: u32,
    #[serde(default)]
    pub processed_event_ids: Vec<String>,
    #[serde(default)]
    pub processed_idem_keys: Vec<String>,
    /// The claiming event's trace context, so recovery can report in the same trace.
    pub traceparent: Option<String>,
    pub started_at: String,
    pub updated_at: String,
}

/// Why a delivered event does not start a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotClaimed {
    /// This exact event (same `ProducerEvent.id`) was already handled.
    DuplicateEvent,
    /// An event with this `IdemKey__c` was already handled for the order.
    IdemKeyProcessed,
    /// Another worker is running a job for this order right now.
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
}

#[derive(Debug)]
pub enum Claim {
    /// The job is ours. `previous` is the entry it replaced (a retry).
    Claimed {
        record: Box<JobRecord>,
        revision: u64,
        previous: Option<Box<JobRecord>>,
    },
    NotClaimed(NotClaimed),
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("job journal unavailable: {0}")]
    Store(String),
    #[error("the journal entry changed under this worker (revision {0} is stale)")]
    Conflict(u64),
    #[error("journal entry for {0} is unreadable: {1}")]
    Corrupt(String, String),
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn now_rfc3339() -> String {
    messages::bodies::rfc3339(time::OffsetDateTime::now_utc())
}

fn remember(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
    let excess = list.len().saturating_sub(REMEMBERED);
    list.drain(..excess);
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
        format!("order.{order_id}")
    }

    fn lease_deadline(&self) -> i64 {
        now_ms() + i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// The current entry and its revision.
    pub async fn read(&self, order_id: &str) -> Result<Option<(JobRecord, u64)>, JournalError> {
        let entry = self
            .kv
            .entry(Self::key(order_id))
            .await
            .map_err(|e| JournalError::Store(e.to_string()))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let record = serde_json::from_slice(&entry.value)
                    .map_err(|e| JournalError::Corrupt(order_id.to_owned(), e.to_string()))?;
                Ok(Some((record, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Claims the order for `request`, atomically (see the module docs).
    pub async fn claim(
        &self,
        request: &ProvisioningRequestedV1,
        worker: &str,
        traceparent: Option<String>,
    ) -> Result<Claim, JournalError> {
        let key = Self::key(&request.order_id);
        for _ in 0..8 {
            let current = self.read(&request.order_id).await?;
            let (previous, revision) = match current {
                Some((record, revision)) => (Some(record), Some(revision)),
                None => (None, None),
            };
            if let Some(prev) = &previous {
                if prev
                    .processed_event_ids
                    .iter()
                    .any(|id| id == &request.event_id)
                {
                    return Ok(Claim::NotClaimed(NotClaimed::DuplicateEvent));
                }
                if let Some(idem) = &request.idem_key {
                    if prev.processed_idem_keys.iter().any(|k| k == idem) {
                        return Ok(Claim::NotClaimed(NotClaimed::IdemKeyProcessed));
                    }
                }
                let lease_valid = prev.lease_until_ms.is_some_and(|until| until > now_ms());
                if prev.state == JobState::Running && lease_valid {
                    return Ok(Claim::NotClaimed(NotClaimed::InProgress {
                        worker: prev.worker.clone(),
                    }));
                }
            }
            let mut record = previous.clone().unwrap_or_else(|| JobRecord {
                order_id: request.order_id.clone(),
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
                attempts: 0,
                processed_event_ids: Vec::new(),
                processed_idem_keys: Vec::new(),
                traceparent: None,
                started_at: String::new(),
                updated_at: String::new(),
            });
            record.state = JobState::Running;
            record.event_id = request.event_id.clone();
            record.idem_key = request.idem_key.clone();
            record.correlation_id = request.correlation_id.clone();
            record.step = "validation".to_owned();
            record.worker = Some(worker.to_owned());
            record.lease_until_ms = Some(self.lease_deadline());
            record.error_code = None;
            record.attempts += 1;
            remember(&mut record.processed_event_ids, &request.event_id);
            if let Some(idem) = &request.idem_key {
                remember(&mut record.processed_idem_keys, idem);
            }
            record.traceparent = traceparent.clone();
            record.started_at = now_rfc3339();
            record.updated_at = record.started_at.clone();
            let bytes =
                serde_json::to_vec(&record).map_err(|e| JournalError::Store(e.to_string()))?;
            let written = match revision {
                None => match self.kv.create(&key, bytes.into()).await {
                    Ok(rev) => Some(rev),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                    Err(e) => return Err(JournalError::Store(e.to_string())),
                },
                Some(rev) => match self.kv.update(&key, bytes.into(), rev).await {
                    Ok(rev) => Some(rev),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => None,
                    Err(e) => return Err(JournalError::Store(e.to_string())),
                },
            };
            if let Some(revision) = written {
                self.writes.inc();
                return Ok(Claim::Claimed {
                    record: Box::new(record),
                    revision,
                    previous: previous.map(Box::new),
                });
            }
            // Lost a race: read again and decide again.
        }
        Err(JournalError::Store(
            "too much contention on the journal entry".to_owned(),
        ))
    }

    /// Writes `record` over `revision`; fails with `Conflict` if the entry moved.
    pub async fn replace(
        &self,
        record: &mut JobRecord,
        revision: u64,
    ) -> Result<u64, JournalError> {
        record.updated_at = now_rfc3339();
        let bytes = serde_json::to_vec(record).map_err(|e| JournalError::Store(e.to_string()))?;
        match self
            .kv
            .update(Self::key(&record.order_id), bytes.into(), revision)
            .await
        {
            Ok(rev) => {
                self.writes.inc();
                Ok(rev)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(JournalError::Conflict(revision))
            }
            Err(e) => Err(JournalError::Store(e.to_string())),
        }
    }

    /// Extends a running job's lease.
    pub async fn renew(&self, record: &mut JobRecord, revision: u64) -> Result<u64, JournalError> {
        record.lease_until_ms = Some(self.lease_deadline());
        self.replace(record, revision).await
    }

    /// Every order key in the journal.
    pub async fn order_ids(&self) -> Result<Vec<String>, JournalError> {
        use futures::TryStreamExt;
        let keys = self
            .kv
            .keys()
            .await
            .map_err(|e| JournalError::Store(e.to_string()))?;
        let keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| JournalError::Store(e.to_string()))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix("order.").map(str::to_owned))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
