//! `provctl cursor set`: a deliberate backfill (`--earliest`), a deliberate skip (`--latest`), or
//! a restart point (`<replay id>`).
//!
//! The cursor is the JSON document sf-bridge keeps in KV `sf_bridge_cursor` under the channel key
//! ([`messages::kv::cursor`]): `{"replay_id": base64, "updated_at": RFC 3339, "event_id"?,
//! "written_by"?}`. The bridge reads it only when it (re)subscribes, and its leader
//! overwrites it after every acknowledged event, so it is changed while no bridge holds the lease.
//! Earliest and latest are not replay ids: they delete the cursor, and the bridge then starts
//! from `SF_EVENTS_REPLAY` (`ALL` or `LATEST`). Replayed events are stored once (the requests
//! stream de-duplicates on the Salesforce event id within its duplicate window) and the
//! provisioner's journal skips events it already handled.

use messages::kv::cursor::{self, StoredCursor};
use serde::Serialize;
use serde_json::Value;

use crate::{Ctl, CtlError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorTarget {
    Earliest,
    Latest,
    /// Base64 of Salesforce's replay id bytes.
    ReplayId(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct CursorSetReport {
    pub channel: String,
    pub bucket: String,
    pub key: String,
    /// `deleted` (earliest/latest) or `written`.
    pub action: String,
    pub previous: Option<Value>,
    pub written: Option<StoredCursor>,
    /// The bridge replica holding the lease when this ran (only with `--force`).
    pub lease_holder: Option<String>,
    /// What the operator does next.
    pub next_step: String,
}

impl Ctl {
    pub async fn cursor_set(
        &self,
        target: CursorTarget,
        force: bool,
    ) -> Result<CursorSetReport, CtlError> {
        // The bridge's own rule, so that what is written here is a position it will use.
        let replay_id = match &target {
            CursorTarget::ReplayId(raw) => Some(
                cursor::decode_replay_id(raw.trim())
                    .map_err(|_| CtlError::InvalidReplayId(raw.clone()))?,
            ),
            CursorTarget::Earliest | CursorTarget::Latest => None,
        };
        let lease_holder = self.lease_holder().await?;
        if let (Some(holder), false) = (&lease_holder, force) {
            return Err(CtlError::LeaseHeld {
                holder: holder.clone(),
            });
        }
        let bucket_name = self.names.cursor_bucket.clone();
        let key = cursor::key(&self.names.channel);
        let bucket = self.bucket(&bucket_name).await?;
        let previous = match &bucket {
            None => None,
            Some(b) => b
                .get(&key)
                .await
                .map_err(|e| CtlError::js(format!("cannot read cursor {key}"), e))?
                .map(|bytes| {
                    serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    })
                }),
        };
        let restart = if lease_holder.is_some() {
            "Restart every sf-bridge replica now (the leader keeps its own position otherwise)"
        } else {
            "Start sf-bridge"
        };
        let (action, written, next_step) = match replay_id {
            None => {
                if let (Some(bucket), Some(_)) = (&bucket, &previous) {
                    bucket
                        .delete(&key)
                        .await
                        .map_err(|e| CtlError::js(format!("cannot delete cursor {key}"), e))?;
                }
                let (replay, meaning) = if target == CursorTarget::Earliest {
                    ("ALL", "every event Salesforce still retains (up to 72 h); events already stored are de-duplicated")
                } else {
                    (
                        "LATEST",
                        "only events published after it subscribes; everything before is skipped",
                    )
                };
                (
                    "deleted",
                    None,
                    format!(
                        "{restart} with SF_EVENTS_REPLAY={replay}: with no cursor stored it takes {meaning}. \
                         Set SF_EVENTS_REPLAY back to its usual value afterwards."
                    ),
                )
            }
            Some(replay_id) => {
                let Some(bucket) = &bucket else {
                    return Err(CtlError::BucketMissing(bucket_name));
                };
                let stored = StoredCursor::new(&replay_id, None, "provctl");
                let bytes = serde_json::to_vec(&stored)
                    .map_err(|e| CtlError::js("cannot encode the cursor", e))?;
                bucket
                    .put(&key, bytes.into())
                    .await
                    .map_err(|e| CtlError::js(format!("cannot write cursor {key}"), e))?;
                (
                    "written",
                    Some(stored),
                    format!(
                        "{restart}: it resumes after this replay id. A replay id Salesforce no longer retains \
                         makes it fall back to the earliest retained event."
                    ),
                )
            }
        };
        Ok(CursorSetReport {
            channel: self.names.channel.clone(),
            bucket: bucket_name,
            key,
            action: action.to_owned(),
            previous,
            written,
            lease_holder,
            next_step,
        })
    }
}

impl CursorSetReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(holder) = &self.lease_holder {
            out.push_str(&format!(
                "WARNING: forced while {holder} holds the lease; it may overwrite this cursor.\n"
            ));
        }
        let previous = self
            .previous
            .as_ref()
            .map_or_else(|| "none".to_owned(), Value::to_string);
        out.push_str(&format!(
            "cursor {}/{} ({})\n  previous  {previous}\n",
            self.bucket, self.key, self.channel
        ));
        match &self.written {
            Some(c) => out.push_str(&format!(
                "  written   replay_id {} at {}\n",
                c.replay_id, c.updated_at
            )),
            None => out.push_str("  deleted   no cursor is stored now\n"),
        }
        out.push_str(&format!("\nnext: {}\n", self.next_step));
        out
    }
}
