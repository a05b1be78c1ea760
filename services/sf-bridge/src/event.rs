//! A decoded `OrderProvisionRequested__e` → the `provisioning.requested.v1` body, or the reason
//! it cannot be one (the event then goes to the dead-letter subject).

use base64::Engine;
use messages::ProvisioningRequestedV1;
use serde_json::{Map, Value};

/// Why an event is set aside. `code()` is the metric label and the dead letter's `reason_code`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoisonReason {
    #[error("the event has no id (ProducerEvent.id), so it cannot be de-duplicated")]
    EventIdMissing,
    #[error("the event's schema {schema_id} is unknown to Salesforce: {detail}")]
    SchemaUnavailable { schema_id: String, detail: String },
    #[error("the payload does not decode with schema {schema_id}: {detail}")]
    AvroDecode { schema_id: String, detail: String },
    #[error("OrderId__c is missing")]
    OrderIdMissing,
    #[error("OrderId__c {value:?} is not a Salesforce id: {detail}")]
    OrderIdInvalid { value: String, detail: String },
    #[error("field {field} has the wrong type: {detail}")]
    FieldType { field: &'static str, detail: String },
    /// JetStream refused the message for good (too large for the stream, say): publishing it
    /// again can never succeed. `detail` is the server's description.
    #[error("JetStream refused the message for good: {detail}")]
    PublishRefused { detail: String },
}

impl PoisonReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::EventIdMissing => "event_id_missing",
            Self::SchemaUnavailable { .. } => "schema_unavailable",
            Self::AvroDecode { .. } => "avro_decode",
            Self::OrderIdMissing => "order_id_missing",
            Self::OrderIdInvalid { .. } => "order_id_invalid",
            Self::FieldType { .. } => "field_type",
            Self::PublishRefused { .. } => "publish_refused",
        }
    }
}

/// Event facts that do not come from the payload.
#[derive(Debug, Clone)]
pub struct EventEnvelope<'a> {
    pub event_id: &'a str,
    pub replay_id: &'a [u8],
    pub schema_id: &'a str,
    pub channel: &'a str,
    pub received_at: &'a str,
}

/// Takes the field out of the decoded record: its text moves into the body instead of being
/// copied (a copy only when it needs trimming).
fn optional_string(
    record: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, PoisonReason> {
    match record.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let trimmed = s.trim();
            if trimmed.is_empty() {
                Ok(None)
            } else if trimmed.len() == s.len() {
                Ok(Some(s))
            } else {
                Ok(Some(trimmed.to_owned()))
            }
        }
        Some(other) => Err(PoisonReason::FieldType {
            field,
            detail: format!("expected text, got {other}"),
        }),
    }
}

/// Builds the contract body. A missing `CorrelationId__c` gets a new UUID here, once: every
/// later hop carries this one.
pub fn to_requested(
    envelope: &EventEnvelope<'_>,
    mut record: Map<String, Value>,
) -> Result<ProvisioningRequestedV1, PoisonReason> {
    let record = &mut record;
    let raw_order_id =
        optional_string(record, "OrderId__c")?.ok_or(PoisonReason::OrderIdMissing)?;
    // Both spellings of one Order must be one order downstream (subject, journal key, marker):
    // the 18-character form is the only one that leaves the bridge (docs/contract.md §4).
    let order_id = messages::salesforce_id::canonical(&raw_order_id).map_err(|e| {
        PoisonReason::OrderIdInvalid {
            value: raw_order_id.clone(),
            detail: e.to_string(),
        }
    })?;
    let version = match record.get("Version__c") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            return Err(PoisonReason::FieldType {
                field: "Version__c",
                detail: format!("expected a number, got {other}"),
            })
        }
    };
    let created_at = match record.get("CreatedDate") {
        Some(Value::Number(n)) => n.as_i64().and_then(messages::bodies::rfc3339_from_epoch_ms),
        _ => None,
    };
    let correlation_id = optional_string(record, "CorrelationId__c")?
        .filter(|c| c.len() <= 200 && !c.contains(['\r', '\n']))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    Ok(ProvisioningRequestedV1 {
        schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
        event_id: envelope.event_id.to_owned(),
        replay_id: base64::engine::general_purpose::STANDARD.encode(envelope.replay_id),
        channel: envelope.channel.to_owned(),
        schema_id: envelope.schema_id.to_owned(),
        order_id,
        idem_key: optional_string(record, "IdemKey__c")?,
        correlation_id,
        requested_by: optional_string(record, "RequestedBy__c")?,
        version,
        created_at,
        created_by_id: optional_string(record, "CreatedById")?,
        received_at: envelope.received_at.to_owned(),
    })
}

/// `CreatedDate` in epoch milliseconds, for the lag metric.
pub fn created_epoch_ms(record: &Map<String, Value>) -> Option<i64> {
    record.get("CreatedDate").and_then(Value::as_i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> EventEnvelope<'static> {
        EventEnvelope {
            event_id: "e-1",
            replay_id: &[0, 0, 0, 0, 0, 15, 66, 64],
            schema_id: "s-1",
            channel: "/event/OrderProvisionRequested__e",
            received_at: "2026-11-25T00:00:00Z",
        }
    }

    fn record(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn full_event_maps_to_the_contract_body() {
        let rec = record(json!({
            "CreatedDate": 1_700_000_000_000_i64, "CreatedById": "005000000000001AAA",
            "OrderId__c": "801000000000001AAA", "IdemKey__c": "k-1", "CorrelationId__c": "c-1",
            "RequestedBy__c": "ops", "Version__c": 3.0
        }));
        let body = to_requested(&envelope(), rec).unwrap();
        assert_eq!(body.order_id, "801000000000001AAA");
        assert_eq!(body.correlation_id, "c-1");
        assert_eq!(body.idem_key.as_deref(), Some("k-1"));
        assert_eq!(body.version, Some(3.0));
        assert_eq!(body.replay_id, "AAAAAAAPQkA=");
        assert_eq!(body.created_at.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(body.schema, "provisioning.requested.v1");
    }

    #[test]
    fn order_ids_leave_in_their_18_character_form() {
        for given in [
            "001A000000lNcZA",
            "001A000000lNcZAIA0",
            "001A000000lNcZAia0",
        ] {
            let rec = record(json!({ "OrderId__c": given }));
            let body = to_requested(&envelope(), rec).unwrap();
            assert_eq!(body.order_id, "001A000000lNcZAIA0", "from {given}");
        }
        let bad_checksum = record(json!({"OrderId__c": "001A000000lNcZAAAA"}));
        assert_eq!(
            to_requested(&envelope(), bad_checksum).unwrap_err().code(),
            "order_id_invalid"
        );
    }

    #[test]
    fn missing_correlation_id_is_generated() {
        let rec = record(json!({"OrderId__c": "801000000000001AAA", "CorrelationId__c": null}));
        let body = to_requested(&envelope(), rec).unwrap();
        assert!(uuid::Uuid::parse_str(&body.correlation_id).is_ok());
    }

    #[test]
    fn bad_order_ids_are_poison() {
        let missing = record(json!({"OrderId__c": null}));
        assert_eq!(
            to_requested(&envelope(), missing).unwrap_err(),
            PoisonReason::OrderIdMissing
        );
        let malformed = record(json!({"OrderId__c": "801' OR 1=1"}));
        assert_eq!(
            to_requested(&envelope(), malformed).unwrap_err().code(),
            "order_id_invalid"
        );
        let wrong_type = record(json!({"OrderId__c": 42}));
        assert_eq!(
            to_requested(&envelope(), wrong_type).unwrap_err().code(),
            "field_type"
        );
    }
}
