//! JSON bodies of the contract. Readers tolerate unknown fields (services are upgraded one at a
//! time); writers always set `schema`.

use serde::{Deserialize, Serialize};

/// Body of `provisioning.requested.<OrderId>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisioningRequestedV1 {
    /// Always [`ProvisioningRequestedV1::SCHEMA`].
    pub schema: String,
    /// `ProducerEvent.id`: the event UUID, stable across replays. Also the `Nats-Msg-Id`.
    pub event_id: String,
    /// Replay id of the event, base64 of Salesforce's opaque bytes.
    pub replay_id: String,
    pub channel: String,
    pub schema_id: String,
    pub order_id: String,
    pub idem_key: Option<String>,
    /// `CorrelationId__c`, or a UUID generated once by sf-bridge when the event has none.
    pub correlation_id: String,
    pub requested_by: Option<String>,
    pub version: Option<f64>,
    /// `CreatedDate` of the event, RFC 3339.
    pub created_at: Option<String>,
    pub created_by_id: Option<String>,
    /// When sf-bridge received the event, RFC 3339.
    pub received_at: String,
}

impl ProvisioningRequestedV1 {
    pub const SCHEMA: &'static str = "provisioning.requested.v1";
}

/// The result of one provisioning job (`provisioning.outcome.<OrderId>.<result>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeResult {
    Activated,
    Failed,
    Skipped,
}

impl OutcomeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// Body of `provisioning.outcome.<OrderId>.<result>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisioningOutcomeV1 {
    /// Always [`ProvisioningOutcomeV1::SCHEMA`].
    pub schema: String,
    pub order_id: String,
    pub result: OutcomeResult,
    pub whmcs_order_id: Option<u64>,
    #[serde(default)]
    pub whmcs_service_ids: Vec<u64>,
    pub whmcs_invoice_id: Option<u64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// The last step reached (CONTRACT §5 step names).
    pub step: String,
    pub correlation_id: String,
    pub event_id: String,
    pub idem_key: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
}

impl ProvisioningOutcomeV1 {
    pub const SCHEMA: &'static str = "provisioning.outcome.v1";
}

/// Body of `sf.order.update.<OrderId>`: the Order fields sf-writer must set. `fields` holds
/// exactly the Salesforce field names and values (null clears a field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderUpdateV1 {
    /// Always [`OrderUpdateV1::SCHEMA`].
    pub schema: String,
    pub order_id: String,
    /// Per-order sequence, increasing with every update the provisioner issues for this order;
    /// sf-writer never applies an update older than one it already applied.
    pub sequence: u64,
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub correlation_id: String,
    pub event_id: String,
    pub created_at: String,
}

impl OrderUpdateV1 {
    pub const SCHEMA: &'static str = "sf.order.update.v1";
}

/// Body of the `provisioning.status.<OrderId>` reply and of `GET /orders/{OrderId}`: where an
/// order's job is, from the provisioner's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisioningStatusV1 {
    /// Always [`ProvisioningStatusV1::SCHEMA`].
    pub schema: String,
    /// The 18-character Order id, whichever spelling was asked for.
    pub order_id: String,
    pub state: crate::journal::JobState,
    /// Whether `state` is final (everything but `running`).
    #[serde(rename = "final")]
    pub r#final: bool,
    /// The last step reached (contract §5 step names).
    pub step: String,
    pub error_code: Option<String>,
    /// The error message of a failed job, or the reason of a skipped one.
    pub error_message: Option<String>,
    pub whmcs_order_id: Option<u64>,
    #[serde(default)]
    pub whmcs_service_ids: Vec<u64>,
    pub whmcs_invoice_id: Option<u64>,
    pub correlation_id: String,
    /// The W3C trace id of the job's trace (search it in Jaeger), when known.
    pub trace_id: Option<String>,
    /// Jobs started for this order so far (retries from Salesforce included).
    pub attempts: u32,
    pub started_at: String,
    pub updated_at: String,
}

impl ProvisioningStatusV1 {
    pub const SCHEMA: &'static str = "provisioning.status.v1";
}

/// Body of `provisioning.deadletter.<service>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterV1 {
    /// Always [`DeadLetterV1::SCHEMA`].
    pub schema: String,
    /// The service that set the message aside.
    pub service: String,
    /// Why, in one sentence an operator can act on.
    pub reason: String,
    /// Machine-readable class of the reason, e.g. `avro_decode`, `order_id_missing`.
    pub reason_code: String,
    /// The original bytes, base64.
    pub payload_base64: String,
    pub origin: DeadLetterOrigin,
    pub dead_lettered_at: String,
}

impl DeadLetterV1 {
    pub const SCHEMA: &'static str = "provisioning.deadletter.v1";

    /// Room kept for the message headers (correlation id, schema, trace context, message id).
    const HEADER_ROOM: usize = 4 * 1024;
    /// Longest `reason` kept: a reason may quote the input (a bad `OrderId__c`, say), and the
    /// input may be as large as the message that carried it.
    pub const MAX_REASON_CHARS: usize = 1024;

