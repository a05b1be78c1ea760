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
//!   cursor in that session, not even acks of later events that did succeed ([`CursorProgress`](crate::cursor::CursorProgress)):
//!   the next session replays from before the failed event and the stream de-duplicates what was
//!   stored. A publish JetStream refuses for good (the message exceeds the stream's
//!   `max_msg_size`, say) can never succeed: the event is dead-lettered with the server's reason
//!   instead, and the cursor moves past it like past any other dead letter.
//!
//! The roles, one module each: `session` the Subscribe sessions and the reconnect policy,
//! `decode` turning an event into its request or the reason it is poison, `publish` the request
//! and dead-letter messages handed to JetStream, `ack_window` the ordered acks and the cursor
//! progress they allow.

use std::sync::Arc;

use async_nats::jetstream;
use salesforce::pubsub::{PubSubClient, PubSubError};

use crate::config::BridgeSettings;
use crate::cursor::{CursorError, CursorStore};
use crate::metrics::BridgeMetrics;
use crate::status::BridgeStatus;

mod ack_window;
mod decode;
mod publish;
mod session;

pub use ack_window::PUBLISH_DRAIN_DEADLINE;
use publish::DeadLetters;
pub use publish::PublishFailure;

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
}
