//! One leader's work: Subscribe sessions, one after another, until told to stop.
//!
//! Within a session:
//! - **Flow control.** The first FetchRequest asks for `SF_PUBSUB_BATCH` events; whenever half of
//!   them have arrived the request is topped up to the batch again, so the stream never runs dry
//!   (Salesforce closes a stream that has nothing outstanding for 60 s) and never has more than a
//!   batch outstanding. No top-up while too many publishes await their ack: a slow JetStream
//!   slows the intake instead of filling memory.
//! - **Publishing.** Each event is published with `Nats-Msg-Id` = its event id and its ack
//!   future queued in arrival order. Acks are awaited as a window, not one at a time.
//! - **Cursor.** Only the replay id of the newest event whose ack arrived *together with every
//!   earlier one* (the queue is ordered) is written, at most every `cursor_flush_interval` and
//!   whenever the window empties. With nothing in flight, a keepalive's `latest_replay_id` is
//!   written, so an idle channel's cursor keeps up with Salesforce.
//! - **Failures.** A publish that fails transiently (ack timeout, no responders while the stream
//!   elects a leader, NATS disconnected) ends the session, and from then on nothing moves the
//!   cursor in that session, not even acks of later events that did succeed ([`CursorProgress`]):
//!   the next session replays from before the failed event and the stream de-duplicates what was
//!   stored. A publish JetStream refuses for good (the message exceeds the stream's
//!   `max_msg_size`, say) can never succeed: the event is dead-lettered with the server's reason
//!   instead, and the cursor moves past it like past any other dead letter.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage as Publish;
use base64::Engine;
use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use messages::{DeadLetterOrigin, DeadLetterV1};
use platform::backoff::Backoff;
use platform::error::Chain;
use pubsub_proto::ConsumerEvent;
use salesforce::pubsub::{PubSubClient, PubSubError, ReplayStart};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{BridgeSettings, InitialReplay};
use crate::cursor::{CursorError, CursorProgress, CursorRead, CursorStore, Position};
use crate::event::{self, EventEnvelope, PoisonReason};
use crate::metrics::BridgeMetrics;
use crate::status::{BridgeStatus, SubscriptionState};

const SERVICE: &str = "sf-bridge";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    #[error("a publish to JetStream failed")]
    Publish(#[source] PublishFailure),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("NATS is not connected")]
    NatsDown,
}

impl SessionError {
    fn reason(&self) -> &'static str {
        match self {
            Self::PubSub(e) if e.is_invalid_replay_id() => "replay_id_invalid",
            Self::PubSub(e) if e.is_auth_rejected() => "auth",
            Self::PubSub(_) => "pubsub_error",
            Self::Publish(_) => "publish_failed",
            Self::Cursor(_) => "cursor_store",
            Self::NatsDown => "nats_down",
        }
    }
}

/// Why a message did not reach JetStream.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("JetStream did not store the message")]
    Nats(#[source] PublishError),
    #[error("cannot encode the message body")]
    Encode(#[source] serde_json::Error),
}

/// JetStream error codes that refuse a message for what it *is*, so that publishing it again
/// can never succeed: it must be dead-lettered. Everything else (no responders or a timeout
/// while a stream elects its leader, a full stream or account, a sealed stream, NATS down) is a
/// state of the system that passes or that an operator fixes, and the event waits for it.
/// The bridge sets no expectations (last sequence, last msg id, TTL, counters, batches), so the
/// codes those produce cannot occur.
const PERMANENT_REFUSALS: [jetstream::ErrorCode; 2] = [
    // "message size exceeds maximum allowed": larger than the stream's max_msg_size.
    jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
    // "header size exceeds maximum allowed of 64k".
    jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
];

/// The server's description when `err` refuses the message for good, `None` when a later
/// attempt may succeed.
fn permanent_refusal(err: &PublishError) -> Option<String> {
    match err.kind() {
        // Larger than the server's max_payload: checked by the client before sending.
        PublishErrorKind::MaxPayloadExceeded => Some(err.to_string()),
        PublishErrorKind::Other => std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .filter(|api| PERMANENT_REFUSALS.contains(&api.error_code()))
            .map(ToString::to_string),
        _ => None,
    }
}

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    Stopped,
    ServerClosed,
    Idle,
}

