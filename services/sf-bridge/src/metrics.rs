//! Prometheus metrics of sf-bridge, registered once and updated by the ingest and lease loops.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    pub events_received: Counter,
    pub events_published: Counter,
    /// Republished events JetStream recognised by `Nats-Msg-Id` and did not store again.
    pub events_duplicate: Counter,
    pub events_dead_lettered: Family<ReasonLabel, Counter>,
    pub keepalives: Counter,
    pub reconnects: Family<ReasonLabel, Counter>,
    pub replay_id_fallbacks: Counter,
    /// Stored cursors that could not be used (not JSON, not base64); each made a session start
    /// from EARLIEST.
    pub cursor_unreadable: Counter,
    pub cursor_writes: Counter,
    /// Unix time of the last cursor write; alert when `time() - this` grows while events flow.
    pub cursor_updated_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Seconds since the cursor last moved (since start before the first move), computed when
    /// `/metrics` is read.
    pub cursor_age: platform::metrics::SecondsSince,
    pub is_leader: Gauge,
    /// Salesforce `CreatedDate` to JetStream ack.
    pub event_lag_seconds: Histogram,
    pub in_flight: Gauge,
}

impl BridgeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events_received: Counter::default(),
            events_published: Counter::default(),
            events_duplicate: Counter::default(),
            events_dead_lettered: Family::default(),
            keepalives: Counter::default(),
            reconnects: Family::default(),
            replay_id_fallbacks: Counter::default(),
            cursor_unreadable: Counter::default(),
            cursor_writes: Counter::default(),
            cursor_updated_timestamp: Gauge::default(),
            cursor_age: platform::metrics::SecondsSince::default(),
            is_leader: Gauge::default(),
            event_lag_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            in_flight: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("sf_bridge");
        sub.register(
            "events_received",
            "Platform Events received from Salesforce",
            metrics.events_received.clone(),
        );
        sub.register(
            "events_published",
            "Events acknowledged by JetStream",
            metrics.events_published.clone(),
        );
        sub.register(
            "events_duplicate",
            "Events JetStream recognised as already stored (Nats-Msg-Id)",
            metrics.events_duplicate.clone(),
        );
        sub.register(
            "events_dead_lettered",
            "Events set aside on provisioning.deadletter.sf-bridge, by reason",
            metrics.events_dead_lettered.clone(),
        );
        sub.register(
            "keepalives",
            "Empty keepalive responses from Salesforce",
            metrics.keepalives.clone(),
        );
        sub.register(
            "reconnects",
            "Subscribe streams re-opened, by reason",
            metrics.reconnects.clone(),
        );
        sub.register(
            "replay_id_fallbacks",
            "Stored replay ids Salesforce rejected, replaced by EARLIEST",
            metrics.replay_id_fallbacks.clone(),
        );
        sub.register(
            "cursor_unreadable",
            "Stored replay cursors that could not be read, replaced by EARLIEST",
            metrics.cursor_unreadable.clone(),
        );
        sub.register(
            "cursor_writes",
            "Replay cursor writes to KV",
            metrics.cursor_writes.clone(),
        );
        sub.register(
            "cursor_updated_timestamp_seconds",
            "Unix time of the last replay cursor write",
            metrics.cursor_updated_timestamp.clone(),
        );
        sub.register(
            "cursor_age_seconds",
            "Seconds since the replay cursor last moved (since start before the first write)",
            metrics.cursor_age.clone(),
        );
        sub.register(
            "leader",
            "1 while this replica holds the subscription lease",
            metrics.is_leader.clone(),
        );
        sub.register(
            "event_lag_seconds",
            "Time from the event's CreatedDate in Salesforce to its JetStream ack",
            metrics.event_lag_seconds.clone(),
        );
        sub.register(
            "publishes_in_flight",
            "Publishes awaiting their JetStream ack",
            metrics.in_flight.clone(),
        );
        metrics
    }

    pub fn dead_lettered(&self, reason: &str) {
        self.events_dead_lettered
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn reconnect(&self, reason: &str) {
        self.reconnects
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
