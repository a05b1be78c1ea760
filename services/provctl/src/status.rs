//! `provctl status`: is the bridge subscribed, is the cursor moving, is anything piling up.

use futures::TryStreamExt;
use messages::kv::cursor::StoredCursor;
use platform::error::Chain;
use serde::Serialize;

use crate::table::{human_duration, truncate, Table};
use crate::{age_secs, rfc3339, Ctl, CtlError};

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub channel: String,
    pub bridge: BridgeStatus,
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
    pub dead_letters: DeadLetterCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct BridgeStatus {
    pub lease_bucket: String,
    pub lease_bucket_exists: bool,
    /// The sf-bridge replica subscribed to Salesforce; `None`: no replica is (or none runs).
    pub lease_holder: Option<String>,
    pub cursor_bucket: String,
    pub cursor_bucket_exists: bool,
    pub cursor: Option<CursorStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CursorStatus {
    pub key: String,
    pub replay_id: Option<String>,
    pub updated_at: Option<String>,
    /// Seconds since `updated_at`.
    pub age_secs: Option<i64>,
    pub event_id: Option<String>,
    pub written_by: Option<String>,
    /// Set when the stored value is not the cursor document.
    pub unreadable: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub exists: bool,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_message_at: Option<String>,
    pub replicas: usize,
    /// Fewer replicas than `JETSTREAM_REPLICAS` asks for: one node's loss can lose or stall it.
    pub under_replicated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub stream: String,
    pub exists: bool,
    /// Messages not yet delivered: the backlog.
    pub pending: u64,
    /// Delivered, not yet acknowledged: in progress.
    pub ack_pending: usize,
    pub redelivered: usize,
    /// Pull requests waiting: replicas idle and asking for work.
    pub waiting: usize,
    pub delivered_stream_seq: u64,
    pub ack_floor_stream_seq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterCounts {
    pub stream: String,
    pub exists: bool,
    pub total: u64,
    /// `provisioning.deadletter.<service>` → messages.
    pub by_subject: Vec<(String, u64)>,
}

impl Ctl {
    pub async fn status(&self) -> Result<StatusReport, CtlError> {
        let names = self.names.clone();
        let key = messages::kv::cursor::key(&names.channel);

        let lease_exists = self.bucket(&names.lease_bucket).await?.is_some();
        let lease_holder = self.lease_holder().await?;
        let cursor_bucket = self.bucket(&names.cursor_bucket).await?;
        let cursor = match &cursor_bucket {
            None => None,
            Some(bucket) => bucket
                .get(&key)
                .await
                .map_err(|e| CtlError::js(format!("cannot read cursor {key}"), e))?
                .map(|bytes| cursor_status(&key, &bytes)),
        };

        let mut streams = Vec::new();
        for name in [
            &names.requests_stream,
            &names.outcomes_stream,
            &names.updates_stream,
            &names.deadletter_stream,
        ] {
            streams.push(self.stream_status(name).await?);
        }
        // The buckets' streams: their replicas matter as much as the streams'.
        for bucket in [
            &names.journal_bucket,
            &names.cursor_bucket,
            &names.lease_bucket,
        ] {
            streams.push(self.stream_status(&format!("KV_{bucket}")).await?);
        }
        let mut consumers = Vec::new();
        for (stream, consumer) in [
            (&names.requests_stream, &names.provisioner_consumer),
            (&names.updates_stream, &names.writer_consumer),
        ] {
            consumers.push(self.consumer_status(stream, consumer).await?);
        }
        let dead_letters = self.dead_letter_counts().await?;
        Ok(StatusReport {
            channel: names.channel.clone(),
            bridge: BridgeStatus {
                lease_bucket: names.lease_bucket.clone(),
                lease_bucket_exists: lease_exists,
                lease_holder,
                cursor_bucket: names.cursor_bucket.clone(),
                cursor_bucket_exists: cursor_bucket.is_some(),
                cursor,
            },
            streams,
            consumers,
            dead_letters,
        })
    }

    async fn stream_status(&self, name: &str) -> Result<StreamStatus, CtlError> {
        let Some(stream) = self.stream(name).await? else {
            return Ok(StreamStatus {
                name: name.to_owned(),
                exists: false,
                messages: 0,
                bytes: 0,
                first_seq: 0,
                last_seq: 0,
                last_message_at: None,
                replicas: 0,
                under_replicated: false,
            });
        };
        let info = stream.cached_info();
        Ok(StreamStatus {
            name: name.to_owned(),
            exists: true,
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            last_message_at: (info.state.last_sequence > 0)
                .then(|| rfc3339(info.state.last_timestamp)),
            replicas: info.config.num_replicas,
            under_replicated: info.config.num_replicas.max(1) < self.wanted_replicas,
        })
    }

    async fn consumer_status(
        &self,
        stream_name: &str,
        name: &str,
    ) -> Result<ConsumerStatus, CtlError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind;
        let missing = || ConsumerStatus {
            name: name.to_owned(),
            stream: stream_name.to_owned(),
            exists: false,
            pending: 0,
            ack_pending: 0,
            redelivered: 0,
            waiting: 0,
            delivered_stream_seq: 0,
            ack_floor_stream_seq: 0,
        };
        let Some(stream) = self.stream(stream_name).await? else {
            return Ok(missing());
        };
        match stream.consumer_info(name).await {
            Ok(info) => Ok(ConsumerStatus {
                name: name.to_owned(),
                stream: stream_name.to_owned(),
                exists: true,
                pending: info.num_pending,
                ack_pending: info.num_ack_pending,
                redelivered: info.num_redelivered,
                waiting: info.num_waiting,
                delivered_stream_seq: info.delivered.stream_sequence,
                ack_floor_stream_seq: info.ack_floor.stream_sequence,
            }),
            Err(err) => match err.kind() {
                ConsumerInfoErrorKind::NotFound => Ok(missing()),
                ConsumerInfoErrorKind::JetStream(e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                {
                    Ok(missing())
                }
                _ => Err(CtlError::js(
                    format!("cannot read consumer {name} on {stream_name}"),
                    err,
                )),
            },
        }
    }

    async fn dead_letter_counts(&self) -> Result<DeadLetterCounts, CtlError> {
        let name = &self.names.deadletter_stream;
        let Some(stream) = self.stream(name).await? else {
            return Ok(DeadLetterCounts {
                stream: name.clone(),
                exists: false,
                total: 0,
                by_subject: Vec::new(),
            });
        };
        let total = stream.cached_info().state.messages;
        let mut by_subject: Vec<(String, u64)> = if total == 0 {
            Vec::new()
        } else {
            stream
                .info_with_subjects(messages::subjects::DEADLETTER_ALL)
                .await
                .map_err(|e| CtlError::js(format!("cannot count subjects of {name}"), e))?
                .map_ok(|(subject, count)| (subject, count as u64))
                .try_collect()
                .await
                .map_err(|e| CtlError::js(format!("cannot count subjects of {name}"), e))?
        };
        by_subject.sort();
        Ok(DeadLetterCounts {
            stream: name.clone(),
            exists: true,
            total,
            by_subject,
        })
    }
}

/// The stored cursor as the bridge judges it: unreadable when the bridge could not start from
/// it (it would then start from the earliest retained event).
fn cursor_status(key: &str, bytes: &[u8]) -> CursorStatus {
    match StoredCursor::read(bytes) {
        Ok((stored, _)) => CursorStatus {
            key: key.to_owned(),
            age_secs: age_secs(&stored.updated_at),
            replay_id: Some(stored.replay_id),
            updated_at: Some(stored.updated_at),
            event_id: stored.event_id,
            written_by: stored.written_by,
            unreadable: None,
        },
        Err(err) => CursorStatus {
            key: key.to_owned(),
            replay_id: None,
            updated_at: None,
            age_secs: None,
            event_id: None,
            written_by: None,
            unreadable: Some(format!(
                "{} (value: {})",
                Chain(&err),
                truncate(&String::from_utf8_lossy(bytes), 80)
            )),
        },
    }
}

impl StatusReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let b = &self.bridge;
        out.push_str(&format!("sf-bridge ({})\n", self.channel));
        let leader = match (&b.lease_holder, b.lease_bucket_exists) {
            (Some(holder), _) => format!("{holder} (subscribed)"),
            (None, true) => {
                "none: no replica holds the lease (all stopped, or taking over)".to_owned()
            }
            (None, false) => format!("none: bucket {} does not exist yet", b.lease_bucket),
        };
        out.push_str(&format!("  leader   {leader}\n"));
        let cursor = match (&b.cursor, b.cursor_bucket_exists) {
            (Some(c), _) if c.unreadable.is_some() => {
                format!(
                    "UNREADABLE: {}",
                    c.unreadable.as_deref().unwrap_or_default()
                )
            }
            (Some(c), _) => format!(
                "{} updated {} ({} ago) by {}",
                c.replay_id.as_deref().unwrap_or("-"),
                c.updated_at.as_deref().unwrap_or("-"),
                c.age_secs.map_or_else(|| "?".to_owned(), human_duration),
                c.written_by.as_deref().unwrap_or("?"),
            ),
            (None, true) => "none stored: the bridge starts from SF_EVENTS_REPLAY".to_owned(),
            (None, false) => format!("none: bucket {} does not exist yet", b.cursor_bucket),
        };
        out.push_str(&format!("  cursor   {cursor}\n\n"));

        let mut streams = Table::new([
            "STREAM",
            "MESSAGES",
            "BYTES",
            "LAST SEQ",
            "LAST MESSAGE",
            "R",
        ]);
        for s in &self.streams {
            if s.exists {
                streams.row([
                    s.name.clone(),
                    s.messages.to_string(),
                    s.bytes.to_string(),
                    s.last_seq.to_string(),
                    s.last_message_at.clone().unwrap_or_else(|| "-".to_owned()),
                    if s.under_replicated {
                        format!("{} UNDER-REPLICATED", s.replicas.max(1))
                    } else {
                        s.replicas.max(1).to_string()
                    },
                ]);
            } else {
                streams.row([s.name.as_str(), "missing", "", "", "", ""]);
            }
        }
        out.push_str(&streams.render());
        out.push('\n');

        let mut consumers = Table::new([
            "CONSUMER",
            "STREAM",
            "PENDING",
            "ACK PENDING",
            "REDELIVERED",
            "WAITING",
            "ACK FLOOR",
        ]);
        for c in &self.consumers {
            if c.exists {
                consumers.row([
                    c.name.clone(),
                    c.stream.clone(),
                    c.pending.to_string(),
                    c.ack_pending.to_string(),
                    c.redelivered.to_string(),
                    c.waiting.to_string(),
                    c.ack_floor_stream_seq.to_string(),
                ]);
            } else {
                consumers.row([c.name.as_str(), c.stream.as_str(), "missing"]);
            }
        }
        out.push_str(&consumers.render());
        out.push('\n');

        let d = &self.dead_letters;
        if !d.exists {
            out.push_str(&format!(
                "dead letters: stream {} does not exist yet\n",
                d.stream
            ));
        } else if d.total == 0 {
            out.push_str(&format!("dead letters: none ({})\n", d.stream));
        } else {
            let mut table = Table::new(["DEAD LETTER SUBJECT", "MESSAGES"]);
            for (subject, count) in &d.by_subject {
                table.row([subject.clone(), count.to_string()]);
            }
            out.push_str(&table.render());
            out.push_str(&format!(
                "total {} in {}: `provctl deadletter list`\n",
                d.total, d.stream
            ));
        }
        out
    }
}
