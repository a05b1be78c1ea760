//! NATS connection and JetStream resources.
//!
//! Streams and buckets are created when absent and otherwise left as they are: an operator may
//! have tuned them (replicas, limits) and a service restart must not undo that.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::ConnectOptions;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{ConfigError, Env};

/// The contract's NATS variables. Secrets are [`SecretString`]s: redacted in `Debug`, zeroed
/// when dropped, and read only where they are handed to the client.
#[derive(Clone)]
pub struct NatsSettings {
    pub urls: Vec<String>,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub token: Option<SecretString>,
    pub tls_ca_file: Option<PathBuf>,
    /// `NATS_TLS_CERT_FILE` and `NATS_TLS_KEY_FILE`: the client certificate (PEM chain) and its
    /// key for mutual TLS; both or neither.
    pub tls_client_cert: Option<TlsClientCert>,
    /// `JETSTREAM_REPLICAS` (1–5): replicas of every stream and KV bucket a service creates.
    pub jetstream_replicas: usize,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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
            .field("tls_client_cert", &self.tls_client_cert)
            .field("jetstream_replicas", &self.jetstream_replicas)
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
        let cert_file = env.existing_file("NATS_TLS_CERT_FILE")?;
        let key_file = env.existing_file("NATS_TLS_KEY_FILE")?;
        let tls_client_cert =
            match (cert_file, key_file) {
                (Some(cert_file), Some(key_file)) => Some(TlsClientCert {
                    cert_file,
                    key_file,
                }),
                (None, None) => None,
                (Some(_), None) => return Err(ConfigError::new(
                    "NATS_TLS_KEY_FILE",
                    "must be set together with NATS_TLS_CERT_FILE (the client certificate's key)",
                )),
                (None, Some(_)) => return Err(ConfigError::new(
                    "NATS_TLS_CERT_FILE",
                    "must be set together with NATS_TLS_KEY_FILE (the key's client certificate)",
                )),
            };
        Ok(Self {
            urls,
            creds_file: env.existing_file("NATS_CREDS_FILE")?,
            user,
            password: password.map(SecretString::from),
            token: env.get("NATS_TOKEN").map(SecretString::from),
            tls_ca_file: env.existing_file("NATS_TLS_CA_FILE")?,
            tls_client_cert,
            // Read once here, for every service: 3 on a production cluster survives the loss of
            // a node; 5 is JetStream's maximum.
            jetstream_replicas: env.int_in_range("JETSTREAM_REPLICAS", 1usize, 1..=5)?,
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
            tls_client_cert: None,
            jetstream_replicas: 1,
        }
    }

    /// Whether the connection must be TLS: a CA or a client certificate is configured.
    fn wants_tls(&self) -> bool {
        self.tls_ca_file.is_some() || self.tls_client_cert.is_some()
    }
}

