//! What provctl reads from the environment: the services' NATS variables and the same resource
//! names the services use (so a deployment that renamed a stream is inspected correctly), plus
//! the Jaeger UI address for trace links.

use messages::subjects::{buckets, consumers, streams};
use platform::config::{ConfigError, Env};
use platform::nats::NatsSettings;

/// Default Jaeger UI, as the docker-compose demo publishes it.
pub const DEFAULT_JAEGER_UI_URL: &str = "http://localhost:16686";
/// The Platform Event channel whose cursor and lease provctl looks at.
pub const DEFAULT_CHANNEL: &str = "/event/OrderProvisionRequested__e";

#[derive(Debug, Clone)]
pub struct Names {
    pub channel: String,
    pub requests_stream: String,
    pub outcomes_stream: String,
    pub updates_stream: String,
    pub deadletter_stream: String,
    pub cursor_bucket: String,
    pub lease_bucket: String,
    pub journal_bucket: String,
    pub provisioner_consumer: String,
    pub writer_consumer: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            channel: DEFAULT_CHANNEL.to_owned(),
            requests_stream: streams::REQUESTS.to_owned(),
            outcomes_stream: streams::OUTCOMES.to_owned(),
            updates_stream: streams::ORDER_UPDATES.to_owned(),
            deadletter_stream: streams::DEADLETTER.to_owned(),
            cursor_bucket: buckets::BRIDGE_CURSOR.to_owned(),
            lease_bucket: buckets::BRIDGE_LEASE.to_owned(),
            journal_bucket: buckets::JOBS.to_owned(),
            provisioner_consumer: consumers::PROVISIONER.to_owned(),
            writer_consumer: consumers::SF_WRITER.to_owned(),
        }
    }
}

impl Names {
    /// The services' own variables for these names (docs/configuration.md), defaults otherwise.
    pub fn from_env(env: &Env) -> Self {
        let d = Self::default();
        Self {
            channel: env.string_or("SF_PROVISION_EVENT_CHANNEL", &d.channel),
            requests_stream: env.string_or("SF_BRIDGE_STREAM", &d.requests_stream),
            outcomes_stream: env.string_or("OUTCOMES_STREAM", &d.outcomes_stream),
            updates_stream: env.string_or("ORDER_UPDATES_STREAM", &d.updates_stream),
            deadletter_stream: env.string_or("DEADLETTER_STREAM", &d.deadletter_stream),
            cursor_bucket: env.string_or("SF_BRIDGE_CURSOR_BUCKET", &d.cursor_bucket),
            lease_bucket: env.string_or("SF_BRIDGE_LEASE_BUCKET", &d.lease_bucket),
            journal_bucket: env.string_or("PROVISIONER_JOURNAL_BUCKET", &d.journal_bucket),
            provisioner_consumer: env.string_or("PROVISIONER_CONSUMER", &d.provisioner_consumer),
            writer_consumer: env.string_or("SF_WRITER_CONSUMER", &d.writer_consumer),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CtlSettings {
    pub nats: NatsSettings,
    pub names: Names,
    /// `JAEGER_UI_URL`, without a trailing slash.
    pub jaeger_ui_url: String,
}

impl CtlSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            nats: NatsSettings::from_env(env)?,
            names: Names::from_env(env),
            jaeger_ui_url: env.http_url_or("JAEGER_UI_URL", DEFAULT_JAEGER_UI_URL)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_services_defaults() {
        let settings = CtlSettings::from_env(&Env::from_pairs([("X", "1")])).unwrap();
        assert_eq!(settings.names.requests_stream, "PROVISIONING_REQUESTS");
        assert_eq!(settings.names.writer_consumer, "sf-writer");
        assert_eq!(settings.jaeger_ui_url, "http://localhost:16686");
        let env = Env::from_pairs([("JAEGER_UI_URL", "jaeger:16686")]);
        assert_eq!(
            CtlSettings::from_env(&env).unwrap_err().variable,
            "JAEGER_UI_URL"
        );
    }
}
