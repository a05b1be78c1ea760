//! Metrics more than one service needs: outbound API calls (Salesforce, WHMCS) by action and
//! status, and "seconds since something last happened" computed when `/metrics` is read.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// WHMCS action (`AddOrder`) or Salesforce operation (`query`, `update_record`, `token`).
    pub action: String,
    /// HTTP status code, or the transport failure (`ETIMEOUT`, `ECONNREFUSED`, `ECONNRESET`).
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub action: String,
    /// The contract's error code (`WHMCS_ERROR`, `503`, `ETIMEOUT`, ...).
    pub error_code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Calls to one external API. Cheap to clone; clones share the series.
#[derive(Debug, Clone)]
pub struct ApiMetrics {
    pub calls: Family<CallLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration_seconds: Family<ActionLabel, Histogram, fn() -> Histogram>,
}

impl ApiMetrics {
    /// Registers `{api}_api_calls_total`, `{api}_api_errors_total` and
    /// `{api}_api_call_duration_seconds` (`api` is `whmcs` or `salesforce`).
    pub fn register(registry: &mut Registry, api: &str, what: &str) -> Self {
        let metrics = Self {
            calls: Family::default(),
            errors: Family::default(),
            duration_seconds: Family::new_with_constructor(call_histogram),
        };
        let sub = registry.sub_registry_with_prefix(format!("{api}_api"));
        sub.register(
            "calls",
            format!("{what} API calls, by action and HTTP status (or transport failure)"),
            metrics.calls.clone(),
        );
        sub.register(
            "errors",
            format!("Failed {what} API calls, by action and error code"),
            metrics.errors.clone(),
        );
        sub.register(
            "call_duration_seconds",
            format!("Duration of {what} API calls, by action"),
            metrics.duration_seconds.clone(),
        );
        metrics
    }

    /// Counts one call. `error_code` is `Some` when the call failed.
    pub fn observe(&self, action: &str, status: &str, error_code: Option<&str>, took: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                action: action.to_owned(),
                status: status.to_owned(),
            })
            .inc();
        if let Some(code) = error_code {
            self.errors
                .get_or_create(&ErrorLabels {
                    action: action.to_owned(),
                    error_code: code.to_owned(),
                })
                .inc();
        }
        self.duration_seconds
            .get_or_create(&ActionLabel {
                action: action.to_owned(),
            })
            .observe(took.as_secs_f64());
    }
}

/// The `Sforce-Limit-Info` usage (`api-usage=used/limit`) last seen.
#[derive(Debug, Clone, Default)]
pub struct LimitUsage {
    pub used: Gauge,
    pub limit: Gauge,
}

impl LimitUsage {
    /// Registers `salesforce_api_usage` and `salesforce_api_limit`.
    pub fn register(registry: &mut Registry) -> Self {
        let usage = Self::default();
        registry.register(
            "salesforce_api_usage",
            "API requests used today (Sforce-Limit-Info api-usage, first number)",
            usage.used.clone(),
        );
        registry.register(
            "salesforce_api_limit",
            "Daily API request limit (Sforce-Limit-Info api-usage, second number)",
            usage.limit.clone(),
        );
        usage
    }

    pub fn set(&self, used: u64, limit: u64) {
        if limit > 0 {
            self.used.set(i64::try_from(used).unwrap_or(i64::MAX));
            self.limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

/// A gauge of the seconds since [`SecondsSince::touch`] was last called (since creation before
/// the first touch), computed when `/metrics` is read.
#[derive(Debug, Clone)]
pub struct SecondsSince {
    last_ms: Arc<AtomicI64>,
}

impl Default for SecondsSince {
    fn default() -> Self {
        Self {
            last_ms: Arc::new(AtomicI64::new(now_ms())),
        }
    }
}

impl SecondsSince {
    pub fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn seconds(&self) -> f64 {
        let elapsed = now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        elapsed.max(0) as f64 / 1000.0
    }
}

impl EncodeMetric for SecondsSince {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.seconds())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A JetStream consumer's backlog, read periodically with `consumer.info()`.
#[derive(Debug, Clone, Default)]
pub struct ConsumerLag {
    /// Messages in the stream the consumer has not been delivered yet.
    pub pending: Gauge,
    /// Messages delivered and not acknowledged yet.
    pub ack_pending: Gauge,
    /// Unix time of the last successful read.
    pub updated: Gauge,
}

impl ConsumerLag {
    /// Registers `{prefix}_consumer_pending`, `{prefix}_consumer_ack_pending` and
    /// `{prefix}_consumer_info_updated_timestamp_seconds`.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let lag = Self::default();
        let sub = registry.sub_registry_with_prefix(prefix);
        sub.register(
            "consumer_pending",
            "Messages of the stream not yet delivered to the durable consumer",
            lag.pending.clone(),
        );
        sub.register(
            "consumer_ack_pending",
            "Messages delivered to the durable consumer and not acknowledged yet",
            lag.ack_pending.clone(),
        );
        sub.register(
            "consumer_info_updated_timestamp_seconds",
            "Unix time the consumer counts were last read",
            lag.updated.clone(),
        );
        lag
    }

    /// Reads the consumer's counts every `every` until `cancel`.
    pub async fn poll<C: async_nats::jetstream::consumer::IntoConsumerConfig + Send + Sync>(
        self,
        consumer: async_nats::jetstream::consumer::Consumer<C>,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            match consumer.get_info().await {
                Ok(info) => {
                    self.pending
                        .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                    self.ack_pending
                        .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                    self.updated.set(now_ms() / 1000);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "Cannot read the consumer's pending counts.")
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_calls_are_encoded_by_action_and_status() {
        let mut registry = Registry::default();
        let api = ApiMetrics::register(&mut registry, "whmcs", "WHMCS");
        api.observe("AddOrder", "200", None, Duration::from_millis(5));
        api.observe(
            "AddOrder",
            "200",
            Some("WHMCS_ERROR"),
            Duration::from_millis(5),
        );
        let since = SecondsSince::default();
        registry.register("cursor_age_seconds", "test", since.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        assert!(
            text.contains(r#"whmcs_api_calls_total{action="AddOrder",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"whmcs_api_errors_total{action="AddOrder",error_code="WHMCS_ERROR"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE cursor_age_seconds gauge"), "{text}");
        assert!(since.seconds() < 5.0);
    }
}
