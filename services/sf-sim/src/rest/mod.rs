//! The REST API on the instance listener: SOQL query, single-record and collection updates of
//! Orders, and record reads.
//!
//! Every response carries `Sforce-Limit-Info`; every call needs a current access token
//! (`401 INVALID_SESSION_ID` otherwise). Error bodies are Salesforce's JSON arrays.

pub mod locator;
pub mod soql;
mod update;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::oauth::bearer;
use crate::sobjects::SObject;
use crate::state::Inner;

/// A top-level REST error: `[{"message": ..., "errorCode": ...}]`.
#[derive(Debug, Clone)]
pub(crate) struct RestError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Option<Vec<String>>,
}

impl RestError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: None,
        }
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        )
    }

    pub fn invalid_session() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        )
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "JSON_PARSER_ERROR", message)
    }

    /// The body Salesforce sends with an injected status.
    fn for_status(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (code, message) = match status.as_u16() {
            400 => ("MALFORMED_QUERY", "Simulated bad request"),
            401 => ("INVALID_SESSION_ID", "Session expired or invalid"),
            403 | 429 => ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
            404 => ("NOT_FOUND", "The requested resource does not exist"),
            409 => ("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record"),
            503 => ("SERVER_UNAVAILABLE", "Server is unavailable. Please try again later."),
            _ => (
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: 1234567890-12345 (-1234567890)",
            ),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut error = json!({ "message": self.message, "errorCode": self.code });
        if let (Some(fields), Some(obj)) = (self.fields, error.as_object_mut()) {
            obj.insert("fields".into(), json!(fields));
        }
        (self.status, Json(json!([error]))).into_response()
    }
}

impl From<soql::SoqlError> for RestError {
    fn from(err: soql::SoqlError) -> Self {
        RestError::new(StatusCode::BAD_REQUEST, err.code, err.message)
    }
}

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/services/data/{version}/query", get(query))
        .route("/services/data/{version}/query/", get(query))
        .route("/services/data/{version}/query/{locator}", get(query_more))
        .route(
            "/services/data/{version}/sobjects/{sobject}/{id}",
            get(read_record).patch(update::patch_record),
        )
        .route(
            "/services/data/{version}/composite/sobjects",
            patch(update::patch_collection),
        )
        .route("/services/oauth2/userinfo", get(crate::oauth::userinfo))
        .fallback(|| async { RestError::not_found() })
        .layer(axum::middleware::from_fn_with_state(inner.clone(), gate))
        .with_state(inner)
}

/// The counter key of a call: its route template relative to `/services/data/vNN.N`.
fn route_name(method: &str, path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route = match segments.as_slice() {
        ["services", "data", _, "query"] => "/query",
        ["services", "data", _, "query", _] => "/query/{locator}",
        ["services", "data", _, "sobjects", _, _] => "/sobjects/{sobject}/{id}",
        ["services", "data", _, "composite", "sobjects"] => "/composite/sobjects",
        ["services", "oauth2", "userinfo"] => "/services/oauth2/userinfo",
        _ => return "unmatched".to_owned(),
    };
    format!("{method} {route}")
}

/// Counting, injected latency and failures, authentication and the usage header, for every call.
async fn gate(State(inner): State<Arc<Inner>>, request: Request, next: Next) -> Response {
    let route = route_name(request.method().as_str(), request.uri().path());
    let usage = {
        let mut store = inner.store();
        store.api_usage += 1;
        store.api_usage
    };
    inner.stat(|s| {
        s.rest_requests += 1;
        *s.rest_requests_by_route.entry(route).or_default() += 1;
    });
    let (fault, latency) = inner.take_rest_fault(request.uri().path());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let authorized = bearer(request.headers()).is_some_and(|token| inner.token_valid(token));
    let mut response = match fault {
        Some(status) => RestError::for_status(status).into_response(),
        None if !authorized && request.uri().path() == "/services/oauth2/userinfo" => {
            (StatusCode::FORBIDDEN, "Bad_OAuth_Token").into_response()
        }
        None if !authorized => RestError::invalid_session().into_response(),
        None => next.run(request).await,
    };
    if let Ok(value) = HeaderValue::from_str(&format!("api-usage={usage}/15000")) {
        response.headers_mut().insert("sforce-limit-info", value);
    }
    response
}