/// An event handed to JetStream, waiting for its ack.
struct InFlight {
    replay_id: Vec<u8>,
    event_id: Option<String>,
    /// For the log line at ack time (the span is trace-only, not formatted in logs).
    order_id: Option<String>,
    correlation_id: String,
    kind: InFlightKind,
    span: tracing::Span,
}

enum InFlightKind {
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

/// What a dead letter is made of, besides the reason.
struct Original {
    event: pubsub_proto::ProducerEvent,
    received_at: String,
}

/// The ack of one in-flight message. A refused requested event resolves to its dead letter's ack.
struct Acked {
    entry: InFlight,
    result: Result<jetstream::publish::PublishAck, PublishFailure>,
}

type AckFuture = Pin<Box<dyn Future<Output = Acked> + Send>>;

/// Publishes dead letters. Cheap to clone, so that an ack future can set its event aside itself:
/// the dead letter's ack then takes the event's place in the ordered queue, and the cursor moves
/// past the event only once its dead letter is stored.
#[derive(Clone)]
struct DeadLetters {
    js: jetstream::Context,
    channel: String,
}

pub struct Ingest {
    settings: Arc<BridgeSettings>,
    client: Arc<PubSubClient>,
    nats: async_nats::Client,
    js: jetstream::Context,
    dead_letters: DeadLetters,
    cursor: CursorStore,
    status: Arc<BridgeStatus>,
    metrics: BridgeMetrics,
    health: Arc<platform::http::Health>,
}

impl Ingest {
    pub fn new(
        settings: Arc<BridgeSettings>,
        client: Arc<PubSubClient>,
        nats: async_nats::Client,
        cursor: CursorStore,
        status: Arc<BridgeStatus>,
        metrics: BridgeMetrics,
        health: Arc<platform::http::Health>,
    ) -> Self {
        let js = jetstream::new(nats.clone());
        let dead_letters = DeadLetters {
            js: js.clone(),
            channel: settings.channel.clone(),
        };
        Self {
            settings,
            client,
            nats,
            js,
            dead_letters,
            cursor,
            status,
            metrics,
            health,
        }
    }

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
        let mut progress = match &stored {
            CursorRead::Valid { cursor, replay_id } => {
                self.status.set_cursor(cursor.view());
                CursorProgress::new(Some(replay_id.clone()))
            }
            CursorRead::Absent | CursorRead::Unreadable(_) => CursorProgress::new(None),
        };
        let start = self.replay_start(&stored, fallback_to_earliest);
        let batch = self.settings.batch;
        tracing::info!(channel = %self.settings.channel, ?start, batch, "Opening Subscribe stream.");
        let mut subscription = self
            .client
            .subscribe(&self.settings.channel, &start, batch as i32)
            .await?;
        let mut outstanding = batch;
        let mut in_flight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
        let mut idle_deadline = tokio::time::Instant::now() + self.settings.stream_idle_timeout;

