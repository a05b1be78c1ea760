//! The runtime every pipeline service runs on, written once.
//!
//! Start-up, in this order, whatever the service:
//!
//! 1. [`Starting::connect`]: the NATS client (an unreachable server is not an error: the client
//!    keeps trying and `/health` says so), `/health` watching it, the task [`Supervisor`] and the
//!    metrics [`Registry`] the service registers its own metrics in.
//! 2. [`Starting::serve`]: the HTTP listener (`/health`, `/livez`, `/metrics` and the service's
//!    routes), bound before anything waits on NATS or a peer, so a pod started during an outage
//!    passes its start-up probe and reports itself unready.
//! 3. [`Service::ensure_resources`]: the service's streams, buckets and consumers, created when
//!    absent, retried while JetStream is unreachable and returned at once on a permanent error.
//!
//! Then the service runs its own work under the same root token. A supervised task that ends
//! unexpectedly cancels that token; the service stops its work, and [`Service::shut_down`] runs
//! the common tail of the shutdown: flush NATS (acks, publishes), run the service's last
//! hooks, close the HTTP listener (probes see the service until it is gone), wait for the
//! supervised tasks, and return the first task failure, so that the binary exits non-zero.
//!
//! [`main`] is a service binary's whole `main` once the settings type implements
//! [`ServiceMain`] (its `App` implements [`Running`], its error type [`ServiceError`]):
//! configuration (exit 2 on an error), telemetry, the signal handler, the build and the run
//! ([`run`]), the exit code, and the span flush. [`stand_in_main`] does the same for the
//! stand-ins (sf-sim, whmcs-sim), which implement [`StandIn`].

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env};
use crate::http::Health;
use crate::metrics::ConsumerLag;
use crate::nats::{JetStreamResources, NatsError, NatsSettings, ReplicaMetrics};
use crate::supervise::{Supervisor, TaskFailure};
use crate::telemetry::TelemetrySettings;

/// How long the final NATS flush may take at shutdown.
pub const SHUTDOWN_FLUSH_DEADLINE: Duration = crate::nats::SHUTDOWN_FLUSH_DEADLINE;

/// How long the supervised tasks (the HTTP listener finishing its last answers, pollers) may take
/// to end once the shutdown reached them; those still running are aborted.
pub const TASKS_STOP_DEADLINE: Duration = Duration::from_secs(5);

/// How often [`Service::poll_consumer_lag`] reads a consumer's counts.
pub const CONSUMER_LAG_EVERY: Duration = Duration::from_secs(5);

/// What [`Service::shut_down`] may take at most: the flush, then the tasks.
pub const SHUTDOWN_TAIL: Duration =
    Duration::from_secs(SHUTDOWN_FLUSH_DEADLINE.as_secs() + TASKS_STOP_DEADLINE.as_secs());

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A permanent NATS or JetStream error (refused credentials, a stream overlapping ours,
    /// invalid settings). Transient ones are waited out.
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("cannot bind the HTTP listener")]
    Http(#[source] std::io::Error),
    /// The service was asked to stop while it still waited for NATS: a clean stop.
    #[error("stopped before NATS became available")]
    Cancelled,
}

/// A service between connecting and serving: the time to register its metrics and routes.
pub struct Starting {
    name: &'static str,
    nats: async_nats::Client,
    health: Arc<Health>,
    supervisor: Supervisor,
    registry: Registry,
    replica_metrics: ReplicaMetrics,
    replicas: usize,
    root: CancellationToken,
}

impl Starting {
    /// Connects to NATS as `name` and sets up `/health` (reporting `version`), the supervisor
    /// and the metrics registry. `root` is the service's root token, the one the signal handler
    /// cancels; the supervisor cancels it too when a task dies.
    pub async fn connect(
        name: &'static str,
        version: &'static str,
        nats: &NatsSettings,
        root: &CancellationToken,
    ) -> Result<Self, StartError> {
        // Boxed here (as the other start-up steps): these futures are large, and every caller's
        // future would carry them.
        let client = Box::pin(crate::nats::connect(nats, name)).await?;
        let health = Health::new(name, version);
        health.add_nats(client.clone());
        let supervisor = Supervisor::new(health.clone(), root.clone());
        let mut registry = Registry::default();
        let replica_metrics = ReplicaMetrics::register(&mut registry);
        Ok(Self {
            name,
            nats: client,
            health,
            supervisor,
            registry,
            replica_metrics,
            replicas: nats.jetstream_replicas,
            root: root.clone(),
        })
    }

