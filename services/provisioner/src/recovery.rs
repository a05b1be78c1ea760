//! The reconciler: every message of the requests stream ends with exactly one outcome
//! (docs/contract.md §5 rules 4, 6 and 7), whatever crashed, restarted or lost its leader before.
//!
//! It works from state that survives restarts, never from a one-shot advisory: the requests
//! stream, the consumer's delivered sequence, the job journal, the outcomes stream, and its own
//! watermark in the journal bucket (`reconciled.<consumer>`: every message up to it is known
//! to have its outcome). Every `interval`, each replica reads the messages after the watermark
//! that the consumer has delivered (at most `max_per_scan` of them), and for each:
//!
//! - **Finished.** Its job is closed in the journal (or a later job replaced it): its report is
//!   checked in the outcomes stream. A missing one is its closer's to publish (the worker
//!   publishes right after closing), so it is published from the entry only once this replica
//!   has seen it missing, at the same revision, for a whole lease; until then the message stays
//!   open. Publishing at once would race a worker that is merely between its close and its
//!   publish, and outcome subscribers would get the outcome twice (`job` explains the rule).
//! - **Never claimed.** No job ran for it and no outcome exists (its worker died before the
//!   claim, or the journal was down until it stopped): after `grace` (the consumer's ack wait,
//!   during which a live worker holds the message with in-progress acks) it is run as a job
//!   here, exactly as the consumer would have; the claim's compare-and-swap keeps a late worker
//!   from running it twice.
//! - **Running.** Its worker renews the entry (a new revision) every third of the lease. An entry
//!   whose revision this replica has seen unchanged for a whole lease, on its own monotonic
//!   clock, was abandoned: recovery closes it by compare-and-swap (which fences out the worker
//!   should it wake up) and reports it — `Failed / INTERRUPTED`, or `skipped` when Salesforce
//!   says the Order is no longer `Activating`, so an interruption never overwrites `Activated`.
//!
//! The watermark then moves past the finished prefix. The work per scan is bounded by what is
//! unfinished, not by the journal's history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use platform::error::Chain;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::job::{Delivery, JobRunner};
use crate::journal::{self, Close, JobRecord, Journal, Stored};
use crate::metrics::ReasonLabel;
use crate::publisher::Report;
use crate::steps::{codes, JobResult};

/// Jobs the reconciler runs at once (messages whose worker died before claiming them).
const MAX_ORPHANS_RUNNING: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot read the requests stream or its consumer")]
    Stream(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

impl ReconcileError {
    fn stream(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Stream(Box::new(err))
    }
}

/// What one scan learned about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageState {
    /// Its outcome exists.
    Done,
    /// Its job runs, or it waits to be run.
    Open,
}

/// What this replica remembers between scans (monotonic times, its own).
#[derive(Default)]
struct Observations {
    /// When each open message was first seen unclaimed.
    unclaimed_since: HashMap<u64, Instant>,
    /// Running entries: the revision seen, and since when it has not moved.
    running: HashMap<String, (u64, Instant)>,
    /// Messages found done that the watermark has not passed yet (an older one is open).
    done: HashSet<u64>,
    /// Orders seen running during the current scan.
    seen_running: HashSet<String>,
    /// Messages whose job is closed and whose report was missing: the entry's revision, and
    /// since when.
    unreported: HashMap<u64, (u64, Instant)>,
}

pub struct Recovery {
    pub js: jetstream::Context,
    /// Runs never-claimed messages, and lends its journal, publisher and metrics.
    pub runner: Arc<JobRunner>,
    pub requests_stream: String,
    pub outcomes_stream: String,
    pub consumer: String,
    pub interval: Duration,
    /// How long a delivered message may stay unclaimed before the reconciler runs it.
    pub grace: Duration,
    pub max_per_scan: u64,
    observations: tokio::sync::Mutex<Observations>,
    /// The jobs run for never-claimed messages, by stream sequence.
    orphans: tokio::sync::Mutex<(JoinSet<u64>, HashSet<u64>)>,
}

