//! provisioner settings: the contract's variables plus optional tuning knobs
//! (docs/configuration.md).

use std::time::Duration;

use platform::config::{CommonSettings, ConfigError, Env};
use salesforce::SalesforceSettings;
use whmcs::WhmcsSettings;

/// `PROVISIONER_SHUTDOWN_GRACE_SECS` when unset: how long running jobs may take to finish on
/// SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    pub common: CommonSettings,
    pub salesforce: SalesforceSettings,
    pub whmcs: WhmcsSettings,
    /// `PROVISIONER_CONCURRENCY`: orders orchestrated at once by this replica.
    pub concurrency: usize,
    pub requests_stream: String,
    /// `SF_BRIDGE_DUPLICATE_WINDOW_SECS`, as sf-bridge reads it: the provisioner may create the
    /// requests stream first, and must create the same one (`platform::streams::requests`).
    pub requests_duplicate_window: Duration,
    /// `SF_BRIDGE_STREAM_MAX_AGE_SECS`, as sf-bridge reads it.
    pub requests_max_age: Duration,
    pub outcomes_stream: String,
    pub updates_stream: String,
    pub deadletter_stream: String,
    pub consumer: String,
    pub journal_bucket: String,
    /// How long a job's claim stays valid without renewal; a worker renews at a third of it.
    pub job_lease: Duration,
    /// How often this replica looks for jobs whose worker disappeared.
    pub recovery_interval: Duration,
    /// How long in-flight jobs may run on after SIGTERM before they are recorded as interrupted.
    pub shutdown_grace: Duration,
    /// `ack_wait` of the consumer: a message delivered but never claimed is reported by the
    /// max-deliveries advisory after this long.
    pub ack_wait: Duration,
    /// Gateway used for AddOrder when the client's stored pay method names none.
    pub default_payment_method: String,
    pub worker_id: String,
    /// `STATUS_API_TOKEN`: when set, `GET /orders/…` requires `Authorization: Bearer <token>`.
    pub status_api_token: Option<secrecy::SecretString>,
}

impl ProvisionerSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        use messages::subjects::{buckets, consumers, streams};
        let requests_duplicate_window = env.secs_or(
            "SF_BRIDGE_DUPLICATE_WINDOW_SECS",
            platform::streams::REQUESTS_DUPLICATE_WINDOW,
        )?;
        let requests_max_age = env.secs_or(
            "SF_BRIDGE_STREAM_MAX_AGE_SECS",
            platform::streams::REQUESTS_MAX_AGE,
        )?;
        if requests_duplicate_window > requests_max_age {
            return Err(ConfigError::new(
                "SF_BRIDGE_DUPLICATE_WINDOW_SECS",
                "must not exceed SF_BRIDGE_STREAM_MAX_AGE_SECS (JetStream requires window <= max age)",
            ));
        }
        Ok(Self {
            common: CommonSettings::from_env(env, "provisioner")?,
            salesforce: SalesforceSettings::from_env(env)?,
            whmcs: WhmcsSettings::from_env(env)?,
            concurrency: env.int_in_range("PROVISIONER_CONCURRENCY", 32usize, 1..=4096)?,
            requests_stream: env.string_or("SF_BRIDGE_STREAM", streams::REQUESTS),
            requests_duplicate_window,
            requests_max_age,
            outcomes_stream: env.string_or("OUTCOMES_STREAM", streams::OUTCOMES),
            updates_stream: env.string_or("ORDER_UPDATES_STREAM", streams::ORDER_UPDATES),
            deadletter_stream: env.string_or("DEADLETTER_STREAM", streams::DEADLETTER),
            consumer: env.string_or("PROVISIONER_CONSUMER", consumers::PROVISIONER),
            journal_bucket: env.string_or("PROVISIONER_JOURNAL_BUCKET", buckets::JOBS),
            job_lease: env.secs_or("PROVISIONER_JOB_LEASE_SECS", Duration::from_secs(30))?,
            recovery_interval: env.secs_or(
                "PROVISIONER_RECOVERY_INTERVAL_SECS",
                Duration::from_secs(15),
            )?,
            shutdown_grace: env
                .secs_or("PROVISIONER_SHUTDOWN_GRACE_SECS", DEFAULT_SHUTDOWN_GRACE)?,
            ack_wait: env.secs_or("PROVISIONER_ACK_WAIT_SECS", Duration::from_secs(60))?,
            default_payment_method: env.string_or("WHMCS_PAYMENT_METHOD", "banktransfer"),
            worker_id: env
                .get("PROVISIONER_WORKER_ID")
                .unwrap_or_else(platform::telemetry::instance_id),
            status_api_token: status_api_token(env)?,
        })
    }
}

