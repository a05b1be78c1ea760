//! One batch, from pulled messages to acknowledgements.
//!
//! Each round: wait for the Salesforce gate; claim every Order of the batch in KV (stale updates
//! are acknowledged, Orders another writer is writing are handed back with a delayed NAK); write
//! the claimed ones in one sObject Collections request (one record: a single-record PATCH); then,
//! per record: applied → settle the claim and ack; permanent error → dead-letter and terminate;
//! transient → next round. Messages held between rounds get in-progress acks well inside
//! `ack_wait`, so JetStream does not hand them to another replica meanwhile.
//!
//! On shutdown a batch finishes the request it is in and gives back whatever still needs a
//! retry (NAK), releasing claims whose write certainly did not happen.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use messages::OrderUpdateV1;
use platform::backoff::Backoff;
use platform::http::Health;
use salesforce::rest::RestClient;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::batch::{self, Group};
use crate::gate::{Gate, Ticket, Transition};
use crate::metrics::WriterMetrics;
use crate::ordering::{AppliedStore, ClaimOutcome};
use crate::request::{self, OrderRecord, RecordOutcome, RequestFailure};
use platform::deadletter::DeadLetters;

type Message = jetstream::Message;

/// Everything a batch needs; shared by the batches in flight.
pub struct Writer {
    pub rest: RestClient,
    pub applied: AppliedStore,
    pub gate: Arc<Gate>,
    pub deadletters: DeadLetters,
    pub metrics: WriterMetrics,
    pub health: Arc<Health>,
    pub ack_wait: Duration,
    /// Pacing of retries that the gate does not pace (row locks, KV hiccups).
    pub retry_base: Duration,
    pub retry_max: Duration,
}

/// One Order's share of a batch, through its attempts.
struct Work {
    group: Group<Message>,
    /// The claim token: one per batch, kept across its retries so a retry retakes its own claim.
    token: String,
    /// Write this record on its own (its collection request was refused as a whole).
    alone: bool,
    /// An earlier attempt may have reached Salesforce: keep the claim on giving up.
    maybe_applied: bool,
    span: tracing::Span,
}

impl Work {
    fn new(group: Group<Message>) -> Self {
        let (correlation_id, parent, subject) = group
            .newest()
            .map(|(update, message)| {
                (
                    update.correlation_id.clone(),
                    message
                        .headers
                        .as_ref()
                        .map(platform::telemetry::extract_trace_context),
                    message.subject.to_string(),
                )
            })
            .unwrap_or_default();
        // The order's own consumer span, in the order's trace (child of the newest update's
        // traceparent); the batch's request span links to it.
        let span = tracing::info_span!(
            "sf_writer.update",
            otel.name = %format!("process {}", messages::subjects::ORDER_UPDATE_PREFIX),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %subject,
            messaging.consumer.group.name = "sf-writer",
            order_id = %group.order_id,
            correlation_id = %correlation_id,
            sequence = group.sequence(),
            merged = group.members.len(),
        );
        platform::telemetry::join_order(
            &span,
            parent,
            Some(&group.order_id),
            Some(&correlation_id),
        );
        Self {
            group,
            token: uuid::Uuid::new_v4().to_string(),
            alone: false,
            maybe_applied: false,
            span,
        }
    }

    fn record(&self) -> OrderRecord {
        OrderRecord {
            order_id: self.group.order_id.clone(),
            fields: self.group.merged_fields(),
        }
    }

    fn messages(&self) -> impl Iterator<Item = &Message> {
        self.group.members.iter().map(|(_, m)| m)
    }
}

/// What one round's writes left to do.
#[derive(Default)]
struct RoundResult {
    retry: Vec<Work>,
    /// Some request failed at the Salesforce level: the gate paces the next round.
    gated: bool,
    /// Records must be retried alone right away (no delay needed).
    split: bool,
}

