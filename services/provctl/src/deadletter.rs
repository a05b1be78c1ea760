//! `provctl deadletter list|show|replay`: what the services set aside in
//! `PROVISIONING_DEADLETTER` (`provisioning.deadletter.<service>`, body
//! `provisioning.deadletter.v1` with the original bytes in base64).
//!
//! Replay republishes the original bytes to the subject they came from, with a new
//! `Nats-Msg-Id` so the stream's de-duplication does not swallow them. Only messages that came from
//! a JetStream subject of the pipeline can be replayed: sf-bridge's dead letters are Salesforce
//! events it could not decode (Avro bytes, no order id), which no service could consume.

use async_nats::jetstream::message::StreamMessage;
use base64::Engine;
use messages::DeadLetterV1;
use serde::Serialize;
use serde_json::Value;

use crate::table::{truncate, Table};
use crate::{is_no_message, rfc3339, Ctl, CtlError};

/// Most sequences `list` looks at, so a stream with many deleted messages cannot stall it.
const MAX_SCAN: u64 = 10_000;

/// Subjects a replayed payload may be published to: the ones a service consumes.
const REPLAYABLE_PREFIXES: [&str; 2] = [
    messages::subjects::PROVISIONING_REQUESTED_PREFIX,
    messages::subjects::ORDER_UPDATE_PREFIX,
];

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    pub seq: u64,
    pub subject: String,
    pub stored_at: String,
    pub service: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub origin_subject: Option<String>,
    pub order_id: Option<String>,
    /// Set when the body is not a dead letter.
    pub unreadable: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterList {
    pub stream: String,
    pub exists: bool,
    pub total: u64,
    pub dead_letters: Vec<DeadLetterSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterDetail {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub stored_at: String,
    pub headers: Vec<(String, String)>,
    pub body: DeadLetterV1,
    /// The original payload: JSON when it parses, else text when UTF-8, else `None`.
    pub payload_json: Option<Value>,
    pub payload_text: Option<String>,
    pub payload_bytes: usize,
    /// Why replay is refused, if it is.
    pub replay_refused: Option<String>,
}

/// What `deadletter replay <seq> --dry-run` shows: the message replay would publish, or why it
/// would refuse. Nothing is published.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayPlan {
    pub dead_letter_seq: u64,
    pub service: String,
    /// The subject replay publishes to; the dead letter's origin subject when refused.
    pub subject: Option<String>,
    /// The headers replay sends (`Nats-Msg-Id` is made new for every replay).
    pub headers: Vec<(String, String)>,
    pub payload_bytes: usize,
    /// Why replay would refuse, if it would.
    pub refused: Option<String>,
    /// Always `false`: a dry run publishes nothing.
    pub published: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub dead_letter_seq: u64,
    pub service: String,
    pub subject: String,
    pub msg_id: String,
    pub stream: String,
    pub stream_sequence: u64,
    pub duplicate: bool,
}

/// The order id of a payload: its `order_id` field, else the last token of its subject.
fn order_id_of(payload: &[u8], subject: Option<&str>) -> Option<String> {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("order_id").and_then(Value::as_str).map(str::to_owned))
        .or_else(|| {
            let subject = subject?;
            REPLAYABLE_PREFIXES
                .iter()
                .find_map(|p| subject.strip_prefix(p)?.strip_prefix('.'))
                .map(str::to_owned)
        })
}

fn decode_payload(body: &DeadLetterV1) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(body.payload_base64.trim())
        .ok()
}

/// Why `body` cannot be replayed, or the subject it replays to.
fn replay_target(body: &DeadLetterV1) -> Result<String, String> {
    if body.service == "sf-bridge" {
        return Err("sf-bridge dead letters are Salesforce events the bridge could not decode (Avro \
                    bytes without a usable order id); nothing downstream could consume them. Fix the \
                    cause (event schema, OrderId__c) and re-approve the order in Salesforce, or \
                    backfill with `provctl cursor set <replay id>` once the bridge can decode them"
            .to_owned());
    }
    let subject = body
        .origin
        .subject
        .clone()
        .ok_or_else(|| "the dead letter does not record the subject it came from".to_owned())?;
    let replayable = REPLAYABLE_PREFIXES.iter().any(|p| {
        subject
            .strip_prefix(p)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
    });
    if !replayable {
        return Err(format!(
            "it came from {subject}, which no service consumes (replay targets: provisioning.requested.<OrderId>, sf.order.update.<OrderId>)"
        ));
    }
    if decode_payload(body).is_none() {
        return Err("its payload_base64 is not valid base64".to_owned());
    }
    if let Some(size) = body.origin.payload_size {
        // Replaying the prefix would only be dead-lettered again as malformed.
        let source = match (&body.origin.stream, body.origin.stream_sequence) {
            (Some(stream), Some(seq)) => format!("; the whole message is {stream} sequence {seq}"),
            _ => String::new(),
        };
        return Err(format!(
            "it holds only the first bytes of a {size}-byte message (origin.payload_size){source}"
        ));
    }
    Ok(subject)
}