/// Whether a failed NATS/JetStream operation may succeed later without anyone changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The server is unreachable, slow, electing a leader or still starting: retry.
    Transient,
    /// The request itself cannot succeed (conflicting or invalid configuration, permissions,
    /// limits): retrying would only hide it, so it is reported and the service stops.
    Permanent,
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A NATS set-up failure. The `Display` text says what failed; the server's description (for
/// JetStream API errors: text, status and error code) is the `source`, so logs print the chain
/// (`{err:#}` with anyhow, [`crate::error::Chain`] with tracing).
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read NATS credentials file {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS")]
    Connect(#[source] ConnectFailure),
    /// The server was reached and refused us, or we refused it: retrying cannot help.
    #[error("NATS connection refused: {refusal}")]
    Refused {
        refusal: Refusal,
        #[source]
        source: ConnectFailure,
    },
    #[error("cannot read NATS client certificate or key {path}")]
    ClientCertificate {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} stream {name}")]
    Stream {
        name: String,
        action: &'static str,
        class: ErrorClass,
        code: Option<u64>,
        #[source]
        source: BoxError,
    },
    #[error("cannot {action} KV bucket {name}")]
    Bucket {
        name: String,
        action: &'static str,
        class: ErrorClass,
        code: Option<u64>,
        #[source]
        source: BoxError,
    },
    #[error("cannot {action} consumer {name}")]
    Consumer {
        name: String,
        action: &'static str,
        class: ErrorClass,
        code: Option<u64>,
        #[source]
        source: BoxError,
    },
}

impl NatsError {
    pub fn class(&self) -> ErrorClass {
        match self {
            // A credentials file that cannot be read stays unreadable.
            Self::Credentials { .. } => ErrorClass::Permanent,
            Self::Connect(ConnectFailure(err)) => match err.kind() {
                async_nats::ConnectErrorKind::TimedOut
                | async_nats::ConnectErrorKind::Io
                | async_nats::ConnectErrorKind::Dns
                | async_nats::ConnectErrorKind::MaxReconnects => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            Self::Refused { .. } | Self::ClientCertificate { .. } => ErrorClass::Permanent,
            Self::Stream { class, .. }
            | Self::Bucket { class, .. }
            | Self::Consumer { class, .. } => *class,
        }
    }

    /// Connection problems, timeouts, no responders and JetStream leader elections; see
    /// [`classify_jetstream_code`] for the server's error codes.
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// The JetStream API error code (`10065` for overlapping subjects, ...), when the server
    /// answered with one.
    pub fn jetstream_code(&self) -> Option<u64> {
        match self {
            Self::Stream { code, .. } | Self::Bucket { code, .. } | Self::Consumer { code, .. } => {
                *code
            }
            _ => None,
        }
    }
}

/// JetStream API error codes that describe a passing state of the server or cluster rather than
/// something wrong with the request. Everything else the server rejects (subjects overlapping
/// another stream's 10065, invalid configuration 10052, a name in use with other settings 10058,
/// replicas a single server cannot hold 10074, limits, permissions) is permanent.
pub fn classify_jetstream_code(code: async_nats::jetstream::ErrorCode) -> ErrorClass {
    use async_nats::jetstream::ErrorCode;
    match code {
        // "JetStream system temporarily unavailable": meta leader election, server catching up.
        ErrorCode::CLUSTER_NOT_AVAILABLE
        // "incomplete results", "cluster not assigned to this server", "can not handle request"
        // (no leader yet), and raft failures: all during elections and restarts.
        | ErrorCode::CLUSTER_INCOMPLETE
        | ErrorCode::CLUSTER_NOT_ASSIGNED
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::RAFT_GENERAL
        // "JetStream not enabled" (10076) is this server's JetStream not running (yet, or
        // again after a storage failure), not the account's configuration (that is 10039).
        | ErrorCode::JETSTREAM_NOT_ENABLED => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

fn js_class(err: &async_nats::jetstream::Error) -> (ErrorClass, Option<u64>) {
    (
        classify_jetstream_code(err.error_code()),
        Some(err.error_code().0),
    )
}

fn classify_get_stream(err: &jetstream::context::GetStreamError) -> (ErrorClass, Option<u64>) {
    use jetstream::context::GetStreamErrorKind as K;
    match err.kind() {
        // Timeouts, no responders, a dropped connection.
        K::Request => (ErrorClass::Transient, None),
        K::JetStream(js_err) => js_class(&js_err),
        K::EmptyName | K::InvalidStreamName => (ErrorClass::Permanent, None),
    }
}

fn classify_create_stream(
    err: &jetstream::context::CreateStreamError,
) -> (ErrorClass, Option<u64>) {
    use jetstream::context::CreateStreamErrorKind as K;
    match err.kind() {
        // No responders (JetStream not up yet, or no stream leader during an election),
        // timeouts, other request failures (connection), and a stream deleted under us.
        K::JetStreamUnavailable | K::TimedOut | K::Response | K::NotFound => {
            (ErrorClass::Transient, None)
        }
        K::JetStream(js_err) => js_class(&js_err),
        K::EmptyStreamName | K::InvalidStreamName | K::DomainAndExternalSet | K::ResponseParse => {
            (ErrorClass::Permanent, None)
        }
    }
}

fn classify_consumer(
    err: &async_nats::jetstream::stream::ConsumerError,
) -> (ErrorClass, Option<u64>) {
    use async_nats::jetstream::stream::ConsumerErrorKind as K;
    match err.kind() {
        K::TimedOut | K::Request => (ErrorClass::Transient, None),
        K::JetStream(js_err) => js_class(&js_err),
        K::InvalidConsumerType | K::InvalidName | K::Other => (ErrorClass::Permanent, None),
    }
}

fn classify_key_value(err: &jetstream::context::KeyValueError) -> (ErrorClass, Option<u64>) {
    use jetstream::context::KeyValueErrorKind as K;
    match err.kind() {
        // Reading the bucket's stream failed: classify that failure.
        K::GetBucket => std::error::Error::source(err)
            .and_then(|s| s.downcast_ref::<jetstream::context::GetStreamError>())
            .map_or((ErrorClass::Transient, None), classify_get_stream),
        // A stream that is not a usable bucket (history below 1) or a bad name.
        K::InvalidStoreName => (ErrorClass::Permanent, None),
        K::JetStream => (ErrorClass::Transient, None),
    }
}

/// Why a server that was reached would not have us (or we it). Each is a configuration
/// problem on one side or the other, so the service stops instead of retrying for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server rejected the credentials (user and password, token, or the credentials file's
    /// JWT and signature), or they could not be used to sign its challenge.
    Authentication,
    /// The TLS handshake failed: the server's certificate is not signed by a trusted CA (or not
    /// for this host), the server rejected our client certificate, or TLS is misconfigured.
    Tls,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Authentication => {
                "authentication failed (check NATS_USER/NATS_PASSWORD, NATS_TOKEN or NATS_CREDS_FILE)"
            }
            Self::Tls => {
                "TLS handshake failed (check that NATS_TLS_CA_FILE holds the CA of the server's \
                 certificate, and NATS_TLS_CERT_FILE/NATS_TLS_KEY_FILE when the server requires a \
                 client certificate)"
            }
        })
    }
}

