//! One active subscriber per channel.
//!
//! Two subscribers would each receive the whole stream (the Pub/Sub API has no consumer groups),
//! and two cursor writers would fight. Replicas therefore compete for a lease: a KV key created
//! with `create` (atomic create-if-absent) and renewed with `update` (compare-and-swap on the
//! revision). The bucket's `max_age` equals the lease TTL, so the key of a leader that died
//! disappears on its own; this works on nats-server 2.9, which has no per-key TTL.
//!
//! A leader that cannot renew for two thirds of the TTL steps down by itself, before any standby
//! can take the key over, so two leaders never run at once by this mechanism's own timing.
//!
//! [`Lease::lead`] is the whole leadership cycle: stand by while another replica holds the key,
//! run the leader's work while this one does, with a stop token that fires when the lease is lost
//! or the service stops, and release the key once the work has wound down.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use platform::error::Chain;
use platform::supervise::Supervisor;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::BridgeSettings;
use crate::status::{BridgeStatus, SubscriptionState};

#[derive(Clone)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    channel: String,
    owner: String,
    ttl: Duration,
    /// Runs the keeper of each term, so that a keeper that dies takes the service down.
    supervisor: Supervisor,
    status: Arc<BridgeStatus>,
    /// `sf_bridge_leader`.
    is_leader: Gauge,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease store unavailable")]
    Store(#[source] kv::CreateError),
}

impl Lease {
    /// The lease of `settings.channel` for `settings.instance_id`, lasting `settings.lease_ttl`.
    /// The standby and backoff states go to `status`, leadership to `is_leader`.
    pub fn new(
        kv: kv::Store,
        settings: &BridgeSettings,
        supervisor: Supervisor,
        status: Arc<BridgeStatus>,
        is_leader: Gauge,
    ) -> Self {
        Self {
            kv,
            key: messages::subjects::channel_key(&settings.channel),
            channel: settings.channel.clone(),
            owner: settings.instance_id.clone(),
            ttl: settings.lease_ttl,
            supervisor,
            status,
            is_leader,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a standby checks whether the lease is free.
    pub fn poll_interval(&self) -> Duration {
        (self.ttl / 5).clamp(Duration::from_millis(100), Duration::from_secs(3))
    }

    /// Until `cancel`: waits for the lease, and while holding it runs `work` with a token that
    /// is cancelled when the lease is lost or on `cancel`. The lease is renewed until `work`
    /// returns (it settles its publishes and stores the cursor under the lease), then released
    /// so that a standby takes over at once. After losing it, waits for it again.
    pub async fn lead<F, Fut>(&self, cancel: &CancellationToken, mut work: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut announced_standby = false;
        while !cancel.is_cancelled() {
            match self.try_acquire().await {
                Ok(Some(revision)) => {
                    announced_standby = false;
                    tracing::info!(instance_id = %self.owner, channel = %self.channel, "Acquired the subscription lease; this replica is the active subscriber.");
                    self.is_leader.set(1);
                    // The keeper cancels it on loss; `cancel` reaches it as its parent.
                    let stop = cancel.child_token();
                    let release = CancellationToken::new();
                    // Supervised: a keeper that panics would leave the work running without
                    // renewing the lease, and a standby would start a second subscription. Its
                    // death cancels the root token, which stops the work through `stop`.
                    let keeper = self.supervisor.spawn_finite("lease-keeper", {
                        let lease = self.clone();
                        let (release, lost) = (release.clone(), stop.clone());
                        async move { lease.hold(revision, release, lost).await }
                    });
                    work(stop).await;
                    release.cancel();
                    let _ = keeper.await;
                    self.is_leader.set(0);
                }
                Ok(None) => {
                    if !announced_standby {
                        let holder = self.holder().await.unwrap_or_default();
                        tracing::info!(leader = %holder, "Another replica holds the subscription lease; standing by.");
                        announced_standby = true;
                    }
                    self.status.set_state(SubscriptionState::Standby);
                    wait(cancel, self.poll_interval()).await;
                }
                Err(err) => {
                    tracing::warn!(error = %Chain(&err), "Cannot reach the lease bucket; retrying.");
                    self.status.set_state(SubscriptionState::Backoff);
                    wait(cancel, self.poll_interval()).await;
                }
            }
        }
    }

    /// Takes the lease if nobody holds it; returns the revision to renew from.
    async fn try_acquire(&self) -> Result<Option<u64>, LeaseError> {
        match self.kv.create(&self.key, self.owner.clone().into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(err) => Err(LeaseError::Store(err)),
        }
    }

    /// The current holder, for status pages.
    pub async fn holder(&self) -> Option<String> {
        let bytes = self.kv.get(&self.key).await.ok()??;
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// Keeps the lease until `stop` is cancelled or the lease is lost; cancels `lost` on loss.
    /// Renews every third of the TTL.
    async fn hold(&self, mut revision: u64, stop: CancellationToken, lost: CancellationToken) {
        let renew_every = self.ttl / 3;
        let step_down_after = self.ttl * 2 / 3;
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(renew_every) => {}
            }
            match self
                .kv
                .update(&self.key, self.owner.clone().into(), revision)
                .await
            {
                Ok(next) => {
                    revision = next;
                    last_renewed = Instant::now();
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::error!(key = %self.key, "Subscription lease was taken over; stepping down.");
                    lost.cancel();
                    return;
                }
                Err(err) => {
                    tracing::warn!(key = %self.key, error = %err, "Cannot renew the subscription lease.");
                    if last_renewed.elapsed() >= step_down_after {
                        tracing::error!(key = %self.key, "Lease not renewed in time; stepping down.");
                        lost.cancel();
                        return;
                    }
                }
            }
        }
        // Hand over at once instead of making a standby wait out the TTL.
        if let Err(err) = self
            .kv
            .delete_expect_revision(&self.key, Some(revision))
            .await
        {
            tracing::debug!(error = %err, "Could not release the lease; it will expire.");
        } else {
            tracing::info!(key = %self.key, "Released the subscription lease.");
        }
    }
}

async fn wait(cancel: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}
