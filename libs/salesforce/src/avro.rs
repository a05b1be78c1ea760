//! Event payloads: the Avro binary encoding of one record (no container header), decoded with
//! the writer schema that `GetSchema` returns for the event's `schema_id`. Never a compiled-in
//! schema: a field added in Salesforce shows up here without a release.

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::{Map, Number, Value as Json};

#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    #[error("the schema JSON is not a valid Avro schema: {0}")]
    Schema(String),
    #[error("the payload does not decode with its schema: {0}")]
    Decode(String),
    #[error("the payload decodes to {0}, not a record")]
    NotARecord(&'static str),
    #[error("the payload has {0} bytes left over after the record")]
    TrailingBytes(usize),
}

pub fn parse_schema(schema_json: &str) -> Result<Schema, AvroError> {
    Schema::parse_str(schema_json).map_err(|e| AvroError::Schema(e.to_string()))
}

/// Decodes one record into a JSON object: unions are unwrapped to their value, `null` branches
/// become JSON null, longs stay exact (Salesforce's `CreatedDate` is epoch milliseconds).
pub fn decode_record(schema: &Schema, payload: &[u8]) -> Result<Map<String, Json>, AvroError> {
    let mut reader = payload;
    let value = apache_avro::from_avro_datum(schema, &mut reader, None)
        .map_err(|e| AvroError::Decode(e.to_string()))?;
    if !reader.is_empty() {
        return Err(AvroError::TrailingBytes(reader.len()));
    }
    // apache-avro fills record fields it could not read with their defaults instead of failing,
    // so a truncated payload decodes "successfully". The binary encoding is canonical (its
    // length does not depend on map order), so the decoded value must re-encode to as many
    // bytes as arrived.
    let reencoded = apache_avro::to_avro_datum(schema, value.clone())
        .map_err(|e| AvroError::Decode(format!("decoded value does not fit its schema: {e}")))?;
    if reencoded.len() != payload.len() {
        return Err(AvroError::Decode(format!(
            "payload is truncated: {} bytes, a complete record takes {}",
            payload.len(),
            reencoded.len()
        )));
    }
    match to_json(value) {
        Json::Object(map) => Ok(map),
        other => Err(AvroError::NotARecord(json_kind(&other))),
    }
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn to_json(value: Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(b),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Json::from(i),
        Value::Long(i)
        | Value::TimeMicros(i)
        | Value::TimestampMillis(i)
        | Value::TimestampMicros(i)
        | Value::TimestampNanos(i)
        | Value::LocalTimestampMillis(i)
        | Value::LocalTimestampMicros(i)
        | Value::LocalTimestampNanos(i) => Json::from(i),
        Value::Float(f) => Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number),
        Value::Double(f) => Number::from_f64(f).map_or(Json::Null, Json::Number),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::from(b),
        Value::String(s) | Value::Enum(_, s) => Json::String(s),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Union(_, inner) => to_json(*inner),
        Value::Array(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Value::Map(map) => Json::Object(map.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Value::Record(fields) => {
            Json::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Record;

    const SCHEMA: &str = r#"{"name":"Ev__e","namespace":"com.sforce.eventbus","type":"record","fields":[
        {"name":"CreatedDate","type":"long"},
        {"name":"OrderId__c","type":["null","string"],"default":null},
        {"name":"Version__c","type":["null","double"],"default":null}]}"#;

    #[test]
    fn record_with_unions_decodes_to_plain_json() {
        let schema = parse_schema(SCHEMA).unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("CreatedDate", Value::Long(1_700_000_000_123));
        record.put(
            "OrderId__c",
            Value::Union(1, Box::new(Value::String("801xx".into()))),
        );
        record.put("Version__c", Value::Union(0, Box::new(Value::Null)));
        let bytes = apache_avro::to_avro_datum(&schema, record).unwrap();
        let decoded = decode_record(&schema, &bytes).unwrap();
        assert_eq!(decoded["CreatedDate"], Json::from(1_700_000_000_123_i64));
        assert_eq!(decoded["OrderId__c"], "801xx");
        assert_eq!(decoded["Version__c"], Json::Null);
    }

    #[test]
    fn truncated_and_padded_payloads_are_errors() {
        let schema = parse_schema(SCHEMA).unwrap();
        // Cut after CreatedDate, and in the middle of OrderId__c's string.
        assert!(matches!(
            decode_record(&schema, &[0x02]),
            Err(AvroError::Decode(_))
        ));
        assert!(matches!(
            decode_record(&schema, &[0x02, 0x02, 0x10, b'8']),
            Err(AvroError::Decode(_))
        ));
        let mut record = Record::new(&schema).unwrap();
        record.put("CreatedDate", Value::Long(1));
        record.put("OrderId__c", Value::Union(0, Box::new(Value::Null)));
        record.put("Version__c", Value::Union(0, Box::new(Value::Null)));
        let mut bytes = apache_avro::to_avro_datum(&schema, record).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            decode_record(&schema, &bytes),
            Err(AvroError::TrailingBytes(3))
        ));
    }
}
