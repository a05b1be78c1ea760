//! Prometheus metrics of the provisioner.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use platform::metrics::{ApiMetrics, ConsumerLag, LimitUsage};

use crate::steps::Step;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub result: String,
    pub error_code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    pub step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

#[derive(Debug, Clone)]
pub struct ProvisionerMetrics {
    pub attempts: Family<OutcomeLabels, Counter>,
    pub duration_seconds: Histogram,
    pub step_duration_seconds: Family<StepLabel, Histogram, fn() -> Histogram>,
    pub not_claimed: Family<ReasonLabel, Counter>,
    pub interrupted: Family<ReasonLabel, Counter>,
    pub dead_lettered: Counter,
    pub in_flight: Gauge,
    pub journal_writes: Counter,
    /// Claims that failed (journal unavailable) and were retried with the message held.
    pub claim_failures: Family<ReasonLabel, Counter>,
    /// Jobs that stopped because they no longer held their journal entry.
    pub jobs_lost: Family<ReasonLabel, Counter>,
    /// Journal entries that did not parse (set aside on the dead-letter subject).
    pub journal_unreadable: Counter,
    /// Delivered requests without an outcome yet, at the last reconciliation scan.
    pub reconciler_open: Gauge,
    /// The requests-stream sequence up to which every message has its outcome.
    pub reconciled_sequence: Gauge,
    pub reconciler_scan_failures: Counter,
    /// Finished jobs whose report was missing and was published again from the journal.
    pub reports_republished: Counter,
    /// Delivered messages never claimed by their worker, run by the reconciler.
    pub orphans_run: Counter,
    /// Enqueue (sf-bridge receipt, the body's `received_at`) to outcome.
    pub end_to_end_seconds: Histogram,
    /// WHMCS API calls (`whmcs_api_*`).
    pub whmcs_api: ApiMetrics,
    /// Salesforce REST calls and token fetches (`salesforce_api_*`).
    pub salesforce_api: ApiMetrics,
    /// `Sforce-Limit-Info` usage.
    pub salesforce_limit: LimitUsage,
    /// Backlog of the provisioner's durable consumer.
    pub consumer: ConsumerLag,
}

impl ProvisionerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let whmcs_api = ApiMetrics::register(registry, "whmcs", "WHMCS");
        let salesforce_api = ApiMetrics::register(registry, "salesforce", "Salesforce");
        let salesforce_limit = LimitUsage::register(registry);
        let consumer = ConsumerLag::register(registry, "provisioner");
        let metrics = Self {
            whmcs_api,
            salesforce_api,
            salesforce_limit,
            consumer,
            attempts: Family::default(),
            duration_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            step_duration_seconds: Family::new_with_constructor(step_histogram),
            not_claimed: Family::default(),
            interrupted: Family::default(),
            dead_lettered: Counter::default(),
            in_flight: Gauge::default(),
            journal_writes: Counter::default(),
            claim_failures: Family::default(),
            jobs_lost: Family::default(),
            journal_unreadable: Counter::default(),
            reconciler_open: Gauge::default(),
            reconciled_sequence: Gauge::default(),
            reconciler_scan_failures: Counter::default(),
            reports_republished: Counter::default(),
            orphans_run: Counter::default(),
            end_to_end_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
        };
        let sub = registry.sub_registry_with_prefix("provisioner");
        sub.register(
            "attempts",
            "Provisioning jobs by result and error code",
            metrics.attempts.clone(),
        );
        sub.register(
            "duration_seconds",
            "Duration of a provisioning job",
            metrics.duration_seconds.clone(),
        );
        sub.register(
            "step_duration_seconds",
            "Duration of each orchestration step",
            metrics.step_duration_seconds.clone(),
        );
        sub.register(
            "events_not_claimed",
            "Events that started no job (duplicate event, repeated IdemKey__c, job in progress)",
            metrics.not_claimed.clone(),
        );
        sub.register(
            "jobs_interrupted",
            "Jobs marked INTERRUPTED, by how they were found",
            metrics.interrupted.clone(),
        );
        sub.register(
            "dead_lettered",
            "Messages set aside on provisioning.deadletter.provisioner",
            metrics.dead_lettered.clone(),
        );
        sub.register(
            "jobs_in_flight",
            "Jobs running on this replica",
            metrics.in_flight.clone(),
        );
        sub.register(
            "journal_writes",
            "Job journal writes",
            metrics.journal_writes.clone(),
        );
        sub.register(
            "claim_failures",
            "Claims that failed and were retried with the message held, by reason",
            metrics.claim_failures.clone(),
        );
        sub.register(
            "jobs_lost",
            "Jobs that stopped because they no longer held their journal entry",
            metrics.jobs_lost.clone(),
        );
        sub.register(
            "journal_unreadable",
            "Journal entries that did not parse and were set aside",
            metrics.journal_unreadable.clone(),
        );
        sub.register(
            "reconciler_open",
            "Delivered requests without an outcome at the last reconciliation scan",
            metrics.reconciler_open.clone(),
        );
        sub.register(
            "reconciled_sequence",
            "Requests-stream sequence up to which every message has its outcome",
            metrics.reconciled_sequence.clone(),
        );
        sub.register(
            "reconciler_scan_failures",
            "Reconciliation scans that failed",
            metrics.reconciler_scan_failures.clone(),
        );
        sub.register(
            "reports_republished",
            "Finished jobs whose missing report was published again from the journal",
            metrics.reports_republished.clone(),
        );
        sub.register(
            "orphans_run",
            "Delivered messages never claimed by their worker, run by the reconciler",
            metrics.orphans_run.clone(),
        );
        sub.register(
            "enqueue_to_outcome_seconds",
            "Time from sf-bridge receiving the event to the outcome",
            metrics.end_to_end_seconds.clone(),
        );
        metrics
    }

    pub fn observe_step(&self, step: Step, elapsed: Duration) {
        self.step_duration_seconds
            .get_or_create(&StepLabel {
                step: step.as_str().to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn attempt(&self, result: &str, error_code: Option<&str>) {
        let labels = OutcomeLabels {
            result: result.to_owned(),
            error_code: error_code.unwrap_or("").to_owned(),
        };
        self.attempts.get_or_create(&labels).inc();
    }
}