impl Ctl {
    async fn deadletter_stream(&self) -> Result<async_nats::jetstream::stream::Stream, CtlError> {
        let name = &self.names.deadletter_stream;
        self.stream(name)
            .await?
            .ok_or_else(|| CtlError::StreamMissing(name.clone()))
    }

    async fn raw_message(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        seq: u64,
    ) -> Result<Option<StreamMessage>, CtlError> {
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(err) if is_no_message(&err) => Ok(None),
            Err(err) => Err(CtlError::js(
                format!(
                    "cannot read message {seq} of {}",
                    self.names.deadletter_stream
                ),
                err,
            )),
        }
    }

    /// The newest `limit` dead letters, newest first, optionally of one service only.
    pub async fn deadletter_list(
        &self,
        limit: usize,
        service: Option<&str>,
    ) -> Result<DeadLetterList, CtlError> {
        let name = self.names.deadletter_stream.clone();
        let Some(stream) = self.stream(&name).await? else {
            return Ok(DeadLetterList {
                stream: name,
                exists: false,
                total: 0,
                dead_letters: Vec::new(),
            });
        };
        let state = stream.cached_info().state.clone();
        let mut dead_letters = Vec::new();
        let mut seq = state.last_sequence;
        let lowest = state
            .first_sequence
            .max(state.last_sequence.saturating_sub(MAX_SCAN));
        while seq >= lowest && seq > 0 && dead_letters.len() < limit {
            if let Some(message) = self.raw_message(&stream, seq).await? {
                let summary = summarize(&message);
                let wanted = service.is_none_or(|s| {
                    summary.service.as_deref() == Some(s)
                        || message.subject.as_str() == messages::subjects::deadletter(s)
                });
                if wanted {
                    dead_letters.push(summary);
                }
            }
            seq -= 1;
        }
        Ok(DeadLetterList {
            stream: name,
            exists: true,
            total: state.messages,
            dead_letters,
        })
    }

    pub async fn deadletter_show(&self, seq: u64) -> Result<DeadLetterDetail, CtlError> {
        let stream = self.deadletter_stream().await?;
        let (message, body) = self.dead_letter(&stream, seq).await?;
        Ok(detail(&self.names.deadletter_stream, &message, body))
    }

    pub async fn deadletter_replay(&self, seq: u64) -> Result<ReplayReport, CtlError> {
        let stream = self.deadletter_stream().await?;
        let (message, body) = self.dead_letter(&stream, seq).await?;
        let msg_id = format!("provctl-replay:{seq}:{}", uuid::Uuid::new_v4());
        let Replay {
            subject,
            headers,
            payload,
        } = replay(&message, &body, &msg_id)
            .map_err(|reason| CtlError::ReplayRefused { seq, reason })?;
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| CtlError::js(format!("cannot publish to {subject}"), e))?
            .await
            .map_err(|e| {
                CtlError::js(
                    format!("JetStream did not store the replay on {subject}"),
                    e,
                )
            })?;
        Ok(ReplayReport {
            dead_letter_seq: seq,
            service: body.service,
            subject,
            msg_id,
            stream: ack.stream,
            stream_sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// What [`Ctl::deadletter_replay`] would publish for dead letter `seq`, without publishing.
    pub async fn deadletter_replay_plan(&self, seq: u64) -> Result<ReplayPlan, CtlError> {
        let stream = self.deadletter_stream().await?;
        let (message, body) = self.dead_letter(&stream, seq).await?;
        // The same construction as the real replay; only the message id's UUID is a placeholder.
        let msg_id = format!("provctl-replay:{seq}:<a new UUID>");
        let plan = match replay(&message, &body, &msg_id) {
            Ok(replay) => {
                let headers = sorted_headers(&replay.headers);
                ReplayPlan {
                    dead_letter_seq: seq,
                    service: body.service.clone(),
                    subject: Some(replay.subject),
                    headers,
                    payload_bytes: replay.payload.len(),
                    refused: None,
                    published: false,
                }
            }
            Err(reason) => ReplayPlan {
                dead_letter_seq: seq,
                service: body.service.clone(),
                subject: body.origin.subject.clone(),
                headers: Vec::new(),
                payload_bytes: decode_payload(&body).map_or(0, |p| p.len()),
                refused: Some(reason),
                published: false,
            },
        };
        Ok(plan)
    }

    async fn dead_letter(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        seq: u64,
    ) -> Result<(StreamMessage, DeadLetterV1), CtlError> {
        let name = self.names.deadletter_stream.clone();
        let message =
            self.raw_message(stream, seq)
                .await?
                .ok_or_else(|| CtlError::MessageNotFound {
                    stream: name.clone(),
                    seq,
                })?;
        let body = read_dead_letter(&name, &message)?;
        Ok((message, body))
    }
}

/// The body of a message of the dead-letter stream, or why it is not a dead letter.
pub fn read_dead_letter(stream: &str, message: &StreamMessage) -> Result<DeadLetterV1, CtlError> {
    serde_json::from_slice::<DeadLetterV1>(&message.payload).map_err(|e| CtlError::NotADeadLetter {
        stream: stream.to_owned(),
        seq: message.sequence,
        detail: e.to_string(),
    })
}

/// Every header value as a (name, value) pair, sorted, for a stable display.
fn sorted_headers(headers: &async_nats::HeaderMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    pairs.sort();
    pairs
}

/// What `deadletter show` prints for a dead letter read from `stream`.
pub fn detail(stream: &str, message: &StreamMessage, body: DeadLetterV1) -> DeadLetterDetail {
    let payload = decode_payload(&body).unwrap_or_default();
    let payload_json = serde_json::from_slice::<Value>(&payload).ok();
    let payload_text = match payload_json {
        Some(_) => None,
        None => String::from_utf8(payload.clone()).ok(),
    };
    let headers = sorted_headers(&message.headers);
    DeadLetterDetail {
        stream: stream.to_owned(),
        seq: message.sequence,
        subject: message.subject.to_string(),
        stored_at: rfc3339(message.time),
        headers,
        replay_refused: replay_target(&body).err(),
        body,
        payload_json,
        payload_text,
        payload_bytes: payload.len(),
    }
}

/// The message `deadletter replay` publishes.
#[derive(Debug)]
pub struct Replay {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Vec<u8>,
}

/// The message that replays the dead letter `message` (body `body`) with message id `msg_id`, or
/// why it cannot be replayed.
pub fn replay(
    message: &StreamMessage,
    body: &DeadLetterV1,
    msg_id: &str,
) -> Result<Replay, String> {
    let subject = replay_target(body)?;
    let payload = decode_payload(body).unwrap_or_default();
    let schema = serde_json::from_slice::<Value>(&payload)
        .ok()
        .and_then(|v| v.get("schema").and_then(Value::as_str).map(str::to_owned));
    // Keep the order's correlation id and trace, so the replay joins the same trace.
    let headers =
        platform::publish::headers_for_resend(&message.headers, schema.as_deref(), msg_id);
    Ok(Replay {
        subject,
        headers,
        payload,
    })
}

/// One line of `deadletter list`.
pub fn summarize(message: &StreamMessage) -> DeadLetterSummary {
    let mut summary = DeadLetterSummary {
        seq: message.sequence,
        subject: message.subject.to_string(),
        stored_at: rfc3339(message.time),
        service: None,
        reason_code: None,
        reason: None,
        origin_subject: None,
        order_id: None,
        unreadable: None,
    };
    match serde_json::from_slice::<DeadLetterV1>(&message.payload) {
        Ok(body) => {
            let payload = decode_payload(&body).unwrap_or_default();
            summary.order_id = order_id_of(&payload, body.origin.subject.as_deref());
            summary.service = Some(body.service);
            summary.reason_code = Some(body.reason_code);
            summary.reason = Some(body.reason);
            summary.origin_subject = body.origin.subject;
        }
        Err(err) => summary.unreadable = Some(err.to_string()),
    }
    summary
}

impl DeadLetterList {
    pub fn render(&self) -> String {
        if !self.exists {
            return format!(
                "stream {} does not exist yet: no dead letters\n",
                self.stream
            );
        }
        if self.dead_letters.is_empty() {
            return format!(
                "no dead letters shown ({} in {})\n",
                self.total, self.stream
            );
        }
        let mut table = Table::new(["SEQ", "STORED", "SERVICE", "CODE", "ORDER", "REASON"]);
        for d in &self.dead_letters {
            let dash = || "-".to_owned();
            table.row([
                d.seq.to_string(),
                d.stored_at.clone(),
                d.service.clone().unwrap_or_else(dash),
                d.reason_code.clone().unwrap_or_else(dash),
                d.order_id.clone().unwrap_or_else(dash),
                truncate(
                    d.reason
                        .as_deref()
                        .or(d.unreadable.as_deref())
                        .unwrap_or("-"),
                    70,
                ),
            ]);
        }
        format!(
            "{}{} shown, {} in {}: `provctl deadletter show <SEQ>`\n",
            table.render(),
            self.dead_letters.len(),
            self.total,
            self.stream
        )
    }
}

impl DeadLetterDetail {
    pub fn render(&self) -> String {
        let b = &self.body;
        let mut out = format!(
            "dead letter {} in {} ({}, stored {})\n",
            self.seq, self.stream, self.subject, self.stored_at
        );
        let mut table = Table::new(["FIELD", "VALUE"]);
        let origin = &b.origin;
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        for (k, v) in [
            ("service", b.service.clone()),
            ("reason_code", b.reason_code.clone()),
            ("reason", b.reason.clone()),
            ("dead_lettered_at", b.dead_lettered_at.clone()),
            ("origin.subject", opt(&origin.subject)),
            ("origin.stream", opt(&origin.stream)),
            (
                "origin.stream_sequence",
                origin
                    .stream_sequence
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            ),
            ("origin.channel", opt(&origin.channel)),
            ("origin.replay_id", opt(&origin.replay_id)),
            ("origin.event_id", opt(&origin.event_id)),
            ("origin.schema_id", opt(&origin.schema_id)),
        ] {
            table.row([k.to_owned(), v]);
        }
        for (name, value) in &self.headers {
            table.row([format!("header {name}"), value.clone()]);
        }
        out.push_str(&table.render());
        out.push_str(&format!("\npayload ({} bytes):\n", self.payload_bytes));
        match (&self.payload_json, &self.payload_text) {
            (Some(json), _) => out
                .push_str(&serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())),
            (None, Some(text)) => out.push_str(text),
            (None, None) => out.push_str(&format!("(binary) base64 {}", b.payload_base64)),
        }
        out.push_str("\n\n");
        match &self.replay_refused {
            None => out.push_str(&format!(
                "replay: `provctl deadletter replay {}` republishes the payload to {}\n",
                self.seq,
                b.origin.subject.as_deref().unwrap_or("?")
            )),
            Some(reason) => out.push_str(&format!("replay: not possible: {reason}\n")),
        }
        out
    }
}

