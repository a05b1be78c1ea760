//! The admin HTTP API under `/admin`: the powers of [`WhmcsHandle`] in JSON, for the demo,
//! scripts and tests in other processes. Errors are `{"error": "..."}` with 400 or 404.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /admin/clients` | | `[Client]` |
//! | `POST /admin/clients` | `{"name", "email"?, "status"? ("Active"/"Inactive"/"Closed"), "with_pay_method"?}` | 201 `{"id"}` |
//! | `GET /admin/clients/{id}` | | Client (with `pay_methods`) |
//! | `PATCH /admin/clients/{id}` | `{"status"}` | Client |
//! | `POST /admin/clients/{id}/paymethods` | `{"gateway"?, "bank"?}` | 201 `{"id"}` |
//! | `DELETE /admin/clients/{id}/paymethods` | | `{"removed"}` |
//! | `GET /admin/products` | | `[Product]` |
//! | `POST /admin/products` | `{"name", "cycles": ["monthly", …], "allowqty"?, "monthly_price"?, "setup_fee"?, "module"?}` | 201 `{"id"}` |
//! | `GET /admin/orders[?client_id=N]` | | `{"count", "orders": [Order]}` newest first |
//! | `GET /admin/orders/{id}` | | Order (notes, status, services, invoice, accept record) |
//! | `PATCH /admin/orders/{id}` | `{"status"}` | Order |
//! | `GET /admin/faults` | | `{"latency_all_ms", "actions": {action: ActionFaults}}` |
//! | `PUT /admin/faults/{action}` | ActionFaults ([`crate::faults`]) | ActionFaults |
//! | `DELETE /admin/faults` | | 204, every fault cleared |
//! | `PUT /admin/latency` | `{"latency_ms"}` | 204, latency of every action |
//! | `GET /admin/stats` | | WhmcsStats `{"calls": {action: n}, "auth_failures", "faults_fired"}` |
//! | `POST /admin/stats/reset` | | 204 |
//! | `POST /admin/bans/clear` | | 204 |
//! | `POST /admin/seed-demo` | | DemoSeed |

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use platform::http::{json_body, ErrorAnswer as AdminError};
use serde::Deserialize;
use serde_json::json;

use crate::error::SimError;
use crate::faults::ActionFaults;
use crate::state::{ClientSpec, ClientStatus, ProductSpec, WhmcsHandle};