/// An empty token is refused rather than read as "unset": a secret that failed to mount must
/// not leave the status API open.
fn status_api_token(env: &Env) -> Result<Option<secrecy::SecretString>, ConfigError> {
    match env.get_even_empty("STATUS_API_TOKEN") {
        None => Ok(None),
        Some(token) if token.trim().is_empty() => Err(ConfigError::new(
            "STATUS_API_TOKEN",
            "is set but empty (unset it to leave /orders open)",
        )),
        Some(token) => Ok(Some(token.trim().to_owned().into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env(extra: &[(&str, &str)]) -> Env {
        let key = testkit::keys::test_keys()
            .private_key_path
            .display()
            .to_string();
        let mut pairs = vec![
            ("SF_CLIENT_ID", "client"),
            ("SF_USERNAME", "user@example.com"),
            ("SF_PRIVATE_KEY_PATH", key.as_str()),
            ("WHMCS_API_URL", "http://127.0.0.1:9/includes/api.php"),
            ("WHMCS_API_IDENTIFIER", "id"),
            ("WHMCS_API_SECRET", "secret"),
        ];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    fn settings(extra: &[(&str, &str)]) -> Result<ProvisionerSettings, ConfigError> {
        ProvisionerSettings::from_env(&env(extra))
    }

    /// The same variables and defaults as sf-bridge's (72 h window, 7 d retention), so the
    /// requests stream is the same whichever service creates it.
    #[test]
    fn requests_stream_settings_default_to_sf_bridges() {
        let settings = settings(&[]).unwrap();
        assert_eq!(
            settings.requests_duplicate_window,
            Duration::from_secs(72 * 3600)
        );
        assert_eq!(
            settings.requests_max_age,
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(settings.common.nats.jetstream_replicas, 1);
        let tuned = self::settings(&[
            ("SF_BRIDGE_DUPLICATE_WINDOW_SECS", "3600"),
            ("SF_BRIDGE_STREAM_MAX_AGE_SECS", "86400"),
            ("JETSTREAM_REPLICAS", "3"),
        ])
        .unwrap();
        assert_eq!(tuned.requests_duplicate_window, Duration::from_secs(3600));
        assert_eq!(tuned.requests_max_age, Duration::from_secs(86400));
        assert_eq!(tuned.common.nats.jetstream_replicas, 3);
    }

    #[test]
    fn a_duplicate_window_longer_than_the_retention_is_named() {
        let err = settings(&[
            ("SF_BRIDGE_DUPLICATE_WINDOW_SECS", "7200"),
            ("SF_BRIDGE_STREAM_MAX_AGE_SECS", "3600"),
        ])
        .unwrap_err();
        assert_eq!(err.variable, "SF_BRIDGE_DUPLICATE_WINDOW_SECS");
    }

    #[test]
    fn the_status_api_token_is_optional_but_never_empty() {
        use secrecy::ExposeSecret as _;
        assert!(settings(&[]).unwrap().status_api_token.is_none());
        let set = settings(&[("STATUS_API_TOKEN", "t0ken")]).unwrap();
        assert_eq!(set.status_api_token.unwrap().expose_secret(), "t0ken");
        for empty in ["", " "] {
            let err = settings(&[("STATUS_API_TOKEN", empty)]).unwrap_err();
            assert_eq!(err.variable, "STATUS_API_TOKEN");
        }
        assert!(
            !format!("{:?}", settings(&[("STATUS_API_TOKEN", "t0ken")]).unwrap()).contains("t0ken")
        );
    }

    #[test]
    fn jetstream_replicas_out_of_range_is_named() {
        let err = settings(&[("JETSTREAM_REPLICAS", "7")]).unwrap_err();
        assert_eq!(err.variable, "JETSTREAM_REPLICAS");
        assert_eq!(
            err.to_string(),
            "configuration variable JETSTREAM_REPLICAS must be between 1 and 5, not 7"
        );
    }
}