impl ReplayPlan {
    pub fn render(&self) -> String {
        let mut out = match &self.refused {
            None => format!(
                "dry run: dead letter {} ({}) would be replayed; nothing was published\n",
                self.dead_letter_seq, self.service
            ),
            Some(reason) => format!(
                "dry run: dead letter {} ({}) would NOT be replayed: {reason}\n",
                self.dead_letter_seq, self.service
            ),
        };
        let mut table = Table::new(["FIELD", "VALUE"]);
        table.row([
            "subject".to_owned(),
            self.subject.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
        table.row([
            "payload".to_owned(),
            format!("{} bytes", self.payload_bytes),
        ]);
        for (name, value) in &self.headers {
            table.row([format!("header {name}"), value.clone()]);
        }
        out.push_str(&table.render());
        out
    }
}

impl ReplayReport {
    pub fn render(&self) -> String {
        format!(
            "replayed dead letter {} ({}) to {}\n  stored in {} as seq {}{} (Nats-Msg-Id {})\n",
            self.dead_letter_seq,
            self.service,
            self.subject,
            self.stream,
            self.stream_sequence,
            if self.duplicate { ", DUPLICATE" } else { "" },
            self.msg_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(service: &str, subject: Option<&str>, payload: &[u8]) -> DeadLetterV1 {
        DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: service.to_owned(),
            reason: "r".to_owned(),
            reason_code: "c".to_owned(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
            origin: messages::DeadLetterOrigin {
                subject: subject.map(str::to_owned),
                ..Default::default()
            },
            dead_lettered_at: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    #[test]
    fn replay_targets() {
        assert_eq!(
            replay_target(&body(
                "provisioner",
                Some("provisioning.requested.801x"),
                b"{}"
            )),
            Ok("provisioning.requested.801x".to_owned())
        );
        assert!(replay_target(&body("sf-bridge", None, b"\x01")).is_err());
        assert!(replay_target(&body("provisioner", None, b"{}")).is_err());
        assert!(replay_target(&body(
            "x",
            Some("provisioning.deadletter.provisioner"),
            b"{}"
        ))
        .is_err());
        assert!(replay_target(&body("x", Some("provisioning.requested."), b"{}")).is_err());
        let mut prefix = body(
            "provisioner",
            Some("provisioning.requested.801x"),
            b"{\"sch",
        );
        prefix.origin.payload_size = Some(2_000_000);
        prefix.origin.stream = Some("PROVISIONING_REQUESTS".to_owned());
        prefix.origin.stream_sequence = Some(42);
        let refusal = replay_target(&prefix).unwrap_err();
        assert!(
            refusal.contains("2000000-byte")
                && refusal.contains("PROVISIONING_REQUESTS sequence 42"),
            "{refusal}"
        );
    }

    #[test]
    fn order_ids_from_payload_or_subject() {
        assert_eq!(
            order_id_of(br#"{"order_id":"801A"}"#, None).as_deref(),
            Some("801A")
        );
        assert_eq!(
            order_id_of(b"junk", Some("sf.order.update.801B")).as_deref(),
            Some("801B")
        );
        assert_eq!(order_id_of(b"junk", None), None);
    }
}
