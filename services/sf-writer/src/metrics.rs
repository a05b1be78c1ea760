//! Prometheus metrics of sf-writer, registered once and updated by the pull loop and the batches.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use salesforce::rest::ApiUsage;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `collection` or `single`.
    pub kind: String,
    /// `ok`, or the failure's code (`503`, `ETIMEOUT`, `split`, ...).
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct WriterMetrics {
    /// Updates pulled together in one batch.
    pub batch_updates: Histogram,
    /// Records per Salesforce request.
    pub request_records: Histogram,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histogram,
    /// Updates held back for another attempt, by reason.
    pub retries: Family<ReasonLabel, Counter>,
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// Updates whose fields reached Salesforce (merged older updates included).
    pub applied: Counter,
    /// Updates acknowledged without a write because a newer one was applied or is being written.
    pub skipped_stale: Counter,
    /// Updates handed back because another writer held the Order's claim.
    pub claim_conflicts: Counter,
    /// Writes dropped because the claim taken earlier for them was gone (expired and taken
    /// over) when it was renewed just before the write.
    pub claims_lost: Counter,
    pub api_usage: Gauge,
    pub api_limit: Gauge,
    /// 1 while the Salesforce gate is closed (healthy).
    pub salesforce_up: Gauge,
    pub batches_in_flight: Gauge,
    /// Salesforce REST calls and token fetches (`salesforce_api_*`).
    pub salesforce_api: platform::metrics::ApiMetrics,
    /// Backlog of sf-writer's durable consumer.
    pub consumer: platform::metrics::ConsumerLag,
}

impl WriterMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let salesforce_api =
            platform::metrics::ApiMetrics::register(registry, "salesforce", "Salesforce");
        let consumer = platform::metrics::ConsumerLag::register(registry, "sf_writer");
        let metrics = Self {
            salesforce_api,
            consumer,
            batch_updates: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            request_records: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            requests: Family::default(),
            request_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            retries: Family::default(),
            dead_letters: Family::default(),
            applied: Counter::default(),
            skipped_stale: Counter::default(),
            claim_conflicts: Counter::default(),
            claims_lost: Counter::default(),
            api_usage: Gauge::default(),
            api_limit: Gauge::default(),
            salesforce_up: Gauge::default(),
            batches_in_flight: Gauge::default(),
        };
        metrics.salesforce_up.set(1);
        let sub = registry.sub_registry_with_prefix("sf_writer");
        sub.register(
            "batch_updates",
            "Updates pulled and processed together in one batch",
            metrics.batch_updates.clone(),
        );
        sub.register(
            "request_records",
            "Records per Salesforce request",
            metrics.request_records.clone(),
        );
        sub.register(
            "salesforce_requests",
            "Salesforce write requests, by kind and result",
            metrics.requests.clone(),
        );
        sub.register(
            "salesforce_request_seconds",
            "Duration of Salesforce write requests",
            metrics.request_seconds.clone(),
        );
        sub.register(
            "retries",
            "Updates held back for another attempt, by reason",
            metrics.retries.clone(),
        );
        sub.register(
            "dead_letters",
            "Updates set aside on provisioning.deadletter.sf-writer, by reason",
            metrics.dead_letters.clone(),
        );
        sub.register(
            "updates_applied",
            "Updates written to Salesforce",
            metrics.applied.clone(),
        );
        sub.register(
            "updates_skipped_stale",
            "Updates not written because a newer one for the same Order was applied or in flight",
            metrics.skipped_stale.clone(),
        );
        sub.register(
            "claim_conflicts",
            "Updates handed back because another writer was writing the same Order",
            metrics.claim_conflicts.clone(),
        );
        sub.register(
            "claims_lost",
            "Writes dropped because their Order's claim had been taken over before the write",
            metrics.claims_lost.clone(),
        );
        sub.register(
            "salesforce_api_usage",
            "API requests used today (Sforce-Limit-Info api-usage, first number)",
            metrics.api_usage.clone(),
        );
        sub.register(
            "salesforce_api_limit",
            "Daily API request limit (Sforce-Limit-Info api-usage, second number)",
            metrics.api_limit.clone(),
        );
        sub.register(
            "salesforce_up",
            "1 while Salesforce takes requests, 0 while the writer backs off",
            metrics.salesforce_up.clone(),
        );
        sub.register(
            "batches_in_flight",
            "Batches being written by this replica",
            metrics.batches_in_flight.clone(),
        );
        metrics
    }

    pub fn request(&self, kind: &str, result: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn retry(&self, reason: &str, count: usize) {
        self.retries
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(count as u64);
    }

    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Copies the last `Sforce-Limit-Info` the client saw.
    pub fn record_usage(&self, usage: &ApiUsage) {
        let limit = usage.limit.load(Ordering::Relaxed);
        if limit > 0 {
            self.api_usage
                .set(i64::try_from(usage.used.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
            self.api_limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }
}
