//! NATS connection and JetStream resources.
//!
//! Streams and buckets are created when absent and otherwise left as they are: an operator may
//! have tuned them (replicas, limits) and a service restart must not undo that.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::ConnectOptions;

use crate::config::{ConfigError, Env};

/// The contract's NATS variables. Secrets are kept out of `Debug`.
#[derive(Clone)]
pub struct NatsSettings {
    pub urls: Vec<String>,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("urls", &self.urls)
            .field("creds_file", &self.creds_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl NatsSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let raw = env.string_or("NATS_URL", "nats://127.0.0.1:4222");
        let urls: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(ConfigError::new("NATS_URL", "holds no server URL"));
        }
        for url in &urls {
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                ConfigError::new("NATS_URL", format!("has an invalid URL {url:?}: {e}"))
            })?;
        }
        let user = env.get("NATS_USER");
        let password = env.get("NATS_PASSWORD");
        if user.is_some() != password.is_some() {
            return Err(ConfigError::new(
                if user.is_some() {
                    "NATS_PASSWORD"
                } else {
                    "NATS_USER"
                },
                "must be set together with its pair (NATS_USER and NATS_PASSWORD)",
            ));
        }
        let existing_file = |name: &str| -> Result<Option<PathBuf>, ConfigError> {
            match env.get(name) {
                None => Ok(None),
                Some(path) if std::path::Path::new(&path).is_file() => Ok(Some(path.into())),
                Some(path) => Err(ConfigError::new(
                    name,
                    format!("names a file that does not exist: {path}"),
                )),
            }
        };
        Ok(Self {
            urls,
            creds_file: existing_file("NATS_CREDS_FILE")?,
            user,
            password,
            token: env.get("NATS_TOKEN"),
            tls_ca_file: existing_file("NATS_TLS_CA_FILE")?,
        })
    }

    /// Plain settings for one server URL (tests, tools).
    pub fn for_url(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot create or read stream {name}: {detail}")]
    Stream { name: String, detail: String },
    #[error("cannot create or read KV bucket {name}: {detail}")]
    Bucket { name: String, detail: String },
    #[error("cannot create or read consumer {name}: {detail}")]
    Consumer { name: String, detail: String },
}

impl NatsError {
    /// Every NATS setup error may clear up on its own except bad credentials.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Credentials { .. })
    }
}

/// Connects with the contract's settings. The client retries the first connection in the
/// background, so a service starts (and reports itself degraded) while NATS is unreachable.
pub async fn connect(
    settings: &NatsSettings,
    client_name: &str,
) -> Result<async_nats::Client, NatsError> {
    let mut options = ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost; reconnecting.")
                }
                async_nats::Event::Connected => tracing::info!("NATS connection established."),
                async_nats::Event::SlowConsumer(sid) => {
                    tracing::warn!(sid, "NATS slow consumer; messages dropped.")
                }
                async_nats::Event::ServerError(err) => {
                    tracing::warn!(error = %err, "NATS server error.")
                }
                async_nats::Event::ClientError(err) => {
                    tracing::debug!(error = %err, "NATS client error.")
                }
                other => tracing::debug!(event = %other, "NATS connection event."),
            }
        });
    if let Some(path) = &settings.creds_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| NatsError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &settings.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = settings
        .urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    Ok(options.connect(addrs).await?)
}

/// Whether the client is connected right now (for `/health`).
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Returns the stream, creating it with `config` when it does not exist.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, NatsError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(existing) => Ok(existing),
        Err(err) if is_not_found(&err) => match js.create_stream(config).await {
            Ok(created) => {
                tracing::info!(stream = %name, "Created JetStream stream.");
                Ok(created)
            }
            // Another replica won the race: take what it made.
            Err(_) => js.get_stream(&name).await.map_err(|e| NatsError::Stream {
                name: name.clone(),
                detail: e.to_string(),
            }),
        },
        Err(err) => Err(NatsError::Stream {
            name,
            detail: err.to_string(),
        }),
    }
}

/// Returns the durable pull consumer named in `config`, creating it when absent (an existing one
/// is left as configured, like streams and buckets).
pub async fn ensure_consumer(
    stream: &stream::Stream,
    config: async_nats::jetstream::consumer::pull::Config,
) -> Result<async_nats::jetstream::consumer::PullConsumer, NatsError> {
    let name = config.durable_name.clone().unwrap_or_default();
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| NatsError::Consumer {
            name,
            detail: e.to_string(),
        })
}

/// Returns the KV bucket, creating it with `config` when it does not exist.
///
/// The bucket's backing stream is created directly, with the same settings async-nats'
/// `create_key_value` would use: that call first reads the account info, whose reply from
/// nats-server 2.9 async-nats 0.51 cannot parse, so it would fail on Debian's server.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, NatsError> {
    let name = config.bucket.clone();
    let bucket_error = |e: &dyn std::fmt::Display| NatsError::Bucket {
        name: name.clone(),
        detail: e.to_string(),
    };
    ensure_stream(js, bucket_stream_config(&config))
        .await
        .map_err(|e| bucket_error(&e))?;
    js.get_key_value(&name).await.map_err(|e| bucket_error(&e))
}

/// The stream behind a KV bucket (ADR-8 conventions, as async-nats builds it).
pub fn bucket_stream_config(config: &kv::Config) -> stream::Config {
    let history = config.history.max(1);
    let default_window = Duration::from_secs(120);
    let duplicate_window = if config.max_age > Duration::ZERO && config.max_age < default_window {
        config.max_age
    } else {
        default_window
    };
    stream::Config {
        name: format!("KV_{}", config.bucket),
        description: (!config.description.is_empty()).then(|| config.description.clone()),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: history,
        max_bytes: config.max_bytes,
        max_age: config.max_age,
        max_message_size: config.max_value_size,
        storage: config.storage,
        num_replicas: config.num_replicas.max(1),
        allow_rollup: true,
        allow_direct: true,
        deny_delete: true,
        discard: stream::DiscardPolicy::New,
        duplicate_window,
        ..Default::default()
    }
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    match err.kind() {
        GetStreamErrorKind::JetStream(js_err) => {
            js_err.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}

/// Headers helper: inserts a header whose value may come from outside (Salesforce data), never
/// panicking on characters a NATS header cannot hold.
pub fn insert_header(headers: &mut async_nats::HeaderMap, name: &'static str, value: &str) -> bool {
    match value.parse::<async_nats::HeaderValue>() {
        Ok(v) if !value.contains(['\r', '\n']) => {
            headers.insert(name, v);
            true
        }
        _ => false,
    }
}
