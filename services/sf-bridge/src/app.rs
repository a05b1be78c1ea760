//! Wiring of sf-bridge: NATS resources, the HTTP listener, and the ingest run under the lease
//! ([`Lease::lead`]) while this replica holds it.
//!
//! Shutdown order (on cancel): the ingest stops reading from Salesforce, settles the publishes in
//! flight and stores the cursor; the lease is released so a standby takes over at once; NATS is
//! flushed (within [`platform::nats::SHUTDOWN_FLUSH_DEADLINE`]); the HTTP listener closes last so
//! probes see the service until it is gone.
//!
//! Background tasks (the HTTP listener, each leadership term's lease keeper) run under a
//! [`Supervisor`]: one that dies cancels the root token, the service shuts down in the order
//! above, and [`App::run_until_stopped`] returns [`AppError::Task`] (the binary exits non-zero).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use axum::routing::get;
use axum::{Json, Router};
use platform::http::Health;
use platform::nats::{JetStreamResources, ReplicaMetrics};
use platform::supervise::{Supervisor, TaskFailure};
use prometheus_client::registry::Registry;
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
    Nats(#[from] platform::nats::NatsError),
    #[error("cannot bind the HTTP listener")]
    Http(#[from] std::io::Error),
    #[error("cannot build the Salesforce HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error(transparent)]
    PubSub(#[from] salesforce::pubsub::PubSubError),
    #[error("stopped before NATS became available")]
    Cancelled,
    #[error(transparent)]
    Task(#[from] TaskFailure),
}

/// How long the supervised tasks (the HTTP listener finishing its last answers) may take to end
/// once the shutdown reached them.
const TASKS_STOP_DEADLINE: Duration = Duration::from_secs(5);

pub struct App {
    settings: Arc<BridgeSettings>,
    nats: async_nats::Client,
    status: Arc<BridgeStatus>,
    metrics: BridgeMetrics,
    health: Arc<Health>,
    http_addr: SocketAddr,
    http_cancel: CancellationToken,
    supervisor: Supervisor,
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
        let nats = platform::nats::connect(&settings.common.nats, "sf-bridge").await?;
        let health = Health::new("sf-bridge", env!("CARGO_PKG_VERSION"));
        health.add_nats(nats.clone());
        let status = BridgeStatus::new(
            settings.events_enabled,
            &settings.channel,
            &settings.instance_id,
        );
        let supervisor = Supervisor::new(health.clone(), cancel.clone());
        let mut registry = Registry::default();
        let metrics = BridgeMetrics::register(&mut registry);
        let replica_metrics = ReplicaMetrics::register(&mut registry);

        let status_for_route = status.clone();
        let extra = Router::new().route(
            "/health/sf-events",
            get(move || async move { Json(status_for_route.report()) }),
        );
        let http_cancel = CancellationToken::new();
        let http = platform::http::serve(
            settings.common.http_addr,
            health.clone(),
            Arc::new(registry),
            extra,
            http_cancel.clone(),
        )
        .await?;
        let http_addr = http.local_addr;
        supervisor.spawn("http", http.task);

        let resources = JetStreamResources::new(
            jetstream::new(nats.clone()),
            settings.common.nats.jetstream_replicas,
        )
        .with_metrics(replica_metrics);
        let (cursor_kv, lease_kv) = ensure_resources(&resources, &settings, cancel).await?;
        let cursor = CursorStore::new(cursor_kv, &settings.channel, &settings.instance_id);
        let lease = Lease::new(
            lease_kv,
            &settings,
            supervisor.clone(),
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
            nats,
            status,
            metrics,
            health,
            http_addr,
            http_cancel,
            supervisor,
            cursor,
            lease,
            client,
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

    pub fn status(&self) -> &Arc<BridgeStatus> {
        &self.status
    }

    /// Runs until `cancel` (the token given to [`App::build`]), then shuts down in order.
    /// Returns [`AppError::Task`] when a supervised background task died.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
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
                    self.nats.clone(),
                    self.cursor.clone(),
                    self.status.clone(),
                    self.metrics.clone(),
                    self.health.clone(),
                );
                self.lease.lead(&cancel, |stop| ingest.run(stop)).await;
            }
        }
        if let Err(err) =
            platform::nats::flush_with_deadline(&self.nats, platform::nats::SHUTDOWN_FLUSH_DEADLINE)
                .await
        {
            tracing::warn!(error = %platform::error::Chain(&err), "Could not flush NATS on shutdown.");
        }
        self.http_cancel.cancel();
        self.supervisor.wait_all(TASKS_STOP_DEADLINE).await;
        self.supervisor.result()?;
        tracing::info!("sf-bridge stopped.");
        Ok(())
    }
}

