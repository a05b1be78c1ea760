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
    match direct::decode(schema, payload) {
        Ok(Json::Object(map)) => Ok(map),
        Ok(other) => Err(AvroError::NotARecord(json_kind(&other))),
        Err(direct::Failure::Invalid(detail)) => Err(AvroError::Decode(detail)),
        Err(direct::Failure::TrailingBytes(n)) => Err(AvroError::TrailingBytes(n)),
        // Named references, decimals, durations, UUIDs: the general path below.
        Err(direct::Failure::Unsupported) => decode_record_general(schema, payload),
    }
}

/// Through apache-avro's `Value`, for every schema; [`direct`] handles the usual ones faster.
fn decode_record_general(schema: &Schema, payload: &[u8]) -> Result<Map<String, Json>, AvroError> {
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

/// A decoder straight from the bytes to JSON for the schemas Salesforce events use (records of
/// primitives, unions, enums, fixed, arrays, maps, nested records; int and long logical types),
/// giving exactly what [`decode_record_general`] gives. It is strict where apache-avro is
/// lenient: running out of bytes anywhere is an error, never a default, so a complete decode
/// that consumes every byte is the integrity check the general path gets from re-encoding
/// (no re-encode, no `Value` tree, no schema resolution per payload).
mod direct {
    use apache_avro::Schema;
    use serde_json::{Map, Number, Value as Json};

    pub(super) enum Failure {
        Invalid(String),
        TrailingBytes(usize),
        Unsupported,
    }

    fn invalid(detail: impl Into<String>) -> Failure {
        Failure::Invalid(detail.into())
    }

    /// Records nest; a payload cannot make this recurse deeper than its schema does, but a
    /// schema can be deep: past this the general path decides.
    const MAX_DEPTH: usize = 64;

    pub(super) fn decode(schema: &Schema, payload: &[u8]) -> Result<Json, Failure> {
        let mut reader = Reader { buf: payload };
        let value = reader.value(schema, 0)?;
        if !reader.buf.is_empty() {
            return Err(Failure::TrailingBytes(reader.buf.len()));
        }
        Ok(value)
    }

    struct Reader<'a> {
        buf: &'a [u8],
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], Failure> {
            if self.buf.len() < n {
                return Err(invalid(format!(
                    "payload is truncated: {} more bytes needed, {} left",
                    n,
                    self.buf.len()
                )));
            }
            let (head, rest) = self.buf.split_at(n);
            self.buf = rest;
            Ok(head)
        }

        fn long(&mut self) -> Result<i64, Failure> {
            let mut raw: u64 = 0;
            for i in 0..10 {
                let byte = self.take(1)?[0];
                raw |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    // Zigzag.
                    return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
                }
            }
            Err(invalid("a variable-length integer is longer than 10 bytes"))
        }

        fn int(&mut self) -> Result<i32, Failure> {
            let n = self.long()?;
            i32::try_from(n).map_err(|_| invalid(format!("{n} does not fit an int")))
        }

        fn len(&mut self) -> Result<usize, Failure> {
            let n = self.long()?;
            usize::try_from(n).map_err(|_| invalid(format!("negative length {n}")))
        }

        fn bytes(&mut self) -> Result<&'a [u8], Failure> {
            let n = self.len()?;
            self.take(n)
        }

        fn string(&mut self) -> Result<String, Failure> {
            let bytes = self.bytes()?;
            std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|e| invalid(format!("a string is not UTF-8: {e}")))
        }

        /// Array and map blocks: the item count of the next block, 0 at the end.
        fn block_len(&mut self) -> Result<usize, Failure> {
            let n = self.long()?;
            if n < 0 {
                // A negative count is followed by the block's size in bytes.
                self.long()?;
            }
            usize::try_from(n.unsigned_abs()).map_err(|_| invalid("block too large"))
        }

        fn value(&mut self, schema: &Schema, depth: usize) -> Result<Json, Failure> {
            if depth > MAX_DEPTH {
                return Err(Failure::Unsupported);
            }
            Ok(match schema {
                Schema::Null => Json::Null,
                Schema::Boolean => match self.take(1)?[0] {
                    0 => Json::Bool(false),
                    1 => Json::Bool(true),
                    other => return Err(invalid(format!("{other} is not a boolean"))),
                },
                Schema::Int | Schema::Date | Schema::TimeMillis => Json::from(self.int()?),
                Schema::Long
                | Schema::TimeMicros
                | Schema::TimestampMillis
                | Schema::TimestampMicros
                | Schema::TimestampNanos
                | Schema::LocalTimestampMillis
                | Schema::LocalTimestampMicros
                | Schema::LocalTimestampNanos => Json::from(self.long()?),
                Schema::Float => {
                    let raw = self.take(4)?;
                    let f = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                    Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number)
                }
                Schema::Double => {
                    let raw = self.take(8)?;
                    let mut le = [0u8; 8];
                    le.copy_from_slice(raw);
                    Number::from_f64(f64::from_le_bytes(le)).map_or(Json::Null, Json::Number)
                }
                Schema::Bytes => Json::from(self.bytes()?.to_vec()),
                Schema::String => Json::String(self.string()?),
                Schema::Fixed(fixed) => Json::from(self.take(fixed.size)?.to_vec()),
                Schema::Enum(e) => {
                    let index = self.int()?;
                    let symbol = usize::try_from(index)
                        .ok()
                        .and_then(|i| e.symbols.get(i))
                        .ok_or_else(|| invalid(format!("enum index {index} out of range")))?;
                    Json::String(symbol.clone())
                }
                Schema::Union(union) => {
                    let index = self.long()?;
                    let branch = usize::try_from(index)
                        .ok()
                        .and_then(|i| union.variants().get(i))
                        .ok_or_else(|| invalid(format!("union index {index} out of range")))?;
                    self.value(branch, depth + 1)?
                }
                Schema::Array(array) => {
                    let mut items = Vec::new();
                    loop {
                        let n = self.block_len()?;
                        if n == 0 {
                            break;
                        }
                        for _ in 0..n {
                            items.push(self.value(&array.items, depth + 1)?);
                        }
                    }
                    Json::Array(items)
                }
                Schema::Map(map) => {
                    let mut entries = Map::new();
                    loop {
                        let n = self.block_len()?;
                        if n == 0 {
                            break;
                        }
                        for _ in 0..n {
                            let key = self.string()?;
                            let value = self.value(&map.types, depth + 1)?;
                            entries.insert(key, value);
                        }
                    }
                    Json::Object(entries)
                }
                Schema::Record(record) => {
                    let mut fields = Map::new();
                    for field in &record.fields {
                        let value = self.value(&field.schema, depth + 1)?;
                        fields.insert(field.name.clone(), value);
                    }
                    Json::Object(fields)
                }
                Schema::Decimal(_)
                | Schema::BigDecimal
                | Schema::Uuid
                | Schema::Duration
                | Schema::Ref { .. } => return Err(Failure::Unsupported),
            })
        }
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
    #[test]
    fn the_direct_decoder_agrees_with_the_general_one() {
        let schema = parse_schema(
            r#"{"name":"Rich__e","type":"record","fields":[
            {"name":"B","type":"boolean"},
            {"name":"I","type":"int"},
            {"name":"L","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"F","type":"float"},
            {"name":"D","type":["null","double"]},
            {"name":"S","type":["null","string"]},
            {"name":"Y","type":"bytes"},
            {"name":"X","type":{"type":"fixed","name":"Four","size":4}},
            {"name":"E","type":{"type":"enum","name":"Colour","symbols":["RED","GREEN"]}},
            {"name":"A","type":{"type":"array","items":"string"}},
            {"name":"M","type":{"type":"map","values":"long"}},
            {"name":"H","type":{"type":"record","name":"Header","fields":[
                {"name":"changedFields","type":{"type":"array","items":"string"}}]}}]}"#,
        )
        .unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("B", Value::Boolean(true));
        record.put("I", Value::Int(-7));
        record.put("L", Value::TimestampMillis(1_700_000_000_123));
        record.put("F", Value::Float(1.5));
        record.put("D", Value::Union(1, Box::new(Value::Double(-2.25))));
        record.put(
            "S",
            Value::Union(1, Box::new(Value::String("héllo".into()))),
        );
        record.put("Y", Value::Bytes(vec![0, 255, 7]));
        record.put("X", Value::Fixed(4, vec![1, 2, 3, 4]));
        record.put("E", Value::Enum(1, "GREEN".into()));
        record.put(
            "A",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
        record.put(
            "M",
            Value::Map([("k".to_owned(), Value::Long(-1))].into_iter().collect()),
        );
        record.put(
            "H",
            Value::Record(vec![(
                "changedFields".to_owned(),
                Value::Array(vec![Value::String("OrderId__c".into())]),
            )]),
        );
        let bytes = apache_avro::to_avro_datum(&schema, record).unwrap();
        let Ok(Json::Object(direct)) = direct::decode(&schema, &bytes) else {
            panic!("the direct decoder does not handle this schema");
        };
        assert_eq!(direct, decode_record_general(&schema, &bytes).unwrap());
        // Every truncation is an error, never a record with defaults filled in.
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode_record(&schema, &bytes[..cut]),
                    Err(AvroError::Decode(_))
                ),
                "cut at {cut}"
            );
        }
    }
}
