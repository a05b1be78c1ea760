//! Per-Order ordering across replicas, kept in a KV bucket (one key per Order, the 18-character
//! id).
//!
//! The value holds `applied`, the newest sequence written (or dead-lettered) for the Order, and
//! at most one `claim`: a writer's right to write one sequence until a deadline. The rules:
//!
//! 1. A writer claims before it writes, by compare-and-swap on the key's revision. Two writers
//!    racing for one Order cannot both win; the loser re-reads and decides again.
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
//! The claim lasts longer than any write can (token fetch, request, 401 retry, each bounded by
//! the HTTP timeout), so a write never lands after its claim expired. Deadlines are wall-clock
//! milliseconds compared across hosts: replicas need synchronised clocks (NTP), and the default
//! claim TTL leaves ten seconds of margin for skew.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    #[serde(default)]
    pub applied: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub seq: u64,
    /// Unique per batch attempt chain (not per replica: one replica runs several batches at once).
    pub token: String,
    /// Unix milliseconds.
    pub until_ms: u64,
}

/// What a claim attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Write now; `applied` was the newest applied sequence before this claim.
    Claimed { revision: u64, applied: u64 },
    /// Nothing to write: a newer or equal sequence was applied or is being written.
    Stale,
    /// Another writer holds a live claim for an older sequence; try again shortly.
    Busy,
}

#[derive(Debug, thiserror::Error)]
pub enum OrderingError {
    #[error("the applied-sequence bucket is unavailable: {0}")]
    Kv(String),
    #[error("the applied-sequence entry of {key} is not valid JSON: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("too many concurrent changes to the entry of {0}")]
    Contention(String),
}

impl OrderingError {
    /// Every ordering error clears up by itself (NATS comes back, contention passes) except a
    /// corrupt entry, which an operator must delete.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Corrupt { .. })
    }
}

/// Decides a claim attempt from the current state (pure; the CAS is the caller's).
pub fn decide(state: &OrderState, seq: u64, token: &str, now_ms: u64) -> Decision {
    if seq <= state.applied {
        return Decision::Stale;
    }
    if let Some(claim) = &state.claim {
        if claim.token != token {
            if seq < claim.seq {
                return Decision::Stale;
            }
            if now_ms < claim.until_ms {
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

const CAS_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct AppliedStore {
    kv: kv::Store,
    claim_ttl: Duration,
}

impl AppliedStore {
    pub fn new(kv: kv::Store, claim_ttl: Duration) -> Self {
        Self { kv, claim_ttl }
    }

    /// The Order's state and the revision to compare against (0 when the key does not exist).
    pub async fn read(&self, key: &str) -> Result<(OrderState, u64), OrderingError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| OrderingError::Kv(e.to_string()))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let state =
                    serde_json::from_slice(&entry.value).map_err(|e| OrderingError::Corrupt {
                        key: key.to_owned(),
                        detail: e.to_string(),
                    })?;
                Ok((state, entry.revision))
            }
            // A deleted or purged key (an operator reset) counts as never written, but its
            // revision is still the one to compare against.
            Some(entry) => Ok((OrderState::default(), entry.revision)),
            None => Ok((OrderState::default(), 0)),
        }
    }

    /// Tries to claim `seq` of the Order for `token`.
    pub async fn claim(
        &self,
        key: &str,
        seq: u64,
        token: &str,
    ) -> Result<ClaimOutcome, OrderingError> {
        for _ in 0..CAS_ATTEMPTS {
            let (state, revision) = self.read(key).await?;
            let now = now_ms();
            match decide(&state, seq, token, now) {
                Decision::Stale => return Ok(ClaimOutcome::Stale),
                Decision::Busy => return Ok(ClaimOutcome::Busy),
                Decision::Claim => {}
            }
            let next = OrderState {
                applied: state.applied,
                claim: Some(Claim {
                    seq,
                    token: token.to_owned(),
                    until_ms: now.saturating_add(
                        u64::try_from(self.claim_ttl.as_millis()).unwrap_or(u64::MAX),
                    ),
                }),
            };
            match self.write(key, &next, revision).await? {
                Some(revision) => {
                    return Ok(ClaimOutcome::Claimed {
                        revision,
                        applied: state.applied,
                    })
                }
                None => continue,
            }
        }
        Err(OrderingError::Contention(key.to_owned()))
    }

    /// Records `seq` as applied and drops our claim. `revision` is the claim's; when someone
    /// changed the entry since (our claim expired and was taken over), the change is merged and
    /// `applied` never goes backwards.
    pub async fn settle(
        &self,
        key: &str,
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
            if self.write(key, &attempt.0, attempt.1).await?.is_some() {
                return Ok(());
            }
            let (current, rev) = self.read(key).await?;
            let next = settled(&current, seq, token);
            if next == current {
                return Ok(());
            }
            attempt = (next, rev);
        }
        Err(OrderingError::Contention(key.to_owned()))
    }

    /// Drops our claim without applying (the write certainly did not happen), so the Order is
    /// not blocked until the claim expires. Best effort: an expired claim does the same later.
    pub async fn release(&self, key: &str, token: &str) -> Result<(), OrderingError> {
        for _ in 0..CAS_ATTEMPTS {
            let (state, revision) = self.read(key).await?;
            if state.claim.as_ref().is_none_or(|c| c.token != token) {
                return Ok(());
            }
            let next = OrderState {
                applied: state.applied,
                claim: None,
            };
            if self.write(key, &next, revision).await?.is_some() {
                return Ok(());
            }
        }
        Err(OrderingError::Contention(key.to_owned()))
    }

    /// Compare-and-swap write; `Ok(None)` when the revision no longer matches.
    async fn write(
        &self,
        key: &str,
        state: &OrderState,
        revision: u64,
    ) -> Result<Option<u64>, OrderingError> {
        let value = serde_json::to_vec(state).map_err(|e| OrderingError::Kv(e.to_string()))?;
        if revision == 0 {
            match self.kv.create(key, value.into()).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(OrderingError::Kv(e.to_string())),
            }
        } else {
            match self.kv.update(key, value.into(), revision).await {
                Ok(rev) => Ok(Some(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(OrderingError::Kv(e.to_string())),
            }
        }
    }
}