    /// Sets `payload_base64` to the original bytes, and keeps the whole dead letter within
    /// `max_message` bytes (the server's `max_payload`): base64 makes a payload a third larger,
    /// so an original close to the limit cannot travel whole. Then only its first bytes are
    /// kept and `origin.payload_size` records the original length, so a reader knows it holds a
    /// prefix (the original stays in its stream, named by `origin`). A long `reason` is cut to
    /// [`Self::MAX_REASON_CHARS`] first. Without this, a dead letter of such a message could
    /// never be published and the message would be neither processed nor set aside.
    pub fn set_payload(&mut self, payload: &[u8], max_message: usize) {
        use base64::Engine;
        if let Some((cut, _)) = self.reason.char_indices().nth(Self::MAX_REASON_CHARS) {
            self.reason.truncate(cut);
            self.reason.push('…');
        }
        self.payload_base64.clear();
        self.origin.payload_size = None;
        let b64 = base64::engine::general_purpose::STANDARD;
        let whole = base64::encoded_len(payload.len(), true).unwrap_or(usize::MAX);
        // Everything but the payload, as serialised, plus the original length's own field.
        let envelope = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len()) + 64;
        let room = max_message.saturating_sub(envelope.saturating_add(Self::HEADER_ROOM));
        if whole <= room {
            self.payload_base64 = b64.encode(payload);
            return;
        }
        let kept = (room / 4 * 3).min(payload.len());
        self.payload_base64 = b64.encode(&payload[..kept]);
        self.origin.payload_size = Some(payload.len() as u64);
    }

    /// Whether `payload_base64` holds only the first bytes of the original.
    pub fn payload_truncated(&self) -> bool {
        self.origin.payload_size.is_some()
    }
}

/// Where a dead-lettered message came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeadLetterOrigin {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Base64 of the Salesforce replay id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Length in bytes of the original message, set only when `payload_base64` holds just its
    /// first bytes (the whole would not fit in one NATS message; see
    /// [`DeadLetterV1::set_payload`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_size: Option<u64>,
}

/// RFC 3339 in UTC, the timestamp format of every body.
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// RFC 3339 of an epoch-milliseconds timestamp (Salesforce's `CreatedDate`), if representable.
pub fn rfc3339_from_epoch_ms(ms: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    Some(rfc3339(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ms_renders_as_rfc3339() {
        assert_eq!(
            rfc3339_from_epoch_ms(1_700_000_000_123).as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
    }

    fn dead_letter(reason: &str) -> DeadLetterV1 {
        DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: "provisioner".to_owned(),
            reason: reason.to_owned(),
            reason_code: "invalid_request".to_owned(),
            payload_base64: String::new(),
            origin: DeadLetterOrigin {
                stream: Some("PROVISIONING_REQUESTS".to_owned()),
                stream_sequence: Some(7),
                subject: Some("provisioning.requested.x".to_owned()),
                ..Default::default()
            },
            dead_lettered_at: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    #[test]
    fn a_dead_letter_keeps_a_small_payload_whole() {
        use base64::Engine;
        let mut body = dead_letter("bad");
        body.set_payload(b"\xff\xfe not json", 1024 * 1024);
        assert!(!body.payload_truncated());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&body.payload_base64)
            .unwrap();
        assert_eq!(decoded, b"\xff\xfe not json");
        assert!(!serde_json::to_string(&body)
            .unwrap()
            .contains("payload_size"));
    }

    #[test]
    fn a_dead_letter_of_a_message_near_max_payload_fits_in_one_message() {
        use base64::Engine;
        let max = 1024 * 1024;
        let payload = vec![b'x'; max - 100];
        let mut body = dead_letter(&"r".repeat(max));
        body.set_payload(&payload, max);
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(
            bytes.len() + DeadLetterV1::HEADER_ROOM <= max,
            "{}",
            bytes.len()
        );
        assert!(body.payload_truncated());
        assert_eq!(body.origin.payload_size, Some(payload.len() as u64));
        assert!(body.reason.chars().count() <= DeadLetterV1::MAX_REASON_CHARS + 1);
        let kept = base64::engine::general_purpose::STANDARD
            .decode(&body.payload_base64)
            .unwrap();
        assert!(kept.len() > max / 2 && payload.starts_with(&kept));
    }

    #[test]
    fn readers_ignore_unknown_fields() {
        let json = serde_json::json!({
            "schema": "provisioning.requested.v1", "event_id": "e", "replay_id": "AA==",
            "channel": "/event/X__e", "schema_id": "s", "order_id": "o", "idem_key": null,
            "correlation_id": "c", "requested_by": null, "version": 2.0, "created_at": null,
            "created_by_id": null, "received_at": "2026-01-01T00:00:00Z", "new_field": 1
        });
        let body: ProvisioningRequestedV1 = serde_json::from_value(json).unwrap();
        assert_eq!(body.version, Some(2.0));
    }
}
