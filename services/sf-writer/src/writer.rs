//! One batch, from pulled messages to acknowledgements.
//!
//! Each round: wait for the Salesforce gate; write the records that may share a request in one
//! sObject Collections request (one record: a single-record PATCH), and the ones that must go
//! alone (their collection was refused as a whole) one by one. Immediately before *each*
//! request, its Orders are claimed in KV, or the claim an earlier request took is renewed, by
//! compare-and-swap: a round of records written one by one can take longer than a claim lasts,
//! and a record whose claim expired and was taken over by another replica meanwhile must not be
//! written (stale updates are acknowledged, Orders another writer is writing are handed back
//! with a delayed NAK). A request still running when its claim's write window closes is
//! abandoned. Then, per record: applied → settle the claim and ack; permanent error →
//! dead-letter and terminate; transient → next round.
//!
//! The batch's messages get in-progress acks well inside `ack_wait` the whole time they are
//! held, between rounds and while a round's requests are in flight, so JetStream does not hand
//! them to another replica meanwhile. Only messages still held get them: an in-progress ack
//! for a message handed back with a delayed NAK would reset its redelivery to a full
//! `ack_wait`.
//!
//! On shutdown a batch finishes the request it is in and gives back whatever still needs a
//! retry (NAK), releasing claims whose write certainly did not happen.

use std::collections::VecDeque;
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
    /// This work held the Order's claim at some point: a later Stale or Busy means the claim
    /// was lost (expired and taken over) before this write.
    claimed: bool,
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
            claimed: false,
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

/// Works whose Orders are claimed for the next request, and until when that request may run.
struct Claimed {
    works: Vec<(Work, u64)>,
    deadline: Option<Instant>,
}

/// A round in progress: the gate's ticket (spent by the first request), the requests still to
/// send, and what is left for the next round.
struct Round<'h> {
    ticket: Option<Ticket>,
    heartbeat: &'h mut Heartbeat,
    queued: VecDeque<Vec<Work>>,
    result: RoundResult,
}

/// In-progress acks for the messages a batch holds, every third of `ack_wait` on one cadence
/// for the whole batch (a due beat is sent on the next wait even when the previous wait ended
/// just before it).
struct Heartbeat {
    every: Duration,
    next: Instant,
}

impl Heartbeat {
    fn new(ack_wait: Duration) -> Self {
        let every = (ack_wait / 3).max(Duration::from_millis(500));
        Self {
            every,
            next: Instant::now() + every,
        }
    }

