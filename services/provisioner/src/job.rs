//! One message, one job: validate, claim in the journal, acknowledge, orchestrate, close the
//! journal entry, report.
//!
//! The message is acknowledged right after the claim: from then on the journal owns the job
//! (max_deliver is 1, so JetStream never redelivers it anyway), and a long job does not trip the
//! consumer's ack_wait. A claim that fails because the journal is unavailable is retried in
//! process, with in-progress acks keeping the message ours; if the worker dies first, the
//! reconciler (see `recovery`) finds the message unfinished from the stream and runs it.
//!
//! The entry is closed before the report is published, so an operator's retry that arrives the
//! instant after the outcome always finds a finished job to replace (docs/contract.md §5 rule 7).
//!
//! One publisher per report (docs/contract.md §5 rule 6: one outcome per message). The message ids make a
//! repeated publish a no-op in the streams, but not for core-NATS subscribers of
//! `provisioning.outcome.>`, who receive every publish. So a closed entry's report is published
//! by whoever closed it (the worker, or recovery for an abandoned job), within
//! [`report_deadline`] of the close; anyone else (the reconciler, the next claim of the Order)
//! publishes it only after seeing it missing for a whole lease on its own clock, and only after
//! moving the entry's revision by compare-and-swap, so of several of them one publishes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use messages::ProvisioningRequestedV1;
use platform::error::Chain;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::journal::{
    self, Close, Decision, JobRecord, JobState, Journal, JournalError, NotClaimed, Stored,
};
use crate::metrics::{ProvisionerMetrics, ReasonLabel};
use crate::orchestrator::{Finished, JobJournal, JobLost, Orchestrator};
use crate::publisher::{self, PublishError, Publisher, Report};
use crate::steps::{codes, JobResult, Step};

pub const SERVICE: &str = "provisioner";

/// How long after it finished a job's report may be published again (by the claim that replaces
/// its entry, or the reconciler): well inside the streams' one-day duplicate window, so a repeat
/// is stored once; and never for entries older than that, whose reports went out long ago.
pub const REPORT_AGAIN_WITHIN: time::Duration = time::Duration::hours(12);

pub struct JobRunner {
    pub journal: Journal,
    pub orchestrator: Orchestrator,
    pub publisher: Publisher,
    pub metrics: ProvisionerMetrics,
    pub worker_id: String,
    pub deadletter: platform::deadletter::DeadLetters,
    pub outcomes_stream: String,
}

/// A request message: delivered by the consumer (which can be acknowledged), or read back from
/// the stream by the reconciler (which cannot, and need not be).
pub struct Delivery {
    pub payload: bytes::Bytes,
    pub headers: Option<async_nats::HeaderMap>,
    pub subject: String,
    pub stream: Option<String>,
    pub sequence: Option<u64>,
    message: Option<jetstream::Message>,
}

impl Delivery {
    pub fn delivered(message: jetstream::Message) -> Self {
        let info = message.info().ok();
        let stream = info.as_ref().map(|i| i.stream.to_owned());
        let sequence = info.as_ref().map(|i| i.stream_sequence);
        Self {
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            subject: message.subject.to_string(),
            stream,
            sequence,
            message: Some(message),
        }
    }

    pub fn stored(stream: &str, message: jetstream::message::StreamMessage) -> Self {
        Self {
            payload: message.payload,
            headers: Some(message.headers),
            subject: message.subject.to_string(),
            stream: Some(stream.to_owned()),
            sequence: Some(message.sequence),
            message: None,
        }
    }

    async fn ack(&self) {
        if let Some(message) = &self.message {
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %Chain(&*err), "Could not acknowledge the message; the journal holds the job.");
            }
        }
    }

    /// Tells JetStream the message is still being worked on (resets its ack_wait).
    async fn in_progress(&self) {
        if let Some(message) = &self.message {
            if let Err(err) = message.ack_with(jetstream::AckKind::Progress).await {
                tracing::debug!(error = %Chain(&*err), "Could not send an in-progress ack.");
            }
        }
    }
}

