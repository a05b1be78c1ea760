//! The keys and stored values of the pipeline's KV buckets, so the services that write them and
//! `provctl`, which reads (and for the cursor, writes) them, agree byte for byte. Bucket names
//! are in [`crate::subjects::buckets`]. A change here changes what deployed buckets hold: old
//! values must keep parsing.
//!
//! | Bucket (default)       | Key                                        | Value                          |
//! |------------------------|--------------------------------------------|--------------------------------|
//! | `sf_bridge_cursor`     | [`cursor::key`]: the channel as a key token | [`cursor::StoredCursor`], JSON |
//! | `sf_bridge_lease`      | [`lease::key`]: the same token             | the holder's instance id       |
//! | `provisioning_jobs`    | [`crate::journal::key`]: `order.<OrderId>` | [`crate::journal::JobRecord`], JSON |
//! |                        | [`crate::journal::skipped_key`]: `skipped.<event id>` | the Order id        |
//! |                        | [`crate::journal::watermark_key`]: `reconciled.<consumer>` | [`crate::journal::Watermark`], JSON |
//! | `sf_writer_applied`    | [`applied::key`]: the canonical Order id   | [`applied::OrderState`], JSON  |

/// sf-bridge's replay cursor: the replay id after which a new Subscribe stream starts, one key
/// per channel. Written by the bridge's leader and by `provctl cursor set`.
pub mod cursor {
    use base64::Engine;
    use serde::{Deserialize, Serialize};

    /// The cursor's key: the channel as a KV key token (`/event/Foo__e` → `event.Foo__e`).
    pub fn key(channel: &str) -> String {
        crate::subjects::channel_key(channel)
    }

    /// The stored value. JSON, so operators (and `provctl cursor set`) can read and write it.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StoredCursor {
        /// Base64 of Salesforce's opaque replay id bytes.
        pub replay_id: String,
        pub updated_at: String,
        /// The event the cursor follows, when it was an event (not a keepalive).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub event_id: Option<String>,
        /// Which replica (or tool) wrote it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub written_by: Option<String>,
    }

    impl StoredCursor {
        /// A cursor at `replay_id`, written now by `written_by`.
        pub fn new(replay_id: &[u8], event_id: Option<&str>, written_by: &str) -> Self {
            Self {
                replay_id: base64::engine::general_purpose::STANDARD.encode(replay_id),
                updated_at: crate::bodies::rfc3339(time::OffsetDateTime::now_utc()),
                event_id: event_id.map(str::to_owned),
                written_by: Some(written_by.to_owned()),
            }
        }

        pub fn replay_id_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
            base64::engine::general_purpose::STANDARD.decode(&self.replay_id)
        }

        /// The stored value as a usable start position: the document and its replay id bytes.
        /// The bridge starts strictly after them; `provctl` reports anything else as unreadable.
        pub fn read(bytes: &[u8]) -> Result<(Self, Vec<u8>), UnreadableCursor> {
            let cursor =
                serde_json::from_slice::<Self>(bytes).map_err(UnreadableCursor::NotJson)?;
            let replay_id = decode_replay_id(&cursor.replay_id)?;
            Ok((cursor, replay_id))
        }
    }

    /// The bytes of a base64 replay id, when they can be a start position (not empty).
    pub fn decode_replay_id(replay_id: &str) -> Result<Vec<u8>, UnreadableCursor> {
        match base64::engine::general_purpose::STANDARD.decode(replay_id) {
            Ok(bytes) if bytes.is_empty() => Err(UnreadableCursor::Empty),
            Ok(bytes) => Ok(bytes),
            Err(source) => Err(UnreadableCursor::NotBase64 {
                replay_id: replay_id.to_owned(),
                source,
            }),
        }
    }

    /// Why a stored value cannot be used as a start position.
    #[derive(Debug, thiserror::Error)]
    pub enum UnreadableCursor {
        #[error("the stored value is not a cursor document")]
        NotJson(#[source] serde_json::Error),
        #[error("the stored replay id {replay_id:?} is not valid base64")]
        NotBase64 {
            replay_id: String,
            #[source]
            source: base64::DecodeError,
        },
        #[error("the stored replay id is empty")]
        Empty,
    }
}

/// sf-bridge's subscription lease: one key per channel, created by the replica that leads and
/// renewed by compare-and-swap; the bucket's `max_age` expires the key of a leader that died.
pub mod lease {
    /// The lease's key: the channel as a KV key token, as for the cursor.
    pub fn key(channel: &str) -> String {
        crate::subjects::channel_key(channel)
    }

    /// The value a replica writes: its instance id, as UTF-8.
    pub fn value(instance_id: &str) -> Vec<u8> {
        instance_id.as_bytes().to_vec()
    }