impl From<SimError> for AdminError {
    fn from(err: SimError) -> Self {
        let status = match err {
            SimError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        AdminError(status, err.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusPatch {
    status: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientStatusPatch {
    status: ClientStatus,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewPayMethod {
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    bank: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Latency {
    latency_ms: u64,
}

pub(crate) fn router(handle: WhmcsHandle) -> Router {
    Router::new()
        .route("/admin/clients", get(list_clients).post(create_client))
        .route("/admin/clients/{id}", get(get_client).patch(patch_client))
        .route(
            "/admin/clients/{id}/paymethods",
            post(add_pay_method).delete(remove_pay_methods),
        )
        .route("/admin/products", get(list_products).post(create_product))
        .route("/admin/orders", get(list_orders))
        .route("/admin/orders/{id}", get(get_order).patch(patch_order))
        .route("/admin/faults", get(get_faults).delete(clear_faults))
        .route("/admin/faults/{action}", put(put_faults))
        .route("/admin/latency", put(put_latency))
        .route("/admin/stats", get(stats))
        .route("/admin/stats/reset", post(reset_stats))
        .route("/admin/bans/clear", post(clear_bans))
        .route("/admin/seed-demo", post(seed_demo))
        .with_state(handle)
}

async fn list_clients(State(sim): State<WhmcsHandle>) -> Response {
    Json(sim.clients()).into_response()
}

async fn create_client(
    State(sim): State<WhmcsHandle>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let spec: ClientSpec = json_body(&bytes)?;
    if spec.name.trim().is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "name is empty".to_owned(),
        ));
    }
    let id = sim.seed_client_with(&spec);
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn get_client(
    State(sim): State<WhmcsHandle>,
    Path(id): Path<u64>,
) -> Result<Response, AdminError> {
    let client = sim
        .client(id)
        .ok_or_else(|| AdminError::from(SimError::NotFound(format!("client {id}"))))?;
    Ok(Json(client).into_response())
}

async fn patch_client(
    State(sim): State<WhmcsHandle>,
    Path(id): Path<u64>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let patch: ClientStatusPatch = json_body(&bytes)?;
    sim.set_client_status(id, patch.status)?;
    get_client(State(sim), Path(id)).await
}

async fn add_pay_method(
    State(sim): State<WhmcsHandle>,
    Path(id): Path<u64>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let req: NewPayMethod = json_body(&bytes)?;
    let pm = sim.add_pay_method(id, req.gateway.as_deref(), req.bank)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": pm }))).into_response())
}

async fn remove_pay_methods(
    State(sim): State<WhmcsHandle>,
    Path(id): Path<u64>,
) -> Result<Response, AdminError> {
    let removed = sim.remove_pay_methods(id)?;
    Ok(Json(json!({ "removed": removed })).into_response())
}

async fn list_products(State(sim): State<WhmcsHandle>) -> Response {
    Json(sim.products()).into_response()
}

async fn create_product(
    State(sim): State<WhmcsHandle>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let spec: ProductSpec = json_body(&bytes)?;
    if spec.name.trim().is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "name is empty".to_owned(),
        ));
    }
    let id = sim.seed_product_with(&spec)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

async fn list_orders(
    State(sim): State<WhmcsHandle>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, AdminError> {
    let orders = match query.get("client_id") {
        Some(raw) => {
            let id = raw.trim().parse::<u64>().map_err(|_| {
                AdminError(
                    StatusCode::BAD_REQUEST,
                    format!("client_id {raw:?} is not an id"),
                )
            })?;
            sim.orders_for_client(id)
        }
        None => sim.orders(),
    };
    Ok(Json(json!({ "count": orders.len(), "orders": orders })).into_response())
}

async fn get_order(
    State(sim): State<WhmcsHandle>,
    Path(id): Path<u64>,
) -> Result<Response, AdminError> {
    let order = sim
        .order(id)
        .ok_or_else(|| AdminError::from(SimError::NotFound(format!("order {id}"))))?;
    Ok(Json(order).into_response())
}

async fn patch_order(
    State(sim): State<WhmcsHandle>,
    Path(id): Path<u64>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let patch: StatusPatch = json_body(&bytes)?;
    sim.set_order_status(id, &patch.status)?;
    get_order(State(sim), Path(id)).await
}

async fn get_faults(State(sim): State<WhmcsHandle>) -> Response {
    let latency_all_ms = u64::try_from(sim.latency_all().as_millis()).unwrap_or(u64::MAX);
    Json(json!({ "latency_all_ms": latency_all_ms, "actions": sim.faults() })).into_response()
}

async fn put_faults(
    State(sim): State<WhmcsHandle>,
    Path(action): Path<String>,
    bytes: Bytes,
) -> Result<Response, AdminError> {
    let faults: ActionFaults = json_body(&bytes)?;
    faults
        .validate()
        .map_err(|e| AdminError(StatusCode::BAD_REQUEST, e))?;
    if crate::api::normalize_action(&action).is_empty() {
        return Err(AdminError(
            StatusCode::BAD_REQUEST,
            "empty action".to_owned(),
        ));
    }
    sim.set_faults(&action, faults.clone());
    Ok(Json(faults).into_response())
}

async fn clear_faults(State(sim): State<WhmcsHandle>) -> StatusCode {
    sim.clear_faults();
    StatusCode::NO_CONTENT
}

async fn put_latency(
    State(sim): State<WhmcsHandle>,
    bytes: Bytes,
) -> Result<StatusCode, AdminError> {
    let latency: Latency = json_body(&bytes)?;
    sim.set_latency_all(Duration::from_millis(latency.latency_ms));
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(sim): State<WhmcsHandle>) -> Response {
    Json(sim.stats()).into_response()
}

async fn reset_stats(State(sim): State<WhmcsHandle>) -> StatusCode {
    sim.reset_stats();
    StatusCode::NO_CONTENT
}

async fn clear_bans(State(sim): State<WhmcsHandle>) -> StatusCode {
    sim.clear_bans();
    StatusCode::NO_CONTENT
}

async fn seed_demo(State(sim): State<WhmcsHandle>) -> Response {
    Json(sim.seed_demo()).into_response()
}
