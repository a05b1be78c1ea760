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

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    owner: String,
    ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease store unavailable: {0}")]
    Store(String),
}

impl Lease {
    pub fn new(kv: kv::Store, channel: &str, owner: &str, ttl: Duration) -> Self {
        Self {
            kv,
            key: messages::subjects::channel_key(channel),
            owner: owner.to_owned(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a standby checks whether the lease is free.
    pub fn poll_interval(&self) -> Duration {
        (self.ttl / 5).clamp(Duration::from_millis(100), Duration::from_secs(3))
    }

    /// Takes the lease if nobody holds it; returns the revision to renew from.
    pub async fn try_acquire(&self) -> Result<Option<u64>, LeaseError> {
        match self.kv.create(&self.key, self.owner.clone().into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(err) => Err(LeaseError::Store(err.to_string())),
        }
    }

    /// The current holder, for status pages.
    pub async fn holder(&self) -> Option<String> {
        let bytes = self.kv.get(&self.key).await.ok()??;
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// Keeps the lease until `stop` is cancelled or the lease is lost; cancels `lost` on loss.
    /// Renews every third of the TTL.
    pub async fn hold(&self, mut revision: u64, stop: CancellationToken, lost: CancellationToken) {
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