/// Parses and validates a `provisioning.requested.v1` body (the `validation` step); the Order id
/// comes back in its canonical 18-character form (docs/contract.md §4). The message's subject must name
/// the same Order: the subject is what the stream, the outcome and every filter go by, so a body
/// about another Order (a hand-made or forged message) is refused rather than acted on.
pub fn validate(subject: &str, payload: &[u8]) -> Result<ProvisioningRequestedV1, InvalidRequest> {
    let mut request: ProvisioningRequestedV1 =
        serde_json::from_slice(payload).map_err(InvalidRequest::Json)?;
    if request.schema != ProvisioningRequestedV1::SCHEMA {
        return Err(InvalidRequest::Schema(request.schema));
    }
    request.order_id = messages::salesforce_id::canonical(&request.order_id).map_err(|source| {
        InvalidRequest::OrderId {
            order_id: request.order_id.clone(),
            source,
        }
    })?;
    if request.event_id.trim().is_empty() {
        return Err(InvalidRequest::EventIdEmpty);
    }
    let named =
        messages::subjects::order_named(subject, messages::subjects::PROVISIONING_REQUESTED_PREFIX);
    if named.as_deref() != Some(request.order_id.as_str()) {
        return Err(InvalidRequest::SubjectMismatch {
            subject: subject.to_owned(),
            order_id: request.order_id,
        });
    }
    Ok(request)
}

/// Why a request message is refused (the `validation` step). Its chain is the dead letter's
/// reason.
#[derive(Debug, thiserror::Error)]
pub enum InvalidRequest {
    #[error("body is not provisioning.requested.v1 JSON")]
    Json(#[source] serde_json::Error),
    #[error("schema is {0:?}, expected {expected}", expected = ProvisioningRequestedV1::SCHEMA)]
    Schema(String),
    #[error("order_id {order_id:?} is not a Salesforce id")]
    OrderId {
        order_id: String,
        #[source]
        source: messages::salesforce_id::InvalidId,
    },
    #[error("event_id is empty")]
    EventIdEmpty,
    #[error("subject {subject:?} does not name the body's order {order_id}")]
    SubjectMismatch { subject: String, order_id: String },
}

/// How long the closer of a journal entry (the worker, or recovery) keeps trying to publish its
/// report: half a lease. Others take the report over only after seeing it missing for a whole
/// lease that starts when they first read the closed entry, so the two never publish at once;
/// the margin covers the closer's round trip and its last attempt in flight.
pub fn report_deadline(lease: Duration) -> Duration {
    lease / 2
}

/// Why a claim did not happen yet.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The outcomes stream, read or written for the previous job's report, did not answer.
    #[error(transparent)]
    Report(#[from] PublishError),
    /// Other writers kept moving the entry between this claim's read and its write.
    #[error("too much contention on the journal entry")]
    Contention,
    /// The order's previous job is closed and its report is not in the outcomes stream yet: its
    /// closer is publishing it (a retry arriving the instant after the close), or died before
    /// it could. The claim waits, holding its message, rather than publish it a second time.
    #[error("the previous job (event {event_id}) is closed and its report not published yet")]
    PreviousReportPending { event_id: String },
}

impl ClaimError {
    /// A journal outage or a report on its way: both pass.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Journal(err) => err.is_transient(),
            Self::Report(_) | Self::Contention | Self::PreviousReportPending { .. } => true,
        }
    }
}

/// Why a closed entry's report could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<TakeOverError> for ClaimError {
    fn from(err: TakeOverError) -> Self {
        match err {
            TakeOverError::Journal(err) => Self::Journal(err),
            TakeOverError::Publish(err) => Self::Report(err),
        }
    }
}

/// Since when (this process's monotonic clock) a closed entry, at a given revision, has been
/// seen without its report.
pub type UnreportedSince = Option<(u64, Instant)>;

/// The outcome of a claim.
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

impl JobRunner {
    pub async fn handle(self: Arc<Self>, delivery: Delivery, hard_stop: CancellationToken) {
        let received = Instant::now();
        let request = match validate(&delivery.subject, &delivery.payload) {
            Ok(request) => request,
            Err(invalid) => {
                self.dead_letter(&delivery, &invalid).await;
                delivery.ack().await;
                return;
            }
        };
        let parent = delivery
            .headers
            .as_ref()
            .map(platform::telemetry::extract_trace_context);
        let traceparent = delivery
            .headers
            .as_ref()
            .and_then(|h| h.get(messages::headers::TRACEPARENT))
            .map(|v| v.as_str().to_owned());
        // The consumer span (messaging conventions), child of sf-bridge's producer span. It
        // declares only the log fields; join_order gives it and every span beneath it (steps,
        // HTTP calls, publishes) `order.id` and `correlation.id`.
        let span = tracing::info_span!(
            "provision order",
            otel.kind = "consumer",
            otel.name = %format!("process {}", messages::subjects::PROVISIONING_REQUESTED_PREFIX),
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %delivery.subject,
            messaging.message.id = %request.event_id,
            messaging.consumer.group.name = SERVICE,
            order_id = %request.order_id,
            correlation_id = %request.correlation_id,
            event.id = %request.event_id,
        );
        platform::telemetry::join_order(
            &span,
            parent,
            Some(&request.order_id),
            Some(&request.correlation_id),
        );
        Box::pin(
            self.run(&delivery, request, traceparent, hard_stop, received)
                .instrument(span.clone()),
        )
        .await;
    }

