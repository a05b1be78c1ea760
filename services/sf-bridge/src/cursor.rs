//! The replay cursor: the replay id after which a new Subscribe stream starts, one KV key per
//! channel. It is written only with the replay id of an event that JetStream acknowledged
//! together with every event before it (or, with nothing in flight, a keepalive's
//! `latest_replay_id`), so a restart from it loses nothing; whatever is replayed past it is
//! recognised by the stream's `Nats-Msg-Id` de-duplication. The key and the stored document are
//! [`messages::kv::cursor`]'s, shared with `provctl`.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;

pub use messages::kv::cursor::{StoredCursor, UnreadableCursor};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the replay cursor")]
    Read(#[source] kv::EntryError),
    #[error("cannot encode the replay cursor")]
    Encode(#[source] serde_json::Error),
    #[error("cannot write the replay cursor")]
    Write(#[source] kv::PutError),
}

/// What the cursor key holds, as the start of a Subscribe session sees it.
#[derive(Debug)]
pub enum CursorRead {
    /// Nothing stored: start from `SF_EVENTS_REPLAY`.
    Absent,
    /// A usable position: start strictly after `replay_id`.
    Valid {
        cursor: StoredCursor,
        replay_id: Vec<u8>,
    },
    /// Something is stored but cannot be used. The caller must start from EARLIEST: the value
    /// proves a position existed, and only a full replay (de-duplicated by the stream) is sure
    /// not to skip what lies between it and now.
    Unreadable(UnreadableCursor),
}

impl CursorRead {
    fn parse(bytes: &[u8]) -> Self {
        match StoredCursor::read(bytes) {
            Ok((cursor, replay_id)) => Self::Valid { cursor, replay_id },
            Err(unreadable) => Self::Unreadable(unreadable),
        }
    }
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
            key: messages::kv::cursor::key(channel),
            writer: writer.to_owned(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// What the key holds: absent, a usable position, or something unreadable (reported, not
    /// hidden, so the caller can start from EARLIEST instead of `SF_EVENTS_REPLAY`).
    pub async fn read(&self) -> Result<CursorRead, CursorError> {
        match self.kv.get(&self.key).await.map_err(CursorError::Read)? {
            None => Ok(CursorRead::Absent),
            Some(bytes) => Ok(CursorRead::parse(&bytes)),
        }
    }

    /// The stored cursor when it is usable (for status display). An unreadable value is
    /// `Ok(None)` here; the ingest reads it with [`CursorStore::read`], logs it, counts it and
    /// starts from EARLIEST.
    pub async fn load(&self) -> Result<Option<StoredCursor>, CursorError> {
        match self.read().await? {
            CursorRead::Valid { cursor, .. } => Ok(Some(cursor)),
            CursorRead::Absent | CursorRead::Unreadable(_) => Ok(None),
        }
    }

    pub async fn save(
        &self,
        replay_id: &[u8],
        event_id: Option<&str>,
    ) -> Result<StoredCursor, CursorError> {
        let cursor = StoredCursor::new(replay_id, event_id, &self.writer);
        let bytes = serde_json::to_vec(&cursor).map_err(CursorError::Encode)?;
        self.kv
            .put(&self.key, bytes.into())
            .await
            .map_err(CursorError::Write)?;
        Ok(cursor)
    }
}

/// A position the cursor may be written with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub replay_id: Vec<u8>,
    /// The event the position follows; `None` for a keepalive's `latest_replay_id`.
    pub event_id: Option<String>,
}

/// Where the cursor may go within one Subscribe session: the pure bookkeeping behind "the cursor
/// never moves past an event that is neither stored nor dead-lettered" (docs/contract.md §5 rule 5).
///
/// Acks are fed in arrival order. Once one has failed, the session is over for the cursor: an
/// ack that succeeds after it belongs to an event *later* than the failed one, and storing its
/// replay id would make the next session start past an event JetStream never stored. The next
/// session replays from the last position stored before the failure; the stream's `Nats-Msg-Id`
/// de-duplication absorbs what is replayed twice.
#[derive(Debug, Default)]
pub struct CursorProgress {
    /// The newest position acknowledged in order and not stored yet.
    pending: Option<Position>,
    /// What the KV key holds (as far as this session knows).
    saved: Option<Vec<u8>>,
    last_write: Option<Instant>,
    /// An ack failed in this session; nothing may advance the cursor any more.
    halted: bool,
}

impl CursorProgress {
    /// A session starting from `saved` (the stored replay id, when there is a usable one).
    pub fn new(saved: Option<Vec<u8>>) -> Self {
        Self {
            saved,
            ..Self::default()
        }
    }

    /// An event (or its dead letter) was acknowledged, together with every earlier one.
    /// Returns whether the position was taken (`false` once an earlier ack failed).
    pub fn on_ack_ok(&mut self, position: Position) -> bool {
        if self.halted {
            return false;
        }
        self.pending = Some(position);
        true
    }

    /// An ack failed: the cursor stays where the acks before it put it, for good in this session.
    pub fn on_ack_failed(&mut self) {
        self.halted = true;
    }

    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// A keepalive's `latest_replay_id`, taken only when nothing is in flight or waiting to be
    /// stored (it is ahead of every event in flight) and no ack failed.
    pub fn advance_to_keepalive(
        &mut self,
        latest_replay_id: &[u8],
        nothing_in_flight: bool,
    ) -> bool {
        if self.halted
            || !nothing_in_flight
            || self.pending.is_some()
            || latest_replay_id.is_empty()
            || self.saved.as_deref() == Some(latest_replay_id)
        {
            return false;
        }
        self.pending = Some(Position {
            replay_id: latest_replay_id.to_vec(),
            event_id: None,
        });
        true
    }

    /// The position to write, if it differs from what is stored. Hand it back with
    /// [`CursorProgress::write_failed`] or confirm it with [`CursorProgress::written`].
    pub fn take_unsaved(&mut self) -> Option<Position> {
        let position = self.pending.take()?;
        (self.saved.as_deref() != Some(position.replay_id.as_slice())).then_some(position)
    }

    pub fn written(&mut self, position: Position, at: Instant) {
        self.saved = Some(position.replay_id);
        self.last_write = Some(at);
    }

    /// The write failed: keep the position for the next attempt (nothing newer can have been
    /// taken meanwhile, as writes are awaited in the session's own loop).
    pub fn write_failed(&mut self, position: Position) {
        if self.pending.is_none() {
            self.pending = Some(position);
        }
    }

    /// Whether the last write is at least `interval` old (or there was none).
    pub fn flush_due(&self, interval: Duration) -> bool {
        self.last_write.is_none_or(|at| at.elapsed() >= interval)
    }

    /// The stored replay id, as far as this session knows.
    pub fn saved(&self) -> Option<&[u8]> {
        self.saved.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_cursor_parses_to_its_bytes() {
        let read = CursorRead::parse(br#"{"replay_id":"AAAAAAAAAAE=","updated_at":"x"}"#);
        match read {
            CursorRead::Valid { replay_id, .. } => assert_eq!(replay_id, [0, 0, 0, 0, 0, 0, 0, 1]),
            other => panic!("expected a valid cursor, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_unreadable_not_absent() {
        assert!(matches!(
            CursorRead::parse(b"not json at all"),
            CursorRead::Unreadable(UnreadableCursor::NotJson(_))
        ));
        assert!(matches!(
            CursorRead::parse(br#"{"replay_id":"%%% not base64","updated_at":"x"}"#),
            CursorRead::Unreadable(UnreadableCursor::NotBase64 { .. })
        ));
        assert!(matches!(
            CursorRead::parse(br#"{"replay_id":"","updated_at":"x"}"#),
            CursorRead::Unreadable(UnreadableCursor::Empty)
        ));
    }

    fn at(n: u8) -> Position {
        Position {
            replay_id: vec![0, 0, 0, 0, 0, 0, 0, n],
            event_id: Some(format!("e-{n}")),
        }
    }

    #[test]
    fn acks_in_order_move_the_cursor() {
        let mut progress = CursorProgress::new(None);
        assert!(progress.on_ack_ok(at(1)));
        assert!(progress.on_ack_ok(at(2)));
        let unsaved = progress.take_unsaved().unwrap();
        assert_eq!(unsaved, at(2));
        progress.written(unsaved, Instant::now());
        assert_eq!(progress.saved(), Some(at(2).replay_id.as_slice()));
        assert_eq!(progress.take_unsaved(), None);
    }

    /// The drain defect: event 2's ack fails, event 3's succeeds afterwards. The cursor must stay
    /// after event 1, never reach event 3.
    #[test]
    fn nothing_after_a_failed_ack_moves_the_cursor() {
        let mut progress = CursorProgress::new(None);
        assert!(progress.on_ack_ok(at(1)));
        progress.on_ack_failed();
        assert!(
            !progress.on_ack_ok(at(3)),
            "an ack after a failure was taken"
        );
        assert!(progress.is_halted());
        // What was acknowledged before the failure is still written.
        assert_eq!(progress.take_unsaved(), Some(at(1)));
        assert!(!progress.on_ack_ok(at(4)));
        assert_eq!(progress.take_unsaved(), None);
    }

    #[test]
    fn keepalives_move_the_cursor_only_when_idle_and_healthy() {
        let tip = [0, 0, 0, 0, 0, 0, 0, 9];
        let mut progress = CursorProgress::new(Some(at(1).replay_id));
        assert!(
            !progress.advance_to_keepalive(&tip, false),
            "events in flight"
        );
        assert!(!progress.advance_to_keepalive(&[], true), "no replay id");
        assert!(
            !progress.advance_to_keepalive(&at(1).replay_id, true),
            "already stored"
        );
        assert!(progress.advance_to_keepalive(&tip, true));
        let unsaved = progress.take_unsaved().unwrap();
        assert_eq!(unsaved.event_id, None);
        progress.written(unsaved, Instant::now());

        let mut failed = CursorProgress::new(Some(at(1).replay_id));
        failed.on_ack_failed();
        assert!(
            !failed.advance_to_keepalive(&tip, true),
            "a keepalive moved the cursor past a failed publish"
        );
        assert_eq!(failed.take_unsaved(), None);
    }

    #[test]
    fn a_failed_write_is_retried() {
        let mut progress = CursorProgress::new(None);
        progress.on_ack_ok(at(1));
        let unsaved = progress.take_unsaved().unwrap();
        progress.write_failed(unsaved);
        assert_eq!(progress.take_unsaved(), Some(at(1)));
        assert!(progress.flush_due(Duration::from_secs(3600)));
        progress.written(at(1), Instant::now());
        assert!(!progress.flush_due(Duration::from_secs(3600)));
    }
}
