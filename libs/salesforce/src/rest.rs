//! REST API: SOQL queries and Order updates.
//!
//! A 401 (`INVALID_SESSION_ID`) makes the client fetch a new token and repeat the call once; any
//! other failure is returned classified, and retry policy is the caller's (the provisioner never
//! retries, sf-writer does).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use secrecy::ExposeSecret as _;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Token, TokenProvider};

/// One entry of a REST error body (`[{"message": …, "errorCode": …, "fields": […]}]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(default, alias = "statusCode")]
    #[serde(rename = "errorCode")]
    pub error_code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// `Display` is the contract's error message (the provisioner reports it as
/// `Activation_Error_Message__c`), so `Connect`, `Transport` and `Decode` carry their cause as
/// text, chain included, rather than as a `source` a chain would print a second time; callers
/// also build `Decode` and `Transport` from their own findings, with no error underneath.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("Salesforce answered HTTP {status}: {}", describe(errors))]
    Http { status: u16, errors: Vec<ApiError> },
    #[error("the Salesforce call timed out")]
    Timeout,
    #[error("cannot connect to Salesforce: {0}")]
    Connect(String),
    #[error("Salesforce transport error: {0}")]
    Transport(String),
    #[error("unexpected Salesforce response: {0}")]
    Decode(String),
}

fn describe(errors: &[ApiError]) -> String {
    if errors.is_empty() {
        return "no error body".to_owned();
    }
    errors
        .iter()
        .map(|e| format!("{}: {}", e.error_code, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl platform::metrics::ApiCallError for RestError {
    fn http_status(&self) -> Option<u16> {
        RestError::http_status(self)
    }

    fn contract_code(&self) -> String {
        RestError::contract_code(self)
    }
}

impl RestError {
    /// The HTTP status Salesforce answered with, when there was an answer.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            Self::Auth(auth) => platform::metrics::ApiCallError::http_status(auth),
            _ => None,
        }
    }

    /// The contract's error code for this failure (`ETIMEOUT`, `ECONNREFUSED`, or the HTTP status).
    pub fn contract_code(&self) -> String {
        match self {
            Self::Http { status, .. } => status.to_string(),
            Self::Auth(AuthError::Status { status }) => status.to_string(),
            Self::Timeout | Self::Auth(AuthError::Timeout) => "ETIMEOUT".to_owned(),
            Self::Connect(_) | Self::Auth(AuthError::Transport(_)) => "ECONNREFUSED".to_owned(),
            Self::Auth(_) => "401".to_owned(),
            Self::Transport(_) => "ECONNRESET".to_owned(),
            Self::Decode(_) => "500".to_owned(),
        }
    }

    /// Whether the same call may succeed later without anyone acting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Auth(e) => e.is_transient(),
            Self::Http { status, errors } => {
                *status == 429
                    || *status >= 500
                    || (*status == 403
                        && errors
                            .iter()
                            .any(|e| e.error_code == "REQUEST_LIMIT_EXCEEDED"))
            }
            Self::Timeout | Self::Connect(_) | Self::Transport(_) => true,
            Self::Decode(_) => false,
        }
    }
}

/// A page of SOQL results.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult<T> {
    pub total_size: u64,
    pub done: bool,
    #[serde(default)]
    pub next_records_url: Option<String>,
    pub records: Vec<T>,
}

/// Per-record result of an sObject Collections request.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct SaveResult {
    #[serde(default)]
    pub id: Option<String>,
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

/// The `Sforce-Limit-Info` usage last seen (`api-usage=used/limit`).
#[derive(Debug, Default)]
pub struct ApiUsage {
    pub used: AtomicU64,
    pub limit: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct RestClient {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    usage: Arc<ApiUsage>,
    metrics: Option<platform::metrics::ApiMetrics>,
    limit_usage: Option<platform::metrics::LimitUsage>,
}

impl RestClient {
    pub fn new(http: reqwest::Client, tokens: Arc<TokenProvider>) -> Self {
        Self {
            http,
            tokens,
            usage: Arc::default(),
            metrics: None,
            limit_usage: None,
        }
    }

    /// Counts every REST call and token fetch in `metrics`
    /// (`salesforce_api_calls_total{action,status}`, errors by code, durations).
    pub fn with_metrics(mut self, metrics: platform::metrics::ApiMetrics) -> Self {
        self.tokens.set_metrics(metrics.clone());
        self.metrics = Some(metrics);
        self
    }

