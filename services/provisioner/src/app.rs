//! Wiring of the provisioner: NATS resources, clients, the pull loop, the reconciler, and the
//! HTTP listener.
//!
//! Shutdown order (on cancel): stop pulling; running jobs finish within the grace period, the
//! rest are recorded as INTERRUPTED; the reconciler and the NATS status service stop (the
//! reconciler's own jobs get the same deadline); NATS is flushed (acks and publishes, within
//! [`platform::nats::SHUTDOWN_FLUSH_DEADLINE`]); waiting status long polls answer at once; the
//! HTTP listener closes last.
//!
//! Background tasks (the HTTP listener, the reconciler, the consumer-lag poller, the NATS status
//! service) run under a
//! [`Supervisor`]: one that dies cancels the root token, the service shuts down in the order
//! above, and [`App::run_until_stopped`] returns [`AppError::Task`] (exit non-zero). So does a
//! pull loop that ends while nobody asked it to.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use platform::http::Health;
use platform::nats::{JetStreamResources, ReplicaMetrics};
use platform::supervise::{Supervisor, TaskEnd, TaskFailure};
use prometheus_client::registry::Registry;
use salesforce::rest::RestClient;
use salesforce::TokenProvider;
use tokio_util::sync::CancellationToken;

use crate::config::ProvisionerSettings;
use crate::job::JobRunner;
use crate::journal::Journal;
use crate::metrics::ProvisionerMetrics;
use crate::orchestrator::Orchestrator;
use crate::publisher::Publisher;
use crate::recovery::Recovery;
use crate::status::{self, StatusApi, StatusMetrics};
use crate::worker;
use platform::deadletter::DeadLetters;

/// How often the consumer's pending counts are read for `/metrics`.
const CONSUMER_INFO_EVERY: Duration = Duration::from_secs(5);

/// How long the supervised tasks may take to end once the shutdown reached them.
const TASKS_STOP_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Nats(#[from] platform::nats::NatsError),
    #[error("cannot bind the HTTP listener")]
    Http(#[from] std::io::Error),
    #[error("cannot build an HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("stopped before NATS became available")]
    Cancelled,
    #[error(transparent)]
    Task(#[from] TaskFailure),
}

impl AppError {
    /// Whether starting again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Nats(e) => e.is_transient(),
            Self::Http(_) | Self::HttpClient(_) | Self::Cancelled | Self::Task(_) => false,
        }
    }
}

pub struct App {
    settings: Arc<ProvisionerSettings>,
    nats: async_nats::Client,
    http_addr: SocketAddr,
    http_cancel: CancellationToken,
    supervisor: Supervisor,
    health: Arc<Health>,
    runner: Arc<JobRunner>,
    recovery: Arc<Recovery>,
    consumer: jetstream::consumer::PullConsumer,
    status: Arc<StatusApi>,
}

