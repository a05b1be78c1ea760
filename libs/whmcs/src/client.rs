//! The HTTP client: one POST per call, classification of every reply (see [`crate::error`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::zeroize::Zeroizing;
use secrecy::ExposeSecret as _;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{is_auth_message, WhmcsError};
use crate::params::Params;
use crate::settings::WhmcsSettings;
use crate::types::{
    AcceptOrderRequest, AddOrderRequest, AddOrderResponse, ClientDetails, ClientsDetailsReply,
    GetOrdersRequest, GetProductsRequest, Order, OrdersPage, PayMethod, PayMethodsReply, Product,
    ProductsReply,
};

/// Orders fetched per GetOrders page while reconciling. Larger than WHMCS's default 25 so a
/// busy client takes few round trips; WHMCS sets no upper bound.
pub const MARKER_SCAN_PAGE: u64 = 100;

/// Client for one WHMCS installation. Cheap to clone (shares the connection pool).
#[derive(Clone)]
pub struct WhmcsClient {
    http: reqwest::Client,
    settings: Arc<WhmcsSettings>,
    metrics: Option<platform::metrics::ApiMetrics>,
    /// `url.full` of every call's span: the API URL without user info or secrets.
    url_for_spans: Arc<str>,
}

impl std::fmt::Debug for WhmcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhmcsClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    let trimmed = text.trim();
    match trimmed.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

/// A transport failure's description without its URL (reqwest prints the whole URL, user info
/// included, and `WHMCS_API_URL` may carry basic-auth credentials for a protected admin path),
/// with the causes reqwest's own text leaves out (refused, reset, DNS).
fn transport_detail(err: reqwest::Error) -> String {
    platform::error::Chain(&err.without_url()).to_string()
}

/// Replaces every occurrence of `secrets` in the error's texts (WHMCS's message, a snippet of
/// the reply, a transport detail) with `[REDACTED]`.
fn redact_error(mut err: WhmcsError, secrets: &[Zeroizing<String>]) -> WhmcsError {
    let redact = |text: &mut String| {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), "[REDACTED]");
            }
        }
    };
    match &mut err {
        WhmcsError::Auth { message, .. }
        | WhmcsError::Api { message, .. }
        | WhmcsError::Http {
            message: Some(message),
            ..
        } => redact(message),
        WhmcsError::Connect { detail, .. }
        | WhmcsError::Transport { detail, .. }
        | WhmcsError::Decode { detail, .. }
        | WhmcsError::InvalidRequest { detail, .. } => redact(detail),
        WhmcsError::Http { message: None, .. } | WhmcsError::Timeout { .. } => {}
    }
    err
}

fn message_of(body: &Map<String, Value>) -> Option<String> {
    ["message", "warning"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_str))
        .map(str::to_owned)
}