fn now_ms() -> u64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    u64::try_from(nanos).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(seq: u64, token: &str, until_ms: u64) -> Option<Claim> {
        Some(Claim {
            seq,
            token: token.to_owned(),
            until_ms,
        })
    }

    #[test]
    fn stale_sequences_are_never_claimed() {
        let state = OrderState {
            applied: 5,
            claim: None,
        };
        assert_eq!(decide(&state, 5, "a", 0), Decision::Stale);
        assert_eq!(decide(&state, 4, "a", 0), Decision::Stale);
        assert_eq!(decide(&state, 6, "a", 0), Decision::Claim);
    }

    #[test]
    fn a_live_foreign_claim_blocks_newer_and_supersedes_older() {
        let state = OrderState {
            applied: 1,
            claim: claim(3, "other", 1_000),
        };
        assert_eq!(decide(&state, 4, "me", 500), Decision::Busy);
        assert_eq!(decide(&state, 3, "me", 500), Decision::Busy);
        assert_eq!(decide(&state, 2, "me", 500), Decision::Stale);
        // Expired: newer or equal may take over, older stays stale (the write may have landed).
        assert_eq!(decide(&state, 3, "me", 1_000), Decision::Claim);
        assert_eq!(decide(&state, 2, "me", 2_000), Decision::Stale);
        // Our own claim (a retry) is retaken.
        assert_eq!(decide(&state, 3, "other", 500), Decision::Claim);
    }

    #[test]
    fn settling_only_grows_applied_and_drops_only_our_claim() {
        let state = OrderState {
            applied: 7,
            claim: claim(9, "other", 0),
        };
        let next = settled(&state, 5, "me");
        assert_eq!(next.applied, 7);
        assert_eq!(next.claim, state.claim);
        let mine = OrderState {
            applied: 2,
            claim: claim(5, "me", 0),
        };
        assert_eq!(
            settled(&mine, 5, "me"),
            OrderState {
                applied: 5,
                claim: None
            }
        );
    }
}