impl App {
    /// Connects, starts the HTTP listener, creates the streams, the journal bucket and the
    /// consumer when absent. Waits (reporting itself degraded) while NATS is unreachable, until
    /// `cancel`; a permanent JetStream error is returned at once.
    ///
    /// `cancel` is the service's root token: pass the same one to [`App::run_until_stopped`].
    /// The supervisor cancels it when a background task dies.
    pub async fn build(
        settings: ProvisionerSettings,
        cancel: &CancellationToken,
    ) -> Result<Self, AppError> {
        let settings = Arc::new(settings);
        let nats = platform::nats::connect(&settings.common.nats, "provisioner").await?;
        let health = Health::new("provisioner", env!("CARGO_PKG_VERSION"));
        health.add_nats(nats.clone());
        let supervisor = Supervisor::new(health.clone(), cancel.clone());
        let mut registry = Registry::default();
        let metrics = ProvisionerMetrics::register(&mut registry);
        let status_metrics = StatusMetrics::register(&mut registry);
        // Set once the journal is open; until then /orders answers 503.
        let status_api: Arc<OnceLock<Arc<StatusApi>>> = Arc::default();
        let replica_metrics = ReplicaMetrics::register(&mut registry);
        let http_cancel = CancellationToken::new();
        let http = platform::http::serve(
            settings.common.http_addr,
            health.clone(),
            Arc::new(registry),
            status::routes(
                status_api.clone(),
                settings.status_api_token.clone(),
                status_metrics.clone(),
            ),
            http_cancel.clone(),
        )
        .await?;
        let http_addr = http.local_addr;
        supervisor.spawn("http", http.task);

        let js = jetstream::new(nats.clone());
        let resources =
            JetStreamResources::new(js.clone(), settings.common.nats.jetstream_replicas)
                .with_metrics(replica_metrics);
        let (journal_kv, consumer) =
            Box::pin(ensure_resources(&resources, &settings, cancel)).await?;
        let status = StatusApi::new(journal_kv.clone(), status_metrics);
        // Only `build` sets it, once.
        let _ = status_api.set(status.clone());
        let journal = Journal::new(
            journal_kv,
            settings.job_lease,
            metrics.journal_writes.clone(),
        );

        // One pool per peer: SF_CA_FILE's CAs are trusted for Salesforce only, never for WHMCS.
        let idle_per_host = settings.concurrency.max(8);
        let salesforce_http = salesforce::http_client_builder(&settings.salesforce)
            .pool_max_idle_per_host(idle_per_host)
            .build()
            .map_err(AppError::HttpClient)?;
        let whmcs_http = reqwest::Client::builder()
            .pool_max_idle_per_host(idle_per_host)
            .build()
            .map_err(AppError::HttpClient)?;
        let tokens = TokenProvider::new(settings.salesforce.clone(), salesforce_http.clone());
        let salesforce = RestClient::new(salesforce_http, tokens)
            .with_metrics(metrics.salesforce_api.clone())
            .with_limit_usage(metrics.salesforce_limit.clone());
        let whmcs = whmcs::WhmcsClient::with_http(settings.whmcs.clone(), whmcs_http)
            .with_metrics(metrics.whmcs_api.clone());
        let publisher = Publisher::new(js.clone());
        let deadletter = DeadLetters::new(js.clone(), crate::job::SERVICE);
        let runner = Arc::new(JobRunner {
            journal,
            orchestrator: Orchestrator {
                catalog: crate::catalog::Catalog::default(),
                order_reader: crate::order_reader::OrderReader::new(
                    salesforce.clone(),
                    crate::order_reader::DEFAULT_SLOTS,
                    crate::order_reader::DEFAULT_MAX_WAIT,
                ),
                salesforce,
                whmcs,
                default_payment_method: settings.default_payment_method.clone(),
                metrics: metrics.clone(),
            },
            publisher,
            metrics: metrics.clone(),
            worker_id: settings.worker_id.clone(),
            deadletter,
            outcomes_stream: settings.outcomes_stream.clone(),
        });
        let recovery = Arc::new(Recovery::new(
            js,
            runner.clone(),
            settings.requests_stream.clone(),
            settings.outcomes_stream.clone(),
            settings.consumer.clone(),
            settings.recovery_interval,
            settings.ack_wait,
        ));
        if let Err(err) = recovery.initialize_watermark().await {
            // The first scan then starts at the beginning of the stream: slower, never unsafe.
            tracing::warn!(error = %platform::error::Chain(&err), "Could not store the reconciler's first watermark.");
        }
        Ok(Self {
            settings,
            nats,
            http_addr,
            http_cancel,
            supervisor,
            health,
            runner,
            recovery,
            consumer,
            status,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The supervisor of the service's background tasks (tests use it to make one die).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// What `/health` and `/livez` answer.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Runs until `cancel` (the token given to [`App::build`]), then shuts down in order.
    /// Returns [`AppError::Task`] when a supervised background task died.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
        tracing::info!(
            worker_id = %self.settings.worker_id,
            concurrency = self.settings.concurrency,
            consumer = %self.settings.consumer,
            "provisioner running."
        );
        let recovery_cancel = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        self.supervisor.spawn(
            "reconciler",
            self.recovery
                .clone()
                .run(recovery_cancel.clone(), hard_stop.clone()),
        );
        // Supervised although it only feeds /metrics: a dead poller would leave the lag gauges
        // frozen at their last value, and alerts on them silently blind.
        self.supervisor.spawn(
            "consumer-lag-poller",
            self.runner.metrics.consumer.clone().poll(
                self.consumer.clone(),
                CONSUMER_INFO_EVERY,
                recovery_cancel.clone(),
            ),
        );
        // Answers until the pull loop has drained, like the reconciler; the HTTP status routes
        // answer until the listener closes last.
        self.supervisor.spawn(
            "status-service",
            status::serve_nats(
                self.nats.clone(),
                self.status.clone(),
                recovery_cancel.clone(),
            ),
        );
        worker::run(
            self.consumer,
            self.runner,
            self.settings.concurrency,
            self.settings.shutdown_grace,
            cancel.clone(),
            hard_stop.clone(),
        )
        .await;
        let pull_loop_died = !cancel.is_cancelled();
        if pull_loop_died {
            tracing::error!("The pull loop ended on its own; stopping the service.");
            cancel.cancel();
        }
        recovery_cancel.cancel();
        // The reconciler's own jobs get no longer than the worker's did.
        hard_stop.cancel();
        if let Err(err) =
            platform::nats::flush_with_deadline(&self.nats, platform::nats::SHUTDOWN_FLUSH_DEADLINE)
                .await
        {
            tracing::warn!(error = %platform::error::Chain(&err), "Could not flush NATS on shutdown.");
        }
        // Long polls answer now with the status as it is, so the listener can close at once.
        self.status.release_waiters();
        self.http_cancel.cancel();
        self.supervisor.wait_all(TASKS_STOP_DEADLINE).await;
        if pull_loop_died {
            return Err(AppError::Task(TaskFailure {
                task: "pull-loop".to_owned(),
                end: TaskEnd::Returned,
            }));
        }
        self.supervisor.result()?;
        tracing::info!("provisioner stopped.");
        Ok(())
    }
}

async fn ensure_resources(
    resources: &JetStreamResources,
    settings: &ProvisionerSettings,
    cancel: &CancellationToken,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), AppError> {
    platform::backoff::retry_while_transient(cancel, "JetStream", AppError::is_transient, || {
        try_ensure_resources(resources, settings)
    })
    .await?
    .ok_or(AppError::Cancelled)
}

async fn try_ensure_resources(
    resources: &JetStreamResources,
    settings: &ProvisionerSettings,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), AppError> {
    use platform::streams;
    // The same definition and defaults as sf-bridge's (whichever service starts first creates).
    let requests = resources
        .stream(streams::requests(
            &settings.requests_stream,
            settings.requests_duplicate_window,
            settings.requests_max_age,
        ))
        .await?;
    resources
        .stream(streams::outcomes(&settings.outcomes_stream))
        .await?;
    resources
        .stream(streams::order_updates(&settings.updates_stream))
        .await?;
    resources
        .stream(streams::deadletter(&settings.deadletter_stream))
        .await?;
    let journal = resources
        .bucket(kv::Config {
            bucket: settings.journal_bucket.clone(),
            description: "provisioner job journal, one entry per Salesforce Order".to_owned(),
            history: 5,
            max_age: Duration::from_secs(90 * 24 * 3600),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let max_ack_pending =
        i64::try_from(settings.concurrency.saturating_mul(4).max(1000)).unwrap_or(i64::MAX);
    let consumer = platform::nats::ensure_consumer(
        &requests,
        worker::consumer_config(&settings.consumer, settings.ack_wait, max_ack_pending),
    )
    .await?;
    Ok((journal, consumer))
}
