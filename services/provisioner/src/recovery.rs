//! Finding jobs whose worker disappeared, and marking their Orders `Failed` with `INTERRUPTED`
//! so an operator can retry them from Salesforce. Two ways a job is lost:
//!
//! - **Claimed, then abandoned.** The journal entry is `running` and its lease deadline passed
//!   (the worker renews at a third of the lease). Every replica scans the journal every
//!   `recovery_interval`; the compare-and-swap on the entry decides which one reports it. Before
//!   reporting, the outcomes stream is checked: a worker that died after publishing its outcome
//!   but before recording the end needs only its journal entry closed.
//! - **Delivered, never claimed.** The worker died between receiving the message and claiming
//!   it. With max_deliver = 1, JetStream never redelivers; after ack_wait it publishes the
//!   max-deliveries advisory. One replica (queue group) takes it, reads the message by sequence,
//!   claims the job in the journal and reports it interrupted at once.
//!
//! Worst case from crash to report: lease (30 s) + scan interval (15 s), or ack_wait (60 s) +
//! advisory handling; both inside the contract's two minutes.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt;
use messages::ProvisioningRequestedV1;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::journal::{now_ms, Claim, JobRecord, JobState, Journal};
use crate::metrics::{ProvisionerMetrics, ReasonLabel};
use crate::publisher::{self, Publisher};
use crate::steps::{codes, JobResult};

pub struct Recovery {
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub journal: Journal,
    pub publisher: Publisher,
    pub metrics: ProvisionerMetrics,
    pub deadletter: platform::deadletter::DeadLetters,
    pub requests_stream: String,
    pub outcomes_stream: String,
    pub consumer: String,
    pub interval: std::time::Duration,
    pub worker_id: String,
}

/// `io.nats.jetstream.advisory.v1.max_deliver`.
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream: String,
    stream_seq: u64,
}

