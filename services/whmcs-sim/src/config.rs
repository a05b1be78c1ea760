//! Settings of a simulated WHMCS installation: credentials, access control and gateways.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use platform::config::{ConfigError, Env};

/// Payment gateway modules active by default, as `(module, display name)`.
pub const DEFAULT_GATEWAYS: &[(&str, &str)] = &[
    ("mailin", "Mail In Payment"),
    ("stripe", "Credit Card"),
    ("banktransfer", "Bank Transfer"),
];

#[derive(Clone)]
pub struct WhmcsSimConfig {
    /// Listen address; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Host put in the URLs handed to clients.
    pub public_host: String,
    /// The one API credential pair.
    pub identifier: String,
    pub secret: String,
    /// `$api_access_key` of configuration.php: a caller sending it skips the IP allow-list.
    pub access_key: Option<String>,
    /// API IP allow-list. `None` admits every caller, as an install whose list covers the
    /// callers does; with `Some`, others get `Invalid IP <ip>` unless they send the access key.
    pub allowed_ips: Option<Vec<IpAddr>>,
    /// The credential's API role: allowed action names (any case). `None` allows all.
    pub allowed_actions: Option<Vec<String>>,
    /// Failed authentications from one IP (within 30 minutes) before it is banned with
    /// `IP Banned`; `None` disables banning (WHMCS: ban time 0). WHMCS's default is 3.
    pub ban_after_failures: Option<u32>,
    /// How long a ban lasts (WHMCS default 15 minutes).
    pub ban_duration: Duration,
    /// Active gateway modules `(module, display name)`; AddOrder's `paymentmethod` must be one.
    pub gateways: Vec<(String, String)>,
    /// The one currency of the install.
    pub currency_code: String,
}

impl std::fmt::Debug for WhmcsSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhmcsSimConfig")
            .field("addr", &self.addr)
            .field("public_host", &self.public_host)
            .field("identifier", &self.identifier)
            .field("secret", &"<redacted>")
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allowed_ips", &self.allowed_ips)
            .field("allowed_actions", &self.allowed_actions)
            .field("ban_after_failures", &self.ban_after_failures)
            .field("gateways", &self.gateways)
            .finish_non_exhaustive()
    }
}

fn default_gateways() -> Vec<(String, String)> {
    DEFAULT_GATEWAYS
        .iter()
        .map(|(m, d)| ((*m).to_owned(), (*d).to_owned()))
        .collect()
}

impl WhmcsSimConfig {
    /// 127.0.0.1 on a free port, fixed test credentials, no access key, no ban.
    pub fn for_tests() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            public_host: "127.0.0.1".to_owned(),
            identifier: "whmcs-sim-identifier".to_owned(),
            secret: "whmcs-sim-secret".to_owned(),
            access_key: None,
            allowed_ips: None,
            allowed_actions: None,
            ban_after_failures: None,
            ban_duration: Duration::from_secs(15 * 60),
            gateways: default_gateways(),
            currency_code: "USD".to_owned(),
        }
    }

    /// Reads the `WHMCS_SIM_*` variables (documented in the crate docs).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let allowed_ips = env
            .get("WHMCS_SIM_ALLOWED_IPS")
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|ip| {
                        ip.parse::<IpAddr>().map_err(|e| {
                            ConfigError::new(
                                "WHMCS_SIM_ALLOWED_IPS",
                                format!("holds {ip:?}, which is not an IP address: {e}"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let gateways = match env.get("WHMCS_SIM_GATEWAYS") {
            None => default_gateways(),
            Some(raw) => {
                let list: Vec<(String, String)> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|m| (m.to_owned(), m.to_owned()))
                    .collect();
                if list.is_empty() {
                    return Err(ConfigError::new(
                        "WHMCS_SIM_GATEWAYS",
                        "must name at least one gateway module",
                    ));
                }
                list
            }
        };
        let ban = env.parse_opt::<u32>("WHMCS_SIM_BAN_AFTER_FAILURES")?;
        Ok(Self {
            addr: env.socket_addr_or("WHMCS_SIM_ADDR", "0.0.0.0:8090")?,
            public_host: env.string_or("WHMCS_SIM_PUBLIC_HOST", "127.0.0.1"),
            identifier: env.required("WHMCS_SIM_IDENTIFIER")?,
            secret: env.required("WHMCS_SIM_SECRET")?,
            access_key: env.get("WHMCS_SIM_ACCESS_KEY"),
            allowed_ips,
            allowed_actions: None,
            ban_after_failures: ban.filter(|n| *n > 0),
            ban_duration: Duration::from_secs(15 * 60),
            gateways,
            currency_code: "USD".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_and_defaults() {
        let err = WhmcsSimConfig::from_env(&Env::from_pairs([("WHMCS_SIM_IDENTIFIER", "i")]))
            .unwrap_err();
        assert_eq!(err.variable, "WHMCS_SIM_SECRET");
        let config = WhmcsSimConfig::from_env(&Env::from_pairs([
            ("WHMCS_SIM_IDENTIFIER", "i"),
            ("WHMCS_SIM_SECRET", "topsecret"),
            ("WHMCS_SIM_ALLOWED_IPS", "127.0.0.1, ::1"),
            ("WHMCS_SIM_BAN_AFTER_FAILURES", "3"),
        ]))
        .unwrap();
        assert_eq!(config.addr.port(), 8090);
        assert_eq!(config.allowed_ips.as_ref().map(Vec::len), Some(2));
        assert_eq!(config.ban_after_failures, Some(3));
        assert!(!format!("{config:?}").contains("topsecret"));
        let bad = WhmcsSimConfig::from_env(&Env::from_pairs([
            ("WHMCS_SIM_IDENTIFIER", "i"),
            ("WHMCS_SIM_SECRET", "s"),
            ("WHMCS_SIM_ALLOWED_IPS", "localhost"),
        ]))
        .unwrap_err();
        assert_eq!(bad.variable, "WHMCS_SIM_ALLOWED_IPS");
    }
}