    pub async fn dead_letter(&self, delivery: &Delivery, invalid: &InvalidRequest) {
        let reason = Chain(invalid).to_string();
        let dead_lettered = self
            .deadletter
            .stored(
                &delivery.payload,
                delivery.stream.clone(),
                delivery.sequence,
                &delivery.subject,
                None,
                "invalid_request",
                &reason,
            )
            .await;
        if let Err(err) = dead_lettered {
            tracing::error!(error = %Chain(&err), "Could not publish the dead letter.");
        }
        self.metrics.dead_lettered.inc();
    }

    async fn run(
        &self,
        delivery: &Delivery,
        request: ProvisioningRequestedV1,
        traceparent: Option<String>,
        hard_stop: CancellationToken,
        received: Instant,
    ) {
        tracing::info!(event_id = %request.event_id, idem_key = ?request.idem_key, "Starting fulfillment orchestration");
        // A journal outage must not cost the order its attempt: keep the message ours and retry.
        let mut backoff =
            platform::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        // Polls for the previous job's report: its closer normally publishes it within
        // milliseconds of the close.
        let mut report_poll =
            platform::backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let mut unreported: UnreportedSince = None;
        let claim = loop {
            let delay = match self
                .claim(&request, traceparent.clone(), &mut unreported)
                .await
            {
                Ok(claim) => break claim,
                Err(err @ ClaimError::PreviousReportPending { .. }) => {
                    tracing::debug!(error = %Chain(&err), "Waiting for the previous job's report before claiming.");
                    report_poll.next_delay()
                }
                Err(err) => {
                    self.metrics
                        .claim_failures
                        .get_or_create(&ReasonLabel {
                            reason: if err.is_transient() { "store" } else { "other" }.to_owned(),
                        })
                        .inc();
                    tracing::warn!(error = %Chain(&err), "Cannot claim the job yet; retrying with the message held.");
                    backoff.next_delay()
                }
            };
            delivery.in_progress().await;
            tokio::select! {
                () = hard_stop.cancelled() => {
                    tracing::warn!("Stopping before the job could be claimed; the reconciler will run it.");
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
        };
        delivery.ack().await;
        let started_at = time::OffsetDateTime::now_utc();
        let (record, revision, previous) = match claim {
            Claim::Claimed {
                record,
                revision,
                previous,
            } => (record, revision, previous),
            Claim::NotClaimed(reason) => {
                self.not_claimed(&request, &reason, started_at).await;
                return;
            }
        };
        self.metrics.in_flight.inc();
        let job = JobJournal::new(self.journal.clone(), *record, revision);
        let ending = tokio::select! {
            ending = self.orchestrator.run(&request, &job, previous.as_deref()) => ending,
            () = hard_stop.cancelled() => {
                let step = job.snapshot().await.0.step;
                let step = Step::ALL.into_iter().find(|s| s.as_str() == step).unwrap_or(Step::Validation);
                Ok(Finished { result: JobResult::failed(codes::INTERRUPTED, "The provisioner stopped in the middle of the job"), step })
            }
            lost = keep_lease(&job) => Err(lost),
        };
        match ending {
            Ok(finished) => self.finish(&job, finished, started_at).await,
            Err(lost) => {
                self.metrics
                    .jobs_lost
                    .get_or_create(&ReasonLabel {
                        reason: match lost {
                            JobLost::TakenOver => "taken_over",
                            // Both leave the job unable to prove it holds its entry.
                            JobLost::JournalUnavailable(_) | JobLost::WriteAborted(_) => {
                                "journal_unavailable"
                            }
                        }
                        .to_owned(),
                    })
                    .inc();
                tracing::error!(error = %Chain(&lost), "The job no longer holds its journal entry; stopping without acting further. Its report comes from recovery.");
            }
        }
        self.metrics.in_flight.dec();
        self.metrics.end_to_end_seconds.observe(
            enqueue_to_now(&request.received_at)
                .unwrap_or_else(|| received.elapsed().as_secs_f64()),
        );
    }

    /// Claims the order for `request`, atomically: the entry is created, or a finished one is
    /// replaced at the revision read; a lost race reads and decides again. A finished entry is
    /// replaced only once its report is out (`unreported` keeps, across calls, since when it
    /// was seen missing).
    pub async fn claim(
        &self,
        request: &ProvisioningRequestedV1,
        traceparent: Option<String>,
        unreported: &mut UnreportedSince,
    ) -> Result<Claim, ClaimError> {
        for _ in 0..8 {
            let (previous, revision) = match self.journal.read(&request.order_id).await? {
                Stored::Absent => (None, None),
                Stored::Record(record, revision) => (Some(*record), Some(revision)),
                Stored::Unreadable {
                    revision,
                    raw,
                    error,
                } => {
                    self.set_aside_unreadable(&request.order_id, revision, &raw, &error)
                        .await;
                    // What the entry knew is gone: claim over it as over an earlier attempt
                    // with an unknown outcome, so AddOrder is preceded by the marker lookup.
                    let mut unknown = journal::claimed_record(
                        None,
                        request,
                        "unknown",
                        self.journal.lease(),
                        None,
                    );
                    unknown.state = JobState::Interrupted;
                    unknown.processed_event_ids.clear();
                    unknown.processed_idem_keys.clear();
                    unknown.event_id.clear();
                    (Some(unknown), Some(revision))
                }
            };
            if let Decision::NotClaimed(reason) = journal::decide(previous.as_ref(), request) {
                return Ok(Claim::NotClaimed(reason));
            }
            if let (Some(previous), Some(revision)) = (&previous, revision) {
                if !self
                    .previous_reported(previous, revision, unreported)
                    .await?
                {
                    // The entry moved under the take-over: read it again.
                    continue;
                }
            }
            let mut record = journal::claimed_record(
                previous.as_ref(),
                request,
                &self.worker_id,
                self.journal.lease(),
                traceparent.clone(),
            );
            match self.journal.write(&mut record, revision).await {
                Ok(revision) => {
                    return Ok(Claim::Claimed {
                        record: Box::new(record),
                        revision,
                        previous: previous.map(Box::new),
                    })
                }
                Err(JournalError::Exists | JournalError::Conflict(_)) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ClaimError::Contention)
    }

    /// Before a finished entry is replaced: is its report out? The entry is the only record of
    /// it once replaced, so a report its worker never published (it died between closing the
    /// entry and publishing) must go out first. But a report merely not out *yet* is being
    /// published by its closer (a retry can arrive the instant after the close): publishing it
    /// here too would give outcome subscribers the previous job's outcome twice. So a missing
    /// report is waited for (`PreviousReportPending`), and taken over only once this worker has
    /// seen it missing at this revision for a whole lease. `Ok(false)`: the entry moved.
    async fn previous_reported(
        &self,
        previous: &JobRecord,
        revision: u64,
        unreported: &mut UnreportedSince,
    ) -> Result<bool, ClaimError> {
        if !previous.finished_within(REPORT_AGAIN_WITHIN) || previous.event_id.is_empty() {
            return Ok(true);
        }
        let Some(report) = Report::of(previous, revision) else {
            return Ok(true);
        };
        if self
            .publisher
            .outcome_published(&self.outcomes_stream, &report.outcome)
            .await?
        {
            return Ok(true);
        }
        let since = match unreported {
            Some((seen, since)) if *seen == revision => *since,
            _ => unreported.insert((revision, Instant::now())).1,
        };
        if since.elapsed() < self.journal.lease() {
            return Err(ClaimError::PreviousReportPending {
                event_id: previous.event_id.clone(),
            });
        }
        tracing::warn!(previous_event_id = %previous.event_id, "The previous job's report stayed missing for a lease; publishing it from the journal before claiming.");
        self.take_over_report(previous, revision, &tracing::Span::current())
            .await?;
        // Either way the entry moved (the take-over's own write, or someone else's).
        Ok(false)
    }

    /// Publishes the report of a closed entry whose closer did not (seen missing for a whole
    /// lease). The entry is first rewritten by compare-and-swap at `revision`: of several
    /// replicas (reconcilers, claims) that decide so at the same moment, one write lands and
    /// one publishes; the others see a new revision and wait a lease again. The report is the
    /// one of `revision` (the closing write's, unless an earlier take-over failed to publish),
    /// so its update's sequence stays between the previous job's and the next one's. `None` when the
    /// entry moved first (someone else publishes, or a new job claimed it), else whether this
    /// call published (`false`: the report turned up meanwhile).
    pub async fn take_over_report(
        &self,
        record: &JobRecord,
        revision: u64,
        span: &tracing::Span,
    ) -> Result<Option<bool>, TakeOverError> {
        let Some(report) = Report::of(record, revision) else {
            return Ok(Some(false));
        };
        let mut touched = record.clone();
        match self.journal.replace(&mut touched, revision).await {
            Ok(_) => {}
            Err(JournalError::Conflict(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
        Ok(Some(
            self.publisher
                .report_if_missing(&self.outcomes_stream, &report, span)
                .await?,
        ))
    }

    async fn set_aside_unreadable(
        &self,
        order_id: &str,
        revision: u64,
        raw: &[u8],
        error: &serde_json::Error,
    ) {
        self.metrics.journal_unreadable.inc();
        let error = error.to_string();
        tracing::error!(
            order_id,
            revision,
            error,
            "Journal entry is unreadable; setting it aside and claiming over it."
        );
        let dead_lettered = self
            .deadletter
            .stored(
                raw,
                Some(format!("KV_{}", self.journal.store().name)),
                Some(revision),
                &Journal::key(order_id),
                None,
                "journal_entry_unreadable",
                &error,
            )
            .await;
        if let Err(err) = dead_lettered {
            tracing::error!(error = %Chain(&err), "Could not publish the dead letter of the journal entry.");
        }
    }

    async fn not_claimed(
        &self,
        request: &ProvisioningRequestedV1,
        reason: &NotClaimed,
        started_at: time::OffsetDateTime,
    ) {
        let label = reason.label();
        self.metrics
            .not_claimed
            .get_or_create(&ReasonLabel {
                reason: label.to_owned(),
            })
            .inc();
        self.metrics.attempt("skipped", None);
        tracing::info!(reason = label, detail = %reason.message(), "Event skipped; no job started.");
        if *reason == NotClaimed::DuplicateEvent {
            // Its first delivery already reported under the same message id.
            return;
        }
        if let Err(err) = self
            .journal
            .record_skipped(&request.event_id, &request.order_id)
            .await
        {
            tracing::warn!(error = %Chain(&err), "Could not record the skipped event in the journal; its outcome is its only record.");
        }
        let result = JobResult::Skipped {
            reason: reason.message(),
        };
        let outcome = publisher::outcome_body(
            request,
            &result,
            Step::Validation.as_str(),
            None,
            started_at,
        );
        if let Err(err) = self
            .publisher
            .outcome(&outcome, &tracing::Span::current())
            .await
        {
            tracing::error!(error = %Chain(&err), "Could not publish the skipped outcome; the reconciler will handle the event again.");
        }
    }

    /// Closes the journal entry with the job's result (the fence: a job that lost its entry
    /// reports nothing), then publishes the report.
    async fn finish(&self, job: &JobJournal, finished: Finished, started_at: time::OffsetDateTime) {
        let Finished { result, mut step } = finished;
        if matches!(result, JobResult::Activated { .. }) {
            step = Step::SfSuccessUpdate;
        }
        let span = tracing::Span::current();
        let closed = job
            .checkpoint(|record: &mut JobRecord| {
                record.close(&result);
                record.step = step.as_str().to_owned();
            })
            .await;
        if let Err(lost) = closed {
            tracing::error!(error = %Chain(&lost), "Could not close the job's journal entry; not reporting (recovery reports the job).");
            return;
        }
        let (record, revision) = job.snapshot().await;
        let Some(report) = Report::of(&record, revision) else {
            return;
        };
        // Bounded, so this worker has stopped publishing before anyone else may take the report
        // over (see `report_deadline`).
        let publish =
            self.publisher
                .report_within(&report, &span, report_deadline(self.journal.lease()));
        let published = if report.update.is_some() && record.state == JobState::Activated {
            self.orchestrator
                .step(Step::SfSuccessUpdate, job, publish)
                .await
        } else {
            publish.await
        };
        if let Err(err) = published {
            tracing::error!(error = %Chain(&err), "Could not publish the job's report; the reconciler publishes it again from the journal.");
        }
        self.metrics
            .attempt(result.outcome().as_str(), result.error_code());
        let duration_ms =
            u64::try_from((time::OffsetDateTime::now_utc() - started_at).whole_milliseconds())
                .unwrap_or(0);
        self.metrics
            .duration_seconds
            .observe(duration_ms as f64 / 1000.0);
        match &result {
            JobResult::Activated { whmcs_order_id, .. } => tracing::info!(
                whmcs_order_id,
                duration_ms,
                "Order provisioned in WHMCS and marked Activated."
            ),
            JobResult::Failed { code, message } => {
                platform::telemetry::record_error(&span, code, message);
                tracing::error!(
                    error_code = %code,
                    error_message = %message,
                    step = %step,
                    duration_ms,
                    "Provisioning failed."
                );
            }
            JobResult::Skipped { reason } => {
                tracing::info!(reason = %reason, step = %step, "Provisioning skipped.")
            }
        }
    }
}

/// Seconds from sf-bridge receiving the event (`received_at` of the body) to now; `None` when
/// the timestamp is missing or unreadable.
pub fn enqueue_to_now(received_at: &str) -> Option<f64> {
    let at =
        time::OffsetDateTime::parse(received_at, &time::format_description::well_known::Rfc3339)
            .ok()?;
    let seconds = (time::OffsetDateTime::now_utc() - at).as_seconds_f64();
    (seconds >= 0.0).then_some(seconds)
}

/// Renews the job's lease every third of its length, for as long as the job runs; returns when
/// the job lost its entry (taken over), which ends the job at once.
async fn keep_lease(job: &JobJournal) -> JobLost {
    let period = job.journal.lease() / 3;
    loop {
        tokio::time::sleep(period).await;
        let lease = job.journal.lease();
        match job
            .checkpoint(|record| {
                record.lease_until_ms =
                    Some(journal::now_ms() + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
            })
            .await
        {
            Ok(()) => {}
            Err(lost @ JobLost::TakenOver) => return lost,
            // The next checkpoint before a side effect decides; recovery needs a whole lease
            // without a renewal before it takes over.
            Err(err) => tracing::warn!(error = %Chain(&err), "Could not renew the job lease."),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ORDER: &str = "801000000000001AAA";

    fn body(order_id: &str) -> serde_json::Value {
        serde_json::json!({
            "schema": "provisioning.requested.v1", "event_id": "e-1", "replay_id": "AA==",
            "channel": "/event/OrderProvisionRequested__e", "schema_id": "s", "order_id": order_id,
            "idem_key": null, "correlation_id": "c", "requested_by": null, "version": 1.0,
            "created_at": null, "created_by_id": null, "received_at": "2026-01-01T00:00:00Z"
        })
    }

    /// The request, or the refusal as the dead letter gives it (the chain).
    fn check(subject: &str, body: &serde_json::Value) -> Result<ProvisioningRequestedV1, String> {
        validate(subject, &serde_json::to_vec(body).unwrap()).map_err(|e| Chain(&e).to_string())
    }

    #[test]
    fn the_subject_must_name_the_bodys_order() {
        let subject = messages::subjects::provisioning_requested(ORDER);
        assert_eq!(check(&subject, &body(ORDER)).unwrap().order_id, ORDER);
        // Either spelling of the same Order, on either side.
        assert!(check(&subject, &body("801000000000001")).is_ok());
        assert!(check("provisioning.requested.801000000000001", &body(ORDER)).is_ok());
        let other = "801000000000002AAA";
        let err = check(&subject, &body(other)).unwrap_err();
        assert!(err.contains("does not name"), "{err}");
        for subject in [
            "provisioning.requested",
            "provisioning.requested.801000000000001AAA.x",
            "provisioning.requested.not-an-id",
        ] {
            assert!(check(subject, &body(ORDER)).is_err(), "{subject}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let subject = messages::subjects::provisioning_requested(ORDER);
        assert!(validate(&subject, b"\xff\xfe\x00garbage").is_err());
        let mut wrong_type = body(ORDER);
        wrong_type["order_id"] = serde_json::json!(801);
        assert!(check(&subject, &wrong_type).unwrap_err().contains("JSON"));
        let mut missing = body(ORDER);
        missing.as_object_mut().unwrap().remove("event_id");
        assert!(check(&subject, &missing).unwrap_err().contains("event_id"));
        let mut injected = body("801' OR Id != '");
        injected["order_id"] = serde_json::json!("801' OR Id != '");
        assert!(check(&subject, &injected)
            .unwrap_err()
            .contains("not a Salesforce id"));
        // Unknown fields are tolerated within v1 (docs/contract.md, versioning).
        let mut extra = body(ORDER);
        extra["priority"] = serde_json::json!("High");
        assert!(check(&subject, &extra).is_ok());
    }
}