/// Whether a failed connection attempt is the server's (or our TLS stack's) refusal. async-nats
/// reports authorisation violations and signing failures by kind, but a failed TLS handshake
/// (an untrusted certificate, a client certificate the server rejects) arrives as an `Io` error
/// wrapping rustls' error, and a server's "Authentication Expired/Revoked" as an `Io` error
/// wrapping its `-ERR` text: those are found in the error's sources.
pub fn refusal_of(err: &async_nats::ConnectError) -> Option<Refusal> {
    use async_nats::ConnectErrorKind as K;
    match err.kind() {
        K::Authentication | K::AuthorizationViolation => return Some(Refusal::Authentication),
        K::Tls => return Some(Refusal::Tls),
        K::Io => {}
        K::ServerParse | K::Dns | K::TimedOut | K::MaxReconnects => return None,
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = next {
        if cause.is::<async_nats::rustls::Error>() {
            return Some(Refusal::Tls);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            // io::Error::source skips a custom error's own value: look at it directly.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<async_nats::rustls::Error>())
            {
                return Some(Refusal::Tls);
            }
        }
        if let Some(server) = cause.downcast_ref::<async_nats::ServerError>() {
            // "User/Account Authentication Expired/Revoked" and violations are verdicts on the
            // credentials; "Authentication Timeout" (a slow handshake) is not.
            let text = server.to_string().to_ascii_lowercase();
            if text.contains("authorization violation")
                || (text.contains("authentication")
                    && (text.contains("expired") || text.contains("revoked")))
            {
                return Some(Refusal::Authentication);
            }
        }
        next = cause.source();
    }
    None
}

/// async-nats' connection error. Its text already ends with its cause ("authorization
/// violation: nats: authorization violation"), so it is the end of the printed chain: walking
/// its sources as well would print the cause twice.
#[derive(Debug)]
pub struct ConnectFailure(pub async_nats::ConnectError);

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ConnectFailure {}

fn connect_error(err: async_nats::ConnectError) -> NatsError {
    match refusal_of(&err) {
        Some(refusal) => NatsError::Refused {
            refusal,
            source: ConnectFailure(err),
        },
        None => NatsError::Connect(ConnectFailure(err)),
    }
}

impl From<async_nats::ConnectError> for NatsError {
    fn from(err: async_nats::ConnectError) -> Self {
        connect_error(err)
    }
}

/// Called when the connection is refused for good after [`connect`] returned (the server was
/// down at start and then refused us, or refused a reconnect).
pub type RefusalHandler = Arc<dyn Fn(&NatsError) + Send + Sync>;

/// Connects with the contract's settings.
///
/// - A server that refuses us (wrong credentials, an untrusted certificate, a rejected client
///   certificate) or a credentials or certificate file that cannot be read is returned as a
///   permanent error at once: the service stops with one line naming the cause.
/// - An unreachable server is transient: the client returned retries in the background, so a
///   service starts (and reports itself degraded) while NATS is down.
/// - If a server reached later refuses us (at the first connection or a reconnect), the service
///   logs one error line naming the cause and exits with status 1: nothing it could do would
///   succeed, and the orchestrator must show the failure instead of a service quietly degraded
///   for ever. [`connect_with_refusal_handler`] lets a caller decide instead (tests).
pub async fn connect(
    settings: &NatsSettings,
    client_name: &str,
) -> Result<async_nats::Client, NatsError> {
    connect_with_refusal_handler(settings, client_name, Arc::new(exit_on_refusal)).await
}

/// The services' reaction to a refusal after start: one error line, exit status 1.
fn exit_on_refusal(err: &NatsError) {
    tracing::error!(error = %crate::error::Chain(err), "NATS refuses this service's connection; stopping.");
    std::process::exit(1);
}

/// [`connect`], with `on_refusal` called instead of exiting when the server refuses a connection
/// after this function returned.
pub async fn connect_with_refusal_handler(
    settings: &NatsSettings,
    client_name: &str,
    on_refusal: RefusalHandler,
) -> Result<async_nats::Client, NatsError> {
    let addrs: Vec<async_nats::ServerAddr> = settings
        .urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    // One attempt on every URL without retrying, to tell a refusal (permanent) from an
    // unreachable server (transient): with `retry_on_initial_connect` async-nats retries both
    // alike in the background and reports only the error kind's name.
    let prober = Prober {
        settings: Arc::new(settings.clone()),
        client_name: client_name.to_owned(),
    };
    let events = Arc::new(RefusalWatch::spawn(prober.clone(), on_refusal));
    let first = options(settings, client_name, events.clone())
        .await?
        .connect(addrs.clone())
        .await;
    match first {
        Ok(client) => Ok(client),
        Err(err) => {
            let err = connect_error(err);
            if !err.is_transient() {
                return Err(err);
            }
            tracing::warn!(error = %crate::error::Chain(&err), "NATS unreachable; retrying in the background.");
            Ok(options(settings, client_name, events)
                .await?
                .retry_on_initial_connect()
                .connect(addrs)
                .await?)
        }
    }
}

/// The client options for `settings`; connection events go to `events`.
async fn options(
    settings: &NatsSettings,
    client_name: &str,
    events: Arc<RefusalWatch>,
) -> Result<ConnectOptions, NatsError> {
    let mut options = ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let events = events.clone();
            async move {
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
                        // A failed (re)connection attempt: find out whether it was a refusal.
                        events.attempt_failed();
                        tracing::debug!(error = %err, "NATS client error.")
                    }
                    other => tracing::debug!(event = %other, "NATS connection event."),
                }
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
        options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.expose_secret().to_owned());
    }
    if let Some(ca) = &settings.tls_ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some(client) = &settings.tls_client_cert {
        // async-nats reads these only during the handshake, where a missing or unreadable file
        // would look like any other I/O failure (transient); read them now to fail clearly.
        for path in [&client.cert_file, &client.key_file] {
            std::fs::metadata(path)
                .and_then(|_| std::fs::File::open(path).map(drop))
                .map_err(|source| NatsError::ClientCertificate {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        options = options.add_client_certificate(client.cert_file.clone(), client.key_file.clone());
    }
    if settings.wants_tls() {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// What a background probe needs to connect once, like the service's client.
#[derive(Clone)]
struct Prober {
    settings: Arc<NatsSettings>,
    client_name: String,
}

impl Prober {
    /// One connection attempt without retries; `Some` when the server refused it.
    async fn refusal(&self) -> Option<NatsError> {
        let addrs: Vec<async_nats::ServerAddr> = self
            .settings
            .urls
            .iter()
            .filter_map(|u| u.parse().ok())
            .collect();
        let attempt = match options(
            &self.settings,
            &self.client_name,
            Arc::new(RefusalWatch::inert()),
        )
        .await
        {
            Ok(options) => options.connect(addrs).await.map_err(connect_error),
            Err(err) => Err(err),
        };
        match attempt {
            Ok(client) => {
                // Reachable and accepted: the service's own client will get there too.
                drop(client);
                None
            }
            Err(
                err @ (NatsError::Refused { .. }
                | NatsError::Credentials { .. }
                | NatsError::ClientCertificate { .. }),
            ) => Some(err),
            Err(_) => None,
        }
    }
}

/// Turns the client's "connection attempt failed" events into probes that can tell a refusal
/// from an unreachable server. The probe task ends when the client (which owns the event
/// callback, and with it the sender) is gone.
struct RefusalWatch {
    failed: Option<tokio::sync::mpsc::Sender<()>>,
}

/// At most one probe per interval, however fast the client's attempts fail.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl RefusalWatch {
    fn spawn(prober: Prober, on_refusal: RefusalHandler) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                if let Some(err) = prober.refusal().await {
                    on_refusal(&err);
                    return;
                }
                tokio::time::sleep(PROBE_INTERVAL).await;
            }
        });
        Self { failed: Some(tx) }
    }

    /// For the probe's own client: its events need no watching.
    fn inert() -> Self {
        Self { failed: None }
    }

    fn attempt_failed(&self) {
        if let Some(tx) = &self.failed {
            // Full: a probe is pending already.
            let _ = tx.try_send(());
        }
    }
}

