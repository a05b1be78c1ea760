//! OAuth 2.0 JWT bearer flow: a signed assertion (RS256, `iss` = consumer key, `sub` = user,
//! `aud` = login URL, `exp` = now + 3 min) is exchanged for an access token at
//! `{SF_LOGIN_URL}/services/oauth2/token`. There is no refresh token in this flow: a new assertion
//! is signed whenever a new token is needed.

use std::sync::Arc;
use std::time::Instant;

use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::settings::SalesforceSettings;

/// An access token and where to use it. The token is a [`SecretString`]: `Debug` hides it,
/// it is wiped when the last clone is dropped, and reading it takes `expose_secret()`, which
/// only the two places that put it on the wire do (the REST `Authorization` header and the
/// Pub/Sub `accesstoken` metadata).
#[derive(Clone)]
pub struct Token {
    access_token: SecretString,
    /// REST base and the Pub/Sub `instanceurl`: the org's own host, not the login host.
    pub instance_url: String,
    /// Org id, from the `id` URL of the response (the Pub/Sub `tenantid`).
    pub org_id: String,
    pub issued_at: Instant,
    /// Distinguishes tokens so a refresh triggered by a stale one does not discard a newer one.
    pub generation: u64,
}

impl Token {
    /// The secret. Only for request headers and metadata, marked sensitive there; never log it.
    pub fn access_token(&self) -> &SecretString {
        &self.access_token
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"<redacted>")
            .field("instance_url", &self.instance_url)
            .field("org_id", &self.org_id)
            .field("generation", &self.generation)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Salesforce refused the assertion (`invalid_grant`, `invalid_client_id`, ...). Retrying the
    /// same assertion will not help; a person must fix the connected app, user or key.
    #[error("Salesforce rejected the JWT bearer assertion: {error}: {description}")]
    Rejected { error: String, description: String },
    #[error("the token endpoint answered HTTP {status}")]
    Status { status: u16 },
    #[error("the token endpoint timed out")]
    Timeout,
    #[error("cannot reach the token endpoint: {0}")]
    Transport(String),
    #[error("the token response is not what the JWT bearer flow returns: {0}")]
    InvalidResponse(String),
    /// The key cannot sign. The cause is in the text, not a `source`: the text is the
    /// contract's error message (through `RestError`), and a chain would print it twice.
    #[error("cannot sign the JWT assertion: {0}")]
    Signing(jsonwebtoken::errors::Error),
}

impl AuthError {
    /// Transient errors may succeed on a later attempt without anyone acting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Timeout | Self::Transport(_) => true,
            Self::Status { status } => *status == 429 || *status >= 500,
            Self::Rejected { .. } | Self::InvalidResponse(_) | Self::Signing(_) => false,
        }
    }
}

/// How a token request is labelled in `salesforce_api_*{action="token"}` and on its span.
impl platform::metrics::ApiCallError for AuthError {
    fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status { status } => Some(*status),
            Self::Rejected { .. } => Some(400),
            _ => None,
        }
    }

    fn contract_code(&self) -> String {
        match self {
            Self::Status { status } => status.to_string(),
            Self::Rejected { .. } => "400".to_owned(),
            Self::Timeout => "ETIMEOUT".to_owned(),
            Self::Transport(_) => "ECONNREFUSED".to_owned(),
            Self::InvalidResponse(_) => "500".to_owned(),
            Self::Signing(_) => "SIGNING".to_owned(),
        }
    }
}

/// The cached token and the newest generation handed out. The generation outlives an invalidated
/// token, so generations only grow and a stale report can always be told from a fresh token.
#[derive(Debug, Default)]
struct Slot {
    token: Option<Arc<Token>>,
    generation: u64,
}

