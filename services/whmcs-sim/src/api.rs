//! `POST /includes/api.php`: WHMCS's middleware order (access control → action → authentication
//! → authorization → response format → action), its error texts and its 200-vs-403 split:
//!
//! | status | message |
//! |---|---|
//! | 400 | `Empty action request` |
//! | 403 | `IP Banned`, `Invalid Access Key`, `Invalid IP <ip>`, `Invalid or missing credentials`, `Authentication Failed`, `Invalid API Action: "<a>" is not a valid API action`, `Invalid Permissions: API action "<a>" is not allowed` |
//! | 200 | every business error, `result=error` (see [`crate::actions`]) |
//!
//! Injected faults ([`crate::faults`]) apply around this pipeline: latency, hang and HTTP status
//! before it (as a proxy or an overloaded PHP pool would), `result=error` in place of the
//! action, and "fail after commit" after the action has changed the data.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::actions;
use crate::faults::{take, AfterCommitFault};
use crate::php::{to_nvp, to_xml, Format, PhpParams};
use crate::state::{lock, WhmcsHandle};

/// Actions the simulator implements, by canonical name.
pub const ACTIONS: &[&str] = &[
    "AcceptOrder",
    "AddOrder",
    "CancelOrder",
    "GetClientsDetails",
    "GetOrders",
    "GetPayMethods",
    "GetPaymentMethods",
    "GetProducts",
];

/// List actions answer XML without `responsetype` and refuse NVP.
const LIST_ACTIONS: &[&str] = &[
    "getorders",
    "getproducts",
    "getpaymentmethods",
    "getpaymethods",
];

/// WHMCS's action filter: lower-case, alphanumerics only.
pub fn normalize_action(action: &str) -> String {
    action
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The canonical spelling of a normalized action; unknown ones stay normalized.
pub fn canonical_action(normalized: &str) -> String {
    let normalized = match normalized {
        "getclientsdata" | "getclientsdatabyemail" => "getclientsdetails",
        other => other,
    };
    ACTIONS
        .iter()
        .find(|a| a.eq_ignore_ascii_case(normalized))
        .map_or_else(|| normalized.to_owned(), |a| (*a).to_owned())
}

fn envelope_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "result": "error", "message": message }).to_string(),
    )
        .into_response()
}

/// What an overloaded PHP pool or a proxy answers: HTML, not WHMCS's envelope.
fn html_status(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = code.canonical_reason().unwrap_or("Error");
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
        format!(
            "<html><head><title>{} {reason}</title></head><body><h1>{reason}</h1></body></html>",
            code.as_u16()
        ),
    )
        .into_response()
}

fn render(format: Format, action: &str, body: Map<String, Value>) -> Response {
    match format {
        Format::Json => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Value::Object(body).to_string(),
        )
            .into_response(),
        Format::Xml => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/xml")],
            to_xml(action, &body),
        )
            .into_response(),
        Format::Nvp => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain")],
            to_nvp(&body),
        )
            .into_response(),
    }
}

/// Faults drawn for one call, so the lock is not held across sleeps.
#[derive(Default)]
struct Drawn {
    latency: Duration,
    hang: Option<Duration>,
    status: Option<u16>,
    error: Option<String>,
    after_commit: Option<AfterCommitFault>,
}

fn draw_faults(sim: &WhmcsHandle, normalized: &str) -> Drawn {
    let mut state = lock(&sim.inner.faults);
    let mut drawn = Drawn {
        latency: state.latency_all,
        ..Drawn::default()
    };
    let Some(faults) = state.per_action.get_mut(normalized) else {
        return drawn;
    };
    drawn.latency += Duration::from_millis(faults.latency_ms);
    // One fault per call, in the order the request would meet them.
    if let Some(hang) = take(&mut faults.hang, |f| &mut f.count) {
        drawn.hang = Some(Duration::from_millis(hang.duration_ms));
    } else if let Some(status) = take(&mut faults.http_status, |f| &mut f.count) {
        drawn.status = Some(status.status);
    } else if let Some(error) = take(&mut faults.error, |f| &mut f.count) {
        drawn.error = Some(error.message);
    } else {
        drawn.after_commit = take(&mut faults.fail_after_commit, |f| &mut f.count);
    }
    if faults.is_empty() {
        state.per_action.remove(normalized);
    }
    drawn
}