impl Writer {
    /// Processes one pulled batch to the end (or until `shutdown` stops its retries).
    pub async fn flush(&self, messages: Vec<Message>, shutdown: &CancellationToken) {
        self.metrics.batch_updates.observe(messages.len() as f64);
        let mut items: Vec<(OrderUpdateV1, Message)> = Vec::with_capacity(messages.len());
        for message in messages {
            match batch::parse(&message.payload) {
                Ok(update) => items.push((update, message)),
                Err(reason) => self.reject_invalid(message, &reason).await,
            }
        }
        let mut pending: Vec<Work> = batch::group_by_order(items)
            .into_iter()
            .map(Work::new)
            .collect();
        let mut pacing = Backoff::new(self.retry_base, self.retry_max);
        while !pending.is_empty() {
            let admitted = self.hold(&pending, self.gate.admit(), shutdown).await;
            let Some(ticket) = admitted else {
                self.give_up(pending).await;
                return;
            };
            let (writable, mut retry) = self.claim_all(pending).await;
            let round = self.write_all(ticket, writable).await;
            retry.extend(round.retry);
            pending = retry;
            if pending.is_empty() {
                break;
            }
            if shutdown.is_cancelled() {
                self.give_up(pending).await;
                return;
            }
            if !round.gated && !round.split {
                let delay = pacing.next_delay();
                let slept = self
                    .hold(&pending, tokio::time::sleep(delay), shutdown)
                    .await;
                if slept.is_none() {
                    self.give_up(pending).await;
                    return;
                }
            }
        }
    }