impl Recovery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        js: jetstream::Context,
        runner: Arc<JobRunner>,
        requests_stream: String,
        outcomes_stream: String,
        consumer: String,
        interval: Duration,
        grace: Duration,
    ) -> Self {
        Self {
            js,
            runner,
            requests_stream,
            outcomes_stream,
            consumer,
            interval,
            grace,
            max_per_scan: 2000,
            observations: tokio::sync::Mutex::default(),
            orphans: tokio::sync::Mutex::new((JoinSet::new(), HashSet::new())),
        }
    }

    /// Scans every `interval` until `cancel`; `hard_stop` ends the jobs it runs (they then
    /// report themselves interrupted).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken, hard_stop: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
            match self.scan(&hard_stop).await {
                Ok(open) => {
                    self.runner.metrics.reconciler_open.set(open as i64);
                }
                Err(err) => {
                    // Staleness counts only what this replica saw: while it could not read,
                    // it cannot tell that an entry stood still, and a worker cut off by the
                    // same outage must get a whole lease once the journal is back.
                    self.observations.lock().await.running.clear();
                    self.runner.metrics.reconciler_scan_failures.inc();
                    tracing::warn!(error = %Chain(&err), "Reconciliation scan failed; trying again next interval.");
                }
            }
        }
        let mut orphans = self.orphans.lock().await;
        while orphans.0.join_next().await.is_some() {}
    }

    /// Stores the first watermark, unless one exists. A consumer that has delivered nothing yet
    /// (a new deployment) starts at the beginning of the stream, so every message is reconciled.
    /// A consumer with history but no watermark was run by a version without the reconciler:
    /// what it acknowledged was handled by that version's recovery, so the reconciler starts at
    /// its ack floor instead of walking (and possibly re-running) days of old messages.
    pub async fn initialize_watermark(&self) -> Result<(), ReconcileError> {
        if self.watermark().await?.is_some() {
            return Ok(());
        }
        let (stream, consumer) = self.positions().await?;
        let start = if consumer.delivered.stream_sequence == 0 {
            stream.cached_info().state.first_sequence.saturating_sub(1)
        } else {
            consumer.ack_floor.stream_sequence
        };
        self.advance(start, None).await;
        Ok(())
    }

    /// The requests stream (with its info as of now) and the consumer's info.
    async fn positions(
        &self,
    ) -> Result<(jetstream::stream::Stream, jetstream::consumer::Info), ReconcileError> {
        let stream = self
            .js
            .get_stream(&self.requests_stream)
            .await
            .map_err(ReconcileError::stream)?;
        let consumer = stream
            .consumer_info(&self.consumer)
            .await
            .map_err(ReconcileError::stream)?;
        Ok((stream, consumer))
    }

    fn journal(&self) -> &Journal {
        &self.runner.journal
    }

    fn watermark_key(&self) -> String {
        messages::journal::watermark_key(&self.consumer)
    }

    async fn watermark(&self) -> Result<Option<(u64, u64)>, ReconcileError> {
        let entry = self
            .journal()
            .store()
            .entry(self.watermark_key())
            .await
            .map_err(journal::JournalError::store)?;
        Ok(entry.and_then(|entry| {
            let mark = serde_json::from_slice::<messages::journal::Watermark>(&entry.value).ok()?;
            Some((mark.stream_sequence, entry.revision))
        }))
    }

    /// Moves the watermark forward to `to` (never back; another replica may be ahead).
    async fn advance(&self, to: u64, revision: Option<u64>) {
        let bytes = match serde_json::to_vec(&messages::journal::Watermark {
            stream_sequence: to,
        }) {
            Ok(bytes) => bytes,
            Err(_) => return,
        };
        let store: &kv::Store = self.journal().store();
        let written = match revision {
            Some(revision) => store
                .update(self.watermark_key(), bytes.into(), revision)
                .await
                .map(drop)
                .map_err(journal::JournalError::store),
            None => store
                .create(self.watermark_key(), bytes.into())
                .await
                .map(drop)
                .map_err(journal::JournalError::store),
        };
        match written {
            Ok(()) => {
                self.runner.metrics.reconciled_sequence.set(to as i64);
            }
            // Another replica moved it first; the next scan starts from theirs.
            Err(err) => tracing::debug!(error = %Chain(&err), "Watermark not moved."),
        }
    }

    /// One pass; returns how many delivered messages are still open.
    pub async fn scan(&self, hard_stop: &CancellationToken) -> Result<usize, ReconcileError> {
        let (stream, consumer) = self.positions().await?;
        let first = stream.cached_info().state.first_sequence;
        let delivered = consumer.delivered.stream_sequence;
        let (mark, revision) = match self.watermark().await? {
            Some((mark, revision)) => (mark, Some(revision)),
            // First scan ever: from the start of the stream. Not from the consumer's ack floor:
            // a message is acknowledged when its job is claimed, not when it is finished.
            None => (first.saturating_sub(1), None),
        };
        let from = (mark + 1).max(first);
        let to = delivered.min(from.saturating_add(self.max_per_scan).saturating_sub(1));
        let mut done_through = from.saturating_sub(1).max(mark);
        let mut open = 0;
        let mut prefix_done = true;
        self.observations.lock().await.seen_running.clear();
        for sequence in from..=to {
            if self.observations.lock().await.done.contains(&sequence) {
                if prefix_done {
                    done_through = sequence;
                }
                continue;
            }
            let state = match stream.get_raw_message(sequence).await {
                Ok(message) => {
                    self.examine(Delivery::stored(&self.requests_stream, message), hard_stop)
                        .await?
                }
                Err(err)
                    if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
                {
                    MessageState::Done
                }
                Err(err) => return Err(ReconcileError::stream(err)),
            };
            match state {
                MessageState::Done => {
                    if prefix_done {
                        done_through = sequence;
                    } else {
                        self.observations.lock().await.done.insert(sequence);
                    }
                }
                MessageState::Open => {
                    prefix_done = false;
                    open += 1;
                }
            }
        }
        {
            // Forget running entries this scan no longer saw (their jobs ended).
            let mut observations = self.observations.lock().await;
            let seen = std::mem::take(&mut observations.seen_running);
            observations.running.retain(|order, _| seen.contains(order));
        }
        if done_through > mark {
            self.advance(done_through, revision).await;
            let mut observations = self.observations.lock().await;
            observations.done.retain(|s| *s > done_through);
            observations
                .unclaimed_since
                .retain(|s, _| *s > done_through);
            observations.unreported.retain(|s, _| *s > done_through);
        }
        Ok(open)
    }

    async fn examine(
        &self,
        delivery: Delivery,
        hard_stop: &CancellationToken,
    ) -> Result<MessageState, ReconcileError> {
        let sequence = delivery.sequence.unwrap_or_default();
        let request = match crate::job::validate(&delivery.subject, &delivery.payload) {
            Ok(request) => request,
            Err(reason) => {
                // Its dead letter has a fixed message id: one per stream message however often.
                self.runner.dead_letter(&delivery, &reason).await;
                return Ok(MessageState::Done);
            }
        };
        let stored = self.journal().read(&request.order_id).await?;
        if let Stored::Record(record, revision) = &stored {
            if record.runs(&request.event_id) {
                self.observations
                    .lock()
                    .await
                    .unclaimed_since
                    .remove(&sequence);
                self.check_running(record, *revision).await;
                return Ok(MessageState::Open);
            }
            if record.has_processed(&request.event_id) {
                if record.event_id == request.event_id {
                    // Its job is closed: make sure its report went out.
                    return Ok(self.ensure_reported(sequence, record, *revision).await);
                }
                // Otherwise a later job replaced the entry, and its claim made sure this job's
                // report was out first.
                return Ok(MessageState::Done);
            }
        }
        // Not claimed under the entry: skipped (recorded, and an outcome exists), or never
        // handled.
        if self.journal().was_skipped(&request.event_id).await?
            || self
                .runner
                .publisher
                .outcome_stored(&self.outcomes_stream, &request.order_id, &request.event_id)
                .await
        {
            return Ok(MessageState::Done);
        }
        let since = *self
            .observations
            .lock()
            .await
            .unclaimed_since
            .entry(sequence)
            .or_insert_with(Instant::now);
        if since.elapsed() >= self.grace {
            self.run_orphan(delivery, sequence, hard_stop).await;
        }
        Ok(MessageState::Open)
    }

    /// Runs a message whose worker never claimed it, as the consumer would have.
    async fn run_orphan(&self, delivery: Delivery, sequence: u64, hard_stop: &CancellationToken) {
        let mut orphans = self.orphans.lock().await;
        let (running, sequences) = &mut *orphans;
        while let Some(joined) = running.try_join_next() {
            match joined {
                Ok(finished) => {
                    sequences.remove(&finished);
                }
                // The sequence stays marked; the journal tells the next scans what happened.
                Err(err) => {
                    tracing::error!(error = %Chain(&err), "A reconciled job ended abnormally.")
                }
            }
        }
        if sequences.contains(&sequence) || running.len() >= MAX_ORPHANS_RUNNING {
            return;
        }
        sequences.insert(sequence);
        self.runner.metrics.orphans_run.inc();
        tracing::warn!(
            stream_sequence = sequence,
            subject = %delivery.subject,
            "Message was delivered and never claimed; running its job now."
        );
        let runner = self.runner.clone();
        let stop = hard_stop.clone();
        running.spawn(async move {
            Box::pin(runner.handle(delivery, stop)).await;
            sequence
        });
    }

    /// A closed job's report: `Done` once it is stored; published from the entry only after
    /// this replica has seen it missing at the same revision for a whole lease (its closer
    /// gives up on it within half of one), else the message stays `Open`.
    async fn ensure_reported(
        &self,
        sequence: u64,
        record: &JobRecord,
        revision: u64,
    ) -> MessageState {
        if !record.finished_within(crate::job::REPORT_AGAIN_WITHIN) {
            return MessageState::Done;
        }
        let Some(report) = Report::of(record, revision) else {
            return MessageState::Done;
        };
        let span = self.report_span(record, "report_missing");
        match self
            .runner
            .publisher
            .outcome_published(&self.outcomes_stream, &report.outcome)
            .await
        {
            Ok(true) => {
                self.observations.lock().await.unreported.remove(&sequence);
                return MessageState::Done;
            }
            Ok(false) => {}
            Err(err) => {
                span.in_scope(|| tracing::warn!(error = %Chain(&err), "Could not check a finished job's report; trying again next scan."));
                return MessageState::Open;
            }
        }
        let since = {
            let mut observations = self.observations.lock().await;
            let seen = observations
                .unreported
                .entry(sequence)
                .or_insert((revision, Instant::now()));
            if seen.0 != revision {
                *seen = (revision, Instant::now());
            }
            seen.1
        };
        if since.elapsed() < self.journal().lease() {
            return MessageState::Open;
        }
        match self.runner.take_over_report(record, revision, &span).await {
            Ok(Some(published)) => {
                self.observations.lock().await.unreported.remove(&sequence);
                if published {
                    self.runner.metrics.reports_republished.inc();
                    span.in_scope(|| tracing::warn!("A finished job's report stayed missing for a lease; published it from the journal."));
                }
                MessageState::Done
            }
            // Someone else moved the entry (and publishes), or a new job claimed it: next scan.
            Ok(None) => MessageState::Open,
            Err(err) => {
                span.in_scope(|| tracing::error!(error = %Chain(&err), "Could not publish a finished job's report; trying again next scan."));
                MessageState::Open
            }
        }
    }

    /// A running entry whose revision has not moved for a whole lease is abandoned.
    async fn check_running(&self, record: &JobRecord, revision: u64) {
        let stale = {
            let mut observations = self.observations.lock().await;
            observations.seen_running.insert(record.order_id.clone());
            let seen = observations
                .running
                .entry(record.order_id.clone())
                .or_insert((revision, Instant::now()));
            if seen.0 != revision {
                *seen = (revision, Instant::now());
            }
            seen.1.elapsed() >= self.journal().lease()
        };
        if stale && self.interrupt(record.clone(), revision).await {
            self.observations
                .lock()
                .await
                .running
                .remove(&record.order_id);
        }
    }

    fn report_span(&self, record: &JobRecord, how: &str) -> tracing::Span {
        let span = tracing::warn_span!(
            "recover job",
            order_id = %record.order_id,
            correlation_id = %record.correlation_id,
            event.id = %record.event_id,
            how,
        );
        // The report joins the order's trace: the journal kept the request's traceparent.
        let parent = record
            .traceparent
            .as_deref()
            .and_then(platform::telemetry::context_from_traceparent);
        platform::telemetry::join_order(
            &span,
            parent,
            Some(&record.order_id),
            Some(&record.correlation_id),
        );
        span
    }

    /// Closes an abandoned job and reports it; returns whether this replica did.
    async fn interrupt(&self, mut record: JobRecord, revision: u64) -> bool {
        let span = self.report_span(&record, "lease_expired");
        async {
            // The guard, again: an Order that is no longer Activating (a duplicate event for an
            // Order already Activated, say) is not marked Failed.
            let status = match self
                .runner
                .orchestrator
                .activation_status(&record.order_id)
                .await
            {
                Ok(status) => status,
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "Cannot read the Order to report an abandoned job; trying again next scan.");
                    return false;
                }
            };
            let step = record.step.clone();
            let worker = record.worker.take();
            let result = if status.as_deref() == Some("Activating") {
                JobResult::failed(
                    codes::INTERRUPTED,
                    format!(
                        "The worker {} stopped during step {step}; retry from Salesforce",
                        worker.as_deref().unwrap_or("(unknown)")
                    ),
                )
            } else {
                JobResult::Skipped {
                    reason: format!(
                        "The job's worker stopped; Activation_Status__c is {status:?}, not Activating"
                    ),
                }
            };
            record.close(&result);
            // The compare-and-swap at the revision seen stale: of several replicas, and against
            // a worker that wakes up, exactly one write lands.
            let closed = match self.journal().replace(&mut record, revision).await {
                Ok(closed) => closed,
                Err(err) => {
                    tracing::info!(error = %Chain(&err), "Abandoned job changed meanwhile; not reporting it.");
                    return false;
                }
            };
            let span = tracing::Span::current();
            if let JobResult::Failed { code, message } = &result {
                platform::telemetry::record_error(&span, code, message);
            }
            if let Some(report) = Report::of(&record, closed) {
                // Bounded like a worker's report: others may take it over after a lease.
                let deadline = crate::job::report_deadline(self.journal().lease());
                if let Err(err) = self.runner.publisher.report_within(&report, &span, deadline).await {
                    tracing::error!(error = %Chain(&err), "Could not publish the abandoned job's report; the next scan publishes it.");
                }
            }
            self.runner
                .metrics
                .interrupted
                .get_or_create(&ReasonLabel { reason: "lease_expired".to_owned() })
                .inc();
            self.runner.metrics.attempt(result.outcome().as_str(), result.error_code());
            tracing::error!(
                error_code = result.error_code(),
                step = %step,
                worker = ?worker,
                "Job abandoned by its worker; closed by recovery."
            );
            true
        }
        .instrument(span.clone())
        .await
    }
}