fn fired(sim: &WhmcsHandle) {
    lock(&sim.inner.stats).faults_fired += 1;
}

/// IP ban, access key and IP allow-list, as `SystemAccessControl` checks them.
fn access_check(sim: &WhmcsHandle, params: &PhpParams, ip: IpAddr) -> Result<(), String> {
    let config = &sim.inner.config;
    {
        let mut access = lock(&sim.inner.access);
        if let Some(until) = access.banned_until.get(&ip).copied() {
            if Instant::now() < until {
                return Err("IP Banned".to_owned());
            }
            access.banned_until.remove(&ip);
        }
    }
    if let Some(key) = &config.access_key {
        match params.get("accesskey") {
            Some(sent) if sent == key => return Ok(()),
            Some(_) => return Err("Invalid Access Key".to_owned()),
            None => {}
        }
    }
    match &config.allowed_ips {
        Some(allowed) if !allowed.contains(&ip) => Err(format!("Invalid IP {ip}")),
        _ => Ok(()),
    }
}

fn record_auth_failure(sim: &WhmcsHandle, ip: IpAddr) {
    lock(&sim.inner.stats).auth_failures += 1;
    let config = &sim.inner.config;
    let Some(limit) = config.ban_after_failures else {
        return;
    };
    let window = Duration::from_secs(30 * 60);
    let now = Instant::now();
    let mut access = lock(&sim.inner.access);
    let failures = access.failures.entry(ip).or_default();
    failures.retain(|at| now.duration_since(*at) < window);
    failures.push(now);
    if failures.len() >= limit as usize {
        access.failures.remove(&ip);
        access.banned_until.insert(ip, now + config.ban_duration);
        tracing::warn!(%ip, "Banned an IP after repeated failed API logins.");
    }
}

/// identifier/secret (also accepted in username/password, as WHMCS does).
fn authenticate(sim: &WhmcsHandle, params: &PhpParams) -> Result<(), &'static str> {
    let config = &sim.inner.config;
    let identifier = params.get("identifier").or_else(|| params.get("username"));
    let secret = params.get("secret").or_else(|| params.get("password"));
    match (identifier, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            if id != config.identifier {
                Err("Invalid or missing credentials")
            } else if !constant_time_eq(secret.as_bytes(), config.secret.as_bytes()) {
                Err("Authentication Failed")
            } else {
                Ok(())
            }
        }
        _ => Err("Invalid or missing credentials"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn response_format(params: &PhpParams, normalized: &str) -> Result<Format, String> {
    let list = LIST_ACTIONS.contains(&normalized);
    match params
        .text("responsetype")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("json") => Ok(Format::Json),
        Some("xml") => Ok(Format::Xml),
        Some("nvp") if list => {
            Err("This API action only supports the XML or JSON response type formats".to_owned())
        }
        Some("nvp") => Ok(Format::Nvp),
        None if list => Ok(Format::Xml),
        None => Ok(Format::Nvp),
        Some(other) => Err(format!(
            "Unsupported API response type format \"{other}\". Supported formats: json, xml, nvp"
        )),
    }
}

