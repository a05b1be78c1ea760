//! Wiring of sf-writer: NATS resources, the Salesforce client, the gate, the pull loop and the
//! HTTP listener.
//!
//! Shutdown order (on cancel): stop pulling; batches in hand finish their current request, ack
//! what was written and hand the rest back, within the grace period; NATS is flushed (acks,
//! NAKs, dead letters); the HTTP listener closes last so probes see the service until it is gone.

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

use crate::config::WriterSettings;
use crate::consumer::{self, PullSettings};
use crate::gate::Gate;
use crate::metrics::WriterMetrics;
use crate::ordering::AppliedStore;
use crate::writer::Writer;
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

impl AppError {
    /// Whether starting again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Nats(e) => e.is_transient(),
            Self::Http(_) | Self::HttpClient(_) | Self::Cancelled => false,
        }
    }
}

pub struct App {
    settings: Arc<WriterSettings>,
    nats: async_nats::Client,
    http: HttpServer,
    http_cancel: CancellationToken,
    consumer: jetstream::consumer::PullConsumer,
    writer: Arc<Writer>,
    tokens: Arc<TokenProvider>,
}

impl App {
    /// Connects, starts the HTTP listener, creates the streams, the bucket and the consumer when
    /// absent. Waits (reporting itself degraded) while NATS is unreachable, until `cancel`.
    pub async fn build(
        settings: WriterSettings,
        cancel: &CancellationToken,
    ) -> Result<Self, AppError> {
        let settings = Arc::new(settings);
        let nats = platform::nats::connect(&settings.common.nats, "sf-writer").await?;
        let health = Health::new("sf-writer", env!("CARGO_PKG_VERSION"));
        health.add_nats(nats.clone());
        let mut registry = Registry::default();
        let metrics = WriterMetrics::register(&mut registry);
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
        let (applied_kv, consumer) = ensure_resources(&js, &settings, cancel).await?;

        let http_client = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.concurrency.max(4))
            .build()
            .map_err(|e| AppError::HttpClient(e.to_string()))?;
        let tokens = TokenProvider::new(settings.salesforce.clone(), http_client.clone());
        let rest = RestClient::new(http_client, tokens.clone())
            .with_metrics(metrics.salesforce_api.clone());
        let writer = Arc::new(Writer {
            rest,
            applied: AppliedStore::new(applied_kv, settings.claim_ttl),
            gate: Gate::new(settings.backoff_base, settings.backoff_max),
            deadletters: DeadLetters::new(js, crate::SERVICE),
            metrics,
            health,
            ack_wait: settings.ack_wait,
            retry_base: settings.backoff_base,
            retry_max: settings.backoff_max,
        });
        Ok(Self {
            settings,
            nats,
            http,
            http_cancel,
            consumer,
            writer,
            tokens,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr
    }

    /// Runs until `cancel`, then shuts down in order.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
        tracing::info!(
            instance_id = %self.settings.instance_id,
            consumer = %self.settings.consumer,
            max_batch = self.settings.max_batch,
            linger_ms = self.settings.linger.as_millis() as u64,
            concurrency = self.settings.concurrency,
            "sf-writer running."
        );
        // An early token fetch makes /health tell the truth about Salesforce before the first
        // update arrives (bad key, unknown user, unreachable login host).
        let warmup = tokio::spawn({
            let (tokens, health) = (self.tokens.clone(), self.writer.health.clone());
            async move {
                match tokens.token().await {
                    Ok(_) => health.set_up("salesforce"),
                    Err(err) => {
                        tracing::warn!(error = %err, "Cannot obtain a Salesforce token yet.");
                        health.set_down("salesforce", err.to_string());
                    }
                }
            }
        });
        let lag_cancel = CancellationToken::new();
        let lag = tokio::spawn(self.writer.metrics.consumer.clone().poll(
            self.consumer.clone(),
            CONSUMER_INFO_EVERY,
            lag_cancel.clone(),
        ));
        consumer::run(
            self.consumer,
            self.writer,
            PullSettings {
                max_batch: self.settings.max_batch,
                linger: self.settings.linger,
                concurrency: self.settings.concurrency,
                shutdown_grace: self.settings.shutdown_grace,
            },
            cancel,
        )
        .await;
        warmup.abort();
        lag_cancel.cancel();
        let _ = lag.await;
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "Could not flush NATS on shutdown.");
        }
        self.http_cancel.cancel();
        let _ = self.http.task.await;
        tracing::info!("sf-writer stopped.");
        Ok(())
    }
}

async fn ensure_resources(
    js: &jetstream::Context,
    settings: &WriterSettings,
    cancel: &CancellationToken,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), AppError> {
    platform::backoff::retry_while_transient(cancel, "JetStream", AppError::is_transient, || {
        try_ensure_resources(js, settings)
    })
    .await?
    .ok_or(AppError::Cancelled)
}

async fn try_ensure_resources(
    js: &jetstream::Context,
    settings: &WriterSettings,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), AppError> {
    use platform::nats::{ensure_bucket, ensure_stream};
    use platform::streams;
    let updates = ensure_stream(js, streams::order_updates(&settings.updates_stream)).await?;
    ensure_stream(js, streams::deadletter(&settings.deadletter_stream)).await?;
    let applied = ensure_bucket(
        js,
        kv::Config {
            bucket: settings.applied_bucket.clone(),
            description: "sf-writer: last applied update sequence and write claim per Order"
                .to_owned(),
            history: 1,
            max_age: settings.applied_max_age,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let consumer = platform::nats::ensure_consumer(
        &updates,
        consumer::consumer_config(
            &settings.consumer,
            settings.ack_wait,
            settings.max_ack_pending,
        ),
    )
    .await?;
    Ok((applied, consumer))
}