        let result = loop {
            self.metrics.in_flight.set(in_flight.len() as i64);
            tokio::select! {
                biased;
                () = stop.cancelled() => break Ok(SessionEnd::Stopped),
                Some(acked) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Err(err) = self.on_ack(acked, &mut progress) {
                        break Err(err);
                    }
                    if in_flight.is_empty() || progress.flush_due(self.settings.cursor_flush_interval) {
                        // Every exit goes through the settling below (no `?` in this loop).
                        if let Err(err) = self.flush_cursor(&mut progress).await {
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
                        if progress.advance_to_keepalive(&response.latest_replay_id, in_flight.is_empty()) {
                            if let Err(err) = self.flush_cursor(&mut progress).await {
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
                            Ok(future) => in_flight.push_back(future),
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
                && in_flight.len() + (batch as usize) <= self.settings.max_in_flight
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
        self.drain(&mut in_flight, &mut progress).await;
        self.metrics.in_flight.set(0);
        if let Err(err) = self.flush_cursor(&mut progress).await {
            tracing::warn!(error = %Chain(&err), "Could not store the cursor at the end of the session.");
        }
        result
    }

    /// Settles what is in flight (up to 10 s). After a failed ack nothing moves the cursor any
    /// more ([`CursorProgress`]), but the later acks are still awaited: their events are stored
    /// (and counted), and a refused event's dead letter is still written.
    async fn drain(
        &self,
        in_flight: &mut FuturesOrdered<AckFuture>,
        progress: &mut CursorProgress,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(acked)) = tokio::time::timeout_at(deadline, in_flight.next()).await {
            // A failure is logged by on_ack and halts the cursor; the session is ending anyway.
            let _ = self.on_ack(acked, progress);
        }
        if !in_flight.is_empty() {
            tracing::warn!(
                unsettled = in_flight.len(),
                "Publishes still unacknowledged after 10 s; the cursor stays before them."
            );
        }
    }

    fn on_ack(&self, acked: Acked, progress: &mut CursorProgress) -> Result<(), SessionError> {
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

    async fn flush_cursor(&self, progress: &mut CursorProgress) -> Result<(), SessionError> {
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
                self.status.set_cursor(stored.view());
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

    /// Decodes one event and hands it (or its dead letter) to JetStream; returns the ack future.
    /// Errors only when the session must end (Salesforce or NATS unavailable).
    async fn dispatch(
        &self,
        consumer_event: ConsumerEvent,
        received_at: &str,
    ) -> Result<AckFuture, SessionError> {
        self.metrics.events_received.inc();
        self.status.count_received();
        let replay_id = consumer_event.replay_id;
        let event = consumer_event.event.unwrap_or_default();
        let envelope = EventEnvelope {
            event_id: &event.id,
            replay_id: &replay_id,
            schema_id: &event.schema_id,
            channel: &self.settings.channel,
            received_at,
        };
        let decoded = self.decode(&event).await?;
        let outcome = decoded.and_then(|record| {
            if event.id.trim().is_empty() || event.id.parse::<async_nats::HeaderValue>().is_err() {
                return Err(PoisonReason::EventIdMissing);
            }
            let created_ms = event::created_epoch_ms(&record);
            event::to_requested(&envelope, record).map(|body| (body, created_ms))
        });
        let original = Box::new(Original {
            event,
            received_at: received_at.to_owned(),
        });
        let sent = match outcome {
            Ok((body, created_ms)) => {
                self.publish_requested(body, replay_id, created_ms, original)
                    .await
            }
            Err(reason) => self.dead_letters.send(&original, replay_id, &reason).await,
        };
        sent.map_err(SessionError::Publish)
    }

    async fn decode(
        &self,
        event: &pubsub_proto::ProducerEvent,
    ) -> Result<Result<serde_json::Map<String, serde_json::Value>, PoisonReason>, SessionError>
    {
        let schema = match self.client.schema(&event.schema_id).await {
            Ok(schema) => schema,
            Err(err @ PubSubError::Schema { .. }) => {
                return Ok(Err(PoisonReason::SchemaUnavailable {
                    schema_id: event.schema_id.clone(),
                    detail: err.to_string(),
                }))
            }
            Err(PubSubError::Status {
                code: tonic::Code::NotFound | tonic::Code::InvalidArgument,
                message,
                ..
            }) => {
                return Ok(Err(PoisonReason::SchemaUnavailable {
                    schema_id: event.schema_id.clone(),
                    detail: message,
                }))
            }
            Err(err) => return Err(err.into()),
        };
        Ok(
            salesforce::avro::decode_record(&schema, &event.payload).map_err(|e| {
                PoisonReason::AvroDecode {
                    schema_id: event.schema_id.clone(),
                    detail: e.to_string(),
                }
            }),
        )
    }

    async fn publish_requested(
        &self,
        body: messages::ProvisioningRequestedV1,
        replay_id: Vec<u8>,
        created_ms: Option<i64>,
        original: Box<Original>,
    ) -> Result<AckFuture, PublishFailure> {
        let subject = messages::subjects::provisioning_requested(&body.order_id);
        // Trace-only: without an exporter it would be made, filled and dropped for nothing
        // (the log lines carry their own fields).
        let span = if !platform::telemetry::traces_exported() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
            target: platform::telemetry::TRACE_ONLY,
            parent: None,
            "provisioning.requested send",
            otel.kind = "producer",
            otel.name = %format!("send {}", messages::subjects::PROVISIONING_REQUESTED_PREFIX),
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = %subject,
            messaging.operation.name = "send",
            messaging.message.id = %body.event_id,
            order_id = %body.order_id,
            correlation_id = %body.correlation_id,
            event.id = %body.event_id,
            salesforce.replay_id = %body.replay_id,
            )
        };
        // The order's trace starts here; the span and everything beneath it carry `order.id`
        // and `correlation.id`.
        platform::telemetry::join_order(
            &span,
            None,
            Some(&body.order_id),
            Some(&body.correlation_id),
        );
        let mut headers = async_nats::HeaderMap::new();
        platform::nats::insert_header(
            &mut headers,
            messages::headers::CORRELATION_ID,
            &body.correlation_id,
        );
        platform::nats::insert_header(
            &mut headers,
            messages::headers::SCHEMA,
            messages::ProvisioningRequestedV1::SCHEMA,
        );
        platform::telemetry::inject_trace_context(&span, &mut headers);
        // A contract body is a few hundred bytes: one allocation instead of a doubling series.
        let mut payload = Vec::with_capacity(768);
        serde_json::to_writer(&mut payload, &body).map_err(PublishFailure::Encode)?;
        let publish = Publish::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(body.event_id.as_str());
        // The body is serialised: its ids move to the log line at ack time, not copied.
        let messages::ProvisioningRequestedV1 {
            event_id,
            order_id,
            correlation_id,
            ..
        } = body;
        let entry = InFlight {
            replay_id,
            event_id: Some(event_id),
            order_id: Some(order_id),
            correlation_id,
            kind: InFlightKind::Requested {
                created_ms,
                original,
            },
            span: span.clone(),
        };
        let ack = send(&self.js, subject, publish, entry)
            .instrument(span)
            .await?;
        let dead_letters = self.dead_letters.clone();
        Ok(Box::pin(async move {
            let acked = ack.await;
            let detail = match &acked.result {
                Err(PublishFailure::Nats(err)) => permanent_refusal(err),
                _ => None,
            };
            match (detail, acked.entry.kind) {
                (Some(detail), InFlightKind::Requested { original, .. }) => {
                    // Publishing it again can never succeed: set it aside, so that it is
                    // accounted for and the stream moves on (docs/contract.md §5 rule 5).
                    let reason = PoisonReason::PublishRefused { detail };
                    // Boxed: this rare path's state would otherwise be part of every
                    // in-flight event's future (a thousand of them in the window).
                    match Box::pin(dead_letters.send(&original, acked.entry.replay_id, &reason))
                        .await
                    {
                        Ok(dead_letter_ack) => dead_letter_ack.await,
                        Err(err) => Acked {
                            entry: dead_letters.entry(&original, Vec::new(), &reason),
                            result: Err(err),
                        },
                    }
                }
                (_, kind) => Acked {
                    entry: InFlight {
                        kind,
                        ..acked.entry
                    },
                    result: acked.result,
                },
            }
        }))
    }
}

impl DeadLetters {
    /// The in-flight record of a dead letter (replay id, ids for logs, span).
    fn entry(&self, original: &Original, replay_id: Vec<u8>, reason: &PoisonReason) -> InFlight {
        let event = &original.event;
        let b64 = base64::engine::general_purpose::STANDARD;
        let replay_b64 = b64.encode(&replay_id);
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::warn_span!(
            target: platform::telemetry::TRACE_ONLY,
            parent: None,
            "provisioning.deadletter send",
            otel.kind = "producer",
            otel.name = %format!("send {}", messages::subjects::DEADLETTER_PREFIX),
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %messages::subjects::deadletter(SERVICE),
            correlation_id = %correlation_id,
            event.id = %event.id,
            salesforce.replay_id = %replay_b64,
            reason = reason.code(),
        );
        platform::telemetry::join_order(&span, None, None, Some(&correlation_id));
        platform::telemetry::record_error(&span, reason.code(), &reason.to_string());
        InFlight {
            replay_id,
            event_id: (!event.id.is_empty()).then(|| event.id.clone()),
            order_id: None,
            correlation_id,
            kind: InFlightKind::DeadLetter {
                reason: reason.code(),
            },
            span,
        }
    }

    /// Publishes the dead letter of `original` (its bytes in base64, the reason, where it came
    /// from) on `provisioning.deadletter.sf-bridge`.
    async fn send(
        &self,
        original: &Original,
        replay_id: Vec<u8>,
        reason: &PoisonReason,
    ) -> Result<AckFuture, PublishFailure> {
        let event = &original.event;
        let b64 = base64::engine::general_purpose::STANDARD;
        let replay_b64 = b64.encode(&replay_id);
        let entry = self.entry(original, replay_id, reason);
        let span = entry.span.clone();
        span.in_scope(|| {
            tracing::error!(
                reason = reason.code(),
                detail = %reason,
                channel = %self.channel,
                event_id = %event.id,
                replay_id = %replay_b64,
                correlation_id = %entry.correlation_id,
                "Platform Event cannot be provisioned; setting it aside."
            );
        });
        let mut body = DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: SERVICE.to_owned(),
            reason: reason.to_string(),
            reason_code: reason.code().to_owned(),
            payload_base64: String::new(),
            origin: DeadLetterOrigin {
                channel: Some(self.channel.clone()),
                replay_id: Some(replay_b64.clone()),
                event_id: (!event.id.is_empty()).then(|| event.id.clone()),
                schema_id: (!event.schema_id.is_empty()).then(|| event.schema_id.clone()),
                ..Default::default()
            },
            dead_lettered_at: original.received_at.clone(),
        };
        // An event close to Salesforce's 1 MB does not fit whole once in base64: a dead letter
        // that cannot be published would hold the cursor on this event for good.
        body.set_payload(&event.payload, platform::deadletter::max_payload(&self.js));
        let mut headers = async_nats::HeaderMap::new();
        platform::nats::insert_header(
            &mut headers,
            messages::headers::CORRELATION_ID,
            &entry.correlation_id,
        );
        platform::nats::insert_header(
            &mut headers,
            messages::headers::SCHEMA,
            DeadLetterV1::SCHEMA,
        );
        platform::telemetry::inject_trace_context(&span, &mut headers);
        // The replay id identifies the delivery even when the event id is unusable; it also
        // makes a replayed dead letter a duplicate the stream recognises.
        let message_id = format!("{SERVICE}:{replay_b64}");
        let payload = serde_json::to_vec(&body).map_err(PublishFailure::Encode)?;
        let publish = Publish::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(message_id.as_str());
        send(
            &self.js,
            messages::subjects::deadletter(SERVICE),
            publish,
            entry,
        )
        .instrument(span)
        .await
    }
}

/// Hands a message to JetStream and returns the future of its ack. A message refused for good
/// before it is even sent (larger than the server's max_payload) resolves at once to that
/// refusal, so it is handled in order like a refusal by the stream; a transient failure to send
/// ends the session here.
async fn send(
    js: &jetstream::Context,
    subject: String,
    publish: Publish,
    entry: InFlight,
) -> Result<AckFuture, PublishFailure> {
    match js.send_publish(subject, publish).await {
        Ok(ack) => Ok(Box::pin(async move {
            let result = ack.await.map_err(PublishFailure::Nats);
            Acked { entry, result }
        })),
        Err(err) if permanent_refusal(&err).is_some() => {
            let result = Err(PublishFailure::Nats(err));
            Ok(Box::pin(std::future::ready(Acked { entry, result })))
        }
        Err(err) => Err(PublishFailure::Nats(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(err_code: u64, description: &str) -> PublishError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": err_code, "description": description
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn refusals_for_what_the_message_is_are_permanent() {
        let too_big = api_error(10054, "message size exceeds maximum allowed");
        let detail = permanent_refusal(&too_big).unwrap();
        assert!(
            detail.contains("message size exceeds maximum allowed") && detail.contains("10054"),
            "{detail}"
        );
        assert!(permanent_refusal(&api_error(10097, "header size exceeds maximum")).is_some());
        assert!(
            permanent_refusal(&PublishError::new(PublishErrorKind::MaxPayloadExceeded)).is_some()
        );
    }

    #[test]
    fn states_of_the_system_are_transient() {
        for kind in [
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert_eq!(permanent_refusal(&PublishError::new(kind)), None);
        }
        // Resources exhausted, store failed (maximum messages/bytes), sealed stream.
        for code in [10047, 10077, 10109, 10158] {
            assert_eq!(permanent_refusal(&api_error(code, "x")), None, "{code}");
        }
    }
}
