//! provisioner settings: the contract's variables plus optional tuning knobs
//! (docs/configuration.md).

use std::time::Duration;

use platform::config::{CommonSettings, ConfigError, Env};
use salesforce::SalesforceSettings;
use whmcs::WhmcsSettings;

#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    pub common: CommonSettings,
    pub salesforce: SalesforceSettings,
    pub whmcs: WhmcsSettings,
    /// `PROVISIONER_CONCURRENCY`: orders orchestrated at once by this replica.
    pub concurrency: usize,
    pub requests_stream: String,
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
}

impl ProvisionerSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        use messages::subjects::{buckets, consumers, streams};
        Ok(Self {
            common: CommonSettings::from_env(env, "provisioner")?,
            salesforce: SalesforceSettings::from_env(env)?,
            whmcs: WhmcsSettings::from_env(env)?,
            concurrency: env.int_in_range("PROVISIONER_CONCURRENCY", 32usize, 1..=4096)?,
            requests_stream: env.string_or("SF_BRIDGE_STREAM", streams::REQUESTS),
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
                .secs_or("PROVISIONER_SHUTDOWN_GRACE_SECS", Duration::from_secs(20))?,
            ack_wait: env.secs_or("PROVISIONER_ACK_WAIT_SECS", Duration::from_secs(60))?,
            default_payment_method: env.string_or("WHMCS_PAYMENT_METHOD", "banktransfer"),
            worker_id: env
                .get("PROVISIONER_WORKER_ID")
                .unwrap_or_else(platform::telemetry::instance_id),
        })
    }
}
