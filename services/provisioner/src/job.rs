//! One message, one job: validate, claim in the journal, acknowledge, orchestrate, report,
//! record the end.
//!
//! The message is acknowledged right after the claim: from then on the journal owns the job
//! (max_deliver is 1, so JetStream would never redeliver it anyway), and a long job does not
//! trip the consumer's ack_wait. A message that cannot be claimed (journal unavailable) is left
//! unacknowledged on purpose: the max-deliveries advisory then hands it to recovery.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;
use messages::ProvisioningRequestedV1;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::journal::{Claim, JobRecord, JobState, Journal, NotClaimed};
use crate::metrics::{ProvisionerMetrics, ReasonLabel};
use crate::orchestrator::{Finished, JobJournal, Orchestrator};
use crate::publisher::{self, Publisher};
use crate::steps::{codes, JobResult, Step};

pub const SERVICE: &str = "provisioner";

pub struct JobRunner {
    pub journal: Journal,
    pub orchestrator: Orchestrator,
    pub publisher: Publisher,
    pub metrics: ProvisionerMetrics,
    pub worker_id: String,
    pub deadletter: platform::deadletter::DeadLetters,
}

/// Parses and validates a `provisioning.requested.v1` body (the `validation` step).
pub fn validate(payload: &[u8]) -> Result<ProvisioningRequestedV1, String> {
    let request: ProvisioningRequestedV1 = serde_json::from_slice(payload)
        .map_err(|e| format!("body is not provisioning.requested.v1 JSON: {e}"))?;
    if request.schema != ProvisioningRequestedV1::SCHEMA {
        return Err(format!(
            "schema is {:?}, expected {}",
            request.schema,
            ProvisioningRequestedV1::SCHEMA
        ));
    }
    messages::salesforce_id::validate(&request.order_id).map_err(|e| {
        format!(
            "order_id {:?} is not a Salesforce id: {e}",
            request.order_id
        )
    })?;
    if request.event_id.trim().is_empty() {
        return Err("event_id is empty".to_owned());
    }
    Ok(request)
}

impl JobRunner {
    pub async fn handle(
        self: Arc<Self>,
        message: jetstream::Message,
        hard_stop: CancellationToken,
    ) {
        let received = Instant::now();
        let request = match validate(&message.payload) {
            Ok(request) => request,
            Err(reason) => {
                if let Err(err) = self
                    .deadletter
                    .message(&message, None, "invalid_request", &reason)
                    .await
                {
                    tracing::error!(error = %err, "Could not publish the dead letter.");
                }
                self.metrics.dead_lettered.inc();
                if let Err(err) = message.ack().await {
                    tracing::warn!(error = %err, "Could not acknowledge a dead-lettered message.");
                }
                return;
            }
        };
        let parent = message
            .headers
            .as_ref()
            .map(platform::telemetry::extract_trace_context);
        let traceparent = message
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
            messaging.destination.name = %message.subject,
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
        self.run(message, request, traceparent, hard_stop, received)
            .instrument(span.clone())
            .await;
    }

    async fn run(
        &self,
        message: jetstream::Message,
        request: ProvisioningRequestedV1,
        traceparent: Option<String>,
        hard_stop: CancellationToken,
        received: Instant,
    ) {
        tracing::info!(event_id = %request.event_id, idem_key = ?request.idem_key, "Starting fulfillment orchestration");
        let claim = match self
            .journal
            .claim(&request, &self.worker_id, traceparent)
            .await
        {
            Ok(claim) => claim,
            Err(err) => {
                tracing::error!(error = %err, "Cannot claim the job; leaving the message to recovery.");
                return;
            }
        };
        if let Err(err) = message.ack().await {
            tracing::warn!(error = %err, "Could not acknowledge the message; the journal holds the job.");
        }
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
        let job = JobJournal {
            journal: self.journal.clone(),
            state: tokio::sync::Mutex::new((*record, revision)),
        };
        let finished = tokio::select! {
            finished = self.orchestrator.run(&request, &job, previous.as_deref()) => finished,
            () = hard_stop.cancelled() => {
                let step = job.snapshot().await.0.step;
                let step = Step::ALL.into_iter().find(|s| s.as_str() == step).unwrap_or(Step::Validation);
                Finished { result: JobResult::failed(codes::INTERRUPTED, "The provisioner stopped in the middle of the job"), step }
            }
            never = keep_lease(&job) => match never {},
        };
        self.finish(&request, &job, finished, revision, started_at)
            .await;
        self.metrics.in_flight.dec();
        self.metrics.end_to_end_seconds.observe(
            enqueue_to_now(&request.received_at)
                .unwrap_or_else(|| received.elapsed().as_secs_f64()),
        );
    }

