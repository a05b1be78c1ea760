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

#[derive(Debug, Clone)]
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
            key: messages::kv::lease::key(&settings.channel),
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
        match self
            .kv
            .create(&self.key, messages::kv::lease::value(&self.owner).into())
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(err) => Err(LeaseError::Store(err)),
        }
    }

    /// The current holder, for status pages.
    pub async fn holder(&self) -> Option<String> {
        let value = self.kv.get(&self.key).await.ok()??;
        Some(messages::kv::lease::holder(&value))
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
                .update(
                    &self.key,
                    messages::kv::lease::value(&self.owner).into(),
                    revision,
                )
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
                    tracing::warn!(key = %self.key, error = %Chain(&err), "Cannot renew the subscription lease.");
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
            tracing::debug!(error = %Chain(&err), "Could not release the lease; it will expire.");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use async_nats::jetstream;
    use platform::http::Health;
    use testkit::nats::NatsServer;

    const WAIT: Duration = Duration::from_secs(30);

    struct Fixture {
        lease: Lease,
        kv: kv::Store,
        status: Arc<BridgeStatus>,
        is_leader: Gauge,
        _nats: NatsServer,
    }

    /// The shortest lease the settings allow (1 s, renewed every third), so that a lost lease
    /// and an expired key show within a test's patience.
    async fn fixture(cancel: &CancellationToken) -> Fixture {
        let nats = NatsServer::start().await;
        // The lease needs no Salesforce credentials.
        let env = platform::config::Env::from_pairs([
            ("NATS_URL", nats.url()),
            ("SF_EVENTS_ENABLED", "false".to_owned()),
        ]);
        let mut settings = BridgeSettings::from_env(&env).unwrap();
        settings.lease_ttl = Duration::from_secs(1);
        // As the service makes it: creating a bucket takes care on nats-server 2.9.
        let kv = platform::nats::JetStreamResources::new(jetstream::new(nats.client().await), 1)
            .bucket(kv::Config {
                bucket: settings.lease_bucket.clone(),
                history: 1,
                max_age: settings.lease_ttl,
                ..Default::default()
            })
            .await
            .unwrap();
        let status = BridgeStatus::new(true, &settings.channel, &settings.instance_id);
        let is_leader = Gauge::default();
        let supervisor = Supervisor::new(Health::new("sf-bridge-test", "0"), cancel.clone());
        let lease = Lease::new(
            kv.clone(),
            &settings,
            supervisor,
            status.clone(),
            is_leader.clone(),
        );
        Fixture {
            lease,
            kv,
            status,
            is_leader,
            _nats: nats,
        }
    }

    /// Another writer takes the key over: the work's stop token fires and the replica stands by;
    /// once the other writer's key has expired, it leads again.
    #[tokio::test]
    async fn a_lost_lease_stops_the_work_until_the_lease_is_free_again() {
        let cancel = CancellationToken::new();
        let f = fixture(&cancel).await;
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
        let lead = tokio::spawn({
            let (lease, cancel) = (f.lease.clone(), cancel.clone());
            async move {
                lease
                    .lead(&cancel, |stop| {
                        let (started_tx, stopped_tx) = (started_tx.clone(), stopped_tx.clone());
                        async move {
                            started_tx.send(()).unwrap();
                            stop.cancelled().await;
                            stopped_tx.send(()).unwrap();
                        }
                    })
                    .await;
            }
        });
        tokio::time::timeout(WAIT, started.recv()).await.unwrap();
        assert_eq!(f.is_leader.get(), 1);
        let key = messages::kv::lease::key(&f.status.channel);
        f.kv.put(&key, "someone-else".into()).await.unwrap();

        tokio::time::timeout(WAIT, stopped.recv())
            .await
            .expect("the work is stopped once the keeper sees the takeover");
        tokio::time::timeout(WAIT, started.recv())
            .await
            .expect("a second term once the other writer's key expired");
        // The test's work sets no state of its own: what is left is the standby in between.
        assert_eq!(f.status.state(), SubscriptionState::Standby);
        assert_eq!(f.is_leader.get(), 1);

        cancel.cancel();
        tokio::time::timeout(WAIT, lead).await.unwrap().unwrap();
        assert_eq!(f.is_leader.get(), 0);
    }

    /// On cancel the work winds down while the lease is still held, then the key is released
    /// for a standby.
    #[tokio::test]
    async fn cancel_stops_the_work_then_releases_the_lease() {
        let cancel = CancellationToken::new();
        let f = fixture(&cancel).await;
        let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
        let lease = f.lease.clone();
        tokio::time::timeout(
            WAIT,
            f.lease.lead(&cancel, |stop| {
                let (lease, cancel, held_tx) = (lease.clone(), cancel.clone(), held_tx.clone());
                async move {
                    cancel.cancel();
                    stop.cancelled().await;
                    held_tx.send(lease.holder().await).unwrap();
                }
            }),
        )
        .await
        .expect("lead returns on cancel");
        assert_eq!(
            held.try_recv().unwrap().as_deref(),
            Some(f.status.instance_id.as_str()),
            "held while the work winds down"
        );
        assert_eq!(f.lease.holder().await, None, "released");
        assert_eq!(f.is_leader.get(), 0);
    }
}