impl Slot {
    fn store(&mut self, token: Token) -> Arc<Token> {
        let token = Arc::new(token);
        self.generation = self.generation.max(token.generation);
        self.token = Some(token.clone());
        token
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
}

/// The token endpoint's success body. Not `Debug`: it holds the token until it is moved into a
/// [`Token`].
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
    id: String,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Hands out a cached access token, fetching a new one when there is none, when it is older than
/// `SF_TOKEN_MAX_AGE_SECS`, or when a caller reports it rejected ([`TokenProvider::refresh`] to
/// fetch at once, [`TokenProvider::invalidate`] to fetch on the next use). Concurrent callers
/// share one fetch.
#[derive(Debug)]
pub struct TokenProvider {
    settings: SalesforceSettings,
    http: reqwest::Client,
    current: Mutex<Slot>,
    /// Tokens of this generation or older were rejected. An atomic, not the slot's lock, so a
    /// rejection is recorded at once, even by a caller that is then cancelled (a `select!`
    /// branch) before it could have taken the lock.
    rejected_through: std::sync::atomic::AtomicU64,
    fetches: std::sync::atomic::AtomicU64,
    metrics: std::sync::OnceLock<platform::metrics::ApiMetrics>,
}

impl TokenProvider {
    pub fn new(settings: SalesforceSettings, http: reqwest::Client) -> Arc<Self> {
        Arc::new(Self {
            settings,
            http,
            current: Mutex::new(Slot::default()),
            rejected_through: Default::default(),
            fetches: Default::default(),
            metrics: std::sync::OnceLock::new(),
        })
    }

    /// Counts token fetches as action `token` (the first call wins).
    pub fn set_metrics(&self, metrics: platform::metrics::ApiMetrics) {
        let _ = self.metrics.set(metrics);
    }

    pub fn settings(&self) -> &SalesforceSettings {
        &self.settings
    }

    /// How many tokens were fetched (for metrics and tests).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid token, from cache when it is fresh enough.
    pub async fn token(&self) -> Result<Arc<Token>, AuthError> {
        let mut current = self.current.lock().await;
        let rejected_through = self
            .rejected_through
            .load(std::sync::atomic::Ordering::Acquire);
        if let Some(token) = current.token.as_ref() {
            if token.issued_at.elapsed() < self.settings.token_max_age
                && token.generation > rejected_through
            {
                return Ok(token.clone());
            }
        }
        let next = current.generation.max(rejected_through) + 1;
        let token = self.fetch(next).await?;
        Ok(current.store(token))
    }

    /// Salesforce rejected `stale`: replace it, unless another caller already did.
    pub async fn refresh(&self, stale: &Token) -> Result<Arc<Token>, AuthError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.token.as_ref() {
            if token.generation > stale.generation {
                return Ok(token.clone());
            }
        }
        tracing::info!(
            generation = stale.generation,
            "Salesforce rejected the access token; requesting a new one."
        );
        let next = current.generation.max(stale.generation) + 1;
        let token = self.fetch(next).await?;
        Ok(current.store(token))
    }

    /// Salesforce rejected `stale` where no new token is needed right away (a stream that just
    /// ended): forget it, so the next [`TokenProvider::token`] signs a new assertion instead of
    /// handing out a session Salesforce no longer accepts. A newer token is left alone.
    pub fn invalidate(&self, stale: &Token) {
        let before = self
            .rejected_through
            .fetch_max(stale.generation, std::sync::atomic::Ordering::AcqRel);
        if before < stale.generation {
            tracing::info!(
                generation = stale.generation,
                "Salesforce rejected the access token; the next call fetches a new one."
            );
        }
    }

    /// A signed JWT bearer assertion. It is a credential while it is valid (3 minutes: anyone
    /// holding it can exchange it for a token), so it is a secret like the key that signed it.
    fn assertion(&self) -> Result<SecretString, AuthError> {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 180;
        let claims = Claims {
            iss: &self.settings.client_id,
            sub: &self.settings.username,
            aud: &self.settings.login_url,
            exp,
        };
        // The signing key is parsed from the secret PEM for each assertion (about one every
        // half hour), so no unwipeable parsed copy lives between signatures.
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(self.settings.private_key_pem.expose_secret())
                .map_err(AuthError::Signing)?;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map(SecretString::from)
        .map_err(AuthError::Signing)
    }

    /// One token request inside its HTTP client span, counted in the metrics.
    async fn fetch(&self, generation: u64) -> Result<Token, AuthError> {
        let url = format!("{}/services/oauth2/token", self.settings.login_url);
        let span = tracing::info_span!(
            "salesforce.token",
            otel.name = "POST token",
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %platform::telemetry::redact_url(&url),
            server.address = platform::telemetry::server_address(&self.settings.login_url),
            salesforce.action = "token",
            http.response.status_code = tracing::field::Empty,
        );
        let call = self.fetch_once(&url, generation);
        platform::metrics::observe_api_call(span, self.metrics.get(), "token", call, |_| 200).await
    }

