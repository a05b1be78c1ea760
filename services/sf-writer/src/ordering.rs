//! Per-Order ordering across replicas, kept in a KV bucket (one key per Order, the canonical
//! 18-character id).
//!
//! The value holds `applied`, the newest sequence written (or dead-lettered) for the Order, and
//! at most one `claim`: a writer's right to write one sequence for a while. The rules:
//!
//! 1. A writer claims immediately before each write to Salesforce, by compare-and-swap on the
//!    key's revision; claiming again with its own token renews (extends) its claim. Two writers
//!    racing for one Order cannot both win; the loser re-reads and decides again. Because every
//!    write is preceded by its own successful CAS, a writer whose claim was taken over while it
//!    waited (a long round, a slow record before this one) finds out before it writes, and
//!    drops the write.
//! 2. An update whose sequence is `<= applied` is stale: acknowledged, never written.
//! 3. While another writer's claim is live, nobody else writes the Order: a newer update waits
//!    (its message is redelivered shortly), an older one is stale, since the claimed, newer
//!    sequence will land after it anyway. This is what keeps a slow in-flight request for seq 2
//!    from landing after a fast request for seq 3 written by another replica.
//! 4. An expired claim may be taken over, but only by a sequence at least as new: the expired
//!    claim's write may have reached Salesforce, so anything older is stale.
//! 5. After the write (or a permanent, dead-lettered failure) the writer sets `applied` and drops
//!    its claim, again by compare-and-swap; if its claim was taken over meanwhile, `applied` only
//!    ever grows.
//!
//! **Expiry without comparing clocks.** A claim must expire, or a crashed writer would block its
//! Order for ever, so expiry stays time-based; but no wall clock of one host is compared with
//! another's. The claim carries its lifetime (`ttl_ms`), and a writer considers a foreign claim
//! expired once it has itself seen the same revision of the entry, unchanged, for that long on
//! its own monotonic clock ([`Observations`]). It first sees a revision only after the revision
//! was written, so it never takes over sooner than `ttl` after the holder's claim or renewal,
//! whatever the hosts' clocks say (only their clock *rates* matter, which agree to parts per
//! million). The holder, for its part, starts each write right after renewing and abandons a
//! write still running when most of `ttl` (measured from before the renewal was sent) has
//! passed (`writer.rs`). Together: a write that completes does so inside its claim. What no
//! claim can rule out is a request Salesforce applies after the writer stopped waiting for it
//! (a timeout); that is why the TTL has a margin and why such writes are marked
//! "maybe applied".
//!
//! `until_ms` (the holder's wall clock plus the TTL) is still written so that replicas of the
//! previous version, which read it, keep working during a rolling upgrade; this version never
//! reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::time::Instant;

use messages::kv::applied;
/// The stored value (its format is shared in `messages`, with the key: the Order's id).
pub use messages::kv::applied::{Claim, OrderState};

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Write now, and finish before `deadline`; `applied` was the newest applied sequence
    /// before this claim.
    Claimed {
        revision: u64,
        applied: u64,
        deadline: Instant,
    },
    /// Nothing to write: a newer or equal sequence was applied or is being written.
    Stale,
    /// Another writer holds a live claim for an older or equal sequence; try again shortly.
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderingError {
    #[error("the applied-sequence bucket is unavailable")]
    Kv(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the applied-sequence entry of {key} is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("too many concurrent changes to the entry of {0}")]
    Contention(String),
}

impl OrderingError {
    fn kv(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Kv(Box::new(err))
    }

    /// Every ordering error clears up by itself (NATS comes back, contention passes) except a
    /// corrupt entry, which an operator must delete.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Corrupt { .. })
    }
}

/// Decides a claim attempt from the current state (pure; the CAS is the caller's).
/// `foreign_claim_expired` says whether the claim in `state`, if it is someone else's, has been
/// seen unchanged for its whole lifetime by this writer.
pub fn decide(state: &OrderState, seq: u64, token: &str, foreign_claim_expired: bool) -> Decision {
    if seq <= state.applied {
        return Decision::Stale;
    }
    if let Some(claim) = &state.claim {
        if claim.token != token {
            if seq < claim.seq {
                return Decision::Stale;
            }
            if !foreign_claim_expired {
                return Decision::Busy;
            }
        }
    }
    Decision::Claim
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Claim,
    Stale,
    Busy,
}