/// Creates the requests and dead-letter streams and the two buckets when absent, retrying while
/// NATS is unreachable.
async fn ensure_resources(
    resources: &JetStreamResources,
    settings: &BridgeSettings,
    cancel: &CancellationToken,
) -> Result<(kv::Store, kv::Store), AppError> {
    platform::backoff::retry_while_transient(
        cancel,
        "JetStream",
        platform::nats::NatsError::is_transient,
        || try_ensure_resources(resources, settings),
    )
    .await?
    .ok_or(AppError::Cancelled)
}

async fn try_ensure_resources(
    resources: &JetStreamResources,
    settings: &BridgeSettings,
) -> Result<(kv::Store, kv::Store), platform::nats::NatsError> {
    resources.stream(requests_stream_config(settings)).await?;
    resources
        .stream(platform::streams::deadletter(&settings.deadletter_stream))
        .await?;
    let cursor = resources
        .bucket(kv::Config {
            bucket: settings.cursor_bucket.clone(),
            description: "sf-bridge replay cursor per Salesforce channel".to_owned(),
            history: 10,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let lease = resources
        .bucket(kv::Config {
            bucket: settings.lease_bucket.clone(),
            description: "sf-bridge subscription lease per Salesforce channel".to_owned(),
            history: 1,
            max_age: settings.lease_ttl,
            storage: stream::StorageType::File,
            ..Default::default()
        })
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

    /// A supervised task that ends while the bridge runs: /health names it, /livez fails, the
    /// service shuts down on its own and its run returns the failure (main exits non-zero).
    #[tokio::test]
    async fn a_dead_background_task_stops_the_bridge_with_an_error() {
        testkit::telemetry::init_once("sf-bridge-test", "warn");
        let nats = NatsServer::start().await;
        let cancel = CancellationToken::new();
        let app = App::build(settings(&nats), &cancel).await.unwrap();
        let livez = format!("http://{}/livez", app.http_addr());
        assert_eq!(reqwest::get(&livez).await.unwrap().status(), 200);
        let supervisor = app.supervisor().clone();
        let health = app.health().clone();
        let run = tokio::spawn(app.run_until_stopped(cancel.clone()));

        supervisor.spawn("test-poller", async {});
        let result = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the bridge stops by itself")
            .unwrap();
        match result {
            Err(AppError::Task(failure)) => assert_eq!(failure.task, "test-poller"),
            other => panic!("expected the task failure, got {other:?}"),
        }
        assert!(cancel.is_cancelled());
        let (healthy, body) = health.report();
        assert!(!healthy);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["integrations"]["test-poller"]["status"], "down");
        assert!(!health.liveness().0, "/livez fails");
    }

    /// A stream already capturing `provisioning.requested.>` under another name is a permanent
    /// error: the bridge does not start, and says why, instead of retrying forever.
    #[tokio::test]
    async fn an_overlapping_stream_stops_the_start_with_a_permanent_error() {
        let nats = NatsServer::start().await;
        jetstream::new(nats.client().await)
            .create_stream(stream::Config {
                name: "SOMEONE_ELSES".to_owned(),
                subjects: vec!["provisioning.requested.>".to_owned()],
                ..Default::default()
            })
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            Box::pin(App::build(settings(&nats), &cancel)),
        )
        .await
        .expect("a permanent error is not retried");
        match result {
            Err(AppError::Nats(err)) => {
                assert!(!err.is_transient());
                assert_eq!(err.jetstream_code(), Some(10065));
            }
            Err(other) => panic!("expected a JetStream error, got {other:?}"),
            Ok(_) => panic!("the bridge must not start"),
        }
    }
}
