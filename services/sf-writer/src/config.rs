//! sf-writer settings: the contract's common and Salesforce variables plus the writer's own
//! tuning knobs (docs/configuration.md).

use std::time::Duration;

use platform::config::{CommonSettings, ConfigError, Env};
use salesforce::SalesforceSettings;

/// Most records Salesforce accepts in one sObject Collections request.
pub const MAX_COLLECTION_RECORDS: usize = 200;

/// `SF_WRITER_SHUTDOWN_GRACE_SECS` when unset: how long batches in hand may take to finish on
/// SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WriterSettings {
    pub common: CommonSettings,
    pub salesforce: SalesforceSettings,
    /// `SF_WRITER_LINGER_MS`: after the first update of a batch arrives, how long to wait for
    /// more before writing. Under load the batch fills without waiting.
    pub linger: Duration,
    /// `SF_WRITER_MAX_BATCH` (1–200): updates pulled and written together.
    pub max_batch: usize,
    /// `SF_WRITER_CONCURRENCY`: batches in flight at once in this replica.
    pub concurrency: usize,
    /// `SF_WRITER_CONSUMER`: durable consumer shared by every replica.
    pub consumer: String,
    /// `ORDER_UPDATES_STREAM`.
    pub updates_stream: String,
    /// `DEADLETTER_STREAM`.
    pub deadletter_stream: String,
    /// `SF_WRITER_APPLIED_BUCKET`: last applied sequence and write claim per Order.
    pub applied_bucket: String,
    /// `SF_WRITER_APPLIED_MAX_AGE_SECS`: how long an Order's entry is kept after its last
    /// write. Longer than the updates stream's retention, so any redelivery is still recognised.
    pub applied_max_age: Duration,
    /// `SF_WRITER_ACK_WAIT_SECS`: ack_wait of the consumer; held messages are kept alive with
    /// in-progress acks well inside it.
    pub ack_wait: Duration,
    /// `SF_WRITER_MAX_ACK_PENDING`: un-acked messages across all replicas.
    pub max_ack_pending: i64,
    /// `SF_WRITER_BACKOFF_BASE_MS` / `SF_WRITER_BACKOFF_MAX_MS`: retry delays while Salesforce
    /// is unhealthy (exponential with jitter, capped).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// `SF_WRITER_CLAIM_TTL_SECS`: how long a write claim on an Order blocks other writers.
    /// A request still running when four fifths of it have passed since its claim (the write
    /// window, [`crate::ordering::write_window`]) is abandoned, so that window must hold the
    /// longest write: a request and, after a 401, the token refresh and the request again. The
    /// check requires the write window to exceed two HTTP timeouts (the two requests; a
    /// refresh is a short call to the token endpoint); the default, three HTTP timeouts plus ten
    /// seconds, leaves a write window of 2.4 timeouts plus eight seconds, room for the refresh
    /// as well.
    pub claim_ttl: Duration,
    /// `SF_WRITER_SHUTDOWN_GRACE_SECS`: how long batches in hand may take to finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// `SF_WRITER_INSTANCE_ID`: names this replica in logs and claims.
    pub instance_id: String,
}