/// The state after a settled write: `applied` grows, our claim (only ours) goes.
pub fn settled(state: &OrderState, seq: u64, token: &str) -> OrderState {
    OrderState {
        applied: state.applied.max(seq),
        claim: state.claim.clone().filter(|c| c.token != token),
    }
}

/// When this writer first saw each foreign claim it found in its way, by key: the revision of
/// the entry and the local monotonic instant. A claim expires for this writer once it has seen
/// the same revision for the claim's whole TTL; any write to the entry (a renewal, a settle)
/// changes the revision and starts the count again.
///
/// Forgetting an observation is always safe (the count starts again: a later takeover, never an
/// earlier one), which is what keeps the map small: entries are dropped when the key no longer
/// shows a foreign claim, and old ones are pruned.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, (u64, Instant)>,
}

/// Above this many observations, old ones are pruned on the next insert.
const OBSERVATIONS_SOFT_LIMIT: usize = 1024;

impl Observations {
    /// How long this writer has seen `revision` of `key` (zero when it is new to us).
    pub fn held_for(&mut self, key: &str, revision: u64, now: Instant, keep: Duration) -> Duration {
        match self.seen.get(key) {
            Some(&(seen_revision, since)) if seen_revision == revision => {
                return now.saturating_duration_since(since);
            }
            _ => {}
        }
        if self.seen.len() >= OBSERVATIONS_SOFT_LIMIT {
            self.seen
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < keep);
        }
        self.seen.insert(key.to_owned(), (revision, now));
        Duration::ZERO
    }

    pub fn forget(&mut self, key: &str) {
        self.seen.remove(key);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

const CAS_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct AppliedStore {
    kv: kv::Store,
    claim_ttl: Duration,
    observations: Arc<Mutex<Observations>>,
}

impl AppliedStore {
    pub fn new(kv: kv::Store, claim_ttl: Duration) -> Self {
        Self {
            kv,
            claim_ttl,
            observations: Arc::default(),
        }
    }

    /// The lifetime of this writer's claims.
    pub fn claim_ttl(&self) -> Duration {
        self.claim_ttl
    }

    fn observations(&self) -> MutexGuard<'_, Observations> {
        // Plain data; a panic elsewhere cannot leave it half-updated in a harmful way (at worst
        // an observation restarts, which only delays a takeover).
        platform::sync::lock(&self.observations)
    }

    /// The Order's state and the revision to compare against (0 when the key does not exist).
    pub async fn read(&self, order_id: &str) -> Result<(OrderState, u64), OrderingError> {
        let entry = self
            .kv
            .entry(applied::key(order_id))
            .await
            .map_err(OrderingError::kv)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let state = serde_json::from_slice(&entry.value).map_err(|source| {
                    OrderingError::Corrupt {
                        key: order_id.to_owned(),
                        source,
                    }
                })?;
                Ok((state, entry.revision))
            }
            // A deleted or purged key (an operator reset) counts as never written, but its
            // revision is still the one to compare against.
            Some(entry) => Ok((OrderState::default(), entry.revision)),
            None => Ok((OrderState::default(), 0)),
        }
    }

    /// Whether the claim in `state` (at `revision`) is someone else's and has been seen
    /// unchanged by this writer for its whole lifetime.
    fn foreign_claim_expired(
        &self,
        order_id: &str,
        state: &OrderState,
        revision: u64,
        token: &str,
    ) -> bool {
        let Some(claim) = state.claim.as_ref().filter(|c| c.token != token) else {
            self.observations().forget(order_id);
            return false;
        };
        let ttl = claim.ttl_ms.map_or(self.claim_ttl, Duration::from_millis);
        // Observations older than a few lifetimes are no longer needed to decide anything.
        let keep = ttl.max(self.claim_ttl).saturating_mul(4);
        let held_for = self
            .observations()
            .held_for(order_id, revision, Instant::now(), keep);
        held_for >= ttl
    }

    /// Claims `seq` of the Order for `token`, or renews the claim `token` already holds. Call
    /// it immediately before each write: the answer is only good until `deadline`.
    pub async fn claim(
        &self,
        order_id: &str,
        seq: u64,
        token: &str,
    ) -> Result<ClaimOutcome, OrderingError> {
        for _ in 0..CAS_ATTEMPTS {
            // Taken before the CAS is sent: the claim certainly did not start earlier for anyone
            // else, so a deadline counted from here is on the safe side.
            let started = Instant::now();
            let (state, revision) = self.read(order_id).await?;
            let expired = self.foreign_claim_expired(order_id, &state, revision, token);
            match decide(&state, seq, token, expired) {
                Decision::Stale => return Ok(ClaimOutcome::Stale),
                Decision::Busy => return Ok(ClaimOutcome::Busy),
                Decision::Claim => {}
            }
            let ttl_ms = u64::try_from(self.claim_ttl.as_millis()).unwrap_or(u64::MAX);
            let next = OrderState {
                applied: state.applied,
                claim: Some(Claim {
                    seq,
                    token: token.to_owned(),
                    ttl_ms: Some(ttl_ms),
                    until_ms: wall_clock_ms().saturating_add(ttl_ms),
                }),
            };
            match self.write(order_id, &next, revision).await? {
                Some(revision) => {
                    self.observations().forget(order_id);
                    return Ok(ClaimOutcome::Claimed {
                        revision,
                        applied: state.applied,
                        deadline: started + write_window(self.claim_ttl),
                    });
                }
                None => continue,
            }
        }
        Err(OrderingError::Contention(order_id.to_owned()))
    }

    /// Records `seq` as applied and drops our claim. `revision` is the claim's; when someone
    /// changed the entry since (our claim expired and was taken over), the change is merged and
    /// `applied` never goes backwards.
    pub async fn settle(
        &self,
        order_id: &str,
        seq: u64,
        token: &str,
        revision: u64,
    ) -> Result<(), OrderingError> {
        // Usually nobody touched the entry since our claim, whose `applied` was below `seq`: the
        // first write needs no read.
        let mut attempt = (
            OrderState {
                applied: seq,
                claim: None,
            },
            revision,
        );
        for _ in 0..CAS_ATTEMPTS {
            if self.write(order_id, &attempt.0, attempt.1).await?.is_some() {
                return Ok(());
            }
            let (current, rev) = self.read(order_id).await?;
            let next = settled(&current, seq, token);
            if next == current {
                return Ok(());
            }
            attempt = (next, rev);
        }
        Err(OrderingError::Contention(order_id.to_owned()))
    }

    /// Drops our claim without applying (the write certainly did not happen), so the Order is
    /// not blocked until the claim expires. Best effort: an expired claim does the same later.
    pub async fn release(&self, order_id: &str, token: &str) -> Result<(), OrderingError> {
        for _ in 0..CAS_ATTEMPTS {
            let (state, revision) = self.read(order_id).await?;
            if state.claim.as_ref().is_none_or(|c| c.token != token) {
                return Ok(());
            }
            let next = OrderState {
                applied: state.applied,
                claim: None,
            };
            if self.write(order_id, &next, revision).await?.is_some() {
                return Ok(());
            }
        }
        Err(OrderingError::Contention(order_id.to_owned()))
    }

    /// Compare-and-swap write; `Ok(None)` when the revision no longer matches.
    async fn write(
        &self,
        order_id: &str,
        state: &OrderState,
        revision: u64,
    ) -> Result<Option<u64>, OrderingError> {
        let value = serde_json::to_vec(state).map_err(OrderingError::kv)?;
        if revision == 0 {
            match self.kv.create(applied::key(order_id), value.into()).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(OrderingError::kv(e)),
            }
        } else {
            match self
                .kv
                .update(applied::key(order_id), value.into(), revision)
                .await
            {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(OrderingError::kv(e)),
            }
        }
    }
}