pub(crate) async fn api_php(
    State(sim): State<WhmcsHandle>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    let params = PhpParams::parse(&body);
    let raw_action = params.get("action").unwrap_or_default();
    let normalized = normalize_action(raw_action);
    if normalized.is_empty() {
        return envelope_error(StatusCode::BAD_REQUEST, "Empty action request");
    }
    let canonical = canonical_action(&normalized);
    *lock(&sim.inner.stats)
        .calls
        .entry(canonical.clone())
        .or_insert(0) += 1;

    let gate = lock(&sim.inner.faults)
        .gates
        .get(&normalize_action(&canonical))
        .cloned();
    if let Some(gate) = gate {
        gate.pass().await;
    }
    let drawn = draw_faults(&sim, &normalize_action(&canonical));
    if !drawn.latency.is_zero() {
        tokio::time::sleep(drawn.latency).await;
    }
    if let Some(hang) = drawn.hang {
        fired(&sim);
        tracing::info!(action = %canonical, ?hang, "Fault: holding the request without running it.");
        tokio::time::sleep(hang).await;
        return html_status(504);
    }
    if let Some(status) = drawn.status {
        fired(&sim);
        return html_status(status);
    }

    let ip = peer.ip().to_canonical();
    if let Err(message) = access_check(&sim, &params, ip) {
        return envelope_error(StatusCode::FORBIDDEN, &message);
    }
    if let Err(message) = authenticate(&sim, &params) {
        record_auth_failure(&sim, ip);
        return envelope_error(StatusCode::FORBIDDEN, message);
    }
    if !ACTIONS.iter().any(|a| *a == canonical) {
        return envelope_error(
            StatusCode::FORBIDDEN,
            &format!("Invalid API Action: \"{normalized}\" is not a valid API action"),
        );
    }
    if let Some(allowed) = &sim.inner.config.allowed_actions {
        let permitted = allowed
            .iter()
            .any(|a| normalize_action(a) == normalize_action(&canonical));
        if !permitted {
            return envelope_error(
                StatusCode::FORBIDDEN,
                &format!("Invalid Permissions: API action \"{normalized}\" is not allowed"),
            );
        }
    }
    let format = match response_format(&params, &normalize_action(&canonical)) {
        Ok(format) => format,
        Err(message) => return envelope_error(StatusCode::OK, &message),
    };
    if let Some(message) = drawn.error {
        fired(&sim);
        return render(format, &normalized, error_body(&message));
    }

    let outcome = actions::run(&sim, &canonical, &params, ip);
    let body = match outcome {
        Ok(mut body) => {
            let mut full = Map::new();
            full.insert("result".to_owned(), Value::from("success"));
            full.append(&mut body);
            if let Some(fault) = drawn.after_commit {
                fired(&sim);
                tracing::info!(action = %canonical, "Fault: committed, now failing the reply.");
                if let Some(status) = fault.status {
                    return html_status(status);
                }
                if let Some(ms) = fault.duration_ms {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            full
        }
        Err(message) => error_body(&message),
    };
    render(format, &normalized, body)
}

fn error_body(message: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("result".to_owned(), Value::from("error"));
    body.insert("message".to_owned(), Value::from(message));
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_are_normalized_like_whmcs() {
        assert_eq!(normalize_action("Add-Order "), "addorder");
        assert_eq!(canonical_action("addorder"), "AddOrder");
        assert_eq!(canonical_action("getclientsdata"), "GetClientsDetails");
        assert_eq!(canonical_action("nosuchthing"), "nosuchthing");
    }

    #[test]
    fn response_formats() {
        let p = PhpParams::parse(b"responsetype=JSON");
        assert_eq!(response_format(&p, "addorder"), Ok(Format::Json));
        let none = PhpParams::parse(b"");
        assert_eq!(response_format(&none, "addorder"), Ok(Format::Nvp));
        assert_eq!(response_format(&none, "getorders"), Ok(Format::Xml));
        let nvp = PhpParams::parse(b"responsetype=nvp");
        assert!(response_format(&nvp, "getorders").is_err());
        let bad = PhpParams::parse(b"responsetype=yaml");
        assert!(response_format(&bad, "addorder")
            .unwrap_err()
            .starts_with("Unsupported API response type format \"yaml\""));
    }
}
