//! JSON Schemas (Draft 2020-12) of the contract's bodies, generated from the types in
//! [`crate::bodies`] so the published schemas cannot drift from what the services write. They
//! are checked in under `docs/schemas/<schema>.json`; the test `tests/schemas.rs` fails when the
//! two differ (`UPDATE_SCHEMAS=1 cargo test -p messages --test schemas` rewrites the files).

use schemars::{JsonSchema, Schema};
use serde_json::Value;

use crate::bodies::{
    DeadLetterV1, OrderUpdateV1, ProvisioningOutcomeV1, ProvisioningRequestedV1,
    ProvisioningStatusV1,
};

/// Every body's schema name (the value of its `schema` field and of the `Schema` header) with its
/// JSON Schema, in the order of docs/contract.md.
pub fn all() -> Vec<(&'static str, Value)> {
    vec![
        (
            ProvisioningRequestedV1::SCHEMA,
            of::<ProvisioningRequestedV1>(ProvisioningRequestedV1::SCHEMA),
        ),
        (
            ProvisioningOutcomeV1::SCHEMA,
            of::<ProvisioningOutcomeV1>(ProvisioningOutcomeV1::SCHEMA),
        ),
        (
            OrderUpdateV1::SCHEMA,
            of::<OrderUpdateV1>(OrderUpdateV1::SCHEMA),
        ),
        (
            DeadLetterV1::SCHEMA,
            of::<DeadLetterV1>(DeadLetterV1::SCHEMA),
        ),
        (
            ProvisioningStatusV1::SCHEMA,
            of::<ProvisioningStatusV1>(ProvisioningStatusV1::SCHEMA),
        ),
    ]
}

/// The file a schema is published as, under `docs/schemas/` (also its `$id`).
pub fn file_name(schema: &str) -> String {
    format!("{schema}.json")
}

/// A schema as written to its file: pretty JSON with a trailing newline, so the checked-in file
/// is diff-friendly and the comparison is byte for byte.
pub fn to_file_text(schema: &Value) -> String {
    // Serialising a `Value` cannot fail (its map keys are strings).
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

fn of<T: JsonSchema>(name: &str) -> Value {
    let mut schema: Schema = schemars::schema_for!(T);
    // A relative `$id`: the schemas refer to nothing outside themselves, so where they are
    // published (a docs site, a registry) does not have to be fixed here.
    schema.insert("$id".to_owned(), Value::String(file_name(name)));
    let mut value = schema.to_value();
    unwrap_descriptions(&mut value);
    value
}

/// Doc comments are wrapped at 100 columns; their line breaks would show in every schema
/// viewer, so a single line break becomes a space (a blank line, a new paragraph, stays).
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                match item {
                    Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.replace('\n', " "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}
