//! `PATCH /sobjects/Order/{id}` and `PATCH /composite/sobjects` (sObject Collections update).
//!
//! Both validate every field before writing anything, so a refused record is never half
//! updated. Collection results are in request order; `allOrNone` rolls the whole call back.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{check_version, no_content, parse_json, RestError};
use crate::sobjects::SObject;
use crate::state::{sf_datetime, Inner};
use crate::store::{canonical_id, Store};

/// A per-record error of a collection result (`statusCode`, not `errorCode`).
#[derive(Debug, Clone)]
struct RecordError {
    status_code: &'static str,
    message: String,
    fields: Vec<String>,
}

impl RecordError {
    fn new(status_code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status_code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    fn with_field(mut self, field: &str) -> Self {
        self.fields.push(field.to_owned());
        self
    }

    fn to_json(&self) -> Value {
        json!({ "statusCode": self.status_code, "message": self.message, "fields": self.fields })
    }
}

type Changes = Vec<(&'static str, Value)>;

/// Checks a body of field values for an Order; returns the normalised changes.
fn check_fields(body: &Map<String, Value>, id: &str) -> Result<Changes, RecordError> {
    let mut changes = Vec::new();
    for (name, value) in body {
        if name == "attributes" {
            continue;
        }
        if name.eq_ignore_ascii_case("id") {
            if value.as_str().and_then(canonical_id).as_deref() == Some(id) {
                continue;
            }
            return Err(RecordError::new(
                "INVALID_ID_FIELD",
                "Id in the body does not match the record",
            )
            .with_field("Id"));
        }
        let field = SObject::Order.field(name).ok_or_else(|| {
            RecordError::new(
                "INVALID_FIELD",
                format!("No such column '{name}' on sobject of type Order"),
            )
            .with_field(name)
        })?;
        if !field.updatable {
            return Err(RecordError::new(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to create/update fields: {}. Please check the security settings of this \
                     field and verify that it is read/write for your profile or permission set.",
                    field.name
                ),
            )
            .with_field(field.name));
        }
        let value = field
            .check_value(value)
            .map_err(|e| RecordError::new(e.status_code, e.message).with_field(field.name))?;
        changes.push((field.name, value));
    }
    Ok(changes)
}

/// Writes the changes; tells the observers when `Activation_Status__c` was among them.
fn apply(inner: &Inner, store: &mut Store, id: &str, changes: Changes) {
    if let Some(record) = store.get_mut(id) {
        if let Some((_, status)) = changes
            .iter()
            .find(|(name, _)| *name == "Activation_Status__c")
        {
            inner.order_written(id, status.as_str().unwrap_or_default());
        }
        for (name, value) in changes {
            record.fields.insert(name.to_owned(), value);
        }
        record.fields.insert(
            "LastModifiedDate".into(),
            Value::String(sf_datetime(time::OffsetDateTime::now_utc())),
        );
    }
}

fn as_top_level(status: StatusCode, err: RecordError) -> RestError {
    RestError {
        status,
        code: err.status_code,
        message: err.message,
        fields: (!err.fields.is_empty()).then_some(err.fields),
    }
}

pub(crate) async fn patch_record(
    State(inner): State<Arc<Inner>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, RestError> {
    check_version(&version)?;
    if SObject::from_name(&sobject) != Some(SObject::Order) {
        return Err(RestError::not_found());
    }
    let Some(canonical) = canonical_id(&id) else {
        // Salesforce reads a non-id as an external id value and finds no such field.
        return Err(RestError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("Provided external ID field does not exist or is not accessible: {id}"),
        ));
    };
    let body = parse_json(&body)?;
    let Value::Object(body) = body else {
        return Err(RestError::bad_json(
            "Cannot deserialize instance of Order from a non-object value",
        ));
    };
    let mut store = inner.store();
    match store.get(&canonical) {
        Some(r) if r.object == SObject::Order => {}
        Some(_) => return Err(RestError::not_found()),
        None if store.is_deleted(&canonical) => {
            return Err(RestError::new(
                StatusCode::NOT_FOUND,
                "ENTITY_IS_DELETED",
                "entity is deleted",
            ))
        }
        None => return Err(RestError::not_found()),
    }
    let changes =
        check_fields(&body, &canonical).map_err(|e| as_top_level(StatusCode::BAD_REQUEST, e))?;
    apply(&inner, &mut store, &canonical, changes);
    Ok(no_content())
}

const MAX_RECORDS: usize = 200;

pub(crate) async fn patch_collection(
    State(inner): State<Arc<Inner>>,
    Path(version): Path<String>,
    body: Bytes,
) -> Result<Response, RestError> {
    check_version(&version)?;
    let body = parse_json(&body)?;
    let all_or_none = match body.get("allOrNone") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(RestError::bad_json("allOrNone must be a boolean")),
    };
    let Some(records) = body.get("records").and_then(Value::as_array) else {
        return Err(RestError::bad_json(
            "The request body must hold a records array",
        ));
    };
    if records.len() > MAX_RECORDS {
        return Err(RestError::new(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        ));
    }
    let mut store = inner.store();
    let mut seen = HashSet::new();
    let planned: Vec<Result<(String, Changes), RecordError>> = records
        .iter()
        .map(|record| plan(&store, record, &mut seen))
        .collect();
    let any_failed = planned.iter().any(Result::is_err);
    let mut results = Vec::with_capacity(planned.len());
    for outcome in planned {
        match outcome {
            Ok(_) if all_or_none && any_failed => {
                results.push(json!({
                    "success": false,
                    "errors": [RecordError::new(
                        "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                        "Record rolled back because not all records were valid and the request was using AllOrNone header",
                    ).to_json()],
                }));
            }
            Ok((id, changes)) => {
                apply(&inner, &mut store, &id, changes);
                results.push(json!({ "id": id, "success": true, "errors": [] }));
            }
            Err(err) => results.push(json!({ "success": false, "errors": [err.to_json()] })),
        }
    }
    Ok((StatusCode::OK, Json(Value::Array(results))).into_response())
}