/// How long after a claim (counted from before its CAS was sent) its write may still run: four
/// fifths of the TTL. The rest is margin for the request's trip to Salesforce after the writer
/// decided to send it, and for the clock-rate difference between hosts.
pub fn write_window(claim_ttl: Duration) -> Duration {
    claim_ttl.saturating_sub(claim_ttl / 5)
}

/// Unix milliseconds of this host; only for the `until_ms` field older replicas read.
fn wall_clock_ms() -> u64 {
    let millis = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    u64::try_from(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(seq: u64, token: &str) -> Option<Claim> {
        Some(Claim {
            seq,
            token: token.to_owned(),
            ttl_ms: Some(1_000),
            until_ms: 0,
        })
    }

    #[test]
    fn stale_sequences_are_never_claimed() {
        let state = OrderState {
            applied: 5,
            claim: None,
        };
        assert_eq!(decide(&state, 5, "a", false), Decision::Stale);
        assert_eq!(decide(&state, 4, "a", false), Decision::Stale);
        assert_eq!(decide(&state, 6, "a", false), Decision::Claim);
    }

    #[test]
    fn a_live_foreign_claim_blocks_newer_and_supersedes_older() {
        let state = OrderState {
            applied: 1,
            claim: claim(3, "other"),
        };
        assert_eq!(decide(&state, 4, "me", false), Decision::Busy);
        assert_eq!(decide(&state, 3, "me", false), Decision::Busy);
        assert_eq!(decide(&state, 2, "me", false), Decision::Stale);
        // Expired: newer or equal may take over, older stays stale (the write may have landed).
        assert_eq!(decide(&state, 3, "me", true), Decision::Claim);
        assert_eq!(decide(&state, 2, "me", true), Decision::Stale);
        // Our own claim (a retry, or the renewal before each write) is retaken.
        assert_eq!(decide(&state, 3, "other", false), Decision::Claim);
    }

    #[test]
    fn a_renewal_finds_out_that_its_claim_was_lost() {
        // Our claim for seq 1 expired and another writer applied seq 2 meanwhile.
        let taken_over = OrderState {
            applied: 2,
            claim: None,
        };
        assert_eq!(decide(&taken_over, 1, "me", false), Decision::Stale);
        // Or it is still writing seq 2.
        let being_written = OrderState {
            applied: 0,
            claim: claim(2, "other"),
        };
        assert_eq!(decide(&being_written, 1, "me", false), Decision::Stale);
    }

    #[test]
    fn settling_only_grows_applied_and_drops_only_our_claim() {
        let state = OrderState {
            applied: 7,
            claim: claim(9, "other"),
        };
        let next = settled(&state, 5, "me");
        assert_eq!(next.applied, 7);
        assert_eq!(next.claim, state.claim);
        let mine = OrderState {
            applied: 2,
            claim: claim(5, "me"),
        };
        assert_eq!(
            settled(&mine, 5, "me"),
            OrderState {
                applied: 5,
                claim: None
            }
        );
    }

    #[test]
    fn a_claim_expires_after_being_seen_unchanged_for_its_ttl_on_the_local_clock() {
        let mut seen = Observations::default();
        let keep = Duration::from_secs(60);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        // First sight starts the count, whatever the claim's wall-clock fields say.
        assert_eq!(seen.held_for("k", 7, t0, keep), Duration::ZERO);
        assert!(seen.held_for("k", 7, t0 + Duration::from_secs(9), keep) < ttl);
        assert!(seen.held_for("k", 7, t0 + ttl, keep) >= ttl);
        // A renewal (new revision) starts it again.
        assert_eq!(
            seen.held_for("k", 8, t0 + Duration::from_secs(11), keep),
            Duration::ZERO
        );
        seen.forget("k");
        assert!(seen.is_empty());
    }

    #[test]
    fn old_observations_are_pruned_and_forgetting_only_delays() {
        let mut seen = Observations::default();
        let keep = Duration::from_secs(1);
        let t0 = Instant::now();
        for i in 0..OBSERVATIONS_SOFT_LIMIT {
            seen.held_for(&format!("k{i}"), 1, t0, keep);
        }
        assert_eq!(seen.len(), OBSERVATIONS_SOFT_LIMIT);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(seen.held_for("new", 1, later, keep), Duration::ZERO);
        assert_eq!(seen.len(), 1);
        // A pruned key's claim is counted from now again: a later takeover, never an earlier one.
        assert_eq!(seen.held_for("k0", 1, later, keep), Duration::ZERO);
    }

    #[test]
    fn our_claims_still_carry_until_ms_for_the_previous_version() {
        let json = serde_json::to_value(OrderState {
            applied: 1,
            claim: claim(2, "t"),
        })
        .unwrap();
        assert!(json["claim"]["until_ms"].is_u64(), "{json}");
        assert_eq!(json["claim"]["ttl_ms"], 1_000);
    }

    #[test]
    fn the_write_window_leaves_a_margin_inside_the_claim() {
        assert_eq!(
            write_window(Duration::from_secs(70)),
            Duration::from_secs(56)
        );
        assert!(write_window(Duration::from_secs(3)) < Duration::from_secs(3));
    }
}