/// The final flush at shutdown failed or did not finish in time.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("NATS flush did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("NATS flush failed")]
    Failed(#[source] async_nats::client::FlushError),
}

/// Flushes what the client has buffered (acks, publishes), giving up after `deadline`.
///
/// A plain `flush()` waits for the connection: with NATS unreachable at shutdown it would hold
/// the process until the orchestrator kills it, losing the ordered rest of the shutdown.
pub async fn flush_with_deadline(
    client: &async_nats::Client,
    deadline: Duration,
) -> Result<(), FlushError> {
    match tokio::time::timeout(deadline, client.flush()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(FlushError::Failed(err)),
        Err(_) => Err(FlushError::TimedOut(deadline)),
    }
}

/// How long services give the final flush at shutdown.
pub const SHUTDOWN_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// Whether the client is connected right now (for `/health`).
pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Which kind of JetStream resource a replica report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Stream,
    Bucket,
}

impl ResourceKind {
    fn label(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Bucket => "kv",
        }
    }
}

/// Replicas of a resource as found (or created), against the replicas wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaReport {
    pub kind: ResourceKind,
    /// The stream or bucket name.
    pub name: String,
    /// `num_replicas` of the resource on the server.
    pub replicas: usize,
    /// `num_replicas` asked for (`JETSTREAM_REPLICAS` through [`JetStreamResources`]).
    pub wanted: usize,
}