    async fn fetch_once(&self, url: &str, generation: u64) -> Result<Token, AuthError> {
        let assertion = self.assertion()?;
        // The one place the assertion is read: into the request body for the token endpoint.
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.expose_secret()),
        ];
        let body = serde_urlencoded_pairs(&form);
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(self.settings.http_timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    AuthError::Timeout
                } else {
                    // With its causes, which name the TLS failure when the certificate is not
                    // trusted (reqwest's own text stops at "error sending request").
                    AuthError::Transport(platform::error::Chain(&e).to_string())
                }
            })?;
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| AuthError::Transport(e.to_string()))?;
        let token = parse_token_response(status.as_u16(), &bytes, generation)?;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(instance_url = %token.instance_url, org_id = %token.org_id, generation, "Obtained a Salesforce access token.");
        Ok(token)
    }
}

/// The token endpoint's answer as a token (of `generation`, issued now) or the classified
/// failure: a 4xx with an OAuth error body is a rejection, any other failed status is
/// [`AuthError::Status`], a 2xx without a usable token is [`AuthError::InvalidResponse`]. Pure,
/// for tests and fuzzing: every fetch goes through here.
pub fn parse_token_response(status: u16, body: &[u8], generation: u64) -> Result<Token, AuthError> {
    if !(200..300).contains(&status) {
        if let Ok(err) = serde_json::from_slice::<TokenErrorResponse>(body) {
            if (400..500).contains(&status) && status != 429 {
                return Err(AuthError::Rejected {
                    error: err.error,
                    description: err.error_description,
                });
            }
        }
        return Err(AuthError::Status { status });
    }
    // serde_json's messages can quote a value of the body, and this body holds the token: the
    // error names the kind of problem and where, nothing of the content.
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        AuthError::InvalidResponse(format!(
            "{:?} error in the body at line {} column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let org_id = org_id_from_identity_url(&parsed.id).ok_or_else(|| {
        AuthError::InvalidResponse(format!("no org id in identity URL {:?}", parsed.id))
    })?;
    Ok(Token {
        access_token: SecretString::from(parsed.access_token),
        instance_url: parsed.instance_url.trim_end_matches('/').to_owned(),
        org_id,
        issued_at: Instant::now(),
        generation,
    })
}

/// `https://login.salesforce.com/id/<orgId>/<userId>` → `<orgId>`.
pub fn org_id_from_identity_url(identity: &str) -> Option<String> {
    let mut segments = identity.trim_end_matches('/').rsplit('/');
    let _user = segments.next()?;
    let org = segments.next()?;
    (!org.is_empty() && org.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| org.to_owned())
}

fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encoding for form bodies (RFC 3986 unreserved characters pass through).
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_id_comes_from_the_identity_url() {
        assert_eq!(
            org_id_from_identity_url(
                "https://login.salesforce.com/id/00D5g000000abcdEAA/0055g000001xyzAAA"
            )
            .as_deref(),
            Some("00D5g000000abcdEAA")
        );
        assert_eq!(org_id_from_identity_url("nonsense"), None);
    }

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(urlencode("urn:a b+c"), "urn%3Aa%20b%2Bc");
    }

    #[test]
    fn the_token_is_never_shown() {
        let body = br#"{"access_token":"00D!AQ-tok-3b9e1","instance_url":"https://i.example/","id":"https://l.example/id/00D5g000000abcdEAA/0055g000001xyzAAA"}"#;
        let token = parse_token_response(200, body, 7).unwrap();
        assert_eq!(token.access_token().expose_secret(), "00D!AQ-tok-3b9e1");
        assert_eq!(token.instance_url, "https://i.example");
        let shown = format!("{token:?}");
        assert!(!shown.contains("tok-3b9e1"), "{shown}");
        assert!(shown.contains("00D5g000000abcdEAA"), "{shown}");
    }

    #[test]
    fn a_malformed_token_body_is_not_quoted() {
        // serde_json would say "invalid type: integer `735101`, expected a string".
        let body = br#"{"access_token":735101,"instance_url":"https://i.example","id":"https://l.example/id/00D/005"}"#;
        let err = parse_token_response(200, body, 1).unwrap_err();
        assert!(matches!(err, AuthError::InvalidResponse(_)), "{err}");
        assert!(!err.to_string().contains("735101"), "{err}");
        assert!(err.to_string().contains("column"), "{err}");
    }
}
