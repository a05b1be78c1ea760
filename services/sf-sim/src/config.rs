//! Settings of a simulated org: identities, listen addresses and protocol timings.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use platform::config::{ConfigError, Env};

use crate::tls::TlsMode;

/// The default org id: a syntactically valid 18-character id.
pub const DEFAULT_ORG_ID: &str = "00D000000000001EAA";
pub const DEFAULT_CHANNEL: &str = "/event/OrderProvisionRequested__e";

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// 18-character org id (a 15-character one is extended).
    pub org_id: String,
    /// Expected JWT `iss` (the connected app's consumer key).
    pub client_id: String,
    /// Expected JWT `sub` (the integration user); compared case-insensitively like usernames.
    pub username: String,
    /// Verifies the RS256 signature of assertions (SPKI or PKCS#1 PEM).
    pub jwt_public_key_pem: String,
    /// OAuth token endpoint and the admin API. Port 0 picks a free port.
    pub login_addr: SocketAddr,
    /// REST API; the token response's `instance_url` points here.
    pub instance_addr: SocketAddr,
    /// Pub/Sub gRPC, HTTP/2 (plaintext unless `tls` is on).
    pub pubsub_addr: SocketAddr,
    /// TLS on all three listeners, and `https://` URLs; off by default.
    pub tls: TlsMode,
    /// Host used in URLs handed to clients (token response, `login_url()`, ...).
    pub public_host: String,
    /// Keepalive period while requested events are pending and none are available.
    pub keepalive_interval: Duration,
    /// A Subscribe stream with nothing requested and no FetchRequest for this long is closed.
    pub idle_close: Duration,
    /// Access tokens expire after this long without use (Salesforce's session timeout).
    pub token_lifetime: Duration,
    /// The one Platform Event topic of the org.
    pub channel: String,
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

impl SimConfig {
    /// Free ports on 127.0.0.1, fixed test identities, and short timings (1 s keepalive, 5 s
    /// idle close) so tests never wait for Salesforce's real minute-long periods.
    pub fn for_tests(jwt_public_key_pem: String) -> Self {
        Self {
            org_id: DEFAULT_ORG_ID.to_owned(),
            client_id: "3MVG9sfsim.test.consumer.key".to_owned(),
            username: "integration@sfsim.example".to_owned(),
            jwt_public_key_pem,
            login_addr: loopback(),
            instance_addr: loopback(),
            pubsub_addr: loopback(),
            tls: TlsMode::Off,
            public_host: "127.0.0.1".to_owned(),
            keepalive_interval: Duration::from_secs(1),
            idle_close: Duration::from_secs(5),
            token_lifetime: Duration::from_secs(2 * 60 * 60),
            channel: DEFAULT_CHANNEL.to_owned(),
        }
    }

    /// The same with TLS on, with a certificate generated at start ([`crate::SfSim::ca_pem`]).
    pub fn with_generated_tls(self) -> Self {
        Self {
            tls: TlsMode::Generate { ca_out: None },
            ..self
        }
    }

