//! Salesforce settings shared by the three services (CONTRACT §2, "Salesforce").

use std::path::PathBuf;
use std::time::Duration;

use platform::config::{ConfigError, Env};

/// Connection settings. The private key is held only as a signing key; `Debug` never shows it.
#[derive(Clone)]
pub struct SalesforceSettings {
    /// `SF_LOGIN_URL`: token endpoint base, and the JWT `aud`.
    pub login_url: String,
    /// `SF_CLIENT_ID`: connected-app consumer key, the JWT `iss`.
    pub client_id: String,
    /// `SF_USERNAME`: integration user, the JWT `sub`.
    pub username: String,
    pub private_key_path: PathBuf,
    pub signing_key: jsonwebtoken::EncodingKey,
    /// `SF_API_VERSION`, e.g. `62.0`.
    pub api_version: String,
    /// `SF_TOKEN_MAX_AGE_SECS`: the JWT flow returns no expiry, so a token older than this is
    /// replaced before use (an authentication error replaces it at once in any case).
    pub token_max_age: Duration,
    /// `SF_HTTP_TIMEOUT_SECS`: per-request timeout for the token endpoint and REST.
    pub http_timeout: Duration,
}

impl std::fmt::Debug for SalesforceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceSettings")
            .field("login_url", &self.login_url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("private_key_path", &self.private_key_path)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

impl SalesforceSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let login_url = env.http_url_or("SF_LOGIN_URL", "https://login.salesforce.com")?;
        let client_id = env.required("SF_CLIENT_ID")?;
        let username = env.required("SF_USERNAME")?;
        let private_key_path: PathBuf = env.required("SF_PRIVATE_KEY_PATH")?.into();
        let pem = std::fs::read(&private_key_path).map_err(|e| {
            ConfigError::new(
                "SF_PRIVATE_KEY_PATH",
                format!("cannot be read ({}): {e}", private_key_path.display()),
            )
        })?;
        let signing_key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
            ConfigError::new(
                "SF_PRIVATE_KEY_PATH",
                format!("is not a PEM RSA private key: {e}"),
            )
        })?;
        let api_version = env.string_or("SF_API_VERSION", "62.0");
        let valid_version = api_version.split_once('.').is_some_and(|(major, minor)| {
            !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()) && minor == "0"
        });
        if !valid_version {
            return Err(ConfigError::new(
                "SF_API_VERSION",
                format!("must look like 62.0, not {api_version:?}"),
            ));
        }
        Ok(Self {
            login_url,
            client_id,
            username,
            private_key_path,
            signing_key,
            api_version,
            token_max_age: env.secs_or("SF_TOKEN_MAX_AGE_SECS", Duration::from_secs(30 * 60))?,
            http_timeout: env.secs_or("SF_HTTP_TIMEOUT_SECS", Duration::from_secs(20))?,
        })
    }
}