fn plan(
    store: &Store,
    record: &Value,
    seen: &mut HashSet<String>,
) -> Result<(String, Changes), RecordError> {
    let Value::Object(fields) = record else {
        return Err(RecordError::new(
            "JSON_PARSER_ERROR",
            "A record must be a JSON object",
        ));
    };
    let object_type = fields
        .get("attributes")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str);
    match object_type {
        None => {
            return Err(RecordError::new(
                "INVALID_TYPE",
                "No SObject Type defined in attributes",
            ))
        }
        Some(t) if SObject::from_name(t) != Some(SObject::Order) => {
            return Err(RecordError::new(
                "INVALID_TYPE",
                format!("sObject type '{t}' is not supported for update here"),
            ));
        }
        Some(_) => {}
    }
    let raw_id = fields
        .get("id")
        .or_else(|| fields.get("Id"))
        .and_then(Value::as_str);
    let Some(raw_id) = raw_id else {
        return Err(
            RecordError::new("MISSING_ARGUMENT", "Id not specified in an update call")
                .with_field("Id"),
        );
    };
    let id = canonical_id(raw_id).ok_or_else(|| {
        RecordError::new("MALFORMED_ID", format!("malformed id {raw_id}")).with_field("Id")
    })?;
    if !seen.insert(id.clone()) {
        return Err(
            RecordError::new("INVALID_FIELD", format!("Duplicate id in list: {id}"))
                .with_field("Id"),
        );
    }
    match store.get(&id) {
        Some(r) if r.object == SObject::Order => {}
        None if store.is_deleted(&id) => {
            return Err(RecordError::new("ENTITY_IS_DELETED", "entity is deleted"))
        }
        _ => {
            return Err(RecordError::new(
                "INVALID_CROSS_REFERENCE_KEY",
                "invalid cross reference id",
            ))
        }
    }
    let body: Map<String, Value> = fields
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("id"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    check_fields(&body, &id).map(|changes| (id, changes))
}