/// `v62.0` and the like; anything else is a resource that does not exist.
pub(crate) fn check_version(version: &str) -> Result<(), RestError> {
    let ok = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(RestError::not_found())
    }
}

async fn query(
    State(inner): State<Arc<Inner>>,
    Path(version): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, RestError> {
    check_version(&version)?;
    let params: Vec<(String, String)> = raw
        .as_deref()
        .map(serde_urlencoded::from_str)
        .transpose()
        .map_err(|_| {
            RestError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_QUERY",
                "Invalid query string",
            )
        })?
        .unwrap_or_default();
    let soql = params
        .iter()
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.trim())
        .filter(|q| !q.is_empty())
        .ok_or_else(|| {
            RestError::new(
                StatusCode::BAD_REQUEST,
                "MALFORMED_QUERY",
                "A query string has to be specified",
            )
        })?;
    let parsed = soql::parse(soql)?;
    // Read before the store is locked: the faults have their own lock.
    let paging = locator::Paging::from_faults(&inner.faults());
    let mut store = inner.store();
    let mut result = soql::execute(&store, &parsed, &version);
    locator::page_children(
        &mut result,
        &parsed.child_relationships(),
        paging,
        &mut store.query_locators,
        &version,
        std::time::Instant::now(),
    );
    Ok(Json(result))
}

/// `GET query/{locator}-{offset}`: the next page of a cursor a `nextRecordsUrl` named.
async fn query_more(
    State(inner): State<Arc<Inner>>,
    Path((version, segment)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    check_version(&version)?;
    let invalid = || {
        RestError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        )
    };
    let (locator, offset) = locator::split(&segment).ok_or_else(invalid)?;
    let page = inner
        .store()
        .query_locators
        .page(locator, offset, std::time::Instant::now())
        .ok_or_else(invalid)?;
    Ok(Json(page.to_json(&version, locator)))
}

async fn read_record(
    State(inner): State<Arc<Inner>>,
    Path((version, sobject, id)): Path<(String, String, String)>,
) -> Result<Json<Value>, RestError> {
    check_version(&version)?;
    let object = SObject::from_name(&sobject).ok_or_else(RestError::not_found)?;
    let store = inner.store();
    let record = store
        .get(&id)
        .filter(|r| r.object == object)
        .ok_or_else(|| {
            if store.is_deleted(&id) {
                RestError::new(
                    StatusCode::NOT_FOUND,
                    "ENTITY_IS_DELETED",
                    "entity is deleted",
                )
            } else {
                RestError::not_found()
            }
        })?;
    let mut out = record.fields.clone();
    out.insert(
        "attributes".into(),
        json!({ "type": object.name(), "url": format!("/services/data/{version}/sobjects/{}/{}", object.name(), record.id()) }),
    );
    Ok(Json(Value::Object(out)))
}

/// Empty 204 body, as Salesforce answers a successful PATCH.
pub(crate) fn no_content() -> Response {
    (StatusCode::NO_CONTENT, Body::empty()).into_response()
}

pub(crate) fn parse_json(body: &Bytes) -> Result<Value, RestError> {
    serde_json::from_slice(body)
        .map_err(|e| RestError::bad_json(format!("Unexpected character: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names() {
        assert_eq!(
            route_name("GET", "/services/data/v62.0/query"),
            "GET /query"
        );
        assert_eq!(
            route_name("GET", "/services/data/v62.0/query/"),
            "GET /query"
        );
        assert_eq!(
            route_name("GET", "/services/data/v62.0/query/01gSm0000000001AAA-200"),
            "GET /query/{locator}"
        );
        assert_eq!(
            route_name("PATCH", "/services/data/v62.0/sobjects/Order/801"),
            "PATCH /sobjects/{sobject}/{id}"
        );
        assert_eq!(
            route_name("PATCH", "/services/data/v62.0/composite/sobjects"),
            "PATCH /composite/sobjects"
        );
        assert_eq!(route_name("GET", "/nope"), "unmatched");
    }

    #[test]
    fn versions() {
        assert!(check_version("v62.0").is_ok());
        assert!(check_version("v9.10").is_ok());
        for bad in ["62.0", "v62", "v.0", "vx.0", "v62.", "v62.0.1"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
