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
//! - **Failures.** A publish that fails ends the session: the cursor stays before the failed
//!   event, the next session replays from there, and the stream de-duplicates what was stored.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage as Publish;
use base64::Engine;
use futures::stream::FuturesOrdered;
use futures::{Future, StreamExt};
use messages::{DeadLetterOrigin, DeadLetterV1};
use platform::backoff::Backoff;
use pubsub_proto::ConsumerEvent;
use salesforce::pubsub::{PubSubClient, PubSubError, ReplayStart};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{BridgeSettings, InitialReplay};
use crate::cursor::{CursorError, CursorStore};
use crate::event::{self, EventEnvelope, PoisonReason};
use crate::metrics::BridgeMetrics;
use crate::status::{BridgeStatus, SubscriptionState};

const SERVICE: &str = "sf-bridge";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    #[error("JetStream did not acknowledge a publish: {0}")]
    Publish(String),
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
    Requested { created_ms: Option<i64> },
    DeadLetter { reason: &'static str },
}

type AckFuture = Pin<
    Box<dyn Future<Output = (InFlight, Result<jetstream::publish::PublishAck, String>)> + Send>,
>;

/// The newest replay id whose ack arrived in order, and what is already stored.
#[derive(Default)]
struct CursorProgress {
    acked: Option<(Vec<u8>, Option<String>)>,
    saved: Option<Vec<u8>>,
    last_write: Option<Instant>,
}

