//! Wiring of sf-bridge: NATS resources, the HTTP listener, and the ingest run under the lease
//! ([`Lease::lead`]) while this replica holds it.
//!
//! Shutdown order (on cancel): the ingest stops reading from Salesforce, settles the publishes in
//! flight and stores the cursor; the lease is released so a standby takes over at once; NATS is
//! flushed (within [`platform::nats::SHUTDOWN_FLUSH_DEADLINE`]); the HTTP listener closes last so
//! probes see the service until it is gone.
//!
//! Background tasks (the HTTP listener, each leadership term's lease keeper) run under the
//! service's supervisor: one that dies cancels the root token, the service shuts down in the
//! order above, and `run_until_stopped` returns [`AppError::Task`] (the binary exits non-zero).

use std::sync::Arc;

use async_nats::jetstream::{kv, stream};
use axum::routing::get;
use axum::{Json, Router};
use platform::config::{ConfigError, Env};
use platform::nats::{JetStreamResources, NatsError};
use platform::service::{Running, Service, ServiceError, ServiceMain, StartError, Starting};
use platform::supervise::TaskFailure;
use platform::telemetry::TelemetrySettings;
use salesforce::pubsub::PubSubClient;
use salesforce::TokenProvider;
use tokio_util::sync::CancellationToken;

use crate::config::BridgeSettings;
use crate::cursor::CursorStore;
use crate::ingest::Ingest;
use crate::lease::Lease;
use crate::metrics::BridgeMetrics;
use crate::status::{BridgeStatus, SubscriptionState};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot build the Salesforce HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    PubSub(#[from] salesforce::pubsub::PubSubError),
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

/// The longest sf-bridge takes from SIGTERM to exit: the leader settles its publishes in flight
/// (then releases the lease), then the common shutdown tail. Deployment files must grant more.
pub fn shutdown_budget() -> std::time::Duration {
    crate::ingest::PUBLISH_DRAIN_DEADLINE + platform::service::SHUTDOWN_TAIL
}

pub struct App {
    settings: Arc<BridgeSettings>,
    service: Service,
    status: Arc<BridgeStatus>,
    metrics: BridgeMetrics,
    cursor: CursorStore,
    lease: Lease,
    client: Option<Arc<PubSubClient>>,
}

impl App {
    /// Connects, starts the HTTP listener and creates the streams and buckets when absent.
    /// Waits (reporting itself degraded) while NATS is unreachable, until `cancel`; a permanent
    /// JetStream error (a stream overlapping ours, invalid settings) is returned at once.
    ///
    /// `cancel` is the service's root token: pass the same one to [`App::run_until_stopped`].
    /// The supervisor cancels it when a background task dies.
    pub async fn build(
        settings: BridgeSettings,
        cancel: &CancellationToken,
    ) -> Result<Self, AppError> {
        let settings = Arc::new(settings);
        let mut starting = Starting::connect(
            "sf-bridge",
            env!("CARGO_PKG_VERSION"),
            &settings.common.nats,
            cancel,
        )
        .await?;
        let status = BridgeStatus::new(
            settings.events_enabled,
            &settings.channel,
            &settings.instance_id,
        );
        let metrics = BridgeMetrics::register(starting.registry());
        let status_for_route = status.clone();
        let routes = Router::new().route(
            "/health/sf-events",
            get(move || async move { Json(status_for_route.report()) }),
        );
        let service = starting.serve(settings.common.http_addr, routes).await?;

        let (cursor_kv, lease_kv) = service
            .ensure_resources(|resources| ensure_resources(resources, settings.clone()))
            .await?;
        let cursor = CursorStore::new(cursor_kv, &settings.channel, &settings.instance_id);
        let lease = Lease::new(
            lease_kv,
            &settings,
            service.supervisor().clone(),
            status.clone(),
            metrics.is_leader.clone(),
        );
        if let Ok(Some(stored)) = cursor.load().await {
            status.set_cursor(&stored);
        }

        let client = match &settings.salesforce {
            Some(sf) if settings.events_enabled => {
                let http_client = salesforce::http_client_builder(sf)
                    .timeout(sf.http_timeout)
                    .build()
                    .map_err(AppError::HttpClient)?;
                let tokens = TokenProvider::new(sf.clone(), http_client);
                Some(Arc::new(PubSubClient::new(
                    &settings.pubsub_endpoint,
                    tokens,
                )?))
            }
            _ => None,
        };
        Ok(Self {
            settings,
            service,
            status,
            metrics,
            cursor,
            lease,
            client,
        })
    }

    pub fn status(&self) -> &Arc<BridgeStatus> {
        &self.status
    }
}

impl Running for App {
    type Error = AppError;

    fn service(&self) -> &Service {
        &self.service
    }

    async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
        match self.client.clone() {
            None => {
                tracing::info!(channel = %self.settings.channel, "SF_EVENTS_ENABLED=false: not subscribing; serving health only.");
                self.status.set_state(SubscriptionState::Disabled);
                cancel.cancelled().await;
            }
            Some(client) => {
                let ingest = Ingest::new(
                    self.settings.clone(),
                    client,
                    self.service.nats().clone(),
                    self.cursor.clone(),
                    self.status.clone(),
                    self.metrics.clone(),
                    self.service.health().clone(),
                );
                self.lease.lead(&cancel, |stop| ingest.run(stop)).await;
            }
        }
        self.service.shut_down().await?;
        Ok(())
    }
}

