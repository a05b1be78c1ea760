//! sf-bridge settings: the contract's variables plus optional tuning knobs (documented in
//! docs/configuration.md).

use std::time::Duration;

use platform::config::{CommonSettings, ConfigError, Env};
use salesforce::SalesforceSettings;

/// Where to start when no cursor is stored (`SF_EVENTS_REPLAY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialReplay {
    Latest,
    /// The earliest retained event (`ALL`).
    All,
}

#[derive(Debug, Clone)]
pub struct BridgeSettings {
    pub common: CommonSettings,
    /// `None` when `SF_EVENTS_ENABLED=false`: Salesforce settings are then not required.
    pub salesforce: Option<SalesforceSettings>,
    pub events_enabled: bool,
    pub channel: String,
    pub initial_replay: InitialReplay,
    pub pubsub_endpoint: String,
    /// Events requested per FetchRequest, and the most ever outstanding (1–100).
    pub batch: u32,
    /// A stream that delivers nothing (no events, no keepalive) for this long is re-opened.
    pub stream_idle_timeout: Duration,
    pub requests_stream: String,
    pub deadletter_stream: String,
    /// Duplicate window of the requests stream: how long a replayed event is recognised.
    pub duplicate_window: Duration,
    /// How long the requests stream keeps messages.
    pub requests_max_age: Duration,
    pub cursor_bucket: String,
    pub lease_bucket: String,
    /// A leader that stops renewing loses the lease after this long; a standby takes over then.
    pub lease_ttl: Duration,
    /// Most publishes awaiting their JetStream ack at once; past it no more events are requested.
    pub max_in_flight: usize,
    /// Longest the cursor lags behind the acknowledged events while events keep flowing.
    pub cursor_flush_interval: Duration,
    pub instance_id: String,
}

impl BridgeSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let common = CommonSettings::from_env(env, "sf-bridge")?;
        let events_enabled = env.bool_or("SF_EVENTS_ENABLED", true)?;
        let salesforce = if events_enabled {
            Some(SalesforceSettings::from_env(env)?)
        } else {
            None
        };
        let channel = env.string_or(
            "SF_PROVISION_EVENT_CHANNEL",
            "/event/OrderProvisionRequested__e",
        );
        if !channel.starts_with('/') {
            return Err(ConfigError::new(
                "SF_PROVISION_EVENT_CHANNEL",
                format!("must be a topic name such as /event/OrderProvisionRequested__e, not {channel:?}"),
            ));
        }
        let initial_replay = match env
            .string_or("SF_EVENTS_REPLAY", "LATEST")
            .to_ascii_uppercase()
            .as_str()
        {
            "LATEST" => InitialReplay::Latest,
            "ALL" | "EARLIEST" => InitialReplay::All,
            other => {
                return Err(ConfigError::new(
                    "SF_EVENTS_REPLAY",
                    format!("must be LATEST or ALL, not {other:?}"),
                ))
            }
        };
        let duplicate_window = env.secs_or(
            "SF_BRIDGE_DUPLICATE_WINDOW_SECS",
            Duration::from_secs(72 * 3600),
        )?;
        let requests_max_age = env.secs_or(
            "SF_BRIDGE_STREAM_MAX_AGE_SECS",
            Duration::from_secs(7 * 24 * 3600),
        )?;
        if duplicate_window > requests_max_age {
            return Err(ConfigError::new(
                "SF_BRIDGE_DUPLICATE_WINDOW_SECS",
                "must not exceed SF_BRIDGE_STREAM_MAX_AGE_SECS (JetStream requires window <= max age)",
            ));
        }
        let lease_ttl = env.secs_or("SF_BRIDGE_LEASE_TTL_SECS", Duration::from_secs(15))?;
        if lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "SF_BRIDGE_LEASE_TTL_SECS",
                "must be at least 1 second",
            ));
        }
        Ok(Self {
            salesforce,
            events_enabled,
            channel,
            initial_replay,
            pubsub_endpoint: env.http_url_or(
                "SF_PUBSUB_ENDPOINT",
                "https://api.pubsub.salesforce.com:7443",
            )?,
            batch: env.int_in_range("SF_PUBSUB_BATCH", 100u32, 1..=100)?,
            stream_idle_timeout: env
                .secs_or("SF_PUBSUB_IDLE_TIMEOUT_SECS", Duration::from_secs(300))?,
            requests_stream: env
                .string_or("SF_BRIDGE_STREAM", messages::subjects::streams::REQUESTS),
            deadletter_stream: env
                .string_or("DEADLETTER_STREAM", messages::subjects::streams::DEADLETTER),
            duplicate_window,
            requests_max_age,
            cursor_bucket: env.string_or(
                "SF_BRIDGE_CURSOR_BUCKET",
                messages::subjects::buckets::BRIDGE_CURSOR,
            ),
            lease_bucket: env.string_or(
                "SF_BRIDGE_LEASE_BUCKET",
                messages::subjects::buckets::BRIDGE_LEASE,
            ),
            lease_ttl,
            max_in_flight: env.int_in_range("SF_BRIDGE_MAX_IN_FLIGHT", 1000usize, 1..=4000)?,
            cursor_flush_interval: env
                .millis_or("SF_BRIDGE_CURSOR_FLUSH_MS", Duration::from_millis(250))?,
            instance_id: env
                .get("SF_BRIDGE_INSTANCE_ID")
                .unwrap_or_else(platform::telemetry::instance_id),
            common,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_bridge_needs_no_salesforce_credentials() {
        let env = Env::from_pairs([("SF_EVENTS_ENABLED", "false")]);
        let settings = BridgeSettings::from_env(&env).unwrap();
        assert!(!settings.events_enabled);
        assert!(settings.salesforce.is_none());
        assert_eq!(settings.channel, "/event/OrderProvisionRequested__e");
        assert_eq!(settings.batch, 100);
    }

    #[test]
    fn enabled_bridge_names_the_missing_variable() {
        let env = Env::from_pairs([("NATS_URL", "nats://127.0.0.1:4222")]);
        let err = BridgeSettings::from_env(&env).unwrap_err();
        assert_eq!(err.variable, "SF_CLIENT_ID");
    }

    #[test]
    fn bad_replay_preset_and_batch_are_rejected() {
        let env = Env::from_pairs([
            ("SF_EVENTS_ENABLED", "false"),
            ("SF_EVENTS_REPLAY", "SOMETIMES"),
        ]);
        assert_eq!(
            BridgeSettings::from_env(&env).unwrap_err().variable,
            "SF_EVENTS_REPLAY"
        );
        let env = Env::from_pairs([("SF_EVENTS_ENABLED", "false"), ("SF_PUBSUB_BATCH", "0")]);
        assert_eq!(
            BridgeSettings::from_env(&env).unwrap_err().variable,
            "SF_PUBSUB_BATCH"
        );
    }
}