    async fn not_claimed(
        &self,
        request: &ProvisioningRequestedV1,
        reason: &NotClaimed,
        started_at: time::OffsetDateTime,
    ) {
        let label = match reason {
            NotClaimed::DuplicateEvent => "duplicate_event",
            NotClaimed::IdemKeyProcessed => "idem_key_processed",
            NotClaimed::InProgress { .. } => "in_progress",
        };
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
            tracing::error!(error = %err, "Could not publish the skipped outcome.");
        }
    }

    async fn finish(
        &self,
        request: &ProvisioningRequestedV1,
        job: &JobJournal,
        finished: Finished,
        claim_revision: u64,
        started_at: time::OffsetDateTime,
    ) {
        let Finished { result, mut step } = finished;
        let span = tracing::Span::current();
        let whmcs_order_id = job.snapshot().await.0.whmcs_order_id;
        if let Some(update) = publisher::update_body(request, &result, claim_revision) {
            let publish = self.publisher.order_update(&update, &span);
            let published = if matches!(result, JobResult::Activated { .. }) {
                step = Step::SfSuccessUpdate;
                self.orchestrator.step(step, job, publish).await
            } else {
                publish.await
            };
            if let Err(err) = published {
                tracing::error!(error = %err, "Could not hand the Salesforce update to sf-writer; recovery will report the job.");
                return;
            }
        }
        let outcome =
            publisher::outcome_body(request, &result, step.as_str(), whmcs_order_id, started_at);
        if let Err(err) = self.publisher.outcome(&outcome, &span).await {
            tracing::error!(error = %err, "Could not publish the outcome; recovery will report the job.");
            return;
        }
        self.metrics
            .attempt(result.outcome().as_str(), result.error_code());
        self.metrics
            .duration_seconds
            .observe(outcome.duration_ms as f64 / 1000.0);
        match &result {
            JobResult::Activated { whmcs_order_id, .. } => tracing::info!(
                whmcs_order_id,
                duration_ms = outcome.duration_ms,
                "Order provisioned in WHMCS and marked Activated."
            ),
            JobResult::Failed { code, message } => {
                platform::telemetry::record_error(&span, code, message);
                tracing::error!(
                    error_code = %code,
                    error_message = %message,
                    step = %step,
                    duration_ms = outcome.duration_ms,
                    "Provisioning failed."
                );
            }
            JobResult::Skipped { reason } => {
                tracing::info!(reason = %reason, step = %step, "Provisioning skipped.")
            }
        }
        let state = match &result {
            JobResult::Activated { .. } => JobState::Activated,
            JobResult::Failed { code, .. } if code == codes::INTERRUPTED => JobState::Interrupted,
            JobResult::Failed { .. } => JobState::Failed,
            JobResult::Skipped { .. } => JobState::Skipped,
        };
        let error_code = result.error_code().map(str::to_owned);
        job.record(|record: &mut JobRecord| {
            record.state = state;
            record.step = step.as_str().to_owned();
            record.worker = None;
            record.lease_until_ms = None;
            record.error_code = error_code;
        })
        .await;
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

/// Renews the job's lease every third of its length, for as long as the job runs.
async fn keep_lease(job: &JobJournal) -> std::convert::Infallible {
    let period = job.journal.lease() / 3;
    loop {
        tokio::time::sleep(period).await;
        let mut guard = job.state.lock().await;
        let (record, revision) = &mut *guard;
        match job.journal.renew(record, *revision).await {
            Ok(next) => *revision = next,
            Err(err) => tracing::warn!(error = %err, "Could not renew the job lease."),
        }
    }
}