    /// Where the service registers its own metrics, before [`Starting::serve`] publishes them.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Binds `addr` and serves the standard routes and `routes` under supervision, until
    /// [`Service::shut_down`] closes the listener.
    pub async fn serve(self, addr: SocketAddr, routes: Router) -> Result<Service, StartError> {
        let http_cancel = CancellationToken::new();
        let http = Box::pin(crate::http::serve(
            addr,
            self.health.clone(),
            Arc::new(self.registry),
            routes,
            http_cancel.clone(),
        ))
        .await
        .map_err(StartError::Http)?;
        self.supervisor.spawn("http", http.task);
        Ok(Service {
            name: self.name,
            jetstream: jetstream::new(self.nats.clone()),
            nats: self.nats,
            health: self.health,
            supervisor: self.supervisor,
            replica_metrics: self.replica_metrics,
            replicas: self.replicas,
            http_addr: http.local_addr,
            http_cancel,
            root: self.root,
            before_http_close: Vec::new(),
        })
    }
}

type Hook = Box<dyn FnOnce() + Send + Sync>;

/// A service that serves HTTP: NATS, JetStream, health, supervision and the shutdown tail.
pub struct Service {
    name: &'static str,
    nats: async_nats::Client,
    jetstream: jetstream::Context,
    health: Arc<Health>,
    supervisor: Supervisor,
    replica_metrics: ReplicaMetrics,
    replicas: usize,
    http_addr: SocketAddr,
    http_cancel: CancellationToken,
    root: CancellationToken,
    before_http_close: Vec<Hook>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("http_addr", &self.http_addr)
            .field("supervisor", &self.supervisor)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Runs `create` until it succeeds, retrying (with backoff, `/health` degraded) while
    /// JetStream is unreachable; a permanent error is returned at once, and
    /// [`StartError::Cancelled`] when the root token is cancelled first. `create` gets the
    /// resources helper that applies `JETSTREAM_REPLICAS` and reports under-replicated streams
    /// on `/metrics`.
    pub async fn ensure_resources<T, F, Fut>(&self, mut create: F) -> Result<T, StartError>
    where
        F: FnMut(JetStreamResources) -> Fut,
        Fut: Future<Output = Result<T, NatsError>>,
    {
        let resources = JetStreamResources::new(self.jetstream.clone(), self.replicas)
            .with_metrics(self.replica_metrics.clone());
        Box::pin(crate::backoff::retry_while_transient(
            &self.root,
            "JetStream",
            NatsError::is_transient,
            || create(resources.clone()),
        ))
        .await?
        .ok_or(StartError::Cancelled)
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// What `/health` and `/livez` answer.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The supervisor of the service's background tasks.
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// The bound HTTP address (port 0 resolved).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Keeps `lag`'s gauges current from `consumer` until `stop`, every
    /// [`CONSUMER_LAG_EVERY`], as the supervised task `consumer-lag-poller`. Supervised although
    /// it only feeds `/metrics`: a dead poller would leave the gauges frozen at their last value,
    /// and the alerts on them silently blind.
    pub fn poll_consumer_lag<C>(
        &self,
        lag: ConsumerLag,
        consumer: jetstream::consumer::Consumer<C>,
        stop: CancellationToken,
    ) where
        C: jetstream::consumer::IntoConsumerConfig + Send + Sync + 'static,
    {
        self.supervisor.spawn(
            "consumer-lag-poller",
            lag.poll(consumer, CONSUMER_LAG_EVERY, stop),
        );
    }

    /// `hook` runs in [`Service::shut_down`] after the NATS flush and before the listener closes
    /// (the provisioner answers waiting long polls there).
    pub fn before_http_close(&mut self, hook: impl FnOnce() + Send + Sync + 'static) {
        self.before_http_close.push(Box::new(hook));
    }

    /// The shutdown's common tail, once the service's own work has stopped: flush NATS within
    /// [`SHUTDOWN_FLUSH_DEADLINE`], run the hooks, close the HTTP listener, wait up to
    /// [`TASKS_STOP_DEADLINE`] for the supervised tasks. Returns the first task that died.
    pub async fn shut_down(self) -> Result<(), TaskFailure> {
        if let Err(err) =
            crate::nats::flush_with_deadline(&self.nats, SHUTDOWN_FLUSH_DEADLINE).await
        {
            tracing::warn!(error = %crate::error::Chain(&err), "Could not flush NATS on shutdown.");
        }
        for hook in self.before_http_close {
            hook();
        }
        self.http_cancel.cancel();
        self.supervisor.wait_all(TASKS_STOP_DEADLINE).await;
        self.supervisor.result()?;
        tracing::info!("{} stopped.", self.name);
        Ok(())
    }
}

/// A service's own error type, as the runtime sees it: it wraps the runtime's [`StartError`]
/// and [`TaskFailure`] beside the service's own errors.
pub trait ServiceError:
    std::error::Error + From<StartError> + From<TaskFailure> + Send + Sync + 'static
{
    /// The start-up error this one wraps, if it is one.
    fn start_error(&self) -> Option<&StartError>;
}

/// A service once built: its runtime, and the run that ends at the stop.
pub trait Running: Send + Sized + 'static {
    type Error: ServiceError;

