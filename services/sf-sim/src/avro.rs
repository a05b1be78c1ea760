//! The `OrderProvisionRequested__e` event schemas and their binary encoding.
//!
//! Payloads are Avro binary datums (no container header), as the Pub/Sub API sends them. Two
//! schema versions exist so that clients are exercised on decoding every event with the schema
//! its own `schema_id` names: V2 adds `Priority__c` in the *middle* of the record, so a client
//! that decodes V2 payloads with the V1 schema reads garbage instead of silently working.

use std::collections::HashMap;

use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::SimError;

/// Which version of the event schema a published event uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SchemaVersion {
    #[default]
    #[serde(alias = "v1")]
    V1,
    #[serde(alias = "v2")]
    V2,
}

/// Field values of one event; `None` encodes as the `null` branch of the field's union.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFields {
    pub created_date_ms: i64,
    pub created_by_id: String,
    pub order_id: Option<String>,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    pub requested_by: Option<String>,
    pub version: Option<f64>,
    /// Only in V2.
    pub priority: Option<String>,
}

#[derive(Debug)]
pub struct RegisteredSchema {
    pub id: String,
    /// The JSON `GetSchema` returns, with Salesforce's top-level `uuid` set to the id.
    pub json: String,
    pub schema: Schema,
}

/// Every schema the org knows, by id.
#[derive(Debug)]
pub struct SchemaRegistry {
    by_id: HashMap<String, RegisteredSchema>,
    v1: String,
    v2: String,
}

/// A schema id no `GetSchema` call will find.
pub const UNKNOWN_SCHEMA_ID: &str = "UnknownSchemaId-sfsim00";

fn optional(name: &str, avro_type: &str, doc: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "type": ["null", avro_type], "doc": doc, "default": null })
}

fn schema_json(event_name: &str, version: SchemaVersion) -> serde_json::Value {
    let mut fields = vec![
        serde_json::json!({ "name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime" }),
        serde_json::json!({ "name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId" }),
        optional("OrderId__c", "string", "Data:Text"),
    ];
    if version == SchemaVersion::V2 {
        fields.push(optional("Priority__c", "string", "Data:Text"));
    }
    fields.extend([
        optional("IdemKey__c", "string", "Data:Text"),
        optional("CorrelationId__c", "string", "Data:Text"),
        optional("RequestedBy__c", "string", "Data:Text"),
        optional("Version__c", "double", "Data:Double"),
    ]);
    serde_json::json!({
        "name": event_name,
        "namespace": "com.sforce.eventbus",
        "doc": "62.0",
        "type": "record",
        "fields": fields,
    })
}

fn register(event_name: &str, version: SchemaVersion) -> Result<RegisteredSchema, SimError> {
    let mut json = schema_json(event_name, version);
    let schema = Schema::parse(&json)?;
    // Salesforce's schema id is a fingerprint of the normalised schema; Rabin (CRC-64-AVRO) is
    // the fingerprint apache-avro ships, base64url-encoded like Salesforce's ids.
    let fingerprint = schema.fingerprint::<apache_avro::rabin::Rabin>();
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&fingerprint.bytes);
    if let Some(object) = json.as_object_mut() {
        object.insert("uuid".to_owned(), serde_json::Value::String(id.clone()));
    }
    let json = serde_json::to_string(&json)?;
    Ok(RegisteredSchema { id, json, schema })
}

impl SchemaRegistry {
    /// The schemas of the event behind `channel` (`/event/<Name>__e`).
    pub fn for_channel(channel: &str) -> Result<Self, SimError> {
        let event_name = channel.rsplit('/').next().unwrap_or(channel);
        let v1 = register(event_name, SchemaVersion::V1)?;
        let v2 = register(event_name, SchemaVersion::V2)?;
        let (v1_id, v2_id) = (v1.id.clone(), v2.id.clone());
        let by_id = HashMap::from([(v1_id.clone(), v1), (v2_id.clone(), v2)]);
        Ok(Self {
            by_id,
            v1: v1_id,
            v2: v2_id,
        })
    }

    pub fn get(&self, id: &str) -> Option<&RegisteredSchema> {
        self.by_id.get(id)
    }

    pub fn id_of(&self, version: SchemaVersion) -> &str {
        match version {
            SchemaVersion::V1 => &self.v1,
            SchemaVersion::V2 => &self.v2,
        }
    }

    /// The topic's current schema (what `GetTopic` reports and publishers should use).
    pub fn current_id(&self) -> &str {
        &self.v1
    }

