//! The replay cursor: the replay id after which a new Subscribe stream starts, one KV key per
//! channel. It is written only with the replay id of an event that JetStream acknowledged
//! together with every event before it (or, with nothing in flight, a keepalive's
//! `latest_replay_id`), so a restart from it loses nothing; whatever is replayed past it is
//! recognised by the stream's `Nats-Msg-Id` de-duplication.

use async_nats::jetstream::kv;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::status::CursorView;

/// The stored value. JSON, so operators (and `provctl cursor set`) can read and write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCursor {
    /// Base64 of Salesforce's opaque replay id bytes.
    pub replay_id: String,
    pub updated_at: String,
    /// The event the cursor follows, when it was an event (not a keepalive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Which replica wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
}

impl StoredCursor {
    pub fn replay_id_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.replay_id)
    }

    pub fn view(&self) -> CursorView {
        CursorView {
            replay_id: Some(self.replay_id.clone()),
            updated_at: Some(self.updated_at.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the replay cursor: {0}")]
    Read(String),
    #[error("cannot write the replay cursor: {0}")]
    Write(String),
}

#[derive(Debug, Clone)]
pub struct CursorStore {
    kv: kv::Store,
    key: String,
    writer: String,
}

impl CursorStore {
    pub fn new(kv: kv::Store, channel: &str, writer: &str) -> Self {
        Self {
            kv,
            key: messages::subjects::channel_key(channel),
            writer: writer.to_owned(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored cursor. A value that does not parse is reported as `Ok(None)` with an error
    /// log: the bridge then starts from `SF_EVENTS_REPLAY`, and replays are de-duplicated.
    pub async fn load(&self) -> Result<Option<StoredCursor>, CursorError> {
        let Some(bytes) = self
            .kv
            .get(&self.key)
            .await
            .map_err(|e| CursorError::Read(e.to_string()))?
        else {
            return Ok(None);
        };
        match serde_json::from_slice::<StoredCursor>(&bytes) {
            Ok(cursor) => Ok(Some(cursor)),
            Err(err) => {
                tracing::error!(key = %self.key, error = %err, "Stored replay cursor is unreadable; ignoring it.");
                Ok(None)
            }
        }
    }

    pub async fn save(
        &self,
        replay_id: &[u8],
        event_id: Option<&str>,
    ) -> Result<StoredCursor, CursorError> {
        let cursor = StoredCursor {
            replay_id: base64::engine::general_purpose::STANDARD.encode(replay_id),
            updated_at: messages::bodies::rfc3339(time::OffsetDateTime::now_utc()),
            event_id: event_id.map(str::to_owned),
            written_by: Some(self.writer.clone()),
        };
        let bytes = serde_json::to_vec(&cursor).map_err(|e| CursorError::Write(e.to_string()))?;
        self.kv
            .put(&self.key, bytes.into())
            .await
            .map_err(|e| CursorError::Write(e.to_string()))?;
        Ok(cursor)
    }
}
