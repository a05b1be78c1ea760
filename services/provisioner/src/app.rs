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
//! service) run under the service's supervisor: one that dies cancels the root token, the
//! service shuts down in the order above, and `run_until_stopped` returns [`AppError::Task`]
//! (exit non-zero). So does a pull loop that ends while nobody asked it to.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use platform::config::{ConfigError, Env};
use platform::nats::{JetStreamResources, NatsError};
use platform::service::{Running, Service, ServiceError, ServiceMain, StartError, Starting};
use platform::supervise::{TaskEnd, TaskFailure};
use platform::telemetry::TelemetrySettings;
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

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot build an HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    Task(#[from] TaskFailure),
}

impl ServiceError for AppError {
    fn start_error(&self) -> Option<&StartError> {
        match self {
            Self::Start(err) => Some(err),
            _ => None,
        }
    }
}

/// The longest the provisioner takes from SIGTERM to exit, given its shutdown grace
/// (`PROVISIONER_SHUTDOWN_GRACE_SECS`): running jobs finish within it, then the common shutdown
/// tail. Deployment files must grant more.
pub fn shutdown_budget(shutdown_grace: Duration) -> Duration {
    shutdown_grace + platform::service::SHUTDOWN_TAIL
}

pub struct App {
    settings: Arc<ProvisionerSettings>,
    service: Service,
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
        let mut starting = Starting::connect(
            "provisioner",
            env!("CARGO_PKG_VERSION"),
            &settings.common.nats,
            cancel,
        )
        .await?;
        let metrics = ProvisionerMetrics::register(starting.registry());
        let status_metrics = StatusMetrics::register(starting.registry());
        // Set once the journal is open; until then /orders answers 503.
        let status_api: Arc<OnceLock<Arc<StatusApi>>> = Arc::default();
        let routes = status::routes(
            status_api.clone(),
            settings.status_api_token.clone(),
            status_metrics.clone(),
        );
        let mut service = starting.serve(settings.common.http_addr, routes).await?;

        let (journal_kv, consumer) = service
            .ensure_resources(|resources| ensure_resources(resources, settings.clone()))
            .await?;
        let status = StatusApi::new(journal_kv.clone(), status_metrics);
        // Only `build` sets it, once.
        let _ = status_api.set(status.clone());
        // Long polls answer at shutdown with the status as it is, so the listener can close at
        // once.
        service.before_http_close({
            let status = status.clone();
            move || status.release_waiters()
        });
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
        let js = service.jetstream().clone();
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
            service,
            runner,
            recovery,
            consumer,
            status,
        })
    }
}

impl Running for App {
    type Error = AppError;

    fn service(&self) -> &Service {
        &self.service
    }

    async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
        tracing::info!(
            worker_id = %self.settings.worker_id,
            concurrency = self.settings.concurrency,
            consumer = %self.settings.consumer,
            "provisioner running."
        );
        let supervisor = self.service.supervisor();
        let recovery_cancel = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        supervisor.spawn(
            "reconciler",
            self.recovery
                .clone()
                .run(recovery_cancel.clone(), hard_stop.clone()),
        );
        self.service.poll_consumer_lag(
            self.runner.metrics.consumer.clone(),
            self.consumer.clone(),
            recovery_cancel.clone(),
        );
        // Answers until the pull loop has drained, like the reconciler; the HTTP status routes
        // answer until the listener closes last.
        supervisor.spawn(
            "status-service",
            status::serve_nats(
                self.service.nats().clone(),
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
        let tasks = self.service.shut_down().await;
        if pull_loop_died {
            return Err(AppError::Task(TaskFailure {
                task: "pull-loop".to_owned(),
                end: TaskEnd::Returned,
            }));
        }
        tasks?;
        Ok(())
    }
}

impl ServiceMain for ProvisionerSettings {
    const NAME: &'static str = "provisioner";
    type App = App;

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        ProvisionerSettings::from_env(env)
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.common.telemetry
    }

    fn log_start(&self) {
        tracing::info!(
            worker_id = %self.worker_id,
            concurrency = self.concurrency,
            jetstream_replicas = self.common.nats.jetstream_replicas,
            "provisioner starting."
        );
    }

    async fn build(self, cancel: &CancellationToken) -> Result<App, AppError> {
        App::build(self, cancel).await
    }
}

/// Creates the four streams, the journal bucket and the consumer when absent.
async fn ensure_resources(
    resources: JetStreamResources,
    settings: Arc<ProvisionerSettings>,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), NatsError> {
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
        .bucket(streams::journal_bucket(&settings.journal_bucket))
        .await?;
    let max_ack_pending =
        i64::try_from(settings.concurrency.saturating_mul(4).max(1000)).unwrap_or(i64::MAX);
    let consumer = platform::nats::ensure_consumer(
        &requests,
        streams::provisioner_consumer(&settings.consumer, settings.ack_wait, max_ack_pending),
    )
    .await?;
    Ok((journal, consumer))
}
