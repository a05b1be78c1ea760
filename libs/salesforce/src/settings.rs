//! Salesforce settings shared by the three services (docs/contract.md §2, "Salesforce").

use std::path::PathBuf;
use std::time::Duration;

use platform::config::{ConfigError, Env};
use secrecy::zeroize::Zeroizing;
use secrecy::SecretSlice;

use crate::tls::ExtraRoots;

/// Connection settings. The private key is a [`SecretSlice`]: `Debug` never shows it, it is
/// wiped from memory when dropped, and only the token provider reads it, to sign an assertion
/// (docs/security.md).
#[derive(Clone)]
pub struct SalesforceSettings {
    /// `SF_LOGIN_URL`: token endpoint base, and the JWT `aud`.
    pub login_url: String,
    /// `SF_CLIENT_ID`: connected-app consumer key, the JWT `iss`.
    pub client_id: String,
    /// `SF_USERNAME`: integration user, the JWT `sub`.
    pub username: String,
    /// `SF_PRIVATE_KEY_PATH`: where the key was read from (not secret; shown in `Debug`).
    pub private_key_path: PathBuf,
    /// The PEM RSA private key read from `SF_PRIVATE_KEY_PATH`, checked at start. Kept as the
    /// file's bytes, not as a parsed `jsonwebtoken::EncodingKey`, because that type cannot be
    /// wiped and would keep the key in memory after it is dropped.
    pub private_key_pem: SecretSlice<u8>,
    /// `SF_API_VERSION`, e.g. `62.0`.
    pub api_version: String,
    /// `SF_TOKEN_MAX_AGE_SECS`: the JWT flow returns no expiry, so a token older than this is
    /// replaced before use (an authentication error replaces it at once in any case).
    pub token_max_age: Duration,
    /// `SF_HTTP_TIMEOUT_SECS`: per-request timeout for the token endpoint and REST.
    pub http_timeout: Duration,
    /// `SF_CA_FILE`: CAs trusted for the token, REST and Pub/Sub endpoints in addition to the
    /// built-in roots (a TLS-inspecting proxy's, or sf-sim's generated one).
    pub extra_roots: Option<ExtraRoots>,
}

impl std::fmt::Debug for SalesforceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SalesforceSettings")
            .field("login_url", &self.login_url)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("private_key_path", &self.private_key_path)
            .field("api_version", &self.api_version)
            .field("extra_roots", &self.extra_roots)
            .finish_non_exhaustive()
    }
}

impl SalesforceSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let login_url = env.http_url_or("SF_LOGIN_URL", "https://login.salesforce.com")?;
        let client_id = env.required("SF_CLIENT_ID")?;
        let username = env.required("SF_USERNAME")?;
        let private_key_path: PathBuf = env.required("SF_PRIVATE_KEY_PATH")?.into();
        // The buffer the file is read into is wiped when it goes out of scope; the settings
        // keep their own copy inside the secret.
        let pem = Zeroizing::new(std::fs::read(&private_key_path).map_err(|e| {
            ConfigError::new(
                "SF_PRIVATE_KEY_PATH",
                format!("cannot be read ({}): {e}", private_key_path.display()),
            )
        })?);
        // Parsed once here so a bad key stops the start with a line naming the variable; the
        // parse error describes the format, never the content.
        jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
            ConfigError::new(
                "SF_PRIVATE_KEY_PATH",
                format!("is not a PEM RSA private key: {e}"),
            )
        })?;
        let private_key_pem = SecretSlice::from(pem.to_vec());
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
        let extra_roots = match env.get("SF_CA_FILE") {
            None => None,
            Some(path) => Some(ExtraRoots::load(std::path::Path::new(&path)).map_err(|e| {
                ConfigError::new("SF_CA_FILE", platform::error::Chain(&e).to_string())
            })?),
        };
        Ok(Self {
            login_url,
            client_id,
            username,
            private_key_path,
            private_key_pem,
            api_version,
            token_max_age: env.secs_or("SF_TOKEN_MAX_AGE_SECS", Duration::from_secs(30 * 60))?,
            http_timeout: env.secs_or("SF_HTTP_TIMEOUT_SECS", Duration::from_secs(20))?,
            extra_roots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    #[test]
    fn the_private_key_is_held_but_never_shown() {
        let keys = testkit::keys::test_keys();
        let path = keys.private_key_path.display().to_string();
        let settings = SalesforceSettings::from_env(&Env::from_pairs([
            ("SF_CLIENT_ID", "client"),
            ("SF_USERNAME", "user@example.com"),
            ("SF_PRIVATE_KEY_PATH", path.as_str()),
        ]))
        .unwrap();
        assert_eq!(
            settings.private_key_pem.expose_secret(),
            keys.private_pem.as_bytes()
        );
        let shown = format!("{settings:?}");
        let body_lines: Vec<&str> = keys
            .private_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(body_lines.len() > 10);
        for line in body_lines {
            assert!(!shown.contains(line), "{shown}");
        }
        assert!(shown.contains(&path), "{shown}");
    }

    #[test]
    fn a_bad_key_file_is_named_not_shown() {
        let dir = tempfile_dir();
        let path = dir.join("not-a-key.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVzLTQ0Zg==\n",
        )
        .unwrap();
        let path = path.display().to_string();
        let err = SalesforceSettings::from_env(&Env::from_pairs([
            ("SF_CLIENT_ID", "client"),
            ("SF_USERNAME", "user@example.com"),
            ("SF_PRIVATE_KEY_PATH", path.as_str()),
        ]))
        .unwrap_err();
        assert_eq!(err.variable, "SF_PRIVATE_KEY_PATH");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_ca_file_is_read_and_its_problems_named() {
        let keys = testkit::keys::test_keys();
        let key = keys.private_key_path.display().to_string();
        let dir = tempfile_dir();
        let read = |ca: &str| {
            SalesforceSettings::from_env(&Env::from_pairs([
                ("SF_CLIENT_ID", "client"),
                ("SF_USERNAME", "user@example.com"),
                ("SF_PRIVATE_KEY_PATH", key.as_str()),
                ("SF_CA_FILE", ca),
            ]))
        };
        let missing = dir.join("missing-ca.pem").display().to_string();
        let err = read(&missing).unwrap_err();
        assert_eq!(err.variable, "SF_CA_FILE");
        assert!(err.to_string().contains("cannot be read"), "{err}");
        // A private key where the CA should be: named, and its content not shown.
        let err = read(&key).unwrap_err();
        assert_eq!(err.variable, "SF_CA_FILE");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let body_line = keys.private_pem.lines().nth(1).unwrap();
        assert!(!err.to_string().contains(body_line), "{err}");

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca).unwrap();
        let settings = read(&path.display().to_string()).unwrap();
        assert_eq!(settings.extra_roots.as_ref().map(ExtraRoots::len), Some(1));
        assert!(format!("{settings:?}").contains("ca.pem"));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sf-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