impl ReplicaReport {
    pub fn under_replicated(&self) -> bool {
        self.replicas < self.wanted
    }

    /// A resource created before `JETSTREAM_REPLICAS` was raised keeps its replica count:
    /// streams and buckets are never changed by a service. Said loudly, because the pipeline
    /// then runs on fewer copies of its data than the operator believes.
    fn log(&self) {
        if self.under_replicated() {
            tracing::warn!(
                resource = %self.name,
                kind = self.kind.label(),
                replicas = self.replicas,
                wanted = self.wanted,
                "JetStream {} {} has {} replica(s), fewer than JETSTREAM_REPLICAS={}: it is NOT replicated as configured. \
                 Raise it with `nats stream edit {} --replicas {}`.",
                self.kind.label(),
                self.name,
                self.replicas,
                self.wanted,
                self.stream_name(),
                self.wanted,
            );
        }
    }

    fn stream_name(&self) -> String {
        match self.kind {
            ResourceKind::Stream => self.name.clone(),
            ResourceKind::Bucket => format!("KV_{}", self.name),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ResourceLabels {
    kind: String,
    resource: String,
}

/// Replica gauges of the streams and buckets a service ensured at start:
/// `jetstream_resource_replicas{kind,resource}` (replicas on the server),
/// `jetstream_resource_under_replicated{kind,resource}` (1 when fewer than configured) and
/// `jetstream_replicas_configured` (`JETSTREAM_REPLICAS`).
#[derive(Debug, Clone, Default)]
pub struct ReplicaMetrics {
    replicas: prometheus_client::metrics::family::Family<
        ResourceLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
    under_replicated: prometheus_client::metrics::family::Family<
        ResourceLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
    configured: prometheus_client::metrics::gauge::Gauge,
}

impl ReplicaMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "jetstream_resource_replicas",
            "Replicas of a JetStream stream or KV bucket this service uses, as found on the server",
            metrics.replicas.clone(),
        );
        registry.register(
            "jetstream_resource_under_replicated",
            "1 when a JetStream stream or KV bucket has fewer replicas than JETSTREAM_REPLICAS",
            metrics.under_replicated.clone(),
        );
        registry.register(
            "jetstream_replicas_configured",
            "JETSTREAM_REPLICAS: replicas of every stream and KV bucket the service creates",
            metrics.configured.clone(),
        );
        metrics
    }