    /// Keeps `salesforce_api_usage` / `salesforce_api_limit` at the last `Sforce-Limit-Info`.
    pub fn with_limit_usage(mut self, usage: platform::metrics::LimitUsage) -> Self {
        self.limit_usage = Some(usage);
        self
    }

    pub fn usage(&self) -> &Arc<ApiUsage> {
        &self.usage
    }

    fn data_url(&self, token: &Token, path: &str) -> String {
        format!(
            "{}/services/data/v{}/{path}",
            token.instance_url,
            self.tokens.settings().api_version
        )
    }

    /// Runs a SOQL query and follows `nextRecordsUrl` until every record is read.
    pub async fn query<T: DeserializeOwned>(&self, soql: &str) -> Result<Vec<T>, RestError> {
        let path = format!("query?q={}", crate::auth::urlencode(soql));
        let mut page: QueryResult<T> = self
            .send_json("query", reqwest::Method::GET, Target::Data(path), None)
            .await?;
        let mut records = std::mem::take(&mut page.records);
        while let (false, Some(next)) = (page.done, page.next_records_url.take()) {
            page = self.query_more(&next).await?;
            records.append(&mut page.records);
        }
        Ok(records)
    }

    /// One more page of a query: a parameterless GET of a `nextRecordsUrl` (a path from the
    /// instance root, e.g. `/services/data/v62.0/query/01gD0000002HU6KIAW-2000`), with the same
    /// authentication as every call. For cursors [`RestClient::query`] does not follow itself,
    /// such as a child relationship's rows nested in a record.
    pub async fn query_more<T: DeserializeOwned>(
        &self,
        next_records_url: &str,
    ) -> Result<QueryResult<T>, RestError> {
        self.send_json(
            "query_more",
            reqwest::Method::GET,
            Target::Absolute(next_records_url.to_owned()),
            None,
        )
        .await
    }

    /// `PATCH sobjects/{sobject}/{id}` with the given fields (204 on success).
    pub async fn update_record(
        &self,
        sobject: &str,
        id: &str,
        fields: &serde_json::Value,
    ) -> Result<(), RestError> {
        let target = Target::Data(format!("sobjects/{sobject}/{id}"));
        self.send(
            "update_record",
            reqwest::Method::PATCH,
            target,
            Some(fields),
        )
        .await
        .map(drop)
    }

