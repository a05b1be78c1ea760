//! Wiring of sf-bridge: NATS resources, the HTTP listener, and the leadership loop that runs the
//! ingest while this replica holds the lease.
//!
//! Shutdown order (on cancel): the ingest stops reading from Salesforce, settles the publishes in
//! flight and stores the cursor; the lease is released so a standby takes over at once; NATS is
//! flushed; the HTTP listener closes last so probes see the service until it is gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use axum::routing::get;
use axum::{Json, Router};
use platform::http::{Health, HttpServer};
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
    #[error("cannot bind the HTTP listener: {0}")]
    Http(#[from] std::io::Error),
    #[error(transparent)]
    PubSub(#[from] salesforce::pubsub::PubSubError),
    #[error("stopped before NATS became available")]
    Cancelled,
}

pub struct App {
    settings: Arc<BridgeSettings>,
    nats: async_nats::Client,
    status: Arc<BridgeStatus>,
    metrics: BridgeMetrics,
    health: Arc<Health>,
    http: HttpServer,
    http_cancel: CancellationToken,
    cursor: CursorStore,
    lease: Lease,
    client: Option<Arc<PubSubClient>>,
}

impl App {
    /// Connects, starts the HTTP listener and creates the streams and buckets when absent.
    /// Waits (reporting itself degraded) while NATS is unreachable, until `cancel`.
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
        let mut registry = Registry::default();
        let metrics = BridgeMetrics::register(&mut registry);

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

        let js = jetstream::new(nats.clone());
        let (cursor_kv, lease_kv) = ensure_resources(&js, &settings, cancel).await?;
        let cursor = CursorStore::new(cursor_kv, &settings.channel, &settings.instance_id);
        let lease = Lease::new(
            lease_kv,
            &settings.channel,
            &settings.instance_id,
            settings.lease_ttl,
        );
        if let Ok(Some(stored)) = cursor.load().await {
            status.set_cursor(stored.view());
        }

        let client = match &settings.salesforce {
            Some(sf) if settings.events_enabled => {
                let http_client = reqwest::Client::builder()
                    .timeout(sf.http_timeout)
                    .build()
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
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
            http,
            http_cancel,
            cursor,
            lease,
            client,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr
    }

    pub fn status(&self) -> &Arc<BridgeStatus> {
        &self.status
    }

    /// Runs until `cancel`, then shuts down in order.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> Result<(), AppError> {
        match self.client.clone() {
            None => {
                tracing::info!(channel = %self.settings.channel, "SF_EVENTS_ENABLED=false: not subscribing; serving health only.");
                self.status.set_state(SubscriptionState::Disabled);
                cancel.cancelled().await;
            }
            Some(client) => self.lead_or_stand_by(client, &cancel).await,
        }
        if let Err(err) = self.nats.flush().await {
            tracing::warn!(error = %err, "Could not flush NATS on shutdown.");
        }
        self.http_cancel.cancel();
        let _ = self.http.task.await;
        tracing::info!("sf-bridge stopped.");
        Ok(())
    }

    async fn lead_or_stand_by(&self, client: Arc<PubSubClient>, cancel: &CancellationToken) {
        let ingest = Ingest::new(
            self.settings.clone(),
            client,
            self.nats.clone(),
            self.cursor.clone(),
            self.status.clone(),
            self.metrics.clone(),
            self.health.clone(),
        );
        let mut announced_standby = false;
        while !cancel.is_cancelled() {
            match self.lease.try_acquire().await {
                Ok(Some(revision)) => {
                    announced_standby = false;
                    tracing::info!(instance_id = %self.settings.instance_id, channel = %self.settings.channel, "Acquired the subscription lease; this replica is the active subscriber.");
                    self.metrics.is_leader.set(1);
                    let lost = CancellationToken::new();
                    let release = CancellationToken::new();
                    let lease = self.lease.clone();
                    let holder = tokio::spawn({
                        let (release, lost) = (release.clone(), lost.clone());
                        async move { lease.hold(revision, release, lost).await }
                    });
                    let stop = CancellationToken::new();
                    let watcher = tokio::spawn({
                        let (stop, cancel, lost) = (stop.clone(), cancel.clone(), lost.clone());
                        async move {
                            tokio::select! {
                                () = cancel.cancelled() => {}
                                () = lost.cancelled() => {}
                            }
                            stop.cancel();
                        }
                    });
                    ingest.run(stop).await;
                    watcher.abort();
                    release.cancel();
                    let _ = holder.await;
                    self.metrics.is_leader.set(0);
                }
                Ok(None) => {
                    if !announced_standby {
                        let holder = self.lease.holder().await.unwrap_or_default();
                        tracing::info!(leader = %holder, "Another replica holds the subscription lease; standing by.");
                        announced_standby = true;
                    }
                    self.status.set_state(SubscriptionState::Standby);
                    self.wait(cancel, self.lease.poll_interval()).await;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "Cannot reach the lease bucket; retrying.");
                    self.status.set_state(SubscriptionState::Backoff);
                    self.wait(cancel, self.lease.poll_interval()).await;
                }
            }
        }
    }

    async fn wait(&self, cancel: &CancellationToken, delay: Duration) {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Creates the requests and dead-letter streams and the two buckets when absent, retrying while
/// NATS is unreachable.
async fn ensure_resources(
    js: &jetstream::Context,
    settings: &BridgeSettings,
    cancel: &CancellationToken,
) -> Result<(kv::Store, kv::Store), AppError> {
    platform::backoff::retry_while_transient(
        cancel,
        "JetStream",
        platform::nats::NatsError::is_transient,
        || try_ensure_resources(js, settings),
    )
    .await?
    .ok_or(AppError::Cancelled)
}

async fn try_ensure_resources(
    js: &jetstream::Context,
    settings: &BridgeSettings,
) -> Result<(kv::Store, kv::Store), platform::nats::NatsError> {
    platform::nats::ensure_stream(js, requests_stream_config(settings)).await?;
    platform::nats::ensure_stream(
        js,
        platform::streams::deadletter(&settings.deadletter_stream),
    )
    .await?;
    let cursor = platform::nats::ensure_bucket(
        js,
        kv::Config {
            bucket: settings.cursor_bucket.clone(),
            description: "sf-bridge replay cursor per Salesforce channel".to_owned(),
            history: 10,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    let lease = platform::nats::ensure_bucket(
        js,
        kv::Config {
            bucket: settings.lease_bucket.clone(),
            description: "sf-bridge subscription lease per Salesforce channel".to_owned(),
            history: 1,
            max_age: settings.lease_ttl,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
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