    pub fn record(&self, report: &ReplicaReport) {
        let labels = ResourceLabels {
            kind: report.kind.label().to_owned(),
            resource: report.name.clone(),
        };
        self.replicas
            .get_or_create(&labels)
            .set(i64::try_from(report.replicas).unwrap_or(i64::MAX));
        self.under_replicated
            .get_or_create(&labels)
            .set(i64::from(report.under_replicated()));
        self.configured
            .set(i64::try_from(report.wanted).unwrap_or(i64::MAX));
    }
}

/// Creates a service's streams and buckets with `JETSTREAM_REPLICAS` replicas when absent, and
/// reports existing ones with fewer replicas (warn log, [`ReplicaMetrics`]) without failing:
/// the service works on them, and the operator learns they are not as safe as configured.
#[derive(Debug, Clone)]
pub struct JetStreamResources {
    js: jetstream::Context,
    replicas: usize,
    metrics: Option<ReplicaMetrics>,
}

impl JetStreamResources {
    /// `replicas` is [`NatsSettings::jetstream_replicas`].
    pub fn new(js: jetstream::Context, replicas: usize) -> Self {
        Self {
            js,
            replicas: replicas.max(1),
            metrics: None,
        }
    }

    /// Records every ensured resource's replicas in `metrics`.
    pub fn with_metrics(mut self, metrics: ReplicaMetrics) -> Self {
        metrics
            .configured
            .set(i64::try_from(self.replicas).unwrap_or(i64::MAX));
        self.metrics = Some(metrics);
        self
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// [`ensure_stream`] with `num_replicas` set to the configured replicas.
    pub async fn stream(&self, mut config: stream::Config) -> Result<stream::Stream, NatsError> {
        config.num_replicas = self.replicas;
        let (stream, report) = ensure_stream_reporting(&self.js, config).await?;
        self.record(&report);
        Ok(stream)
    }

    /// [`ensure_bucket`] with `num_replicas` set to the configured replicas.
    pub async fn bucket(&self, mut config: kv::Config) -> Result<kv::Store, NatsError> {
        config.num_replicas = self.replicas;
        let (store, report) = ensure_bucket_reporting(&self.js, config).await?;
        self.record(&report);
        Ok(store)
    }

    fn record(&self, report: &ReplicaReport) {
        if let Some(metrics) = &self.metrics {
            metrics.record(report);
        }
    }
}

/// Returns the stream, creating it with `config` when it does not exist. An existing stream is
/// left as it is; one with fewer replicas than `config.num_replicas` is reported in the log.
///
/// Errors keep the server's answer and its class: a permanent one (the subjects overlap another
/// stream's, invalid settings) must stop the service rather than be retried.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, NatsError> {
    ensure_stream_reporting(js, config)
        .await
        .map(|(stream, _)| stream)
}