    /// Reads `SF_SIM_*` variables; the public key file is read here so that a bad path is a
    /// configuration error naming its variable.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let key_path = env.required("SF_SIM_PUBLIC_KEY_PATH")?;
        let jwt_public_key_pem = std::fs::read_to_string(&key_path).map_err(|e| {
            ConfigError::new(
                "SF_SIM_PUBLIC_KEY_PATH",
                format!("cannot be read ({key_path}): {e}"),
            )
        })?;
        jsonwebtoken::DecodingKey::from_rsa_pem(jwt_public_key_pem.as_bytes()).map_err(|e| {
            ConfigError::new(
                "SF_SIM_PUBLIC_KEY_PATH",
                format!("does not hold a PEM RSA public key ({key_path}): {e}"),
            )
        })?;
        let org_id = env.string_or("SF_SIM_ORG_ID", DEFAULT_ORG_ID);
        let org_id = crate::store::canonical_id(org_id.trim()).ok_or_else(|| {
            ConfigError::new(
                "SF_SIM_ORG_ID",
                format!("is not a 15/18-character Salesforce id: {org_id:?}"),
            )
        })?;
        let channel = env.string_or("SF_SIM_CHANNEL", DEFAULT_CHANNEL);
        if !channel.starts_with("/event/") {
            return Err(ConfigError::new(
                "SF_SIM_CHANNEL",
                format!("must start with /event/, not {channel:?}"),
            ));
        }
        Ok(Self {
            org_id,
            client_id: env.required("SF_SIM_CLIENT_ID")?,
            username: env.required("SF_SIM_USERNAME")?,
            jwt_public_key_pem,
            login_addr: env.socket_addr_or("SF_SIM_LOGIN_ADDR", "0.0.0.0:8081")?,
            instance_addr: env.socket_addr_or("SF_SIM_INSTANCE_ADDR", "0.0.0.0:8082")?,
            pubsub_addr: env.socket_addr_or("SF_SIM_PUBSUB_ADDR", "0.0.0.0:7443")?,
            tls: tls_from_env(env)?,
            public_host: env.string_or("SF_SIM_PUBLIC_HOST", "127.0.0.1"),
            keepalive_interval: env.secs_or("SF_SIM_KEEPALIVE_SECS", Duration::from_secs(60))?,
            idle_close: env.secs_or("SF_SIM_IDLE_CLOSE_SECS", Duration::from_secs(60))?,
            token_lifetime: env.secs_or("SF_SIM_TOKEN_LIFETIME_SECS", Duration::from_secs(7200))?,
            channel,
        })
    }
}

