//! Wiring of the provisioner: NATS resources, clients, the pull loop, recovery, and the HTTP
//! listener.
//!
//! Shutdown order (on cancel): stop pulling; running jobs finish within the grace period, the
//! rest are recorded as INTERRUPTED; recovery stops; NATS is flushed (acks and publishes); the
//! HTTP listener closes last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use axum::Router;
use platform::http::{Health, HttpServer};
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
use crate::worker;
use platform::deadletter::DeadLetters;

/// How often the consumer's pending counts are read for `/metrics`.
const CONSUMER_INFO_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Nats(#[from] platform::nats::NatsError),
    #[error("cannot bind the HTTP listener: {0}")]
    Http(#[from] std::io::Error),
    #[error("cannot build an HTTP client: {0}")]
    HttpClient(String),
    #[error("stopped before NATS became available")]
    Cancelled,
}

pub struct App {
    settings: Arc<ProvisionerSettings>,
    nats: async_nats::Client,
    http: HttpServer,
    http_cancel: CancellationToken,
    runner: Arc<JobRunner>,
    recovery: Arc<Recovery>,
    consumer: jetstream::consumer::PullConsumer,
}

impl App {
    pub async fn build(
        settings: ProvisionerSettings,
        cancel: &CancellationToken,
    ) -> Result<Self, AppError> {
        let settings = Arc::new(settings);
        let nats = platform::nats::connect(&settings.common.nats, "provisioner").await?;
        let health = Health::new("provisioner", env!("CARGO_PKG_VERSION"));
        health.add_nats(nats.clone());
        let mut registry = Registry::default();
        let metrics = ProvisionerMetrics::register(&mut registry);
        let http_cancel = CancellationToken::new();
        let http = platform::http::serve(
            settings.common.http_addr,
            health.clone(),
            Arc::new(registry),
            Router::new(),
            http_cancel.clone(),
        )
        .await?;

        let js = jetstream::new(nats.clone());
        let (journal_kv, consumer) = ensure_resources(&js, &settings, cancel).await?;
        let journal = Journal::new(
            journal_kv,
            settings.job_lease,
            metrics.journal_writes.clone(),
        );

        let http_client = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.concurrency.max(8))
            .build()
            .map_err(|e| AppError::HttpClient(e.to_string()))?;
        let tokens = TokenProvider::new(settings.salesforce.clone(), http_client.clone());
        let salesforce = RestClient::new(http_client.clone(), tokens)
            .with_metrics(metrics.salesforce_api.clone())
            .with_limit_usage(metrics.salesforce_limit.clone());
        let whmcs = whmcs::WhmcsClient::with_http(settings.whmcs.clone(), http_client)
            .with_metrics(metrics.whmcs_api.clone());
        let publisher = Publisher::new(js.clone());
        let deadletter = DeadLetters::new(js.clone(), crate::job::SERVICE);
        let runner = Arc::new(JobRunner {
            journal: journal.clone(),
            orchestrator: Orchestrator {
                catalog: crate::catalog::Catalog::default(),
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
            journal,
            runner.clone(),
            settings.requests_stream.clone(),
            settings.outcomes_stream.clone(),
            settings.consumer.clone(),
            settings.recovery_interval,
            settings.ack_wait,
        ));
        Ok(Self {
            settings,
            nats,
            http,
            http_cancel,
            runner,
            recovery,
            consumer,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr
    }

    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
        tracing::info!(
            worker_id = %self.settings.worker_id,
            concurrency = self.settings.concurrency,
            consumer = %self.settings.consumer,
            "provisioner running."
        );
        let recovery_cancel = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let recovery = tokio::spawn(
            self.recovery
                .clone()
                .run(recovery_cancel.clone(), hard_stop.clone()),
        );
        let lag = tokio::spawn(self.runner.metrics.consumer.clone().poll(
            self.consumer.clone(),
            CONSUMER_INFO_EVERY,
            recovery_cancel.clone(),
        ));
        worker::run(
            self.consumer,
            self.runner,
            self.settings.concurrency,
            self.settings.shutdown_grace,
            cancel,
            hard_stop.clone(),
        )
        .await;
        recovery_cancel.cancel();
        // The reconciler's own jobs get no longer than the worker's did.
        hard_stop.cancel();
        let _ = recovery.await;
        let _ = lag.await;
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "Could not flush NATS on shutdown.");
        }
        self.http_cancel.cancel();
        let _ = self.http.task.await;
        tracing::info!("provisioner stopped.");
        Ok(())
    }
}

async fn ensure_resources(
    js: &jetstream::Context,
    settings: &ProvisionerSettings,
    cancel: &CancellationToken,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), AppError> {
    // Every setup failure here is worth retrying: the stream, bucket and consumer settings are
    // ours, so only NATS being unreachable or still starting can make them fail.
    platform::backoff::retry_while_transient(
        cancel,
        "JetStream",
        |_: &AppError| true,
        || try_ensure_resources(js, settings),
    )
    .await?
    .ok_or(AppError::Cancelled)
}

async fn try_ensure_resources(
    js: &jetstream::Context,
    settings: &ProvisionerSettings,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), AppError> {
    use platform::nats::{ensure_bucket, ensure_stream};
    use platform::streams;
    let requests = ensure_stream(
        js,
        streams::requests(
            &settings.requests_stream,
            Duration::from_secs(72 * 3600),
            Duration::from_secs(7 * 24 * 3600),
        ),
    )
    .await?;
    ensure_stream(js, streams::outcomes(&settings.outcomes_stream)).await?;
    ensure_stream(js, streams::order_updates(&settings.updates_stream)).await?;
    ensure_stream(js, streams::deadletter(&settings.deadletter_stream)).await?;
    let journal = ensure_bucket(
        js,
        kv::Config {
            bucket: settings.journal_bucket.clone(),
            description: "provisioner job journal, one entry per Salesforce Order".to_owned(),
            history: 5,
            max_age: Duration::from_secs(90 * 24 * 3600),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
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