/// [`ensure_stream`], also returning what was found about its replicas.
pub async fn ensure_stream_reporting(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(stream::Stream, ReplicaReport), NatsError> {
    let (stream, replicas) = get_or_create_stream(js, config.clone()).await?;
    let report = ReplicaReport {
        kind: ResourceKind::Stream,
        name: config.name,
        replicas,
        wanted: config.num_replicas.max(1),
    };
    report.log();
    Ok((stream, report))
}

fn stream_error(
    name: &str,
    action: &'static str,
    (class, code): (ErrorClass, Option<u64>),
    source: impl std::error::Error + Send + Sync + 'static,
) -> NatsError {
    NatsError::Stream {
        name: name.to_owned(),
        action,
        class,
        code,
        source: Box::new(source),
    }
}

/// The stream and its replica count on the server.
async fn get_or_create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(stream::Stream, usize), NatsError> {
    let name = config.name.clone();
    let with_replicas = |stream: stream::Stream| {
        let replicas = stream.cached_info().config.num_replicas.max(1);
        (stream, replicas)
    };
    match js.get_stream(&name).await {
        Ok(found) => Ok(with_replicas(found)),
        Err(err) if is_not_found(&err) => match js.create_stream(config).await {
            Ok(created) => {
                let (created, replicas) = with_replicas(created);
                tracing::info!(stream = %name, replicas, "Created JetStream stream.");
                Ok((created, replicas))
            }
            // Another replica (or another service) created it between our read and our create,
            // with settings differing in some detail: take what it made. nats-server 2.10+
            // says "name already in use"; 2.9 may say "subjects overlap" instead, as the new
            // stream's subjects overlap the one just made under our name. So after either, a
            // stream under our name is taken; when there is none (the overlap is with a stream
            // of another name), the create's refusal is the answer, not a misleading "not
            // found". Any other refusal is the server's verdict on our request.
            Err(err)
                if matches!(
                    create_error_code(&err),
                    Some(
                        jetstream::ErrorCode::STREAM_NAME_EXIST
                            | jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
                    )
                ) =>
            {
                match js.get_stream(&name).await {
                    Ok(found) => Ok(with_replicas(found)),
                    Err(read) if is_not_found(&read) => Err(stream_error(
                        &name,
                        "create",
                        classify_create_stream(&err),
                        err,
                    )),
                    Err(read) => Err(stream_error(
                        &name,
                        "read",
                        classify_get_stream(&read),
                        read,
                    )),
                }
            }
            Err(err) => Err(stream_error(
                &name,
                "create",
                classify_create_stream(&err),
                err,
            )),
        },
        Err(err) => Err(stream_error(&name, "read", classify_get_stream(&err), err)),
    }
}

fn create_error_code(err: &jetstream::context::CreateStreamError) -> Option<jetstream::ErrorCode> {
    match err.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(js_err) => Some(js_err.error_code()),
        _ => None,
    }
}

