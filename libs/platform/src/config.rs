//! Configuration from environment variables. A missing or malformed variable is one
//! [`ConfigError`] naming it, which the binaries print as a single line before exiting.
//!
//! Settings are read through [`Env`] rather than `std::env` directly, so tests build them from a
//! map without touching the process environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A variable that is missing or cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration variable {variable} {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Where settings come from: the process environment, or a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    overrides: Option<HashMap<String, String>>,
}

impl Env {
    /// Reads the process environment.
    pub fn process() -> Self {
        Self { overrides: None }
    }

    /// Reads only the given pairs (tests, tools).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            overrides: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The raw value; an empty value counts as unset, as most tooling treats it.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_even_empty(name).filter(|v| !v.trim().is_empty())
    }

    /// The value even when it is empty or blank: for a variable whose emptiness must not be
    /// mistaken for "unset" (a secret that failed to mount must not switch a protection off).
    pub fn get_even_empty(&self, name: &str) -> Option<String> {
        match &self.overrides {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }

    /// A path that must name an existing file when set: checked at start, so a missing mount is
    /// a line naming the variable rather than a failure at first use.
    pub fn existing_file(&self, name: &str) -> Result<Option<std::path::PathBuf>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(path) if std::path::Path::new(&path).is_file() => Ok(Some(path.into())),
            Some(path) => Err(ConfigError::new(
                name,
                format!("names a file that does not exist: {path}"),
            )),
        }
    }

    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| default.to_owned())
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e| ConfigError::new(name, format!("has an invalid value {raw:?}: {e}"))),
        }
    }

    /// An optional parsed value.
    pub fn parse_opt<T>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(name)
            .map(|raw| {
                raw.trim().parse().map_err(|e| {
                    ConfigError::new(name, format!("has an invalid value {raw:?}: {e}"))
                })
            })
            .transpose()
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`), case-insensitive.
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(v) => Err(ConfigError::new(
                name,
                format!("must be true or false, not {v:?}"),
            )),
        }
    }

    /// A whole number within `range`.
    pub fn int_in_range<T>(
        &self,
        name: &str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Display + Copy,
        T::Err: Display,
    {
        let value = self.parse_or(name, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::new(
                name,
                format!(
                    "must be between {} and {}, not {value}",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }

    /// A duration given in milliseconds (`*_MS` variables).
    pub fn millis_or(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        self.parse_opt::<u64>(name)
            .map(|v| v.map_or(default, Duration::from_millis))
    }

    /// A duration given in seconds (`*_SECS` variables); fractions allowed.
    pub fn secs_or(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.parse_opt::<f64>(name)? {
            None => Ok(default),
            Some(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v)),
            Some(v) => Err(ConfigError::new(
                name,
                format!("must be a positive number of seconds, not {v}"),
            )),
        }
    }

    /// An `ip:port` listen address.
    pub fn socket_addr_or(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.string_or(name, default);
        raw.parse().map_err(|e| {
            ConfigError::new(
                name,
                format!("must be an ip:port address, not {raw:?}: {e}"),
            )
        })
    }

    /// A URL with an `http` or `https` scheme, returned without a trailing slash.
    pub fn http_url_or(&self, name: &str, default: &str) -> Result<String, ConfigError> {
        let raw = self.string_or(name, default);
        check_http_url(name, &raw)
    }

    pub fn http_url_required(&self, name: &str) -> Result<String, ConfigError> {
        let raw = self.required(name)?;
        check_http_url(name, &raw)
    }
}

fn check_http_url(name: &str, raw: &str) -> Result<String, ConfigError> {
    let trimmed = raw.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(|| {
            ConfigError::new(
                name,
                format!("must start with http:// or https://, not {raw:?}"),
            )
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ConfigError::new(name, format!("has no host: {raw:?}")));
    }
    Ok(trimmed.to_owned())
}

/// Settings every service reads (docs/contract.md §2, "All services").
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub nats: crate::nats::NatsSettings,
    pub http_addr: SocketAddr,
    pub telemetry: crate::telemetry::TelemetrySettings,
}

impl CommonSettings {
    pub fn from_env(env: &Env, binary_name: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            nats: crate::nats::NatsSettings::from_env(env)?,
            http_addr: env.socket_addr_or("HTTP_ADDR", "0.0.0.0:8080")?,
            telemetry: crate::telemetry::TelemetrySettings::from_env(env, binary_name)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_file_is_taken_and_a_missing_one_named() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("platform-config-{}.txt", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let env = Env::from_pairs([
            ("PRESENT", file.to_str().unwrap()),
            ("MISSING", "/nonexistent/ca.pem"),
            ("A_DIRECTORY", dir.to_str().unwrap()),
        ]);
        assert_eq!(env.existing_file("PRESENT").unwrap(), Some(file.clone()));
        assert_eq!(env.existing_file("UNSET").unwrap(), None);
        let err = env.existing_file("MISSING").unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration variable MISSING names a file that does not exist: /nonexistent/ca.pem"
        );
        assert!(
            env.existing_file("A_DIRECTORY").is_err(),
            "a directory is not a file"
        );
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn missing_required_variable_is_named() {
        let env = Env::from_pairs([("A", "1")]);
        let err = env.required("SF_CLIENT_ID").unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration variable SF_CLIENT_ID is required but not set"
        );
    }

    #[test]
    fn out_of_range_number_is_named_with_the_range() {
        let env = Env::from_pairs([("SF_PUBSUB_BATCH", "500")]);
        let err = env
            .int_in_range("SF_PUBSUB_BATCH", 100u32, 1..=100)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("SF_PUBSUB_BATCH must be between 1 and 100, not 500"),
            "{err}"
        );
    }

    #[test]
    fn urls_need_a_scheme_and_lose_the_trailing_slash() {
        let env = Env::from_pairs([("U", "http://h:1/"), ("V", "h:1")]);
        assert_eq!(env.http_url_or("U", "").unwrap(), "http://h:1");
        assert!(env
            .http_url_or("V", "")
            .unwrap_err()
            .to_string()
            .contains("V must start with http://"));
    }

    #[test]
    fn empty_counts_as_unset() {
        let env = Env::from_pairs([("X", "  ")]);
        assert_eq!(env.string_or("X", "d"), "d");
        assert!(env.bool_or("X", true).unwrap());
        assert!(Env::from_pairs([("X", "maybe")])
            .bool_or("X", true)
            .is_err());
    }
}
