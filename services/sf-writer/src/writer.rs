//! One batch, from pulled messages to acknowledgements.
//!
//! Each round: wait for the Salesforce gate; write the records that may share a request in one
//! sObject Collections request (one record: a single-record PATCH), and the ones that must go
//! alone (their collection was refused as a whole) one by one. Immediately before *each*
//! request, its Orders are claimed in KV, or the claim an earlier request took is renewed, by
//! compare-and-swap: a round of records written one by one can take longer than a claim lasts,
//! and a record whose claim expired and was taken over by another replica meanwhile must not be
//! written. Updates at or below the Order's applied sequence, or older than another writer's
//! claimed one, are acknowledged as stale (also while that writer is still writing); an update at least as
//! new as another writer's live claim, in particular the same sequence, is handed back with a
//! delayed NAK. A request still running when its claim's write window closes is
//! abandoned. Then, per record: applied → settle the claim and ack; permanent error →
//! dead-letter and terminate; transient → next round.
//!
//! The batch's messages get in-progress acks well inside `ack_wait` the whole time they are
//! held: while a round waits for the gate or a retry, while its KV claims and settles run,
//! while its requests are in flight and while dead letters are published, so neither a slow
//! Salesforce nor a slow KV store or dead-letter stream lets JetStream hand them to another
//! replica meanwhile. Only messages still held get them: an in-progress ack for a message
//! handed back with a delayed NAK would reset its redelivery to a full `ack_wait`.
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
use platform::error::Chain;

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
                            tracing::debug!(error = %Chain(&*err), "Could not send an in-progress ack.");
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
        // One cadence for the whole batch, from the pull on: across dead letters, KV calls,
        // waits and requests.
        let mut heartbeat = Heartbeat::new(self.ack_wait);
        let mut items: Vec<(OrderUpdateV1, Message)> = Vec::with_capacity(messages.len());
        let mut invalid: Vec<(Message, String)> = Vec::new();
        for message in messages {
            match batch::parse(message.subject.as_str(), &message.payload) {
                Ok(update) => items.push((update, message)),
                Err(reason) => invalid.push((message, reason)),
            }
        }
        let mut pending: Vec<Work> = batch::group_by_order(items)
            .into_iter()
            .map(Work::new)
            .collect();
        while let Some((message, reason)) = invalid.pop() {
            self.reject_invalid(&mut heartbeat, &pending, &invalid, message, &reason)
                .await;
        }
        let mut pacing = Backoff::new(self.retry_base, self.retry_max);
        while !pending.is_empty() {
            let admitted = self
                .hold(&mut heartbeat, &pending, self.gate.admit(), shutdown)
                .await;
            let Some(ticket) = admitted else {
                self.give_up(&mut heartbeat, pending).await;
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
                self.give_up(&mut heartbeat, pending).await;
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
                    self.give_up(&mut heartbeat, pending).await;
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
    /// and what must wait for another round. Everything the round holds is kept alive while the
    /// KV store answers.
    async fn claim_all(&self, round: &mut Round<'_>, pending: Vec<Work>) -> (Claimed, Vec<Work>) {
        let outcomes = {
            let held: Vec<&Message> = pending
                .iter()
                .flat_map(Work::messages)
                .chain(round.queued.iter().flatten().flat_map(Work::messages))
                .chain(round.result.retry.iter().flat_map(Work::messages))
                .collect();
            let claims = futures::future::join_all(pending.iter().map(|w| {
                self.applied
                    .claim(&w.group.order_id, w.group.sequence(), &w.token)
            }));
            round.heartbeat.during(&held, claims).await
        };
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
                        || tracing::warn!(error = %Chain(&err), "Cannot claim the Order in KV; retrying."),
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
            let (claimed, retry) = self.claim_all(&mut round, request).await;
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
                // Settled one by one; while one is, every message the round still holds (this
                // record's, the records after it, those waiting for a retry) is kept alive.
                let mut again = vec![false; works.len()];
                for (i, outcome) in outcomes.into_iter().take(works.len()).enumerate() {
                    let others: Vec<&Message> = works
                        .iter()
                        .zip(&again)
                        .enumerate()
                        .filter(|&(j, (_, &retry))| j > i || retry)
                        .flat_map(|(_, ((w, _), _))| w.messages())
                        .chain(round.queued.iter().flatten().flat_map(Work::messages))
                        .chain(result.retry.iter().flat_map(Work::messages))
                        .collect();
                    let (work, revision) = &works[i];
                    again[i] = self
                        .settle(round.heartbeat, &others, work, *revision, outcome)
                        .await;
                }
                for ((work, _), again) in works.into_iter().zip(again) {
                    if again {
                        result.retry.push(work);
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

    /// Acts on one record's outcome; `true` when the work needs another round. `others` are
    /// the messages the round still holds besides this work's: they and this work's messages
    /// (until they are settled) get in-progress acks while KV and the dead-letter stream answer.
    async fn settle(
        &self,
        heartbeat: &mut Heartbeat,
        others: &[&Message],
        work: &Work,
        revision: u64,
        outcome: RecordOutcome,
    ) -> bool {
        let key = work.group.order_id.as_str();
        let seq = work.group.sequence();
        let held: Vec<&Message> = work.messages().chain(others.iter().copied()).collect();
        match outcome {
            RecordOutcome::Applied => {
                let settled = heartbeat
                    .during(&held, self.applied.settle(key, seq, &work.token, revision))
                    .await;
                if let Err(err) = settled {
                    // The claim stays until it expires and still keeps older updates out.
                    work.span.in_scope(|| {
                        tracing::warn!(error = %Chain(&err), "Cannot record the applied sequence; the claim will expire.")
                    });
                }
                work.span
                    .in_scope(|| tracing::debug!(seq, "Order updated."));
                self.metrics.applied.inc_by(work.group.members.len() as u64);
                for message in work.messages() {
                    ack(message).await;
                }
                false
            }
            RecordOutcome::Permanent { code, reason } => {
                platform::telemetry::record_error(&work.span, &code, &reason);
                // Every member's dead letter first (its messages still held), then each
                // message is terminated or handed back.
                let stored = heartbeat
                    .during(&held, async {
                        let mut stored = Vec::with_capacity(work.group.members.len());
                        for (update, message) in &work.group.members {
                            stored.push(
                                self.deadletters
                                    .message(message, Some(&update.correlation_id), &code, &reason)
                                    .instrument(work.span.clone())
                                    .await,
                            );
                        }
                        stored
                    })
                    .await;
                drop(held);
                let mut all_stored = true;
                for ((_, message), stored) in work.group.members.iter().zip(stored) {
                    match stored {
                        Ok(()) => {
                            self.metrics.dead_letter(&code);
                            if let Err(err) = message.ack_with(AckKind::Term).await {
                                tracing::debug!(error = %Chain(&*err), "Could not terminate a dead-lettered message.");
                            }
                        }
                        Err(err) => {
                            all_stored = false;
                            tracing::warn!(error = %Chain(&err), "Dead letter not stored; the update will be retried.");
                            nak(message, Some(Duration::from_secs(5))).await;
                        }
                    }
                }
                // The sequence counts as done only when every member is safely set aside; else
                // the redelivered ones must not be skipped as stale. This work's messages are
                // settled now: only the others are kept alive.
                let settled = if all_stored {
                    heartbeat
                        .during(others, self.applied.settle(key, seq, &work.token, revision))
                        .await
                } else {
                    heartbeat
                        .during(others, self.applied.release(key, &work.token))
                        .await
                };
                if let Err(err) = settled {
                    tracing::warn!(error = %Chain(&err), order_id = %key, "Cannot update the Order's entry after a dead letter.");
                }
                false
            }
            RecordOutcome::Retry { code, reason } => {
                work.span.in_scope(|| {
                    tracing::info!(%code, %reason, "Salesforce refused the record for now; retrying.")
                });
                self.metrics.retry(&code, work.group.members.len());
                true
            }
        }
    }

    /// Gives the rest back (shutdown): release claims whose write never happened (the messages
    /// kept alive meanwhile), then NAK.
    async fn give_up(&self, heartbeat: &mut Heartbeat, pending: Vec<Work>) {
        let held: Vec<&Message> = pending.iter().flat_map(Work::messages).collect();
        let releases = async {
            for work in pending.iter().filter(|w| !w.maybe_applied) {
                if let Err(err) = self
                    .applied
                    .release(&work.group.order_id, &work.token)
                    .await
                {
                    tracing::debug!(error = %Chain(&err), "Could not release a claim; it will expire.");
                }
            }
        };
        heartbeat.during(&held, releases).await;
        for message in held {
            nak(message, None).await;
        }
    }

    /// Dead-letters an update that cannot be parsed. `pending` and `invalid` are the batch's
    /// other messages, kept alive (with this one) while the dead-letter stream answers.
    async fn reject_invalid(
        &self,
        heartbeat: &mut Heartbeat,
        pending: &[Work],
        invalid: &[(Message, String)],
        message: Message,
        reason: &str,
    ) {
        let held: Vec<&Message> = std::iter::once(&message)
            .chain(invalid.iter().map(|(m, _)| m))
            .chain(pending.iter().flat_map(Work::messages))
            .collect();
        let stored = heartbeat
            .during(
                &held,
                self.deadletters
                    .message(&message, None, "invalid_update", reason),
            )
            .await;
        drop(held);
        match stored {
            Ok(()) => {
                self.metrics.dead_letter("invalid_update");
                if let Err(err) = message.ack_with(AckKind::Term).await {
                    tracing::debug!(error = %Chain(&*err), "Could not terminate an invalid message.");
                }
            }
            Err(err) => {
                tracing::warn!(error = %Chain(&err), "Dead letter not stored; the message will come back.");
                nak(&message, Some(Duration::from_secs(5))).await;
            }
        }
    }
}

async fn ack(message: &Message) {
    if let Err(err) = message.ack().await {
        tracing::debug!(error = %Chain(&*err), "Could not acknowledge a message; it will be redelivered and skipped.");
    }
}

async fn nak(message: &Message, delay: Option<Duration>) {
    if let Err(err) = message.ack_with(AckKind::Nak(delay)).await {
        tracing::debug!(error = %Chain(&*err), "Could not hand a message back; ack_wait will.");
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