/// Returns the durable pull consumer named in `config`, creating it when absent (an existing one
/// is left as configured, like streams and buckets). Consumers inherit the stream's replicas.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    config: async_nats::jetstream::consumer::pull::Config,
) -> Result<async_nats::jetstream::consumer::PullConsumer, NatsError> {
    let name = config.durable_name.clone().unwrap_or_default();
    stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|e| {
            let (class, code) = classify_consumer(&e);
            NatsError::Consumer {
                name,
                action: "create or read",
                class,
                code,
                source: Box::new(e),
            }
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
    ensure_bucket_reporting(js, config)
        .await
        .map(|(store, _)| store)
}

/// [`ensure_bucket`], also returning what was found about its replicas.
pub async fn ensure_bucket_reporting(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<(kv::Store, ReplicaReport), NatsError> {
    let name = config.bucket.clone();
    let (_, replicas) = get_or_create_stream(js, bucket_stream_config(&config))
        .await
        .map_err(|e| NatsError::Bucket {
            name: name.clone(),
            action: "create or read",
            class: e.class(),
            code: e.jetstream_code(),
            source: Box::new(e),
        })?;
    let store = js.get_key_value(&name).await.map_err(|e| {
        let (class, code) = classify_key_value(&e);
        NatsError::Bucket {
            name: name.clone(),
            action: "open",
            class,
            code,
            source: Box::new(e),
        }
    })?;
    let report = ReplicaReport {
        kind: ResourceKind::Bucket,
        name,
        replicas,
        wanted: config.num_replicas.max(1),
    };
    report.log();
    Ok((store, report))
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
    // A static name needs no parsing or copy; the value is checked once and copied once.
    if value.contains(['\r', '\n']) {
        return false;
    }
    headers.insert(
        async_nats::HeaderName::from_static(name),
        async_nats::HeaderValue::from(value),
    );
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use async_nats::jetstream::ErrorCode;

    #[test]
    fn jetstream_replicas_default_to_one_and_stay_within_one_to_five() {
        let settings =
            |value: &str| NatsSettings::from_env(&Env::from_pairs([("JETSTREAM_REPLICAS", value)]));
        assert_eq!(
            NatsSettings::from_env(&Env::default())
                .unwrap()
                .jetstream_replicas,
            1
        );
        assert_eq!(settings("3").unwrap().jetstream_replicas, 3);
        for bad in ["0", "6", "three"] {
            let err = settings(bad).unwrap_err();
            assert_eq!(err.variable, "JETSTREAM_REPLICAS", "{bad}");
        }
        assert_eq!(
            settings("7").unwrap_err().to_string(),
            "configuration variable JETSTREAM_REPLICAS must be between 1 and 5, not 7"
        );
    }

    #[test]
    fn only_passing_cluster_states_are_transient_jetstream_codes() {
        for code in [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NOT_LEADER,
            ErrorCode::JETSTREAM_NOT_ENABLED,
        ] {
            assert_eq!(
                classify_jetstream_code(code),
                ErrorClass::Transient,
                "{code:?}"
            );
        }
        for code in [
            ErrorCode::STREAM_SUBJECT_OVERLAP,
            ErrorCode::STREAM_INVALID_CONFIG,
            ErrorCode::STREAM_NAME_EXIST,
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
            ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
            ErrorCode::MAXIMUM_STREAMS_LIMIT,
        ] {
            assert_eq!(
                classify_jetstream_code(code),
                ErrorClass::Permanent,
                "{code:?}"
            );
        }
    }

    #[test]
    fn refusals_are_told_from_an_unreachable_server() {
        use async_nats::rustls;
        use async_nats::ConnectErrorKind as K;
        let refused = |err: async_nats::ConnectError| {
            let refusal = refusal_of(&err);
            let err = NatsError::from(err);
            assert_eq!(err.is_transient(), refusal.is_none(), "{err:?}");
            refusal
        };
        assert_eq!(
            refused(async_nats::ConnectError::new(K::AuthorizationViolation)),
            Some(Refusal::Authentication)
        );
        assert_eq!(
            refused(async_nats::ConnectError::new(K::Authentication)),
            Some(Refusal::Authentication)
        );
        // A failed handshake arrives as an I/O error wrapping rustls' error.
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            refused(async_nats::ConnectError::with_source(K::Io, handshake)),
            Some(Refusal::Tls)
        );
        let expired = async_nats::ServerError::Other("User Authentication Expired".to_owned());
        assert_eq!(
            refused(async_nats::ConnectError::with_source(K::Io, expired)),
            Some(Refusal::Authentication)
        );
        let refused_port = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            refused(async_nats::ConnectError::with_source(K::Io, refused_port)),
            None
        );
        assert_eq!(refused(async_nats::ConnectError::new(K::TimedOut)), None);
        let slow = async_nats::ServerError::Other("Authentication Timeout".to_owned());
        assert_eq!(
            refused(async_nats::ConnectError::with_source(K::Io, slow)),
            None
        );
        let full = async_nats::ServerError::Other("maximum connections exceeded".to_owned());
        assert_eq!(
            refused(async_nats::ConnectError::with_source(K::Io, full)),
            None
        );
    }

    #[test]
    fn a_password_and_token_are_secret_and_client_certificates_come_in_pairs() {
        let s = NatsSettings::from_env(&Env::from_pairs([
            ("NATS_USER", "svc"),
            ("NATS_PASSWORD", "hunter2-pass"),
            ("NATS_TOKEN", "hunter2-token"),
        ]))
        .unwrap();
        assert_eq!(s.password.as_ref().unwrap().expose_secret(), "hunter2-pass");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        let file = std::env::current_exe().unwrap().display().to_string();
        let err = NatsSettings::from_env(&Env::from_pairs([("NATS_TLS_CERT_FILE", file.as_str())]))
            .unwrap_err();
        assert_eq!(err.variable, "NATS_TLS_KEY_FILE");
        let both = NatsSettings::from_env(&Env::from_pairs([
            ("NATS_TLS_CERT_FILE", file.as_str()),
            ("NATS_TLS_KEY_FILE", file.as_str()),
        ]))
        .unwrap();
        assert!(both.wants_tls());
    }

    #[test]
    fn an_unreadable_credentials_file_is_permanent() {
        let err = NatsError::Credentials {
            path: "/x.creds".to_owned(),
            source: std::io::Error::other("denied"),
        };
        assert!(!err.is_transient());
        assert_eq!(
            crate::error::Chain(&err).to_string(),
            "cannot read NATS credentials file /x.creds: denied"
        );
    }
}
