//! The leader's Subscribe sessions: where each starts, the flow control within one, and the
//! reconnect policy between them.

use std::time::Duration;

use platform::backoff::Backoff;
use platform::error::Chain;
use salesforce::pubsub::ReplayStart;
use tokio_util::sync::CancellationToken;

use super::ack_window::AckWindow;
use super::{Ingest, SessionError};
use crate::config::InitialReplay;
use crate::cursor::CursorRead;
use crate::status::SubscriptionState;

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    Stopped,
    ServerClosed,
    Idle,
}

impl Ingest {
    /// Runs sessions until `stop` is cancelled, reconnecting with backoff.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut fallback_to_earliest = false;
        while !stop.is_cancelled() {
            self.status.set_state(SubscriptionState::Connecting);
            let mut received_any = false;
            let result = self
                .session(&stop, fallback_to_earliest, &mut received_any)
                .await;
            if received_any {
                backoff.reset();
                fallback_to_earliest = false;
            }
            let delay = match result {
                Ok(SessionEnd::Stopped) => break,
                Ok(SessionEnd::ServerClosed) => {
                    tracing::info!(channel = %self.settings.channel, "Salesforce closed the Subscribe stream; re-opening.");
                    self.metrics.reconnect("server_closed");
                    (!received_any).then(|| backoff.next_delay())
                }
                Ok(SessionEnd::Idle) => {
                    tracing::warn!(
                        channel = %self.settings.channel,
                        idle_secs = self.settings.stream_idle_timeout.as_secs_f64(),
                        "Subscribe stream sent nothing (no events, no keepalive); treating it as dead and re-opening."
                    );
                    self.metrics.reconnect("idle");
                    None
                }
                Err(err) => {
                    self.metrics.reconnect(err.reason());
                    self.status.set_last_error(Some(Chain(&err).to_string()));
                    match &err {
                        SessionError::PubSub(e) if e.is_invalid_replay_id() => {
                            tracing::error!(
                                channel = %self.settings.channel,
                                error = %Chain(&err),
                                "Salesforce rejected the stored replay id; falling back to EARLIEST (replayed events are de-duplicated)."
                            );
                            self.metrics.replay_id_fallbacks.inc();
                            fallback_to_earliest = true;
                            None
                        }
                        SessionError::NatsDown
                        | SessionError::Publish(_)
                        | SessionError::Cursor(_) => {
                            tracing::warn!(error = %Chain(&err), "JetStream unavailable; Subscribe session ended, resuming from the stored cursor.");
                            Some(backoff.next_delay())
                        }
                        SessionError::PubSub(e) if e.is_auth_rejected() => {
                            // The client dropped the rejected token (PubSubClient), so the next
                            // Subscribe signs a new assertion instead of retrying a dead session.
                            self.health.set_down("salesforce", e.to_string());
                            tracing::warn!(error = %Chain(&err), "Salesforce rejected the access token; re-subscribing with a new one.");
                            Some(backoff.next_delay())
                        }
                        SessionError::PubSub(e) => {
                            self.health.set_down("salesforce", e.to_string());
                            tracing::warn!(error = %Chain(&err), transient = e.is_transient(), "Subscribe session failed.");
                            Some(backoff.next_delay())
                        }
                    }
                }
            };
            if let Some(delay) = delay {
                self.status.set_state(SubscriptionState::Backoff);
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    "Waiting before re-subscribing."
                );
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    fn replay_start(&self, stored: &CursorRead, fallback_to_earliest: bool) -> ReplayStart {
        if fallback_to_earliest {
            return ReplayStart::Earliest;
        }
        match stored {
            CursorRead::Valid { replay_id, .. } => ReplayStart::After(replay_id.clone()),
            CursorRead::Unreadable(err) => {
                // Something was stored, so the bridge has run before and SF_EVENTS_REPLAY=LATEST
                // would skip whatever arrived since. EARLIEST is the only safe start; what was
                // already stored is recognised by the stream (Nats-Msg-Id).
                tracing::error!(
                    key = %self.cursor.key(),
                    error = %Chain(err),
                    "Stored replay cursor is unreadable; starting from EARLIEST (replayed events are de-duplicated)."
                );
                self.metrics.cursor_unreadable.inc();
                ReplayStart::Earliest
            }
            CursorRead::Absent => self.initial_start(),
        }
    }

    fn initial_start(&self) -> ReplayStart {
        match self.settings.initial_replay {
            InitialReplay::Latest => ReplayStart::Latest,
            InitialReplay::All => ReplayStart::Earliest,
        }
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        fallback_to_earliest: bool,
        received_any: &mut bool,
    ) -> Result<SessionEnd, SessionError> {
        if !platform::nats::is_connected(&self.nats) {
            return Err(SessionError::NatsDown);
        }
        let stored = self.cursor.read().await?;
        let mut window = match &stored {
            CursorRead::Valid { cursor, replay_id } => {
                self.status.set_cursor(cursor);
                AckWindow::new(Some(replay_id.clone()))
            }
            CursorRead::Absent | CursorRead::Unreadable(_) => AckWindow::new(None),
        };
        let start = self.replay_start(&stored, fallback_to_earliest);
        let batch = self.settings.batch;
        tracing::info!(channel = %self.settings.channel, ?start, batch, "Opening Subscribe stream.");
        let mut subscription = self
            .client
            .subscribe(&self.settings.channel, &start, batch as i32)
            .await?;
        let mut outstanding = batch;
        let mut idle_deadline = tokio::time::Instant::now() + self.settings.stream_idle_timeout;

        let result = loop {
            self.metrics.in_flight.set(window.len() as i64);
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ok(SessionEnd::Stopped),
                Some(acked) = window.next(), if !window.is_empty() => {
                    if let Err(err) = self.on_ack(acked, &mut window) {
                        break Err(err);
                    }
                    if window.flush_due(self.settings.cursor_flush_interval) {
                        // Every exit goes through the settling below (no `?` in this loop).
                        if let Err(err) = self.flush_cursor(&mut window).await {
                            break Err(err);
                        }
                    }
                }
                response = subscription.next() => {
                    let response = match response {
                        Ok(Some(response)) => response,
                        Ok(None) => break Ok(SessionEnd::ServerClosed),
                        Err(err) => break Err(err.into()),
                    };
                    if !*received_any {
                        *received_any = true;
                        self.status.set_state(SubscriptionState::Subscribed);
                        self.status.set_last_error(None);
                        self.health.set_up("salesforce");
                    }
                    idle_deadline = tokio::time::Instant::now() + self.settings.stream_idle_timeout;
                    let delivered = u32::try_from(response.events.len()).unwrap_or(u32::MAX);
                    outstanding = outstanding.saturating_sub(delivered);
                    if response.events.is_empty() {
                        self.metrics.keepalives.inc();
                        if window.advance_to_keepalive(&response.latest_replay_id) {
                            if let Err(err) = self.flush_cursor(&mut window).await {
                                break Err(err);
                            }
                        }
                    }
                    let mut failed = None;
                    // One time for the response: its events arrived together (and formatting
                    // the time per event cost as much as the log line's timestamp).
                    let received_at = messages::bodies::rfc3339(time::OffsetDateTime::now_utc());
                    if !response.events.is_empty() {
                        self.status.batch_received(&received_at);
                    }
                    for consumer_event in response.events {
                        match self.dispatch(consumer_event, &received_at).await {
                            Ok(future) => window.push(future),
                            Err(err) => {
                                failed = Some(err);
                                break;
                            }
                        }
                    }
                    if let Some(err) = failed {
                        break Err(err);
                    }
                }
                () = tokio::time::sleep_until(idle_deadline) => break Ok(SessionEnd::Idle),
            }
            // Top up at half the batch, unless JetStream is behind.
            if outstanding <= batch / 2
                && window.len() + (batch as usize) <= self.settings.max_in_flight
            {
                let more = batch - outstanding;
                if let Err(err) = subscription.request(more as i32).await {
                    break Err(err.into());
                }
                outstanding = batch;
            }
        };

        // Whatever ended the session, settle what was handed to JetStream so the cursor covers
        // every event that was stored.
        self.drain(&mut window).await;
        self.metrics.in_flight.set(0);
        if let Err(err) = self.flush_cursor(&mut window).await {
            tracing::warn!(error = %Chain(&err), "Could not store the cursor at the end of the session.");
        }
        result
    }
}