    /// Awaits `wait` while keeping the held messages alive with in-progress acks; `None` when
    /// `shutdown` came first.
    async fn hold<F: std::future::Future>(
        &self,
        pending: &[Work],
        wait: F,
        shutdown: &CancellationToken,
    ) -> Option<F::Output> {
        tokio::pin!(wait);
        let every = (self.ack_wait / 3).max(Duration::from_millis(500));
        let mut next_progress = Instant::now() + every;
        loop {
            tokio::select! {
                biased;
                out = &mut wait => return Some(out),
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(next_progress) => {
                    for message in pending.iter().flat_map(Work::messages) {
                        if let Err(err) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(error = %err, "Could not send an in-progress ack.");
                        }
                    }
                    next_progress = Instant::now() + every;
                }
            }
        }
    }

    /// Claims every Order; returns what may be written now (with the claim's revision) and what
    /// must wait for another round.
    async fn claim_all(&self, pending: Vec<Work>) -> (Vec<(Work, u64)>, Vec<Work>) {
        let outcomes = futures::future::join_all(pending.iter().map(|w| {
            self.applied
                .claim(&w.group.order_id, w.group.sequence(), &w.token)
        }))
        .await;
        let mut writable = Vec::with_capacity(pending.len());
        let mut retry = Vec::new();
        for (mut work, outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                Ok(ClaimOutcome::Claimed { revision, applied }) => {
                    // Members at or below what is applied were applied before (a redelivery):
                    // acknowledge them and leave their fields out.
                    let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(&mut work.group.members)
                        .into_iter()
                        .partition(|(u, _)| u.sequence <= applied);
                    self.ack_stale(&work.span, stale.iter().map(|(_, m)| m))
                        .await;
                    work.group.members = fresh;
                    writable.push((work, revision));
                }
                Ok(ClaimOutcome::Stale) => {
                    self.ack_stale(&work.span, work.messages()).await;
                }
                Ok(ClaimOutcome::Busy) => {
                    work.span.in_scope(|| {
                        tracing::debug!(
                            "Another writer is writing this Order; handing the update back."
                        )
                    });
                    self.metrics
                        .claim_conflicts
                        .inc_by(work.group.members.len() as u64);
                    for message in work.messages() {
                        nak(message, Some(busy_delay(message))).await;
                    }
                }
                Err(err) => {
                    work.span.in_scope(
                        || tracing::warn!(error = %err, "Cannot claim the Order in KV; retrying."),
                    );
                    self.metrics.retry("kv", work.group.members.len());
                    retry.push(work);
                }
            }
        }
        (writable, retry)
    }

    async fn ack_stale<'a>(
        &self,
        span: &tracing::Span,
        messages: impl Iterator<Item = &'a Message>,
    ) {
        for message in messages {
            span.in_scope(|| {
                tracing::debug!(subject = %message.subject, "A newer update was already applied; skipping.")
            });
            self.metrics.skipped_stale.inc();
            ack(message).await;
        }
    }

    /// Writes the claimed records: the ones that may share a request in one, the ones that must
    /// go alone one by one. Stops at the first Salesforce-level failure: the gate decides when
    /// to try again.
    async fn write_all(&self, ticket: Ticket, writable: Vec<(Work, u64)>) -> RoundResult {
        let mut result = RoundResult::default();
        if writable.is_empty() {
            return result;
        }
        let mut ticket = Some(ticket);
        let (alone, together): (Vec<_>, Vec<_>) = writable.into_iter().partition(|(w, _)| w.alone);
        let mut requests: Vec<Vec<(Work, u64)>> = Vec::new();
        if !together.is_empty() {
            requests.push(together);
        }
        requests.extend(alone.into_iter().map(|w| vec![w]));
        let mut requests = requests.into_iter();
        while let Some(request) = requests.next() {
            if let Err(failed) = self.write_request(&mut ticket, request, &mut result).await {
                // Salesforce is unhealthy: the rest waits for the gate with the failed ones.
                result.retry.extend(failed);
                result
                    .retry
                    .extend(requests.by_ref().flatten().map(|(w, _)| w));
                result.gated = true;
                break;
            }
        }
        result
    }

    /// One request. `Err` carries the works back when Salesforce failed as a whole.
    async fn write_request(
        &self,
        ticket: &mut Option<Ticket>,
        works: Vec<(Work, u64)>,
        result: &mut RoundResult,
    ) -> Result<(), Vec<Work>> {
        let records: Vec<OrderRecord> = works.iter().map(|(w, _)| w.record()).collect();
        let kind = if records.len() == 1 {
            "single"
        } else {
            "collection"
        };
        // One request carries several orders: its span stands alone and links to each order's
        // update span (messaging conventions for batches).
        let span = tracing::info_span!(
            "sf_writer.salesforce_request",
            otel.name = %format!("write {kind}"),
            kind,
            records = records.len(),
            messaging.batch.message_count = works.iter().map(|(w, _)| w.group.members.len()).sum::<usize>(),
        );
        for (work, _) in &works {
            use opentelemetry::trace::TraceContextExt;
            span.add_link(work.span.context().span().span_context().clone());
        }
        let started = Instant::now();
        let outcome = async {
            if let [record] = records.as_slice() {
                request::write_single(&self.rest, record)
                    .await
                    .map(|o| vec![o])
            } else {
                request::write_collection(&self.rest, &records).await
            }
        }
        .instrument(span.clone())
        .await;
        match &outcome {
            Err(RequestFailure::Service { code, reason, .. }) => {
                platform::telemetry::record_error(&span, code, reason);
            }
            Err(RequestFailure::Split { reason }) => {
                platform::telemetry::record_error(&span, "split", reason);
            }
            Ok(_) => {}
        }
        self.metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.request_records.observe(records.len() as f64);
        self.metrics.record_usage(self.rest.usage());
        match outcome {
            Ok(outcomes) => {
                self.metrics.request(kind, "ok");
                if let Some(ticket) = ticket.take() {
                    self.gate_transition(ticket.success(), "", "");
                }
                for ((work, revision), outcome) in works.into_iter().zip(outcomes) {
                    if let Some(again) = self.settle(work, revision, outcome).await {
                        result.retry.push(again);
                    }
                }
                Ok(())
            }
            Err(RequestFailure::Split { reason }) => {
                self.metrics.request(kind, "split");
                if let Some(ticket) = ticket.take() {
                    // Salesforce answered: it is healthy, the request was not.
                    self.gate_transition(ticket.success(), "", "");
                }
                tracing::warn!(%reason, records = works.len(), "Salesforce refused the collection request; retrying its records one by one.");
                for (mut work, _) in works {
                    work.alone = true;
                    self.metrics.retry("split", work.group.members.len());
                    result.retry.push(work);
                }
                result.split = true;
                Ok(())
            }
            Err(RequestFailure::Service {
                code,
                reason,
                maybe_applied,
            }) => {
                self.metrics.request(kind, &code);
                let transition = match ticket.take() {
                    Some(ticket) => ticket.failure(),
                    // A later request of the same round, whose ticket the first one spent.
                    None => self.gate.record_failure(),
                };
                self.gate_transition(transition, &code, &reason);
                tracing::warn!(%code, %reason, records = works.len(), "Salesforce write failed; will retry.");
                Err(works
                    .into_iter()
                    .map(|(mut work, _)| {
                        work.maybe_applied |= maybe_applied;
                        self.metrics.retry(&code, work.group.members.len());
                        work
                    })
                    .collect())
            }
        }
    }

    fn gate_transition(&self, transition: Transition, code: &str, reason: &str) {
        match transition {
            Transition::None => {}
            Transition::Opened(delay) => {
                tracing::warn!(
                    %code,
                    %reason,
                    retry_in_ms = delay.as_millis() as u64,
                    "Salesforce is unhealthy; slowing the writer down (one probe at a time)."
                );
                self.metrics.salesforce_up.set(0);
                self.health
                    .set_down("salesforce", format!("backing off after {code}: {reason}"));
            }
            Transition::Closed => {
                tracing::info!("Salesforce takes requests again; writing at full speed.");
                self.metrics.salesforce_up.set(1);
                self.health.set_up("salesforce");
            }
        }
    }

    /// Acts on one record's outcome; returns the work when it needs another round.
    async fn settle(&self, work: Work, revision: u64, outcome: RecordOutcome) -> Option<Work> {
        let key = work.group.order_id.clone();
        let seq = work.group.sequence();
        match outcome {
            RecordOutcome::Applied => {
                if let Err(err) = self.applied.settle(&key, seq, &work.token, revision).await {
                    // The claim stays until it expires and still keeps older updates out.
                    work.span.in_scope(|| {
                        tracing::warn!(error = %err, "Cannot record the applied sequence; the claim will expire.")
                    });
                }
                work.span
                    .in_scope(|| tracing::debug!(seq, "Order updated."));
                self.metrics.applied.inc_by(work.group.members.len() as u64);
                for message in work.messages() {
                    ack(message).await;
                }
                None
            }
            RecordOutcome::Permanent { code, reason } => {
                platform::telemetry::record_error(&work.span, &code, &reason);
                let mut all_stored = true;
                for (update, message) in &work.group.members {
                    let stored = self
                        .deadletters
                        .message(message, Some(&update.correlation_id), &code, &reason)
                        .instrument(work.span.clone())
                        .await;
                    match stored {
                        Ok(()) => {
                            self.metrics.dead_letter(&code);
                            if let Err(err) = message.ack_with(AckKind::Term).await {
                                tracing::debug!(error = %err, "Could not terminate a dead-lettered message.");
                            }
                        }
                        Err(err) => {
                            all_stored = false;
                            tracing::warn!(error = %err, "Dead letter not stored; the update will be retried.");
                            nak(message, Some(Duration::from_secs(5))).await;
                        }
                    }
                }
                // The sequence counts as done only when every member is safely set aside; else
                // the redelivered ones must not be skipped as stale.
                let settled = if all_stored {
                    self.applied.settle(&key, seq, &work.token, revision).await
                } else {
                    self.applied.release(&key, &work.token).await
                };
                if let Err(err) = settled {
                    tracing::warn!(error = %err, order_id = %key, "Cannot update the Order's entry after a dead letter.");
                }
                None
            }
            RecordOutcome::Retry { code, reason } => {
                work.span.in_scope(|| {
                    tracing::info!(%code, %reason, "Salesforce refused the record for now; retrying.")
                });
                self.metrics.retry(&code, work.group.members.len());
                Some(work)
            }
        }
    }

    /// Gives the rest back (shutdown): NAK, and release claims whose write never happened.
    async fn give_up(&self, pending: Vec<Work>) {
        for work in pending {
            if !work.maybe_applied {
                if let Err(err) = self
                    .applied
                    .release(&work.group.order_id, &work.token)
                    .await
                {
                    tracing::debug!(error = %err, "Could not release a claim; it will expire.");
                }
            }
            for message in work.messages() {
                nak(message, None).await;
            }
        }
    }

    async fn reject_invalid(&self, message: Message, reason: &str) {
        match self
            .deadletters
            .message(&message, None, "invalid_update", reason)
            .await
        {
            Ok(()) => {
                self.metrics.dead_letter("invalid_update");
                if let Err(err) = message.ack_with(AckKind::Term).await {
                    tracing::debug!(error = %err, "Could not terminate an invalid message.");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "Dead letter not stored; the message will come back.");
                nak(&message, Some(Duration::from_secs(5))).await;
            }
        }
    }
}

async fn ack(message: &Message) {
    if let Err(err) = message.ack().await {
        tracing::debug!(error = %err, "Could not acknowledge a message; it will be redelivered and skipped.");
    }
}

async fn nak(message: &Message, delay: Option<Duration>) {
    if let Err(err) = message.ack_with(AckKind::Nak(delay)).await {
        tracing::debug!(error = %err, "Could not hand a message back; ack_wait will.");
    }
}

/// Redelivery delay for an update whose Order another writer is writing: short at first (that
/// write usually takes milliseconds), growing with each delivery up to 4 s (a crashed writer's
/// claim takes the claim TTL to expire).
fn busy_delay(message: &Message) -> Duration {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1).clamp(1, 6);
    let exponent = u32::try_from(delivered - 1).unwrap_or(0);
    Duration::from_millis(125)
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(Duration::from_secs(4))
}