    /// Awaits `work`, beating for `held` whenever a beat is due meanwhile.
    async fn during<F: std::future::Future>(&mut self, held: &[&Message], work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                () = tokio::time::sleep_until(self.next) => {
                    for message in held {
                        if let Err(err) = message.ack_with(AckKind::Progress).await {
                            tracing::debug!(error = %err, "Could not send an in-progress ack.");
                        }
                    }
                    self.next = Instant::now() + self.every;
                }
            }
        }
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
        // One cadence for the whole batch, across waits and requests.
        let mut heartbeat = Heartbeat::new(self.ack_wait);
        while !pending.is_empty() {
            let admitted = self
                .hold(&mut heartbeat, &pending, self.gate.admit(), shutdown)
                .await;
            let Some(ticket) = admitted else {
                self.give_up(pending).await;
                return;
            };
            let round = self
                .write_round(&mut heartbeat, ticket, pending, shutdown)
                .await;
            pending = round.retry;
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
                    .hold(
                        &mut heartbeat,
                        &pending,
                        tokio::time::sleep(delay),
                        shutdown,
                    )
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
        heartbeat: &mut Heartbeat,
        pending: &[Work],
        wait: F,
        shutdown: &CancellationToken,
    ) -> Option<F::Output> {
        let held: Vec<&Message> = pending.iter().flat_map(Work::messages).collect();
        tokio::select! {
            biased;
            out = heartbeat.during(&held, wait) => Some(out),
            () = shutdown.cancelled() => None,
        }
    }

    /// Claims (or renews the claim on) every Order of the next request, immediately before it;
    /// returns what may be written now (with the claim's revision and the request's deadline)
    /// and what must wait for another round.
    async fn claim_all(&self, pending: Vec<Work>) -> (Claimed, Vec<Work>) {
        let outcomes = futures::future::join_all(pending.iter().map(|w| {
            self.applied
                .claim(&w.group.order_id, w.group.sequence(), &w.token)
        }))
        .await;
        let mut writable = Claimed {
            works: Vec::with_capacity(pending.len()),
            deadline: None,
        };
        let mut retry = Vec::new();
        for (mut work, outcome) in pending.into_iter().zip(outcomes) {
            if matches!(outcome, Ok(ClaimOutcome::Stale | ClaimOutcome::Busy)) && work.claimed {
                // Our claim expired while the round wrote other records, and another writer
                // took the Order over: whatever it wrote or is writing is at least as new, so
                // this write must not happen.
                work.span.in_scope(|| {
                    tracing::info!(
                        "The Order's claim was taken over before this write; dropping the write."
                    )
                });
                self.metrics.claims_lost.inc();
            }
            match outcome {
                Ok(ClaimOutcome::Claimed {
                    revision,
                    applied,
                    deadline,
                }) => {
                    work.claimed = true;
                    // Members at or below what is applied were applied before (a redelivery):
                    // acknowledge them and leave their fields out.
                    let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(&mut work.group.members)
                        .into_iter()
                        .partition(|(u, _)| u.sequence <= applied);
                    self.ack_stale(&work.span, stale.iter().map(|(_, m)| m))
                        .await;
                    work.group.members = fresh;
                    writable.deadline = Some(
                        writable
                            .deadline
                            .map_or(deadline, |earliest| earliest.min(deadline)),
                    );
                    writable.works.push((work, revision));
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

    /// Writes the round's records: the ones that may share a request in one, the ones that must
    /// go alone one by one, each request right after its own claims. Stops at the first
    /// Salesforce-level failure (the gate decides when to try again) and, on shutdown, after the
    /// request in flight.
    async fn write_round(
        &self,
        heartbeat: &mut Heartbeat,
        ticket: Ticket,
        pending: Vec<Work>,
        shutdown: &CancellationToken,
    ) -> RoundResult {
        let (alone, together): (Vec<_>, Vec<_>) = pending.into_iter().partition(|w| w.alone);
        let mut round = Round {
            ticket: Some(ticket),
            heartbeat,
            queued: VecDeque::new(),
            result: RoundResult::default(),
        };
        if !together.is_empty() {
            round.queued.push_back(together);
        }
        round.queued.extend(alone.into_iter().map(|w| vec![w]));
        while let Some(request) = round.queued.pop_front() {
            if shutdown.is_cancelled() {
                round.result.retry.extend(request);
                round.result.retry.extend(round.queued.drain(..).flatten());
                break;
            }
            let (claimed, retry) = self.claim_all(request).await;
            round.result.retry.extend(retry);
            let Some(deadline) = claimed.deadline else {
                continue;
            };
            if let Err(failed) = self
                .write_request(&mut round, claimed.works, deadline)
                .await
            {
                // Salesforce is unhealthy: the rest waits for the gate with the failed ones.
                round.result.retry.extend(failed);
                round.result.retry.extend(round.queued.drain(..).flatten());
                round.result.gated = true;
                break;
            }
        }
        round.result
    }

    /// One request. `Err` carries the works back when Salesforce failed as a whole.
    /// The request is abandoned at `deadline`, the end of its claims' write window, so that it
    /// cannot land after another writer may have taken an Order over.
    async fn write_request(
        &self,
        round: &mut Round<'_>,
        works: Vec<(Work, u64)>,
        deadline: Instant,
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
        let write = async {
            if let [record] = records.as_slice() {
                request::write_single(&self.rest, record)
                    .await
                    .map(|o| vec![o])
            } else {
                request::write_collection(&self.rest, &records).await
            }
        };
        // Everything the round still holds is kept alive while the request is out; the messages
        // settled so far (acked, terminated, handed back) are not in these lists.
        let held: Vec<&Message> = works
            .iter()
            .flat_map(|(w, _)| w.messages())
            .chain(round.queued.iter().flatten().flat_map(Work::messages))
            .chain(round.result.retry.iter().flat_map(Work::messages))
            .collect();
        let outcome = round
            .heartbeat
            .during(
                &held,
                tokio::time::timeout_at(deadline, write.instrument(span.clone())),
            )
            .await
            .unwrap_or_else(|_| {
                Err(RequestFailure::Service {
                    code: "ETIMEOUT".to_owned(),
                    reason: "the write outlived its Order claim's write window and was abandoned"
                        .to_owned(),
                    // It was sent and may still be applied by Salesforce.
                    maybe_applied: true,
                })
            });
        drop(held);
        let (ticket, result) = (&mut round.ticket, &mut round.result);
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