/// `SF_SIM_TLS` (`off`, the default, or `generate`) with `SF_SIM_TLS_CA_OUT`, or
/// `SF_SIM_TLS_CERT_FILE` and `SF_SIM_TLS_KEY_FILE` for a given certificate. Combinations that
/// cannot mean anything are refused rather than one part silently ignored.
fn tls_from_env(env: &Env) -> Result<TlsMode, ConfigError> {
    let mode = env.get("SF_SIM_TLS");
    let ca_out = env.get("SF_SIM_TLS_CA_OUT").map(std::path::PathBuf::from);
    let cert_file = env.existing_file("SF_SIM_TLS_CERT_FILE")?;
    let key_file = env.existing_file("SF_SIM_TLS_KEY_FILE")?;
    let given = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Some(TlsMode::Files {
            cert_file,
            key_file,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "SF_SIM_TLS_KEY_FILE",
                "must be set together with SF_SIM_TLS_CERT_FILE",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "SF_SIM_TLS_CERT_FILE",
                "must be set together with SF_SIM_TLS_KEY_FILE",
            ))
        }
    };
    match (mode.as_deref().map(str::trim), given) {
        (Some("generate"), None) => Ok(TlsMode::Generate { ca_out }),
        (Some("generate"), Some(_)) => Err(ConfigError::new(
            "SF_SIM_TLS",
            "is generate, but SF_SIM_TLS_CERT_FILE/SF_SIM_TLS_KEY_FILE give a certificate",
        )),
        (Some("off"), Some(_)) => Err(ConfigError::new(
            "SF_SIM_TLS",
            "is off, but SF_SIM_TLS_CERT_FILE/SF_SIM_TLS_KEY_FILE give a certificate",
        )),
        (Some("off") | None, _) if ca_out.is_some() => Err(ConfigError::new(
            "SF_SIM_TLS_CA_OUT",
            "needs SF_SIM_TLS=generate (only a generated CA is written)",
        )),
        (Some("off") | None, None) => Ok(TlsMode::Off),
        (None, Some(files)) => Ok(files),
        (Some(other), _) => Err(ConfigError::new(
            "SF_SIM_TLS",
            format!("must be off or generate, not {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_path_is_named() {
        let err = SimConfig::from_env(&Env::from_pairs([("SF_SIM_CLIENT_ID", "x")])).unwrap_err();
        assert_eq!(err.variable, "SF_SIM_PUBLIC_KEY_PATH");
    }

    #[test]
    fn reads_defaults_and_names_missing_identities() {
        let keys = testkit::keys::test_keys();
        let path = keys.public_key_path.to_string_lossy().into_owned();
        let env = Env::from_pairs([("SF_SIM_PUBLIC_KEY_PATH", path.as_str())]);
        assert_eq!(
            SimConfig::from_env(&env).unwrap_err().variable,
            "SF_SIM_CLIENT_ID"
        );
        let env = Env::from_pairs([
            ("SF_SIM_PUBLIC_KEY_PATH", path.as_str()),
            ("SF_SIM_CLIENT_ID", "cid"),
            ("SF_SIM_USERNAME", "u@x"),
            ("SF_SIM_ORG_ID", "00D000000000002"),
        ]);
        let config = SimConfig::from_env(&env).unwrap();
        assert_eq!(config.org_id.len(), 18);
        assert_eq!(config.keepalive_interval, Duration::from_secs(60));
        assert_eq!(config.pubsub_addr.port(), 7443);
        let bad = Env::from_pairs([
            ("SF_SIM_PUBLIC_KEY_PATH", path.as_str()),
            ("SF_SIM_CLIENT_ID", "cid"),
            ("SF_SIM_USERNAME", "u@x"),
            ("SF_SIM_KEEPALIVE_SECS", "soon"),
        ]);
        assert_eq!(
            SimConfig::from_env(&bad).unwrap_err().variable,
            "SF_SIM_KEEPALIVE_SECS"
        );
    }

    #[test]
    fn tls_settings_are_read_and_contradictions_named() {
        let keys = testkit::keys::test_keys();
        let key = keys.public_key_path.to_string_lossy().into_owned();
        let read = |extra: &[(&str, &str)]| {
            let mut pairs = vec![
                ("SF_SIM_PUBLIC_KEY_PATH", key.as_str()),
                ("SF_SIM_CLIENT_ID", "cid"),
                ("SF_SIM_USERNAME", "u@x"),
            ];
            pairs.extend_from_slice(extra);
            SimConfig::from_env(&Env::from_pairs(pairs))
        };
        assert_eq!(read(&[]).unwrap().tls, TlsMode::Off);
        assert_eq!(
            read(&[
                ("SF_SIM_TLS", "generate"),
                ("SF_SIM_TLS_CA_OUT", "/tmp/ca.pem")
            ])
            .unwrap()
            .tls,
            TlsMode::Generate {
                ca_out: Some("/tmp/ca.pem".into())
            }
        );
        // Any existing file will do to show the pair is taken; its content is read at start.
        let given = read(&[
            ("SF_SIM_TLS_CERT_FILE", key.as_str()),
            ("SF_SIM_TLS_KEY_FILE", key.as_str()),
        ])
        .unwrap();
        assert!(
            matches!(given.tls, TlsMode::Files { .. }),
            "{:?}",
            given.tls
        );
        let named = |extra: &[(&str, &str)]| read(extra).unwrap_err().variable;
        assert_eq!(named(&[("SF_SIM_TLS", "on")]), "SF_SIM_TLS");
        assert_eq!(
            named(&[("SF_SIM_TLS_CA_OUT", "/tmp/ca.pem")]),
            "SF_SIM_TLS_CA_OUT"
        );
        assert_eq!(
            named(&[("SF_SIM_TLS_CERT_FILE", key.as_str())]),
            "SF_SIM_TLS_KEY_FILE"
        );
        assert_eq!(
            named(&[("SF_SIM_TLS_KEY_FILE", "/nonexistent/key.pem")]),
            "SF_SIM_TLS_KEY_FILE"
        );
        assert_eq!(
            named(&[
                ("SF_SIM_TLS", "generate"),
                ("SF_SIM_TLS_CERT_FILE", key.as_str()),
                ("SF_SIM_TLS_KEY_FILE", key.as_str()),
            ]),
            "SF_SIM_TLS"
        );
    }
}
