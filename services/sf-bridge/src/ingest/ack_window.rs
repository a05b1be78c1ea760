//! The ack window: publishes in flight, acknowledged in arrival order, and the cursor progress
//! those acks allow.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use platform::error::Chain;

use super::publish::{Original, PublishFailure};
use super::{Ingest, SessionError};
use crate::cursor::{CursorProgress, Position};

/// An event handed to JetStream, waiting for its ack.
pub(super) struct InFlight {
    pub(super) replay_id: Vec<u8>,
    pub(super) event_id: Option<String>,
    /// For the log line at ack time (the span is trace-only, not formatted in logs).
    pub(super) order_id: Option<String>,
    pub(super) correlation_id: String,
    pub(super) kind: InFlightKind,
    pub(super) span: tracing::Span,
}

pub(super) enum InFlightKind {
    /// The event as Salesforce sent it is kept until the ack, so that a refusal can still
    /// dead-letter the original bytes.
    Requested {
        created_ms: Option<i64>,
        original: Box<Original>,
    },
    DeadLetter {
        reason: &'static str,
    },
}

/// The ack of one in-flight message. A refused requested event resolves to its dead letter's ack.
pub(super) struct Acked {
    pub(super) entry: InFlight,
    pub(super) result: Result<jetstream::publish::PublishAck, PublishFailure>,
}

pub(super) type AckFuture = Pin<Box<dyn Future<Output = Acked> + Send>>;

/// One session's publishes in flight, in arrival order, and the cursor progress their acks
/// allow: an ack moves the cursor only once every earlier one has arrived.
pub(super) struct AckWindow {
    in_flight: FuturesOrdered<AckFuture>,
    progress: CursorProgress,
}

impl AckWindow {
    /// A window that starts from the stored cursor's replay id (`None` when there is none).
    pub(super) fn new(saved: Option<Vec<u8>>) -> Self {
        Self {
            in_flight: FuturesOrdered::new(),
            progress: CursorProgress::new(saved),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    pub(super) fn push(&mut self, ack: AckFuture) {
        self.in_flight.push_back(ack);
    }

    /// The oldest publish's ack; `None` at once when nothing is in flight.
    pub(super) async fn next(&mut self) -> Option<Acked> {
        self.in_flight.next().await
    }

    /// Whether the cursor is due to be written: the window emptied, or `interval` has passed
    /// since the last write.
    pub(super) fn flush_due(&self, interval: Duration) -> bool {
        self.in_flight.is_empty() || self.progress.flush_due(interval)
    }

    /// Moves the cursor to a keepalive's `latest_replay_id`, only with nothing in flight (an
    /// event in flight lies before it). Whether there is something to write.
    pub(super) fn advance_to_keepalive(&mut self, latest_replay_id: &[u8]) -> bool {
        self.progress
            .advance_to_keepalive(latest_replay_id, self.in_flight.is_empty())
    }
}

/// How long a session's end (a shutdown included) waits for the publishes in flight to be
/// acknowledged before it stores the cursor and lets go of the lease.
pub const PUBLISH_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

impl Ingest {
    /// Settles what is in flight (up to [`PUBLISH_DRAIN_DEADLINE`]). After a failed ack nothing moves the cursor any
    /// more ([`CursorProgress`]), but the later acks are still awaited: their events are stored
    /// (and counted), and a refused event's dead letter is still written.
    pub(super) async fn drain(&self, window: &mut AckWindow) {
        let deadline = tokio::time::Instant::now() + PUBLISH_DRAIN_DEADLINE;
        while let Ok(Some(acked)) = tokio::time::timeout_at(deadline, window.next()).await {
            // A failure is logged by on_ack and halts the cursor; the session is ending anyway.
            let _ = self.on_ack(acked, window);
        }
        if !window.is_empty() {
            tracing::warn!(
                unsettled = window.len(),
                "Publishes still unacknowledged after 10 s; the cursor stays before them."
            );
        }
    }

    pub(super) fn on_ack(&self, acked: Acked, window: &mut AckWindow) -> Result<(), SessionError> {
        let progress = &mut window.progress;
        let Acked { entry, result } = acked;
        let _entered = entry.span.enter();
        let ack = match result {
            Ok(ack) => ack,
            Err(err) => {
                if progress.is_halted() {
                    // The session is already settling after an earlier failure (NATS gone, say,
                    // failing every ack in flight): one warning is enough.
                    tracing::debug!(error = %Chain(&err), event_id = entry.event_id.as_deref(), "Publish after the failed one failed too.");
                } else {
                    tracing::warn!(
                        error = %Chain(&err),
                        event_id = entry.event_id.as_deref(),
                        order_id = entry.order_id.as_deref(),
                        "Publish to JetStream failed; the cursor stays before this event and the next session replays it."
                    );
                }
                progress.on_ack_failed();
                return Err(SessionError::Publish(err));
            }
        };
        match entry.kind {
            InFlightKind::Requested { created_ms, .. } => {
                if ack.duplicate {
                    self.metrics.events_duplicate.inc();
                    tracing::info!(
                        order_id = entry.order_id.as_deref(),
                        correlation_id = %entry.correlation_id,
                        event_id = entry.event_id.as_deref(),
                        stream_sequence = ack.sequence,
                        "Platform Event already enqueued; duplicate ignored by JetStream."
                    );
                } else {
                    self.metrics.events_published.inc();
                    self.status.events_published.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        order_id = entry.order_id.as_deref(),
                        correlation_id = %entry.correlation_id,
                        event_id = entry.event_id.as_deref(),
                        stream_sequence = ack.sequence,
                        "Platform Event enqueued for provisioning"
                    );
                }
                if let Some(ms) = created_ms {
                    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
                    let lag = (now_ms - i128::from(ms)).max(0) as f64 / 1000.0;
                    self.metrics.event_lag_seconds.observe(lag);
                }
            }
            InFlightKind::DeadLetter { reason } => {
                if !ack.duplicate {
                    self.metrics.dead_lettered(reason);
                    self.status
                        .events_dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(
                    reason,
                    correlation_id = %entry.correlation_id,
                    event_id = entry.event_id.as_deref(),
                    stream_sequence = ack.sequence,
                    "Platform Event set aside on the dead-letter subject."
                );
            }
        }
        if !progress.on_ack_ok(Position {
            replay_id: entry.replay_id,
            event_id: entry.event_id,
        }) {
            tracing::debug!("Acknowledged after an earlier publish failed; the cursor stays before the failed event.");
        }
        Ok(())
    }

    /// Writes the position the acks reached, when it moved since the last write.
    pub(super) async fn flush_cursor(&self, window: &mut AckWindow) -> Result<(), SessionError> {
        let progress = &mut window.progress;
        let Some(position) = progress.take_unsaved() else {
            return Ok(());
        };
        match self
            .cursor
            .save(&position.replay_id, position.event_id.as_deref())
            .await
        {
            Ok(stored) => {
                self.metrics.cursor_writes.inc();
                self.metrics
                    .cursor_updated_timestamp
                    .set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
                self.metrics.cursor_age.touch();
                self.status.set_cursor(&stored);
                progress.written(position, Instant::now());
                Ok(())
            }
            Err(err) => {
                // Keep it for the next attempt; events stay de-duplicated if we crash first.
                progress.write_failed(position);
                Err(err.into())
            }
        }
    }
}
