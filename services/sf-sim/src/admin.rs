//! The admin HTTP API under `/admin` on the login listener: the same powers as [`SimHandle`],
//! in JSON, for the demo, scripts and tests in other processes.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /admin/accounts` | `{"name", "wh_account"?}` | `{"id"}` |
//! | `POST /admin/products` | `{"name", "wh_product_id"?, "billing_cycle"?}` | `{"id"}` |
//! | `POST /admin/orders` | `{"account_id", "items": [{"product_id", "quantity"}]}` | `{"id"}` |
//! | `GET /admin/orders/{id}` | | the Order's fields plus `"OrderItems": [...]` |
//! | `PATCH /admin/orders/{id}` | `{field: value, ...}` (no validation) | 204 |
//! | `DELETE /admin/orders/{id}` | | 204 |
//! | `POST /admin/orders/{id}/approve` | | PublishedEvent |
//! | `POST /admin/events` | EventSpec | PublishedEvent |
//! | `GET /admin/events` | | `[StoredEventInfo]` |
//! | `POST /admin/events/poison` | `{"kind": "undecodable_avro" \| "missing_order_id" \| "malformed_order_id" \| "unknown_schema"}` | PublishedEvent |
//! | `POST /admin/tokens/expire` | | 204 |
//! | `GET`/`PUT /admin/faults` | Faults | Faults |
//! | `GET /admin/stats` | | SimStats |
//! | `POST /admin/stats/reset` | | 204 |
//! | `POST /admin/seed-demo` | | DemoSeed |
//!
//! PublishedEvent is `{"event_id", "replay_id" (base64), "schema_id"}`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::http::{json_body, ErrorAnswer as AdminError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::SimError;
use crate::faults::Faults;
use crate::sobjects::SObject;
use crate::state::{EventSpec, PoisonKind, SimHandle};

fn internal(err: &SimError) -> AdminError {
    AdminError(
        StatusCode::INTERNAL_SERVER_ERROR,
        platform::error::Chain(err).to_string(),
    )
}

fn not_found(id: &str) -> AdminError {
    AdminError(StatusCode::NOT_FOUND, format!("no order {id}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    name: String,
    wh_account: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    name: String,
    wh_product_id: Option<String>,
    billing_cycle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    product_id: String,
    #[serde(default = "one")]
    quantity: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrder {
    account_id: String,
    #[serde(default)]
    items: Vec<NewItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Poison {
    kind: PoisonKind,
}

pub(crate) fn router(handle: SimHandle) -> Router {
    Router::new()
        .route("/admin/accounts", post(create_account))
        .route("/admin/products", post(create_product))
        .route("/admin/orders", post(create_order))
        .route(
            "/admin/orders/{id}",
            get(get_order).patch(patch_order).delete(delete_order),
        )
        .route("/admin/orders/{id}/approve", post(approve_order))
        .route("/admin/events", post(publish_event).get(list_events))
        .route("/admin/events/poison", post(publish_poison))
        .route("/admin/tokens/expire", post(expire_tokens))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/stats", get(stats))
        .route("/admin/stats/reset", post(reset_stats))
        .route("/admin/seed-demo", post(seed_demo))
        .with_state(handle)
}

async fn create_account(
    State(sim): State<SimHandle>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let req: NewAccount = json_body(&bytes)?;
    let id = sim.seed_account(&req.name, req.wh_account.as_deref());
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn create_product(
    State(sim): State<SimHandle>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let req: NewProduct = json_body(&bytes)?;
    let id = sim.seed_product(
        &req.name,
        req.wh_product_id.as_deref(),
        req.billing_cycle.as_deref(),
    );
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn create_order(State(sim): State<SimHandle>, bytes: Bytes) -> Result<Response, AdminError> {
    let req: NewOrder = json_body(&bytes)?;
    let items: Vec<(&str, f64)> = req
        .items
        .iter()
        .map(|i| (i.product_id.as_str(), i.quantity))
        .collect();
    let id = sim.seed_order(&req.account_id, &items);
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn get_order(
    State(sim): State<SimHandle>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let mut order = sim.order(&id).ok_or_else(|| not_found(&id))?;
    if let Some(fields) = order.as_object_mut() {
        fields.insert("OrderItems".into(), Value::Array(sim.order_items(&id)));
    }
    Ok(Json(order))
}

async fn patch_order(
    State(sim): State<SimHandle>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, AdminError> {
    let fields: serde_json::Map<String, Value> = json_body(&bytes)?;
    if sim.order(&id).is_none() {
        return Err(not_found(&id));
    }
    // All names are checked first so that a bad body changes nothing.
    if let Some(unknown) = fields
        .keys()
        .find(|name| SObject::Order.field(name).is_none())
    {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            format!("Order has no field {unknown}"),
        ));
    }
    for (name, value) in fields {
        sim.set_order_field(&id, &name, value)
            .map_err(|e| AdminError(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_order(
    State(sim): State<SimHandle>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    if sim.delete_order(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&id))
    }
}

async fn approve_order(
    State(sim): State<SimHandle>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    match sim.approve_order(&id) {
        Ok(event) => Ok(Json(event).into_response()),
        Err(SimError::NotFound(_)) => Err(not_found(&id)),
        Err(err) => Err(internal(&err)),
    }
}

async fn publish_event(State(sim): State<SimHandle>, bytes: Bytes) -> Result<Response, AdminError> {
    let spec: EventSpec = json_body(&bytes)?;
    let event = sim.publish_event(spec).map_err(|e| internal(&e))?;
    Ok(Json(event).into_response())
}

async fn list_events(State(sim): State<SimHandle>) -> Response {
    Json(sim.events()).into_response()
}

async fn publish_poison(
    State(sim): State<SimHandle>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let poison: Poison = json_body(&bytes)?;
    let event = sim.publish_poison(poison.kind).map_err(|e| internal(&e))?;
    Ok(Json(event).into_response())
}

async fn expire_tokens(State(sim): State<SimHandle>) -> StatusCode {
    sim.expire_tokens();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(sim): State<SimHandle>) -> Json<Faults> {
    Json(sim.faults())
}

async fn put_faults(
    State(sim): State<SimHandle>,
    bytes: Bytes,
) -> Result<Json<Faults>, AdminError> {
    let faults: Faults = json_body(&bytes)?;
    sim.set_faults(faults);
    Ok(Json(sim.faults()))
}

async fn stats(State(sim): State<SimHandle>) -> Response {
    Json(sim.stats()).into_response()
}

async fn reset_stats(State(sim): State<SimHandle>) -> StatusCode {
    sim.reset_stats();
    StatusCode::NO_CONTENT
}

async fn seed_demo(State(sim): State<SimHandle>) -> Response {
    (StatusCode::CREATED, Json(sim.seed_demo())).into_response()
}
