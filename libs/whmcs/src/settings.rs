//! WHMCS connection settings (docs/contract.md §2, "provisioner").

use std::time::Duration;

use platform::config::{ConfigError, Env};
use secrecy::{ExposeSecret as _, SecretString};

/// Per-call timeout when `WHMCS_TIMEOUT_SECS` is unset. Long enough for AddOrder on a busy
/// install (it creates services and an invoice and may send mail), short enough that a hung
/// call ends the job well inside the consumer's ack window.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connection settings. The secret and the access key are [`SecretString`]s: `Debug` shows
/// neither (settings end up in start-up logs and panics, and the contract forbids secrets
/// there), they are wiped from memory when dropped, and reading one takes an explicit
/// `expose_secret()`, which only the client's request envelope does (docs/security.md).
#[derive(Clone)]
pub struct WhmcsSettings {
    /// `WHMCS_API_URL`: the full URL of `includes/api.php`.
    pub api_url: String,
    /// `WHMCS_API_IDENTIFIER`.
    pub identifier: String,
    /// `WHMCS_API_SECRET`.
    pub secret: SecretString,
    /// `WHMCS_API_ACCESS_KEY`: sent as `accesskey` when set (bypasses WHMCS's IP allow-list).
    pub access_key: Option<SecretString>,
    /// `WHMCS_TIMEOUT_SECS`: default per-call timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for WhmcsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhmcsSettings")
            .field("api_url", &self.api_url)
            .field("identifier", &self.identifier)
            .field("secret", &"<redacted>")
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WhmcsSettings {
    /// Settings for a known endpoint and credential pair, with the default timeout.
    pub fn new(
        api_url: impl Into<String>,
        identifier: impl Into<String>,
        secret: impl Into<SecretString>,
    ) -> Self {
        Self {
            api_url: api_url.into(),
            identifier: identifier.into(),
            secret: secret.into(),
            access_key: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_access_key(mut self, access_key: impl Into<SecretString>) -> Self {
        self.access_key = Some(access_key.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let api_url = env.http_url_required("WHMCS_API_URL")?;
        // A base URL instead of the script's URL is the usual mistake; WHMCS would then answer
        // with its HTML front page, which reads as an unknown outcome on every call.
        if !api_url.ends_with(".php") {
            return Err(ConfigError::new(
                "WHMCS_API_URL",
                format!("must be the full URL of includes/api.php, not {api_url:?}"),
            ));
        }
        let access_key = env.get("WHMCS_API_ACCESS_KEY").map(SecretString::from);
        if let Some(key) = &access_key {
            // WHMCS's allowed characters; anything else can never match the configured key.
            // The error names the rule, never the value.
            let valid = key
                .expose_secret()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!@#$%.()*[]-_".contains(c));
            if !valid {
                return Err(ConfigError::new(
                    "WHMCS_API_ACCESS_KEY",
                    "may hold only letters, digits and ! @ # $ % . ( ) * [ ] - _",
                ));
            }
        }
        Ok(Self {
            api_url,
            identifier: env.required("WHMCS_API_IDENTIFIER")?,
            secret: SecretString::from(env.required("WHMCS_API_SECRET")?),
            access_key,
            timeout: env.secs_or("WHMCS_TIMEOUT_SECS", DEFAULT_TIMEOUT)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            (
                "WHMCS_API_URL",
                "https://billing.example.com/includes/api.php",
            ),
            ("WHMCS_API_IDENTIFIER", "ident"),
            ("WHMCS_API_SECRET", "s3cr3t-value"),
        ]
    }

    #[test]
    fn reads_required_and_defaults() {
        let settings = WhmcsSettings::from_env(&Env::from_pairs(base())).unwrap();
        assert_eq!(settings.timeout, DEFAULT_TIMEOUT);
        assert!(settings.access_key.is_none());
        let mut pairs = base();
        pairs.push(("WHMCS_API_ACCESS_KEY", "k3y"));
        pairs.push(("WHMCS_TIMEOUT_SECS", "2.5"));
        let settings = WhmcsSettings::from_env(&Env::from_pairs(pairs)).unwrap();
        assert_eq!(
            settings.access_key.as_ref().map(|k| k.expose_secret()),
            Some("k3y")
        );
        assert_eq!(settings.secret.expose_secret(), "s3cr3t-value");
        assert_eq!(settings.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn names_the_bad_variable() {
        for (drop, expected) in [
            ("WHMCS_API_URL", "WHMCS_API_URL"),
            ("WHMCS_API_IDENTIFIER", "WHMCS_API_IDENTIFIER"),
            ("WHMCS_API_SECRET", "WHMCS_API_SECRET"),
        ] {
            let pairs: Vec<_> = base().into_iter().filter(|(k, _)| *k != drop).collect();
            let err = WhmcsSettings::from_env(&Env::from_pairs(pairs)).unwrap_err();
            assert_eq!(err.variable, expected);
        }
        let mut pairs = base();
        pairs.push(("WHMCS_TIMEOUT_SECS", "soon"));
        let err = WhmcsSettings::from_env(&Env::from_pairs(pairs)).unwrap_err();
        assert_eq!(err.variable, "WHMCS_TIMEOUT_SECS");
        let err = WhmcsSettings::from_env(&Env::from_pairs([
            ("WHMCS_API_URL", "https://billing.example.com/"),
            ("WHMCS_API_IDENTIFIER", "i"),
            ("WHMCS_API_SECRET", "s"),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "WHMCS_API_URL");
        let mut pairs = base();
        pairs.push(("WHMCS_API_ACCESS_KEY", "bad key-0c41d"));
        let err = WhmcsSettings::from_env(&Env::from_pairs(pairs)).unwrap_err();
        assert_eq!(err.variable, "WHMCS_API_ACCESS_KEY");
        // A refused key is still a key: the message names the rule, not the value.
        assert!(!err.to_string().contains("0c41d"), "{err}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let settings = WhmcsSettings::new("http://h/includes/api.php", "ident", "s3cr3t-value")
            .with_access_key("acc-key-value");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!shown.contains("acc-key-value"), "{shown}");
        assert!(shown.contains("ident"));
    }
}