    /// The holder a stored value names (bytes that are not UTF-8 are shown replaced, not hidden).
    pub fn holder(value: &[u8]) -> String {
        String::from_utf8_lossy(value).into_owned()
    }
}

/// sf-writer's ordering state: per Order, the newest sequence applied and at most one write
/// claim (the rules are sf-writer's, `ordering.rs`).
pub mod applied {
    use serde::{Deserialize, Serialize};

    /// The Order's key: its canonical 18-character id, as it is.
    pub fn key(order_id: &str) -> &str {
        order_id
    }

    /// The stored value; an absent (or deleted) key is the default, nothing applied.
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
        /// Unique per batch attempt chain (not per replica: one replica runs several batches at
        /// once).
        pub token: String,
        /// How long the claim lasts after it was written, as observed by other writers. Absent
        /// in claims written by the previous version, whose observers use their own configured
        /// TTL.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ttl_ms: Option<u64>,
        /// Unix milliseconds, written for replicas of the previous version only (sf-writer's
        /// `ordering.rs`); never read.
        #[serde(default)]
        pub until_ms: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What deployed buckets hold: these keys and values must keep their exact bytes.
    #[test]
    fn keys_are_pinned() {
        let channel = "/event/OrderProvisionRequested__e";
        assert_eq!(cursor::key(channel), "event.OrderProvisionRequested__e");
        assert_eq!(lease::key(channel), "event.OrderProvisionRequested__e");
        // The same sanitisation as before: anything outside a key's alphabet becomes `_`.
        assert_eq!(cursor::key("/event/we ird*"), "event.we_ird_");
        assert_eq!(lease::key("/data/Order/Change"), "data.Order.Change");
        assert_eq!(applied::key("801000000000001AAA"), "801000000000001AAA");
        assert_eq!(lease::value("bridge-a-1"), b"bridge-a-1");
        assert_eq!(lease::holder(b"bridge-a-1"), "bridge-a-1");
    }

    #[test]
    fn a_stored_cursor_keeps_its_bytes() {
        let stored = br#"{"replay_id":"AAAAAAAAAAE=","updated_at":"2024-01-02T03:04:05.678Z","event_id":"e-1","written_by":"bridge-a"}"#;
        let (cursor, replay_id) = cursor::StoredCursor::read(stored).unwrap();
        assert_eq!(replay_id, [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(serde_json::to_vec(&cursor).unwrap(), stored);
        // A keepalive's cursor has no event, and old documents may lack the writer.
        let bare = br#"{"replay_id":"AAAAAAAAAAE=","updated_at":"x"}"#;
        let (cursor, _) = cursor::StoredCursor::read(bare).unwrap();
        assert_eq!(serde_json::to_vec(&cursor).unwrap(), bare);

        let written = cursor::StoredCursor::new(&[0, 0, 0, 42], None, "provctl");
        assert_eq!(written.replay_id, "AAAAKg==");
        assert_eq!(written.written_by.as_deref(), Some("provctl"));
        assert_eq!(written.replay_id_bytes().unwrap(), [0, 0, 0, 42]);
    }

    #[test]
    fn an_unusable_cursor_says_why() {
        use cursor::{StoredCursor, UnreadableCursor};
        assert!(matches!(
            StoredCursor::read(b"not json at all"),
            Err(UnreadableCursor::NotJson(_))
        ));
        assert!(matches!(
            StoredCursor::read(br#"{"replay_id":"AAAAAAAAAAE="}"#),
            Err(UnreadableCursor::NotJson(_))
        ));
        assert!(matches!(
            StoredCursor::read(br#"{"replay_id":"%%% not base64","updated_at":"x"}"#),
            Err(UnreadableCursor::NotBase64 { .. })
        ));
        assert!(matches!(
            StoredCursor::read(br#"{"replay_id":"","updated_at":"x"}"#),
            Err(UnreadableCursor::Empty)
        ));
    }

    #[test]
    fn ordering_state_of_the_previous_version_still_parses_and_ours_keeps_its_bytes() {
        let old: applied::OrderState =
            serde_json::from_str(r#"{"applied":1,"claim":{"seq":2,"token":"t","until_ms":5}}"#)
                .unwrap();
        assert_eq!(old.claim.as_ref().unwrap().ttl_ms, None);
        let ours = br#"{"applied":1,"claim":{"seq":2,"token":"t","ttl_ms":1000,"until_ms":7}}"#;
        let state: applied::OrderState = serde_json::from_slice(ours).unwrap();
        assert_eq!(serde_json::to_vec(&state).unwrap(), ours);
        let settled = applied::OrderState {
            applied: 3,
            claim: None,
        };
        assert_eq!(serde_json::to_vec(&settled).unwrap(), br#"{"applied":3}"#);
        assert_eq!(
            serde_json::from_slice::<applied::OrderState>(b"{}").unwrap(),
            applied::OrderState::default()
        );
    }
}