/// Turns one HTTP reply into WHMCS's success body or a classified error. Pure, for tests.
pub fn classify_reply(
    action: &str,
    status: u16,
    body: &str,
) -> Result<Map<String, Value>, WhmcsError> {
    let json = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| match v {
            Value::Object(map) => Some(map),
            _ => None,
        });
    if status == 401 || status == 403 {
        return Err(WhmcsError::Auth {
            action: action.to_owned(),
            status,
            message: json
                .as_ref()
                .and_then(message_of)
                .unwrap_or_else(|| snippet(body)),
            from_whmcs: json.is_some(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(WhmcsError::Http {
            action: action.to_owned(),
            status,
            message: json.as_ref().and_then(message_of),
        });
    }
    let Some(body_map) = json else {
        return Err(WhmcsError::Decode {
            action: action.to_owned(),
            status,
            detail: format!("not a JSON object: {}", snippet(body)),
        });
    };
    let field = |key: &str| {
        body_map
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    // GetEmails and a few others say `status` instead of `result`.
    let result = field("result").or_else(|| field("status"));
    match result.as_deref() {
        Some("success") => Ok(body_map),
        Some("error") => {
            let message = message_of(&body_map).unwrap_or_else(|| "(no message)".to_owned());
            if is_auth_message(&message) {
                Err(WhmcsError::Auth {
                    action: action.to_owned(),
                    status,
                    message,
                    from_whmcs: true,
                })
            } else {
                Err(WhmcsError::Api {
                    action: action.to_owned(),
                    message,
                })
            }
        }
        // A failed operation has been seen answering 200 with only a `warning` key.
        _ => match body_map.get("warning").and_then(Value::as_str) {
            Some(warning) => Err(WhmcsError::Api {
                action: action.to_owned(),
                message: warning.to_owned(),
            }),
            None => Err(WhmcsError::Decode {
                action: action.to_owned(),
                status,
                detail: format!("no result in reply: {}", snippet(body)),
            }),
        },
    }
}

/// A success body as the typed reply of `action` (a `Decode` error when it does not fit).
fn decode_success<T: DeserializeOwned>(
    action: &str,
    body: Map<String, Value>,
) -> Result<T, WhmcsError> {
    serde_json::from_value(Value::Object(body)).map_err(|e| WhmcsError::Decode {
        action: action.to_owned(),
        status: 200,
        detail: e.to_string(),
    })
}

/// One HTTP reply as the typed reply of `action` ([`classify_reply`], then the lenient reply
/// types): exactly what every typed call does with what WHMCS answers. Pure, for tests and fuzzing.
pub fn parse_reply<T: DeserializeOwned>(
    action: &str,
    status: u16,
    body: &str,
) -> Result<T, WhmcsError> {
    decode_success(action, classify_reply(action, status, body)?)
}

impl WhmcsClient {
    /// A client with its own connection pool.
    pub fn new(settings: WhmcsSettings) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("provisioning-whmcs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self::with_http(settings, http))
    }

    /// A client on a shared `reqwest::Client`. Timeouts are set per call, not on `http`.
    pub fn with_http(settings: WhmcsSettings, http: reqwest::Client) -> Self {
        let url_for_spans = Arc::from(platform::telemetry::redact_url(&settings.api_url));
        Self {
            http,
            settings: Arc::new(settings),
            metrics: None,
            url_for_spans,
        }
    }

    /// Counts every call in `metrics` (`whmcs_api_calls_total{action,status}`, errors by code,
    /// durations).
    pub fn with_metrics(mut self, metrics: platform::metrics::ApiMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn settings(&self) -> &WhmcsSettings {
        &self.settings
    }

    /// The reply's text becomes part of the error (WHMCS's message, the start of a page that is
    /// not JSON), and the error reaches logs, spans and Salesforce. A PHP error page or a
    /// debugging proxy can echo the request, credentials included, so the secret and the access
    /// key, as configured and as form-encoded on the wire, are blanked out of it first. This
    /// compares with the secrets; it never sends or shows them.
    fn redact(&self, err: WhmcsError) -> WhmcsError {
        let mut secrets: Vec<Zeroizing<String>> = Vec::with_capacity(4);
        let configured =
            std::iter::once(&self.settings.secret).chain(self.settings.access_key.as_ref());
        for secret in configured {
            let plain = secret.expose_secret();
            let encoded = serde_urlencoded::to_string([("", plain)]).unwrap_or_default();
            secrets.push(Zeroizing::new(plain.to_owned()));
            if let Some(encoded) = encoded.strip_prefix('=').filter(|e| *e != plain) {
                secrets.push(Zeroizing::new(encoded.to_owned()));
            }
        }
        redact_error(err, &secrets)
    }

    /// Any action with the settings' default timeout; returns WHMCS's success body.
    pub async fn call(
        &self,
        action: &str,
        params: &Params,
    ) -> Result<Map<String, Value>, WhmcsError> {
        self.call_with_timeout(action, params, self.settings.timeout)
            .await
    }

    /// Any action with an explicit timeout for this call.
    pub async fn call_with_timeout(
        &self,
        action: &str,
        params: &Params,
        timeout: Duration,
    ) -> Result<Map<String, Value>, WhmcsError> {
        // HTTP client span (OpenTelemetry HTTP conventions). The URL never carries the
        // credentials: they travel in the form body.
        let span = tracing::info_span!(
            "whmcs.call",
            otel.name = %format!("POST {action}"),
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %self.url_for_spans,
            server.address = platform::telemetry::server_address(&self.url_for_spans),
            whmcs.action = action,
            http.response.status_code = tracing::field::Empty,
        );
        // WHMCS answers every call it handled with 200; its errors are in the body.
        let call = self.send(action, params, timeout);
        platform::metrics::observe_api_call(span, self.metrics.as_ref(), action, call, |_| 200)
            .await
    }

    async fn send(
        &self,
        action: &str,
        params: &Params,
        timeout: Duration,
    ) -> Result<Map<String, Value>, WhmcsError> {
        let mut form = Params::new();
        // The one place the secret and the access key are read: into the request body, which
        // goes to WHMCS and nowhere else (never into a span, a log line or an error).
        form.set("action", action)
            .set("identifier", &self.settings.identifier)
            .set("secret", self.settings.secret.expose_secret())
            .set_opt(
                "accesskey",
                self.settings.access_key.as_ref().map(|k| k.expose_secret()),
            )
            .set("responsetype", "json");
        // Caller parameters may not override the envelope: a stray `action` or `secret` key
        // would be the last value PHP keeps.
        for (key, value) in params.pairs() {
            if !matches!(
                key.as_str(),
                "action" | "identifier" | "secret" | "accesskey" | "responsetype"
            ) {
                form.set(key, value);
            }
        }
        let started = Instant::now();
        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                WhmcsError::Timeout {
                    action: action.to_owned(),
                    after: timeout,
                }
            } else if err.is_connect() {
                WhmcsError::Connect {
                    action: action.to_owned(),
                    detail: transport_detail(err),
                }
            } else {
                WhmcsError::Transport {
                    action: action.to_owned(),
                    detail: transport_detail(err),
                }
            }
        };
        let response = self
            .http
            .post(&self.settings.api_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(form.encode())
            .timeout(timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        let body = response.text().await.map_err(transport)?;
        let outcome = classify_reply(action, status, &body).map_err(|err| self.redact(err));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(_) => tracing::debug!(action, status, elapsed_ms, "WHMCS call succeeded."),
            Err(err) => tracing::warn!(
                action,
                status,
                elapsed_ms,
                code = %err.contract_code(),
                error = %err,
                "WHMCS call failed."
            ),
        }
        outcome
    }

    async fn call_typed<T: DeserializeOwned>(
        &self,
        action: &str,
        params: &Params,
    ) -> Result<T, WhmcsError> {
        decode_success(action, self.call(action, params).await?)
    }

    pub async fn get_clients_details(&self, client_id: u64) -> Result<ClientDetails, WhmcsError> {
        let mut params = Params::new();
        params.set("clientid", client_id);
        let reply: ClientsDetailsReply = self.call_typed("GetClientsDetails", &params).await?;
        Ok(reply.client)
    }

    /// The client's stored pay methods (cards, bank accounts); empty when it has none.
    pub async fn get_pay_methods(&self, client_id: u64) -> Result<Vec<PayMethod>, WhmcsError> {
        let mut params = Params::new();
        params.set("clientid", client_id);
        let reply: PayMethodsReply = self.call_typed("GetPayMethods", &params).await?;
        Ok(reply.paymethods)
    }

    pub async fn get_products(
        &self,
        request: &GetProductsRequest,
    ) -> Result<Vec<Product>, WhmcsError> {
        let reply: ProductsReply = self.call_typed("GetProducts", &request.params()).await?;
        Ok(reply.products)
    }

    /// Creates a Pending order. Not idempotent: on an error with
    /// [`WhmcsError::outcome_unknown`], reconcile with [`Self::find_order_by_marker`] before
    /// anything else.
    pub async fn add_order(
        &self,
        request: &AddOrderRequest,
    ) -> Result<AddOrderResponse, WhmcsError> {
        let params = request
            .params()
            .map_err(|detail| WhmcsError::InvalidRequest {
                action: "AddOrder".to_owned(),
                detail,
            })?;
        self.call_typed("AddOrder", &params).await
    }

    /// Accepts a Pending order with `autosetup=1`. WHMCS answers the same error for a missing
    /// order and one no longer Pending; use [`Self::get_order`] to tell them apart.
    pub async fn accept_order(&self, request: &AcceptOrderRequest) -> Result<(), WhmcsError> {
        self.call("AcceptOrder", &request.params()).await.map(drop)
    }

    /// One page of orders, newest first.
    pub async fn get_orders(&self, request: &GetOrdersRequest) -> Result<OrdersPage, WhmcsError> {
        self.call_typed("GetOrders", &request.params()).await
    }

    pub async fn get_order(&self, order_id: u64) -> Result<Option<Order>, WhmcsError> {
        let page = self.get_orders(&GetOrdersRequest::by_id(order_id)).await?;
        Ok(page.orders.into_iter().find(|o| o.id == order_id))
    }

    /// The newest order of `client_id` whose notes contain `marker`, paging through GetOrders.
    /// This is how an AddOrder with an unknown outcome is reconciled (WHMCS has no filter on
    /// notes, so the scan is client-side).
    pub async fn find_order_by_marker(
        &self,
        client_id: u64,
        marker: &str,
    ) -> Result<Option<Order>, WhmcsError> {
        if marker.trim().is_empty() {
            // An empty marker would match every order of the client.
            return Err(WhmcsError::InvalidRequest {
                action: "GetOrders".to_owned(),
                detail: "the reconciliation marker is empty".to_owned(),
            });
        }
        let mut start = 0u64;
        loop {
            let page = self
                .get_orders(&GetOrdersRequest {
                    userid: Some(client_id),
                    limitstart: Some(start),
                    limitnum: Some(MARKER_SCAN_PAGE),
                    ..GetOrdersRequest::default()
                })
                .await?;
            let returned = page.orders.len() as u64;
            // WHMCS filters by userid, but a misbehaving proxy or version must not make us
            // adopt another client's order.
            if let Some(order) = page
                .orders
                .into_iter()
                .find(|o| o.notes.contains(marker) && o.userid.is_none_or(|user| user == client_id))
            {
                return Ok(Some(order));
            }
            start += returned;
            if returned == 0 || start >= page.totalresults {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified() {
        let ok = classify_reply("GetOrders", 200, r#"{"result":"success","totalresults":0}"#);
        assert!(ok.is_ok());

        let business = classify_reply(
            "AddOrder",
            200,
            r#"{"result":"error","message":"Client ID Not Found"}"#,
        )
        .unwrap_err();
        assert!(business.is_business());
        assert_eq!(business.contract_code(), "WHMCS_ERROR");
        assert_eq!(business.message(), "Client ID Not Found");

        let auth = classify_reply(
            "AddOrder",
            403,
            r#"{"result":"error","message":"Authentication Failed"}"#,
        )
        .unwrap_err();
        assert!(auth.is_auth() && !auth.outcome_unknown());
        assert_eq!(auth.contract_code(), "403");
        assert_eq!(auth.message(), "Authentication Failed");

        let auth_200 = classify_reply(
            "GetOrders",
            200,
            r#"{"result":"error","message":"Invalid IP 10.1.2.3"}"#,
        )
        .unwrap_err();
        assert!(auth_200.is_auth() && !auth_200.is_transient());

        let waf = classify_reply("AddOrder", 403, "<html>Forbidden</html>").unwrap_err();
        assert!(waf.is_auth() && waf.outcome_unknown());

        let server = classify_reply("AddOrder", 503, "<html>busy</html>").unwrap_err();
        assert_eq!(server.contract_code(), "503");
        assert!(server.outcome_unknown());

        let empty = classify_reply(
            "AddOrder",
            400,
            r#"{"result":"error","message":"Empty action request"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&empty, WhmcsError::Http { status: 400, message: Some(m), .. } if m == "Empty action request")
        );

        let nvp = classify_reply("AddOrder", 200, "result=success;orderid=1").unwrap_err();
        assert!(matches!(nvp, WhmcsError::Decode { .. }));
        assert!(nvp.outcome_unknown());

        let status_key =
            classify_reply("GetEmails", 200, r#"{"status":"error","message":"x"}"#).unwrap_err();
        assert!(status_key.is_business());

        let warning = classify_reply(
            "AddOrder",
            200,
            r#"{"warning":"Invalid or Missing Payment Information - Please Reload and Try Again"}"#,
        )
        .unwrap_err();
        assert!(warning.is_business());
    }

    #[tokio::test]
    async fn transport_errors_do_not_carry_the_url() {
        // A port nobody listens on: the call fails to connect.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let settings = WhmcsSettings::new(
            format!("http://admin:pw-7e21b@127.0.0.1:{port}/includes/api.php"),
            "ident",
            "secret-5d0c2",
        );
        let client = WhmcsClient::new(settings).unwrap();
        let err = client.call("GetOrders", &Params::new()).await.unwrap_err();
        assert_eq!(err.contract_code(), "ECONNREFUSED", "{err}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("pw-7e21b"), "{shown}");
        assert!(!shown.contains("secret-5d0c2"), "{shown}");
        // The cause is still there for the person reading the log.
        assert!(shown.to_lowercase().contains("connect"), "{shown}");
    }

    #[test]
    fn an_echoed_secret_is_redacted_from_errors() {
        let settings = WhmcsSettings::new("http://h/includes/api.php", "ident", "s3c+r/t 9a1f")
            .with_access_key("acc-key-40de");
        let client = WhmcsClient::new(settings).unwrap();
        // A PHP page dumping the request, raw and form-encoded.
        let page = "<pre>secret=s3c%2Br%2Ft+9a1f&accesskey=acc-key-40de; $_POST[secret] = s3c+r/t 9a1f</pre>";
        let err = client.redact(classify_reply("AddOrder", 500, page).unwrap_err());
        let json = r#"{"result":"error","message":"bad secret s3c+r/t 9a1f"}"#;
        let api = client.redact(classify_reply("AddOrder", 200, json).unwrap_err());
        let html = client.redact(classify_reply("AddOrder", 200, page).unwrap_err());
        for err in [err, api, html] {
            let shown = format!("{err} {err:?} {}", err.message());
            assert!(!shown.contains("9a1f"), "{shown}");
            assert!(!shown.contains("40de"), "{shown}");
        }
        let html = client.redact(classify_reply("AddOrder", 200, page).unwrap_err());
        assert!(html.to_string().contains("[REDACTED]"), "{html}");
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = "x".repeat(1000);
        assert!(snippet(&long).chars().count() <= 201);
    }
}