impl Recovery {
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let advisories = tokio::spawn({
            let this = self.clone();
            let cancel = cancel.clone();
            async move { this.listen_for_advisories(cancel).await }
        });
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
            if let Err(err) = self.scan().await {
                tracing::warn!(error = %err, "Journal scan for abandoned jobs failed; trying again next interval.");
            }
        }
        advisories.abort();
    }

    /// One pass over the journal.
    pub async fn scan(&self) -> Result<usize, crate::journal::JournalError> {
        let mut reported = 0;
        for order_id in self.journal.order_ids().await? {
            let Some((record, revision)) = self.journal.read(&order_id).await? else {
                continue;
            };
            let expired = record.lease_until_ms.is_some_and(|until| until < now_ms());
            if record.state == JobState::Running
                && expired
                && self.interrupt(record, revision, "lease_expired").await
            {
                reported += 1;
            }
        }
        Ok(reported)
    }

    /// Reports an abandoned job; returns whether this replica did it.
    async fn interrupt(&self, mut record: JobRecord, revision: u64, how: &str) -> bool {
        let span = tracing::warn_span!(
            "recover job",
            order_id = %record.order_id,
            correlation_id = %record.correlation_id,
            event.id = %record.event_id,
            how,
        );
        // The report joins the order's trace: the journal kept the request's traceparent.
        let parent = record.traceparent.as_ref().and_then(|traceparent| {
            let mut headers = async_nats::HeaderMap::new();
            platform::nats::insert_header(&mut headers, messages::headers::TRACEPARENT, traceparent)
                .then(|| platform::telemetry::extract_trace_context(&headers))
        });
        platform::telemetry::join_order(
            &span,
            parent,
            Some(&record.order_id),
            Some(&record.correlation_id),
        );
        async {
            if let Some(outcome) = publisher::find_outcome(&self.js, &self.outcomes_stream, &record.order_id, &record.event_id).await {
                // The worker reported before it died; only the journal entry is left open.
                record.state = match outcome.result {
                    messages::OutcomeResult::Activated => JobState::Activated,
                    messages::OutcomeResult::Failed => JobState::Failed,
                    messages::OutcomeResult::Skipped => JobState::Skipped,
                };
                record.worker = None;
                record.lease_until_ms = None;
                return self.journal.replace(&mut record, revision).await.is_ok();
            }
            let request = ProvisioningRequestedV1 {
                schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
                event_id: record.event_id.clone(),
                replay_id: String::new(),
                channel: String::new(),
                schema_id: String::new(),
                order_id: record.order_id.clone(),
                idem_key: record.idem_key.clone(),
                correlation_id: record.correlation_id.clone(),
                requested_by: None,
                version: None,
                created_at: None,
                created_by_id: None,
                received_at: String::new(),
            };
            let step = record.step.clone();
            let message = format!("The worker {} stopped during step {step}; retry from Salesforce", record.worker.as_deref().unwrap_or("(unknown)"));
            let result = JobResult::failed(codes::INTERRUPTED, &message);
            // Claim the report first: of several replicas, the one whose write lands reports.
            record.state = JobState::Interrupted;
            record.error_code = Some(codes::INTERRUPTED.to_owned());
            record.lease_until_ms = None;
            let previous_worker = record.worker.take();
            let sequence = match self.journal.replace(&mut record, revision).await {
                Ok(next) => next,
                Err(_) => return false,
            };
            let span = tracing::Span::current();
            platform::telemetry::record_error(&span, codes::INTERRUPTED, &message);
            if let Some(update) = publisher::update_body(&request, &result, sequence) {
                if let Err(err) = self.publisher.order_update(&update, &span).await {
                    tracing::error!(error = %err, "Could not publish the INTERRUPTED update.");
                }
            }
            let outcome = publisher::outcome_body(&request, &result, &step, record.whmcs_order_id, time::OffsetDateTime::now_utc());
            if let Err(err) = self.publisher.outcome(&outcome, &span).await {
                tracing::error!(error = %err, "Could not publish the INTERRUPTED outcome.");
            }
            self.metrics.interrupted.get_or_create(&ReasonLabel { reason: how.to_owned() }).inc();
            self.metrics.attempt("failed", Some(codes::INTERRUPTED));
            tracing::error!(
                error_code = codes::INTERRUPTED,
                step = %step,
                worker = ?previous_worker,
                "Job interrupted: its worker disappeared. Order marked Failed; retry from Salesforce."
            );
            true
        }
        .instrument(span)
        .await
    }

    async fn listen_for_advisories(&self, cancel: CancellationToken) {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            self.requests_stream, self.consumer
        );
        let mut subscription = match self
            .nats
            .queue_subscribe(subject.clone(), "provisioner-recovery".to_owned())
            .await
        {
            Ok(sub) => sub,
            Err(err) => {
                tracing::error!(error = %err, %subject, "Cannot subscribe to max-deliveries advisories.");
                return;
            }
        };
        loop {
            let message = tokio::select! {
                () = cancel.cancelled() => break,
                message = subscription.next() => match message { Some(m) => m, None => break },
            };
            let Ok(advisory) = serde_json::from_slice::<MaxDeliveriesAdvisory>(&message.payload)
            else {
                tracing::warn!("Unreadable max-deliveries advisory.");
                continue;
            };
            self.on_undelivered(advisory).await;
        }
    }

    /// A message was delivered and never acknowledged: its worker died before claiming it.
    async fn on_undelivered(&self, advisory: MaxDeliveriesAdvisory) {
        let stored = match self.js.get_stream(&advisory.stream).await {
            Ok(stream) => stream.get_raw_message(advisory.stream_seq).await,
            Err(err) => {
                tracing::error!(error = %err, "Cannot read the stream named by a max-deliveries advisory.");
                return;
            }
        };
        let Ok(stored) = stored else {
            tracing::error!(
                stream_sequence = advisory.stream_seq,
                "Message named by a max-deliveries advisory is gone."
            );
            return;
        };
        let request = match crate::job::validate(&stored.payload) {
            Ok(request) => request,
            Err(reason) => {
                let dead_lettered = self
                    .deadletter
                    .stored(
                        &stored.payload,
                        Some(advisory.stream),
                        Some(advisory.stream_seq),
                        stored.subject.as_str(),
                        None,
                        "invalid_request",
                        &reason,
                    )
                    .await;
                if let Err(err) = dead_lettered {
                    tracing::error!(error = %err, "Could not publish the dead letter.");
                }
                return;
            }
        };
        let traceparent = stored
            .headers
            .get(messages::headers::TRACEPARENT)
            .map(|v| v.as_str().to_owned());
        match self
            .journal
            .claim(&request, &self.worker_id, traceparent)
            .await
        {
            Ok(Claim::Claimed {
                record, revision, ..
            }) => {
                self.interrupt(*record, revision, "max_deliveries").await;
            }
            Ok(Claim::NotClaimed(_)) => {
                tracing::debug!(order_id = %request.order_id, "Undelivered message was handled elsewhere.");
            }
            Err(err) => {
                tracing::error!(error = %err, "Cannot record an undelivered message in the journal.")
            }
        }
    }
}