    /// The runtime underneath: HTTP address, health, supervisor.
    fn service(&self) -> &Service;

    /// Runs until `cancel` (the token given to [`ServiceMain::build`]), then shuts down in
    /// order. A supervised task that died ends it with the [`TaskFailure`].
    fn run_until_stopped(
        self,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// A service binary, described by its settings type; [`main`] runs it.
pub trait ServiceMain: Sized + Send + 'static {
    /// The binary's name, as in its log lines and error messages.
    const NAME: &'static str;
    type App: Running;

    fn from_env(env: &Env) -> Result<Self, ConfigError>;
    fn telemetry(&self) -> &TelemetrySettings;
    /// Logs the "starting" line with the settings an operator checks first.
    fn log_start(&self);
    /// Connects, serves HTTP and creates the service's resources. A stop asked for while NATS
    /// is still awaited ends it with [`StartError::Cancelled`].
    fn build(
        self,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Self::App, <Self::App as Running>::Error>> + Send;
}

/// Builds and runs the service until `cancel`. A stop asked for before the service was up is
/// `Ok`: nothing had started that could fail.
pub async fn run<S: ServiceMain>(
    settings: S,
    cancel: CancellationToken,
) -> Result<(), <S::App as Running>::Error> {
    match settings.build(&cancel).await {
        Ok(app) => app.run_until_stopped(cancel).await,
        Err(err) if matches!(err.start_error(), Some(StartError::Cancelled)) => Ok(()),
        Err(err) => Err(err),
    }
}

/// A service binary's `main` after `--help`/`--version`. Exit codes: 0 after a requested stop,
/// 2 for a configuration error (one line naming it), 1 for any other failure (telemetry, a
/// permanent start-up error, a task that died: the orchestrator restarts the service).
pub async fn main<S: ServiceMain>() -> ExitCode {
    let settings = match S::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{}: {err}", S::NAME);
            return ExitCode::from(2);
        }
    };
    let telemetry = match crate::telemetry::init(settings.telemetry()) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!(
                "{}: cannot initialise telemetry: {}",
                S::NAME,
                crate::error::Chain(&err)
            );
            return ExitCode::FAILURE;
        }
    };
    settings.log_start();
    let cancel = crate::shutdown::on_signal();
    // Spawned, so that the service runs on a runtime worker rather than the main thread (with
    // one worker, its tasks then wake each other without a futex: docs/benchmarks.md).
    let result = match tokio::spawn(run(settings, cancel)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(crate::error::Chain(&err).to_string()),
        Err(died) => Err(crate::error::Chain(&died).to_string()),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error, "{} failed.", S::NAME);
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// A stand-in binary (sf-sim, whmcs-sim): it serves until SIGTERM/SIGINT; [`stand_in_main`]
/// runs it.
pub trait StandIn: Sized + Send {
    /// The binary's name, as in its log lines and error messages.
    const NAME: &'static str;
    type Error: std::fmt::Display;

    /// Reads the stand-in's variables, starts serving, seeds what it was asked to, and logs
    /// where it serves.
    fn start_from_env(env: &Env) -> impl Future<Output = Result<Self, Self::Error>> + Send;
    /// Stops serving and waits for its listeners to close.
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}

/// A stand-in binary's `main` after `--help`/`--version`: telemetry, then the stand-in until
/// SIGTERM/SIGINT. Any error (configuration, a port that cannot be bound) is one line on
/// stderr and exit 2, so that a misconfigured container says exactly what is wrong.
pub async fn stand_in_main<S: StandIn>() -> ExitCode {
    let env = Env::process();
    let telemetry = match TelemetrySettings::from_env(&env, S::NAME) {
        Ok(settings) => crate::telemetry::init(&settings),
        Err(err) => return stand_in_failed::<S>(&err),
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(err) => return stand_in_failed::<S>(&crate::error::Chain(&err)),
    };
    let shutdown = crate::shutdown::on_signal();
    let code = match S::start_from_env(&env).await {
        Ok(stand_in) => {
            shutdown.cancelled().await;
            stand_in.shutdown().await;
            tracing::info!("{} stopped.", S::NAME);
            ExitCode::SUCCESS
        }
        Err(err) => stand_in_failed::<S>(&err),
    };
    telemetry.shutdown();
    code
}

fn stand_in_failed<S: StandIn>(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{}: {err:#}", S::NAME);
    ExitCode::from(2)
}
