//! Wiring of sf-writer: NATS resources, the Salesforce client, the gate, the pull loop and the
//! HTTP listener.
//!
//! Shutdown order (on cancel): stop pulling; batches in hand finish their current request, ack
//! what was written and hand the rest back, within the grace period; NATS is flushed (acks,
//! NAKs, dead letters; within [`platform::nats::SHUTDOWN_FLUSH_DEADLINE`]); the HTTP listener
//! closes last so probes see the service until it is gone.
//!
//! Background tasks (the HTTP listener, the consumer-lag poller, the Salesforce warm-up) run
//! under the service's supervisor: one that dies cancels the root token, the service shuts down
//! in the order above, and `run_until_stopped` returns [`AppError::Task`] (exit non-zero).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use axum::Router;
use platform::config::{ConfigError, Env};
use platform::nats::{JetStreamResources, NatsError};
use platform::service::{Running, Service, ServiceError, ServiceMain, StartError, Starting};
use platform::supervise::TaskFailure;
use platform::telemetry::TelemetrySettings;
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

/// The longest sf-writer takes from SIGTERM to exit, given its shutdown grace
/// (`SF_WRITER_SHUTDOWN_GRACE_SECS`): batches in hand finish within it, then the common shutdown
/// tail. Deployment files must grant more.
pub fn shutdown_budget(shutdown_grace: Duration) -> Duration {
    shutdown_grace + platform::service::SHUTDOWN_TAIL
}

pub struct App {
    settings: Arc<WriterSettings>,
    service: Service,
    consumer: jetstream::consumer::PullConsumer,
    writer: Arc<Writer>,
    tokens: Arc<TokenProvider>,
}

impl App {
    /// Connects, starts the HTTP listener, creates the streams, the bucket and the consumer when
    /// absent. Waits (reporting itself degraded) while NATS is unreachable, until `cancel`; a
    /// permanent JetStream error (a stream overlapping ours, invalid settings) is returned at once.
    ///
    /// `cancel` is the service's root token: pass the same one to [`App::run_until_stopped`].
    /// The supervisor cancels it when a background task dies.
    pub async fn build(
        settings: WriterSettings,
        cancel: &CancellationToken,
    ) -> Result<Self, AppError> {
        let settings = Arc::new(settings);
        let mut starting = Starting::connect(
            "sf-writer",
            env!("CARGO_PKG_VERSION"),
            &settings.common.nats,
            cancel,
        )
        .await?;
        let metrics = WriterMetrics::register(starting.registry());
        let service = starting
            .serve(settings.common.http_addr, Router::new())
            .await?;
        let (applied_kv, consumer) = service
            .ensure_resources(|resources| ensure_resources(resources, settings.clone()))
            .await?;

        let http_client = salesforce::http_client_builder(&settings.salesforce)
            .pool_max_idle_per_host(settings.concurrency.max(4))
            .build()
            .map_err(AppError::HttpClient)?;
        let tokens = TokenProvider::new(settings.salesforce.clone(), http_client.clone());
        let rest = RestClient::new(http_client, tokens.clone())
            .with_metrics(metrics.salesforce_api.clone());
        let writer = Arc::new(Writer {
            rest,
            applied: AppliedStore::new(applied_kv, settings.claim_ttl),
            gate: Gate::new(settings.backoff_base, settings.backoff_max),
            deadletters: DeadLetters::new(service.jetstream().clone(), crate::SERVICE),
            metrics,
            health: service.health().clone(),
            ack_wait: settings.ack_wait,
            retry_base: settings.backoff_base,
            retry_max: settings.backoff_max,
        });
        Ok(Self {
            settings,
            service,
            consumer,
            writer,
            tokens,
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
            instance_id = %self.settings.instance_id,
            consumer = %self.settings.consumer,
            max_batch = self.settings.max_batch,
            linger_ms = self.settings.linger.as_millis() as u64,
            concurrency = self.settings.concurrency,
            "sf-writer running."
        );
        let supervisor = self.service.supervisor();
        // An early token fetch makes /health tell the truth about Salesforce before the first
        // update arrives (bad key, unknown user, unreachable login host).
        let warmup = supervisor.spawn_finite("salesforce-warmup", {
            let (tokens, health) = (self.tokens.clone(), self.writer.health.clone());
            async move {
                match tokens.token().await {
                    Ok(_) => health.set_up("salesforce"),
                    Err(err) => {
                        tracing::warn!(error = %platform::error::Chain(&err), "Cannot obtain a Salesforce token yet.");
                        health.set_down("salesforce", platform::error::Chain(&err).to_string());
                    }
                }
            }
        });
        let lag_cancel = CancellationToken::new();
        self.service.poll_consumer_lag(
            self.writer.metrics.consumer.clone(),
            self.consumer.clone(),
            lag_cancel.clone(),
        );
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
        self.service.shut_down().await?;
        Ok(())
    }
}

impl ServiceMain for WriterSettings {
    const NAME: &'static str = "sf-writer";
    type App = App;

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        WriterSettings::from_env(env)
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.common.telemetry
    }

    fn log_start(&self) {
        tracing::info!(
            instance_id = %self.instance_id,
            consumer = %self.consumer,
            jetstream_replicas = self.common.nats.jetstream_replicas,
            "sf-writer starting."
        );
    }

    async fn build(self, cancel: &CancellationToken) -> Result<App, AppError> {
        App::build(self, cancel).await
    }
}

/// Creates the updates and dead-letter streams, the applied bucket and the consumer when absent.
async fn ensure_resources(
    resources: JetStreamResources,
    settings: Arc<WriterSettings>,
) -> Result<(kv::Store, jetstream::consumer::PullConsumer), NatsError> {
    use platform::streams;
    let updates = resources
        .stream(streams::order_updates(&settings.updates_stream))
        .await?;
    resources
        .stream(streams::deadletter(&settings.deadletter_stream))
        .await?;
    let applied = resources
        .bucket(streams::applied_bucket(
            &settings.applied_bucket,
            settings.applied_max_age,
        ))
        .await?;
    let consumer = platform::nats::ensure_consumer(
        &updates,
        streams::writer_consumer(
            &settings.consumer,
            settings.ack_wait,
            settings.max_ack_pending,
        ),
    )
    .await?;
    Ok((applied, consumer))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use testkit::nats::NatsServer;

    /// Salesforce is never reached in these tests: the login URL points at a closed port.
    fn settings(nats: &NatsServer) -> WriterSettings {
        let keys = testkit::keys::test_keys();
        let env = platform::config::Env::from_pairs([
            ("NATS_URL", nats.url()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SF_LOGIN_URL", "http://127.0.0.1:9".to_owned()),
            ("SF_CLIENT_ID", "client".to_owned()),
            ("SF_USERNAME", "user@example.com".to_owned()),
            (
                "SF_PRIVATE_KEY_PATH",
                keys.private_key_path.display().to_string(),
            ),
            ("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
        ]);
        WriterSettings::from_env(&env).unwrap()
    }

    /// A supervised task that dies stops the service with its failure (its exit is non-zero).
    #[tokio::test]
    async fn a_dead_background_task_stops_the_writer_with_an_error() {
        testkit::telemetry::init_once("sf-writer-test", "warn");
        let nats = NatsServer::start().await;
        testkit::service::assert_a_dead_task_stops_the_service(settings(&nats)).await;
    }
}
