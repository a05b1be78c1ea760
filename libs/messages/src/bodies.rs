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