    /// `PATCH composite/sobjects`: up to 200 records, each with `attributes.type` and `id`;
    /// results come back in request order.
    pub async fn update_collection(
        &self,
        records: &[serde_json::Value],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, RestError> {
        let body = serde_json::json!({ "allOrNone": all_or_none, "records": records });
        self.send_json(
            "update_collection",
            reqwest::Method::PATCH,
            Target::Data("composite/sobjects".to_owned()),
            Some(&body),
        )
        .await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        action: &'static str,
        method: reqwest::Method,
        target: Target,
        body: Option<&serde_json::Value>,
    ) -> Result<T, RestError> {
        let bytes = self.send(action, method, target, body).await?;
        decode_body(&bytes)
    }

    async fn send(
        &self,
        action: &'static str,
        method: reqwest::Method,
        target: Target,
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, RestError> {
        let token = self.tokens.token().await?;
        match self.call(action, &method, &target, body, &token).await {
            Err(RestError::Http { status: 401, .. }) => {
                let fresh = self.tokens.refresh(&token).await?;
                self.call(action, &method, &target, body, &fresh).await
            }
            other => other,
        }
    }

    /// One HTTP request inside its client span, counted in the metrics.
    async fn call(
        &self,
        action: &'static str,
        method: &reqwest::Method,
        target: &Target,
        body: Option<&serde_json::Value>,
        token: &Token,
    ) -> Result<bytes::Bytes, RestError> {
        let url = match target {
            Target::Data(path) => self.data_url(token, path),
            Target::Absolute(path) => format!("{}{path}", token.instance_url),
        };
        // The access token travels in a header, never in the URL.
        let span = tracing::info_span!(
            "salesforce.call",
            otel.name = %format!("{method} {action}"),
            otel.kind = "client",
            http.request.method = %method,
            url.full = %platform::telemetry::redact_url(&url),
            server.address = platform::telemetry::server_address(&token.instance_url),
            salesforce.action = action,
            http.response.status_code = tracing::field::Empty,
        );
        let call = self.send_once(method, url, body, token);
        let outcome = platform::metrics::observe_api_call(
            span,
            self.metrics.as_ref(),
            action,
            call,
            |answer| answer.0,
        )
        .await;
        outcome.map(|(_, bytes)| bytes)
    }

    async fn send_once(
        &self,
        method: &reqwest::Method,
        url: String,
        body: Option<&serde_json::Value>,
        token: &Token,
    ) -> Result<(u16, bytes::Bytes), RestError> {
        let mut request = self
            .http
            .request(method.clone(), &url)
            // The one place REST reads the token: reqwest marks the header sensitive, so it is
            // kept out of HPACK tables and `Debug` output.
            .bearer_auth(token.access_token().expose_secret())
            .timeout(self.tokens.settings().http_timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(classify_transport)?;
        if let Some(info) = response
            .headers()
            .get("Sforce-Limit-Info")
            .and_then(|v| v.to_str().ok())
        {
            self.record_usage(info);
        }
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        let bytes = response.bytes().await.map_err(classify_transport)?;
        if status.is_success() {
            return Ok((status.as_u16(), bytes));
        }
        Err(error_from_reply(status.as_u16(), &bytes))
    }

    fn record_usage(&self, header: &str) {
        let usage = header
            .split(',')
            .map(str::trim)
            .find_map(|part| part.strip_prefix("api-usage="));
        if let Some((used, limit)) = usage.and_then(|u| u.split_once('/')) {
            if let (Ok(used), Ok(limit)) = (used.trim().parse(), limit.trim().parse()) {
                self.usage.used.store(used, Ordering::Relaxed);
                self.usage.limit.store(limit, Ordering::Relaxed);
                if let Some(gauges) = &self.limit_usage {
                    gauges.set(used, limit);
                }
            }
        }
    }
}

/// A success body (query page, sObject Collections results, ...) as `T`. Pure, for tests and
/// fuzzing: the client decodes every JSON answer through here.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RestError> {
    serde_json::from_slice(body).map_err(|e| RestError::Decode(e.to_string()))
}

/// A failed answer (`status` outside 2xx) as its error. The body is Salesforce's error list when
/// it parses as one; anything else (an HTML page from a proxy, a truncated body) leaves the list
/// empty: the status alone still classifies the failure.
pub fn error_from_reply(status: u16, body: &[u8]) -> RestError {
    let errors = serde_json::from_slice::<Vec<ApiError>>(body).unwrap_or_default();
    RestError::Http { status, errors }
}

enum Target {
    /// Relative to `/services/data/vNN.N/`.
    Data(String),
    /// A path from the instance root, as `nextRecordsUrl` gives it.
    Absolute(String),
}

fn classify_transport(err: reqwest::Error) -> RestError {
    if err.is_timeout() {
        RestError::Timeout
    } else if err.is_connect() {
        // With its causes: reqwest's own text stops at "error sending request", and the cause
        // is what tells an untrusted certificate (SF_CA_FILE) from a refused connection.
        RestError::Connect(platform::error::Chain(&err).to_string())
    } else {
        RestError::Transport(platform::error::Chain(&err).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_contract_codes() {
        assert_eq!(RestError::Timeout.contract_code(), "ETIMEOUT");
        assert_eq!(
            RestError::Connect("x".into()).contract_code(),
            "ECONNREFUSED"
        );
        let limit = RestError::Http {
            status: 403,
            errors: vec![ApiError {
                error_code: "REQUEST_LIMIT_EXCEEDED".into(),
                message: String::new(),
                fields: vec![],
            }],
        };
        assert_eq!(limit.contract_code(), "403");
        assert!(limit.is_transient());
        assert!(!RestError::Http {
            status: 400,
            errors: vec![]
        }
        .is_transient());
    }

    #[test]
    fn record_errors_accept_status_code_spelling() {
        let parsed: SaveResult = serde_json::from_str(
            r#"{"id":"801","success":false,"errors":[{"statusCode":"ENTITY_IS_DELETED","message":"gone","fields":[]}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.errors[0].error_code, "ENTITY_IS_DELETED");
    }
}