impl ServiceMain for BridgeSettings {
    const NAME: &'static str = "sf-bridge";
    type App = App;

    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        BridgeSettings::from_env(env)
    }

    fn telemetry(&self) -> &TelemetrySettings {
        &self.common.telemetry
    }

    fn log_start(&self) {
        tracing::info!(
            channel = %self.channel,
            pubsub_endpoint = %self.pubsub_endpoint,
            enabled = self.events_enabled,
            instance_id = %self.instance_id,
            jetstream_replicas = self.common.nats.jetstream_replicas,
            "sf-bridge starting."
        );
    }

    async fn build(self, cancel: &CancellationToken) -> Result<App, AppError> {
        App::build(self, cancel).await
    }
}

/// Creates the requests and dead-letter streams and the two buckets when absent.
async fn ensure_resources(
    resources: JetStreamResources,
    settings: Arc<BridgeSettings>,
) -> Result<(kv::Store, kv::Store), NatsError> {
    resources.stream(requests_stream_config(&settings)).await?;
    resources
        .stream(platform::streams::deadletter(&settings.deadletter_stream))
        .await?;
    let cursor = resources
        .bucket(platform::streams::cursor_bucket(&settings.cursor_bucket))
        .await?;
    let lease = resources
        .bucket(platform::streams::lease_bucket(
            &settings.lease_bucket,
            settings.lease_ttl,
        ))
        .await?;
    Ok((cursor, lease))
}

/// The requests stream, with the configured duplicate window and retention.
pub fn requests_stream_config(settings: &BridgeSettings) -> stream::Config {
    platform::streams::requests(
        &settings.requests_stream,
        settings.duplicate_window,
        settings.requests_max_age,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use testkit::nats::NatsServer;

    fn settings(nats: &NatsServer) -> BridgeSettings {
        let env = platform::config::Env::from_pairs([
            ("NATS_URL", nats.url()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SF_EVENTS_ENABLED", "false".to_owned()),
        ]);
        BridgeSettings::from_env(&env).unwrap()
    }

    /// A supervised task that dies stops the service with its failure (its exit is non-zero).
    #[tokio::test]
    async fn a_dead_background_task_stops_the_bridge_with_an_error() {
        testkit::telemetry::init_once("sf-bridge-test", "warn");
        let nats = NatsServer::start().await;
        testkit::service::assert_a_dead_task_stops_the_service(settings(&nats)).await;
    }
}
