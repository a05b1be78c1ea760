//! Metrics more than one service needs: outbound API calls (Salesforce, WHMCS) by action and
//! status, "seconds since something last happened" computed when `/metrics` is read, and the
//! standard `process_*` metrics every service's `/metrics` serves ([`ProcessCollector`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

/// A failed outbound API call, as its metrics and span label it.
pub trait ApiCallError: std::fmt::Display {
    /// The HTTP status the API answered with, when it answered.
    fn http_status(&self) -> Option<u16>;
    /// The contract's error code for the failure (docs/contract.md §7).
    fn contract_code(&self) -> String;
}

/// Runs one outbound API call inside its client `span` and records it the same way for every
/// API: a failure's code and message on the span; in `metrics`, when given, the call by action
/// and status (the HTTP status, or the error code when nothing answered), a failure by its code,
/// and the duration. `status_of` is the HTTP status of a call that succeeded.
pub async fn observe_api_call<T, E: ApiCallError>(
    span: tracing::Span,
    metrics: Option<&ApiMetrics>,
    action: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
    status_of: impl FnOnce(&T) -> u16,
) -> Result<T, E> {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let outcome = call.instrument(span.clone()).await;
    let (status, error_code) = match &outcome {
        Ok(answer) => (status_of(answer).to_string(), None),
        Err(err) => {
            let code = err.contract_code();
            crate::telemetry::record_error(&span, &code, &err.to_string());
            let status = err
                .http_status()
                .map_or_else(|| code.clone(), |status| status.to_string());
            (status, Some(code))
        }
    };
    if let Some(metrics) = metrics {
        metrics.observe(action, &status, error_code.as_deref(), started.elapsed());
    }
    outcome
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

/// Clock ticks per second of the `utime`, `stime` and `starttime` fields of `/proc/<pid>/stat`
/// (`USER_HZ`). Reading it needs `sysconf(_SC_CLK_TCK)`, which is unsafe FFI (forbidden here);
/// Linux fixes it at 100 on every architecture the services run on, and Prometheus' own Go
/// process collector (procfs) hard-codes the same value.
const USER_HZ: f64 = 100.0;

/// What the standard process metrics report, each read on its own: a value whose file cannot be
/// read or parsed is `None` and its metric is left out of the scrape, not reported as 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Unix time the process started, seconds.
    pub start_time_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`; `None` when unlimited.
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// Reads this process's figures from `/proc/self` (Linux). Elsewhere every field is `None`.
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(ProcStat::parse);
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        let resident = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|text| parse_status_kib(&text, "VmRSS:"))
            .map(|kib| kib.saturating_mul(1024));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_max_open_files(&text));
        Self {
            cpu_seconds: stat.map(|s| (s.utime_ticks + s.stime_ticks) as f64 / USER_HZ),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / USER_HZ),
            resident_memory_bytes: resident,
            virtual_memory_bytes: stat.map(|s| s.vsize_bytes),
            open_fds,
            max_fds,
        }
    }
}

/// The fields of `/proc/<pid>/stat` the process metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    utime_ticks: u64,
    stime_ticks: u64,
    start_ticks: u64,
    vsize_bytes: u64,
}

impl ProcStat {
    /// `pid (comm) state ppid ...`: `comm` may hold spaces and parentheses, so the fields are
    /// counted from the last `)`; the first one after it is field 3 (`state`) of proc(5).
    fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
        Some(Self {
            utime_ticks: field(14)?,
            stime_ticks: field(15)?,
            start_ticks: field(22)?,
            vsize_bytes: field(23)?,
        })
    }
}

/// `btime` of `/proc/stat`: the boot time, Unix seconds.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`).
fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(field)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits`; `None` when unlimited.
fn parse_max_open_files(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|limits| limits.split_ascii_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// The standard process metrics of Prometheus' client libraries (`process_cpu_seconds_total`,
/// `process_start_time_seconds`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`), read from
/// `/proc/self` at every scrape. Where `/proc` is missing (not Linux) it adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// Encodes `stats`: one family per value that is there.
    fn encode_stats(
        stats: &ProcessStats,
        mut encoder: DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        if let Some(seconds) = stats.cpu_seconds {
            let metric = ConstCounter::new(seconds);
            metric.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        if let Some(seconds) = stats.start_time_seconds {
            let metric = ConstGauge::new(seconds);
            metric.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                metric.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_memory_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let metric = ConstGauge::new(value);
                metric.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    metric.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Self::encode_stats(&ProcessStats::read(), encoder)
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

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (sf-bridge (x) y) S 1 4242 4242 0 -1 4194560 1480 0 0 0 \
                    250 130 0 0 20 0 9 0 123456 2147483648 4000 18446744073709551615 1 1 0 0 0 \
                    0 0 4096 17922 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                utime_ticks: 250,
                stime_ticks: 130,
                start_ticks: 123456,
                vsize_bytes: 2147483648,
            })
        );
        assert_eq!(ProcStat::parse("4242 (short) S 1 2"), None, "truncated");
        assert_eq!(ProcStat::parse(""), None);
    }

    #[test]
    fn proc_files_are_parsed_and_unusable_values_are_none() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764600000\nprocesses 9\n"),
            Some(1_764_600_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
        let status = "Name:\tsf-bridge\nVmPeak:\t  20000 kB\nVmRSS:\t   16384 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(16384));
        assert_eq!(parse_status_kib("VmRSS:\tlots\n", "VmRSS:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             127577               127577               processes\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
    }

    fn encode_process(stats: &ProcessStats) -> String {
        #[derive(Debug)]
        struct Fixed(ProcessStats);
        impl Collector for Fixed {
            fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                ProcessCollector::encode_stats(&self.0, encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(stats.clone())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        text
    }

    #[test]
    fn process_metrics_have_the_standard_names_and_types() {
        let text = encode_process(&ProcessStats {
            cpu_seconds: Some(3.8),
            start_time_seconds: Some(1_764_601_234.56),
            resident_memory_bytes: Some(16 << 20),
            virtual_memory_bytes: Some(1 << 31),
            open_fds: Some(12),
            max_fds: Some(1024),
        });
        for expected in [
            "# TYPE process_cpu_seconds counter",
            "process_cpu_seconds_total 3.8",
            "# TYPE process_start_time_seconds gauge",
            "process_start_time_seconds 1764601234.56",
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes 16777216",
            "process_virtual_memory_bytes 2147483648",
            "process_open_fds 12",
            "process_max_fds 1024",
        ] {
            assert!(
                text.lines().any(|line| line == expected),
                "{expected:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn an_unreadable_value_leaves_its_metric_out() {
        let text = encode_process(&ProcessStats {
            resident_memory_bytes: Some(4096),
            ..ProcessStats::default()
        });
        assert!(
            text.contains("process_resident_memory_bytes 4096"),
            "{text}"
        );
        assert!(!text.contains("process_cpu_seconds"), "{text}");
        assert!(!text.contains("process_max_fds"), "{text}");
        assert_eq!(encode_process(&ProcessStats::default()), "# EOF\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_its_own_figures() {
        let stats = ProcessStats::read();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let started = stats.start_time_seconds.expect("start time");
        // Started before now (clock ticks are 10 ms) and within the last day: a test process.
        assert!(
            started <= now + 0.02 && started > now - 86_400.0,
            "started {started}, now {now}"
        );
        let resident = stats.resident_memory_bytes.expect("resident memory");
        let virtual_memory = stats.virtual_memory_bytes.expect("virtual memory");
        assert!(
            resident > 1 << 20 && resident <= virtual_memory,
            "{stats:?}"
        );
        // stdin, stdout, stderr, and the directory being read.
        assert!(stats.open_fds.expect("open fds") >= 3, "{stats:?}");
        assert!(stats.cpu_seconds.expect("cpu") >= 0.0, "{stats:?}");
    }
}