    pub fn encode(
        &self,
        version: SchemaVersion,
        fields: &EventFields,
    ) -> Result<Vec<u8>, SimError> {
        let registered = self
            .get(self.id_of(version))
            .ok_or(SimError::UnknownSchema)?;
        let opt_string = |v: &Option<String>| match v {
            Some(s) => AvroValue::Union(1, Box::new(AvroValue::String(s.clone()))),
            None => AvroValue::Union(0, Box::new(AvroValue::Null)),
        };
        let mut record = vec![
            (
                "CreatedDate".to_owned(),
                AvroValue::Long(fields.created_date_ms),
            ),
            (
                "CreatedById".to_owned(),
                AvroValue::String(fields.created_by_id.clone()),
            ),
            ("OrderId__c".to_owned(), opt_string(&fields.order_id)),
        ];
        if version == SchemaVersion::V2 {
            record.push(("Priority__c".to_owned(), opt_string(&fields.priority)));
        }
        record.extend([
            ("IdemKey__c".to_owned(), opt_string(&fields.idem_key)),
            (
                "CorrelationId__c".to_owned(),
                opt_string(&fields.correlation_id),
            ),
            (
                "RequestedBy__c".to_owned(),
                opt_string(&fields.requested_by),
            ),
            (
                "Version__c".to_owned(),
                match fields.version {
                    Some(v) => AvroValue::Union(1, Box::new(AvroValue::Double(v))),
                    None => AvroValue::Union(0, Box::new(AvroValue::Null)),
                },
            ),
        ]);
        Ok(apache_avro::to_avro_datum(
            &registered.schema,
            AvroValue::Record(record),
        )?)
    }

    /// Bytes that start like a record of `version` and then name a union branch the schema does
    /// not have, so every Avro reader fails on them (a merely truncated payload is not enough:
    /// some readers treat a short read as zeros).
    pub fn undecodable(&self, fields: &EventFields) -> Result<Vec<u8>, SimError> {
        let mut bytes =
            apache_avro::to_avro_datum(&Schema::Long, AvroValue::Long(fields.created_date_ms))?;
        bytes.extend(apache_avro::to_avro_datum(
            &Schema::String,
            AvroValue::String(fields.created_by_id.clone()),
        )?);
        // Branch 7 of a two-branch union (zig-zag 14), then some noise.
        bytes.extend([0x0e, 0x24, b'n', b'o', b't', b' ', b'a', b'v', b'r', b'o']);
        Ok(bytes)
    }

    /// Decodes a payload with the schema `schema_id` names; the whole payload must be one datum.
    pub fn decode(&self, schema_id: &str, payload: &[u8]) -> Result<AvroValue, SimError> {
        let registered = self.get(schema_id).ok_or(SimError::UnknownSchema)?;
        let mut reader = payload;
        let value = apache_avro::from_avro_datum(&registered.schema, &mut reader, None)?;
        if !reader.is_empty() {
            return Err(SimError::TrailingBytes(reader.len()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> EventFields {
        EventFields {
            created_date_ms: 1_700_000_000_000,
            created_by_id: "005Sm0000000001AAA".into(),
            order_id: Some("801Sm0000000001AAA".into()),
            idem_key: Some("k".into()),
            correlation_id: None,
            requested_by: Some("me".into()),
            version: Some(1.0),
            priority: Some("High".into()),
        }
    }

    #[test]
    fn schema_ids_are_stable_and_distinct() {
        let a = SchemaRegistry::for_channel("/event/OrderProvisionRequested__e").unwrap();
        let b = SchemaRegistry::for_channel("/event/OrderProvisionRequested__e").unwrap();
        assert_eq!(a.id_of(SchemaVersion::V1), b.id_of(SchemaVersion::V1));
        assert_ne!(a.id_of(SchemaVersion::V1), a.id_of(SchemaVersion::V2));
        assert!(a.get(UNKNOWN_SCHEMA_ID).is_none());
        let json: serde_json::Value =
            serde_json::from_str(&a.get(a.current_id()).unwrap().json).unwrap();
        assert_eq!(json["uuid"], a.current_id());
        assert_eq!(json["name"], "OrderProvisionRequested__e");
    }

    #[test]
    fn round_trip_and_truncation() {
        let reg = SchemaRegistry::for_channel("/event/OrderProvisionRequested__e").unwrap();
        for version in [SchemaVersion::V1, SchemaVersion::V2] {
            let bytes = reg.encode(version, &fields()).unwrap();
            let value = reg.decode(reg.id_of(version), &bytes).unwrap();
            let AvroValue::Record(rec) = value else {
                panic!("not a record")
            };
            assert_eq!(rec[2].0, "OrderId__c");
        }
        let poison = reg.undecodable(&fields()).unwrap();
        for version in [SchemaVersion::V1, SchemaVersion::V2] {
            let schema = &reg.get(reg.id_of(version)).unwrap().schema;
            let raw = apache_avro::from_avro_datum(schema, &mut poison.as_slice(), None);
            assert!(raw.is_err(), "{raw:?}");
        }
        // A V2 payload read with the V1 schema does not come out right.
        let v2 = reg.encode(SchemaVersion::V2, &fields()).unwrap();
        assert!(reg.decode(reg.id_of(SchemaVersion::V1), &v2).is_err());
    }
}
