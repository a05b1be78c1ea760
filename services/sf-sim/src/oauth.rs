//! The OAuth 2.0 JWT bearer token endpoint (`POST /services/oauth2/token`) and `userinfo`.
//!
//! Checks follow Salesforce's order and wording: unknown consumer key, signature, audience,
//! expiry, then whether the user may use the app. Errors are HTTP 400 with
//! `{"error": ..., "error_description": ...}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::state::{random_token, Inner};

pub const JWT_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: &'static str,
}

impl OAuthError {
    const fn grant(description: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_grant",
            description,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.error, "error_description": self.description })),
        )
            .into_response()
    }
}

const INVALID_ASSERTION: OAuthError = OAuthError::grant("invalid assertion");

/// The token from `Authorization: Bearer <token>` (Salesforce also accepts the `OAuth` scheme).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("oauth"))
        .then_some(token)
        .filter(|t| !t.is_empty())
}

fn form_params(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    // Salesforce reads the parameters from the body or the query string.
    let mut params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    if let Some(query) = query {
        params
            .extend(serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default());
    }
    params
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn error_for_status(status: u16) -> OAuthError {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::BAD_REQUEST {
        OAuthError {
            status,
            error: "invalid_grant",
            description: "authentication failure",
        }
    } else {
        OAuthError {
            status,
            error: "unknown_error",
            description: "retry your request",
        }
    }
}

pub(crate) async fn token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    inner.stat(|s| s.token_requests += 1);
    let params = form_params(query.as_deref(), &body);
    // Recorded before any fault: a refused request still carried the assertion.
    if let Some(assertion) = param(&params, "assertion") {
        inner.record_assertion(assertion);
    }
    let result = match inner.take_token_fault() {
        Some(status) => Err(error_for_status(status)),
        None => grant(&inner, &headers, &params),
    };
    match result {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(err) => {
            inner.stat(|s| s.token_failures += 1);
            tracing::info!(
                error = err.error,
                description = err.description,
                "Token request refused."
            );
            err.into_response()
        }
    }
}

fn grant(
    inner: &Inner,
    headers: &HeaderMap,
    params: &[(String, String)],
) -> Result<Value, OAuthError> {
    if param(params, "grant_type") != Some(JWT_GRANT_TYPE) {
        return Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            description: "grant type not supported",
        });
    }
    let assertion = param(params, "assertion").ok_or(INVALID_ASSERTION)?;
    verify_assertion(inner, headers, assertion)?;
    let issued_at = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let signature = base64::engine::general_purpose::STANDARD.encode(random_token(32));
    Ok(json!({
        "access_token": inner.issue_token(),
        "scope": "api",
        "instance_url": inner.urls.instance,
        "id": format!("{}/id/{}/{}", inner.urls.login, inner.config.org_id, inner.user_id),
        "token_type": "Bearer",
        "issued_at": issued_at.to_string(),
        "signature": signature,
    }))
}

fn verify_assertion(inner: &Inner, headers: &HeaderMap, assertion: &str) -> Result<(), OAuthError> {
    let mut parts = assertion.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(INVALID_ASSERTION);
    };
    // The consumer key is looked up before the signature, as it names the certificate to use.
    let unverified: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(INVALID_ASSERTION)?;
    if unverified.get("iss").and_then(Value::as_str) != Some(inner.config.client_id.as_str()) {
        return Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_client_id",
            description: "client identifier invalid",
        });
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(assertion, &inner.decoding_key, &validation)
        .map_err(|_| INVALID_ASSERTION)?
        .claims;
    if !audience_ok(inner, headers, claims.get("aud")) {
        return Err(OAuthError::grant("audience is invalid"));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match claims.get("exp").and_then(Value::as_f64) {
        #[allow(clippy::cast_precision_loss)]
        Some(exp) if exp > now as f64 => {}
        _ => return Err(OAuthError::grant("expired authorization code")),
    }
    // `prn` is the older name of `sub`, and wins when both are present.
    let subject = claims
        .get("prn")
        .or_else(|| claims.get("sub"))
        .and_then(Value::as_str);
    if !subject.is_some_and(|s| s.eq_ignore_ascii_case(&inner.config.username)) {
        return Err(OAuthError::grant("user hasn't approved this consumer"));
    }
    Ok(())
}

/// The audience is the login URL: the one this simulator hands out, or the one the client used
/// to reach it (a container name instead of 127.0.0.1, say).
fn audience_ok(inner: &Inner, headers: &HeaderMap, aud: Option<&Value>) -> bool {
    let host_url = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|host| format!("http://{host}"));
    let matches = |candidate: &str| {
        let candidate = candidate.trim_end_matches('/');
        candidate.eq_ignore_ascii_case(&inner.urls.login)
            || host_url
                .as_deref()
                .is_some_and(|h| candidate.eq_ignore_ascii_case(h))
    };
    match aud {
        Some(Value::String(s)) => matches(s),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(matches),
        _ => false,
    }
}

/// `GET /services/oauth2/userinfo`: who the token belongs to (clients use it to learn the org id).
pub(crate) async fn userinfo(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    match bearer(&headers) {
        Some(token) if inner.token_valid(token) => Json(json!({
            "sub": format!("{}/id/{}/{}", inner.urls.login, inner.config.org_id, inner.user_id),
            "user_id": inner.user_id,
            "organization_id": inner.config.org_id,
            "preferred_username": inner.config.username,
            "nickname": "integration",
            "name": "Integration User",
            "user_type": "STANDARD",
            "active": true,
        }))
        .into_response(),
        _ => (StatusCode::FORBIDDEN, "Bad_OAuth_Token").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_schemes() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "OAuth xyz".parse().unwrap());
        assert_eq!(bearer(&headers), Some("xyz"));
        headers.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn params_from_body_and_query() {
        let params = form_params(
            Some("assertion=a.b.c"),
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
        );
        assert_eq!(param(&params, "grant_type"), Some(JWT_GRANT_TYPE));
        assert_eq!(param(&params, "assertion"), Some("a.b.c"));
    }
}
