//! What `/health/sf-events` reports (docs/contract.md §3): the subscription's state, the cursor, and
//! event counters, shared between the ingest loop and the HTTP handler.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// The subscription's state, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionState {
    /// `SF_EVENTS_ENABLED=false`.
    Disabled,
    /// Leader, opening a Subscribe stream.
    Connecting,
    /// Leader, stream open.
    Subscribed,
    /// Leader, waiting before the next attempt after a failure.
    Backoff,
    /// Another replica holds the lease.
    Standby,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CursorView {
    /// Base64 of the stored replay id.
    pub replay_id: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug)]
pub struct BridgeStatus {
    pub enabled: bool,
    pub channel: String,
    pub instance_id: String,
    inner: RwLock<Inner>,
    pub events_received: AtomicU64,
    pub events_published: AtomicU64,
    pub events_dead_lettered: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    state: SubscriptionState,
    cursor: CursorView,
    last_event_at: Option<String>,
    last_error: Option<String>,
}

impl BridgeStatus {
    pub fn new(enabled: bool, channel: &str, instance_id: &str) -> Arc<Self> {
        Arc::new(Self {
            enabled,
            channel: channel.to_owned(),
            instance_id: instance_id.to_owned(),
            inner: RwLock::new(Inner {
                state: if enabled {
                    SubscriptionState::Connecting
                } else {
                    SubscriptionState::Disabled
                },
                cursor: CursorView::default(),
                last_event_at: None,
                last_error: None,
            }),
            events_received: AtomicU64::new(0),
            events_published: AtomicU64::new(0),
            events_dead_lettered: AtomicU64::new(0),
        })
    }

    fn update(&self, change: impl FnOnce(&mut Inner)) {
        if let Ok(mut inner) = self.inner.write() {
            change(&mut inner);
        }
    }

    pub fn set_state(&self, state: SubscriptionState) {
        self.update(|inner| inner.state = state);
    }

    pub fn state(&self) -> SubscriptionState {
        self.inner
            .read()
            .map(|i| i.state)
            .unwrap_or(SubscriptionState::Connecting)
    }

    /// Shows `cursor` as the stored position.
    pub fn set_cursor(&self, cursor: &messages::kv::cursor::StoredCursor) {
        let view = CursorView {
            replay_id: Some(cursor.replay_id.clone()),
            updated_at: Some(cursor.updated_at.clone()),
        };
        self.update(|inner| inner.cursor = view);
    }

    pub fn set_last_error(&self, error: Option<String>) {
        self.update(|inner| inner.last_error = error);
    }

    /// The events of one Subscribe response arrived at `at`: the time is set once for them all
    /// (and each is counted with [`Self::count_received`]).
    pub fn batch_received(&self, at: &str) {
        self.update(|inner| inner.last_event_at = Some(at.to_owned()));
    }

    pub fn count_received(&self) {
        self.events_received.fetch_add(1, Ordering::Relaxed);
    }

    /// The `/health/sf-events` body.
    pub fn report(&self) -> serde_json::Value {
        let (state, cursor, last_event_at, last_error) = match self.inner.read() {
            Ok(inner) => (
                inner.state,
                inner.cursor.clone(),
                inner.last_event_at.clone(),
                inner.last_error.clone(),
            ),
            Err(_) => (
                SubscriptionState::Connecting,
                CursorView::default(),
                None,
                None,
            ),
        };
        serde_json::json!({
            "enabled": self.enabled,
            "channel": self.channel,
            "state": state,
            "instance_id": self.instance_id,
            "cursor": cursor,
            "events_received": self.events_received.load(Ordering::Relaxed),
            "events_published": self.events_published.load(Ordering::Relaxed),
            "events_dead_lettered": self.events_dead_lettered.load(Ordering::Relaxed),
            "last_event_at": last_event_at,
            "last_error": last_error,
        })
    }
}