pub struct Ingest {
    settings: Arc<BridgeSettings>,
    client: Arc<PubSubClient>,
    nats: async_nats::Client,
    js: jetstream::Context,
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
        Self {
            settings,
            client,
            nats,
            js,
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
                    self.status.set_last_error(Some(err.to_string()));
                    match &err {
                        SessionError::PubSub(e) if e.is_invalid_replay_id() => {
                            tracing::error!(
                                channel = %self.settings.channel,
                                error = %err,
                                "Salesforce rejected the stored replay id; falling back to EARLIEST (replayed events are de-duplicated)."
                            );
                            self.metrics.replay_id_fallbacks.inc();
                            fallback_to_earliest = true;
                            None
                        }
                        SessionError::NatsDown
                        | SessionError::Publish(_)
                        | SessionError::Cursor(_) => {
                            tracing::warn!(error = %err, "JetStream unavailable; Subscribe session ended, resuming from the stored cursor.");
                            Some(backoff.next_delay())
                        }
                        SessionError::PubSub(e) => {
                            self.health.set_down("salesforce", e.to_string());
                            tracing::warn!(error = %err, transient = e.is_transient(), "Subscribe session failed.");
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

    fn replay_start(
        &self,
        stored: Option<&crate::cursor::StoredCursor>,
        fallback_to_earliest: bool,
    ) -> ReplayStart {
        if fallback_to_earliest {
            return ReplayStart::Earliest;
        }
        match stored.map(crate::cursor::StoredCursor::replay_id_bytes) {
            Some(Ok(bytes)) if !bytes.is_empty() => ReplayStart::After(bytes),
            Some(_) => {
                tracing::error!(
                    "Stored replay cursor is not valid base64; starting from SF_EVENTS_REPLAY."
                );
                self.initial_start()
            }
            None => self.initial_start(),
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
        let stored = self.cursor.load().await?;
        let mut progress = CursorProgress::default();
        if let Some(cursor) = &stored {
            self.status.set_cursor(cursor.view());
            progress.saved = cursor.replay_id_bytes().ok();
        }
        let start = self.replay_start(stored.as_ref(), fallback_to_earliest);
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
                Some((entry, ack)) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Err(err) = self.on_ack(entry, ack, &mut progress) {
                        break Err(err);
                    }
                    if in_flight.is_empty() || self.flush_due(&progress) {
                        self.flush_cursor(&mut progress).await?;
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
                        if in_flight.is_empty() && progress.acked.is_none() && !response.latest_replay_id.is_empty()
                            && progress.saved.as_deref() != Some(response.latest_replay_id.as_slice())
                        {
                            progress.acked = Some((response.latest_replay_id.clone(), None));
                            self.flush_cursor(&mut progress).await?;
                        }
                    }
                    let mut failed = None;
                    for consumer_event in response.events {
                        match self.dispatch(consumer_event).await {
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
                subscription.request(more as i32).await?;
                outstanding = batch;
            }
        };

        // Whatever ended the session, settle what was handed to JetStream so the cursor covers
        // every event that was stored.
        self.drain(&mut in_flight, &mut progress).await;
        self.metrics.in_flight.set(0);
        if let Err(err) = self.flush_cursor(&mut progress).await {
            tracing::warn!(error = %err, "Could not store the cursor at the end of the session.");
        }
        result
    }

    fn flush_due(&self, progress: &CursorProgress) -> bool {
        progress
            .last_write
            .is_none_or(|at| at.elapsed() >= self.settings.cursor_flush_interval)
    }

    async fn drain(
        &self,
        in_flight: &mut FuturesOrdered<AckFuture>,
        progress: &mut CursorProgress,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some((entry, ack))) = tokio::time::timeout_at(deadline, in_flight.next()).await
        {
            if self.on_ack(entry, ack, progress).is_err() {
                // Nothing after a failed publish may move the cursor.
                break;
            }
        }
    }

    fn on_ack(
        &self,
        entry: InFlight,
        ack: Result<jetstream::publish::PublishAck, String>,
        progress: &mut CursorProgress,
    ) -> Result<(), SessionError> {
        let _entered = entry.span.enter();
        let ack = ack.map_err(|e| {
            tracing::warn!(error = %e, "Publish to JetStream failed.");
            SessionError::Publish(e)
        })?;
        match entry.kind {
            InFlightKind::Requested { created_ms } => {
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
        progress.acked = Some((entry.replay_id, entry.event_id));
        Ok(())
    }

    async fn flush_cursor(&self, progress: &mut CursorProgress) -> Result<(), SessionError> {
        let Some((replay_id, event_id)) = progress.acked.take() else {
            return Ok(());
        };
        if progress.saved.as_deref() == Some(replay_id.as_slice()) {
            return Ok(());
        }
        match self.cursor.save(&replay_id, event_id.as_deref()).await {
            Ok(stored) => {
                self.metrics.cursor_writes.inc();
                self.metrics
                    .cursor_updated_timestamp
                    .set(time::OffsetDateTime::now_utc().unix_timestamp() as f64);
                self.metrics.cursor_age.touch();
                self.status.set_cursor(stored.view());
                progress.saved = Some(replay_id);
                progress.last_write = Some(Instant::now());
                Ok(())
            }
            Err(err) => {
                // Keep it for the next attempt; events stay de-duplicated if we crash first.
                progress.acked = Some((replay_id, event_id));
                Err(err.into())
            }
        }
    }

    /// Decodes one event and hands it (or its dead letter) to JetStream; returns the ack future.
    /// Errors only when the session must end (Salesforce or NATS unavailable).
    async fn dispatch(&self, consumer_event: ConsumerEvent) -> Result<AckFuture, SessionError> {
        let received_at = messages::bodies::rfc3339(time::OffsetDateTime::now_utc());
        self.metrics.events_received.inc();
        self.status.event_received(&received_at);
        let replay_id = consumer_event.replay_id;
        let event = consumer_event.event.unwrap_or_default();
        let envelope = EventEnvelope {
            event_id: &event.id,
            replay_id: &replay_id,
            schema_id: &event.schema_id,
            channel: &self.settings.channel,
            received_at: &received_at,
        };
        let decoded = self.decode(&event).await?;
        let outcome = decoded.and_then(|record| {
            if event.id.trim().is_empty() || event.id.parse::<async_nats::HeaderValue>().is_err() {
                return Err(PoisonReason::EventIdMissing);
            }
            let created_ms = event::created_epoch_ms(&record);
            event::to_requested(&envelope, &record).map(|body| (body, created_ms))
        });
        match outcome {
            Ok((body, created_ms)) => self.publish_requested(body, replay_id, created_ms).await,
            Err(reason) => {
                self.publish_dead_letter(&event, replay_id, &reason, &received_at)
                    .await
            }
        }
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
    ) -> Result<AckFuture, SessionError> {
        let subject = messages::subjects::provisioning_requested(&body.order_id);
        let span = tracing::info_span!(
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
        );
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
        let payload =
            serde_json::to_vec(&body).map_err(|e| SessionError::Publish(e.to_string()))?;
        let publish = Publish::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(body.event_id.as_str());
        let entry = InFlight {
            replay_id,
            event_id: Some(body.event_id.clone()),
            order_id: Some(body.order_id.clone()),
            correlation_id: body.correlation_id.clone(),
            kind: InFlightKind::Requested { created_ms },
            span: span.clone(),
        };
        self.send(subject, publish, entry).instrument(span).await
    }

    async fn publish_dead_letter(
        &self,
        event: &pubsub_proto::ProducerEvent,
        replay_id: Vec<u8>,
        reason: &PoisonReason,
        received_at: &str,
    ) -> Result<AckFuture, SessionError> {
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
        span.in_scope(|| {
            tracing::error!(
                reason = reason.code(),
                detail = %reason,
                channel = %self.settings.channel,
                event_id = %event.id,
                replay_id = %replay_b64,
                correlation_id = %correlation_id,
                "Platform Event cannot be provisioned; setting it aside."
            );
        });
        let body = DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: SERVICE.to_owned(),
            reason: reason.to_string(),
            reason_code: reason.code().to_owned(),
            payload_base64: b64.encode(&event.payload),
            origin: DeadLetterOrigin {
                channel: Some(self.settings.channel.clone()),
                replay_id: Some(replay_b64.clone()),
                event_id: (!event.id.is_empty()).then(|| event.id.clone()),
                schema_id: (!event.schema_id.is_empty()).then(|| event.schema_id.clone()),
                ..Default::default()
            },
            dead_lettered_at: received_at.to_owned(),
        };
        let mut headers = async_nats::HeaderMap::new();
        platform::nats::insert_header(
            &mut headers,
            messages::headers::CORRELATION_ID,
            &correlation_id,
        );
        platform::nats::insert_header(
            &mut headers,
            messages::headers::SCHEMA,
            DeadLetterV1::SCHEMA,
        );
        platform::telemetry::inject_trace_context(&span, &mut headers);
        // The replay id identifies the delivery even when the event id is unusable.
        let message_id = format!("{SERVICE}:{replay_b64}");
        let payload =
            serde_json::to_vec(&body).map_err(|e| SessionError::Publish(e.to_string()))?;
        let publish = Publish::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(message_id.as_str());
        let entry = InFlight {
            replay_id,
            event_id: (!event.id.is_empty()).then(|| event.id.clone()),
            order_id: None,
            correlation_id: correlation_id.clone(),
            kind: InFlightKind::DeadLetter {
                reason: reason.code(),
            },
            span: span.clone(),
        };
        self.send(messages::subjects::deadletter(SERVICE), publish, entry)
            .instrument(span)
            .await
    }

    async fn send(
        &self,
        subject: String,
        publish: Publish,
        entry: InFlight,
    ) -> Result<AckFuture, SessionError> {
        let ack = self
            .js
            .send_publish(subject, publish)
            .await
            .map_err(|e| SessionError::Publish(e.to_string()))?;
        Ok(Box::pin(async move {
            let result = ack.await.map_err(|e| e.to_string());
            (entry, result)
        }))
    }
}