impl WriterSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        use messages::subjects::{buckets, consumers, streams};
        let common = CommonSettings::from_env(env, "sf-writer")?;
        let salesforce = SalesforceSettings::from_env(env)?;
        let backoff_base =
            env.millis_or("SF_WRITER_BACKOFF_BASE_MS", Duration::from_millis(200))?;
        let backoff_max = env.millis_or("SF_WRITER_BACKOFF_MAX_MS", Duration::from_secs(30))?;
        if backoff_base.is_zero() {
            return Err(ConfigError::new(
                "SF_WRITER_BACKOFF_BASE_MS",
                "must be at least 1",
            ));
        }
        if backoff_max < backoff_base {
            return Err(ConfigError::new(
                "SF_WRITER_BACKOFF_MAX_MS",
                "must not be below SF_WRITER_BACKOFF_BASE_MS",
            ));
        }
        let ack_wait = env.secs_or("SF_WRITER_ACK_WAIT_SECS", Duration::from_secs(60))?;
        if ack_wait < Duration::from_secs(3) {
            return Err(ConfigError::new(
                "SF_WRITER_ACK_WAIT_SECS",
                "must be at least 3 seconds (in-progress acks are sent at a third of it)",
            ));
        }
        let default_claim = salesforce
            .http_timeout
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(10));
        let claim_ttl = env.secs_or("SF_WRITER_CLAIM_TTL_SECS", default_claim)?;
        if crate::ordering::write_window(claim_ttl) <= salesforce.http_timeout.saturating_mul(2) {
            return Err(ConfigError::new(
                "SF_WRITER_CLAIM_TTL_SECS",
                "four fifths of it (the write window) must exceed twice SF_HTTP_TIMEOUT_SECS \
                 (a request and its retry after a 401)",
            ));
        }
        Ok(Self {
            linger: env.millis_or("SF_WRITER_LINGER_MS", Duration::from_millis(5))?,
            max_batch: env.int_in_range(
                "SF_WRITER_MAX_BATCH",
                MAX_COLLECTION_RECORDS,
                1..=MAX_COLLECTION_RECORDS,
            )?,
            concurrency: env.int_in_range("SF_WRITER_CONCURRENCY", 4usize, 1..=64)?,
            consumer: env.string_or("SF_WRITER_CONSUMER", consumers::SF_WRITER),
            updates_stream: env.string_or("ORDER_UPDATES_STREAM", streams::ORDER_UPDATES),
            deadletter_stream: env.string_or("DEADLETTER_STREAM", streams::DEADLETTER),
            applied_bucket: env.string_or("SF_WRITER_APPLIED_BUCKET", buckets::SF_WRITER_APPLIED),
            applied_max_age: env.secs_or(
                "SF_WRITER_APPLIED_MAX_AGE_SECS",
                Duration::from_secs(30 * 24 * 3600),
            )?,
            ack_wait,
            max_ack_pending: env.int_in_range(
                "SF_WRITER_MAX_ACK_PENDING",
                2000i64,
                1..=1_000_000,
            )?,
            backoff_base,
            backoff_max,
            claim_ttl,
            shutdown_grace: env.secs_or("SF_WRITER_SHUTDOWN_GRACE_SECS", DEFAULT_SHUTDOWN_GRACE)?,
            instance_id: env
                .get("SF_WRITER_INSTANCE_ID")
                .unwrap_or_else(platform::telemetry::instance_id),
            common,
            salesforce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(String, String)> {
        let key = &testkit::keys::test_keys().private_key_path;
        vec![
            ("SF_CLIENT_ID".into(), "id".into()),
            ("SF_USERNAME".into(), "user@example.com".into()),
            ("SF_PRIVATE_KEY_PATH".into(), key.display().to_string()),
        ]
    }

    #[test]
    fn defaults_follow_the_contract() {
        let settings = WriterSettings::from_env(&Env::from_pairs(base())).unwrap();
        assert_eq!(settings.max_batch, 200);
        assert_eq!(settings.linger, Duration::from_millis(5));
        assert_eq!(settings.consumer, "sf-writer");
        assert_eq!(settings.updates_stream, "SF_ORDER_UPDATES");
        assert_eq!(settings.applied_bucket, "sf_writer_applied");
        assert_eq!(settings.claim_ttl, Duration::from_secs(70));
    }

    #[test]
    fn missing_and_bad_variables_are_named() {
        let err = WriterSettings::from_env(&Env::from_pairs([("NATS_URL", "nats://h:4222")]))
            .unwrap_err();
        assert_eq!(err.variable, "SF_CLIENT_ID");
        let mut pairs = base();
        pairs.push(("SF_WRITER_MAX_BATCH".into(), "201".into()));
        let err = WriterSettings::from_env(&Env::from_pairs(pairs)).unwrap_err();
        assert_eq!(err.variable, "SF_WRITER_MAX_BATCH");
        let mut pairs = base();
        pairs.push(("SF_WRITER_CLAIM_TTL_SECS".into(), "5".into()));
        let err = WriterSettings::from_env(&Env::from_pairs(pairs)).unwrap_err();
        assert_eq!(err.variable, "SF_WRITER_CLAIM_TTL_SECS");
    }

    fn with_claim(
        http_timeout_secs: u64,
        claim_ttl_secs: u64,
    ) -> Result<WriterSettings, ConfigError> {
        let mut pairs = base();
        pairs.push(("SF_HTTP_TIMEOUT_SECS".into(), http_timeout_secs.to_string()));
        pairs.push((
            "SF_WRITER_CLAIM_TTL_SECS".into(),
            claim_ttl_secs.to_string(),
        ));
        WriterSettings::from_env(&Env::from_pairs(pairs))
    }

    #[test]
    fn the_claims_write_window_must_hold_a_request_and_its_401_retry() {
        // HTTP timeout 4 s: two requests take up to 8 s. A 10 s claim has a write window of
        // 8 s (not enough, although the claim itself exceeds 8 s); 11 s gives 8.8 s.
        let err = with_claim(4, 10).unwrap_err();
        assert_eq!(err.variable, "SF_WRITER_CLAIM_TTL_SECS");
        assert_eq!(
            with_claim(4, 11).unwrap().claim_ttl,
            Duration::from_secs(11)
        );
        // The default passes for any timeout, and so do the settings of the tests and the
        // chaos suite.
        for timeout in [1, 5, 20, 120] {
            let mut pairs = base();
            pairs.push(("SF_HTTP_TIMEOUT_SECS".into(), timeout.to_string()));
            WriterSettings::from_env(&Env::from_pairs(pairs)).unwrap();
        }
        with_claim(3, 10).unwrap();
        with_claim(5, 13).unwrap();
    }
}
