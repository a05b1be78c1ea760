//! Pub/Sub API client (`eventbus.v1.PubSub` over gRPC).
//!
//! This layer speaks the protocol and nothing more: the caller opens a [`Subscription`], decides
//! how many events to request and when, and keeps the replay cursor. That keeps flow control,
//! the cursor and reconnect policy in one place (sf-bridge's ingest loop), where they can be
//! reasoned about together with JetStream acknowledgements.
//!
//! Every call carries the auth metadata `accesstoken`, `instanceurl` and `tenantid`. `https://`
//! endpoints use TLS with the system's roots; `http://` is plaintext HTTP/2 (local simulator).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use pubsub_proto::pub_sub_client::PubSubClient as GrpcClient;
use pubsub_proto::{
    FetchRequest, FetchResponse, ReplayPreset, SchemaRequest, TopicInfo, TopicRequest,
};
use secrecy::ExposeSecret as _;
use tokio::sync::{mpsc, RwLock};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::auth::{AuthError, Token, TokenProvider};
use crate::avro::{parse_schema, AvroError};
use crate::trailers::StripStatusDetails;

/// The channel every call goes through: tonic's, behind the status-details guard.
type Transport = StripStatusDetails<Channel>;

/// Where a new Subscribe stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayStart {
    /// New events only.
    Latest,
    /// The earliest retained event (up to 72 hours back).
    Earliest,
    /// Strictly after this replay id.
    After(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum PubSubError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("Pub/Sub API call failed: {code:?}: {message}{}", error_code.as_deref().map(|c| format!(" (error-code {c})")).unwrap_or_default())]
    Status {
        code: tonic::Code,
        message: String,
        error_code: Option<String>,
    },
    #[error("invalid Pub/Sub endpoint {0}")]
    Endpoint(String),
    /// The Avro error is in the text, not a `source`: the text is a dead letter's reason as it
    /// is, and a chain would print it twice.
    #[error("schema {schema_id} is unusable: {problem}")]
    Schema {
        schema_id: String,
        problem: AvroError,
    },
    #[error("the Subscribe stream's request side is closed")]
    RequestSideClosed,
}

impl PubSubError {
    /// A failed call's status (code, message and trailers, as tonic read them) with Salesforce's
    /// `error-code` trailer, when it carries a readable one.
    pub fn from_status(status: tonic::Status) -> Self {
        let error_code = status
            .metadata()
            .get(pubsub_proto::metadata::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Self::Status {
            code: status.code(),
            message: status.message().to_owned(),
            error_code,
        }
    }

    /// Salesforce's `error-code` trailer, when the failure carried one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Status { error_code, .. } => error_code.as_deref(),
            _ => None,
        }
    }

    /// The token was rejected: fetch a new one before the next call.
    pub fn is_auth_rejected(&self) -> bool {
        use pubsub_proto::error_codes::{AUTH_ERROR, AUTH_REFRESH_INVALID};
        match self {
            Self::Status {
                code, error_code, ..
            } => {
                *code == tonic::Code::Unauthenticated
                    || matches!(
                        error_code.as_deref(),
                        Some(AUTH_ERROR | AUTH_REFRESH_INVALID)
                    )
            }
            _ => false,
        }
    }

    /// The stored replay id is no longer valid (corrupted, or older than the retention window).
    pub fn is_invalid_replay_id(&self) -> bool {
        use pubsub_proto::error_codes::{REPLAY_ID_CORRUPTED, REPLAY_ID_VALIDATION_FAILED};
        matches!(
            self.error_code(),
            Some(REPLAY_ID_CORRUPTED | REPLAY_ID_VALIDATION_FAILED)
        )
    }

    /// Whether retrying later, unchanged, may succeed. Auth rejections count as transient because
    /// the caller refreshes the token first; a schema that does not parse does not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Auth(e) => e.is_transient(),
            Self::Status { code, .. } => {
                !matches!(
                    code,
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unimplemented
                ) || self.is_invalid_replay_id()
            }
            Self::Endpoint(_) | Self::Schema { .. } => false,
            Self::RequestSideClosed => true,
        }
    }
}

/// A Pub/Sub API client over one lazily connected HTTP/2 channel.
#[derive(Debug)]
pub struct PubSubClient {
    grpc: GrpcClient<Transport>,
    tokens: Arc<TokenProvider>,
    schemas: RwLock<HashMap<String, Arc<Schema>>>,
}

impl PubSubClient {
    /// `endpoint` is `SF_PUBSUB_ENDPOINT`. The connection is made on first use and re-made by
    /// the channel after a failure; HTTP/2 PINGs detect a half-open connection.
    pub fn new(endpoint: &str, tokens: Arc<TokenProvider>) -> Result<Self, PubSubError> {
        let mut builder = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| PubSubError::Endpoint(format!("{endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if endpoint.starts_with("https://") {
            // SF_CA_FILE's CAs on top of the system's, as for the token and REST clients.
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(roots) = &tokens.settings().extra_roots {
                tls = tls.ca_certificate(roots.tonic_certificate());
            }
            builder = builder
                .tls_config(tls)
                .map_err(|e| PubSubError::Endpoint(format!("{endpoint}: {e}")))?;
        } else if !endpoint.starts_with("http://") {
            return Err(PubSubError::Endpoint(format!(
                "{endpoint}: scheme must be https:// or http://"
            )));
        }
        let channel = builder.connect_lazy();
        Ok(Self {
            grpc: GrpcClient::new(StripStatusDetails::new(channel))
                .max_decoding_message_size(16 * 1024 * 1024),
            tokens,
            schemas: RwLock::default(),
        })
    }

    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// `message` with the auth metadata. The one place the Pub/Sub client reads the access
    /// token: the `accesstoken` value is marked sensitive, so HTTP/2 never puts it in its header
    /// compression table and `Debug` of the request or its metadata prints `Sensitive`.
    fn authorize<T>(message: T, token: &Token) -> Result<tonic::Request<T>, PubSubError> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        for (key, value, sensitive) in [
            (
                pubsub_proto::metadata::ACCESS_TOKEN,
                token.access_token().expose_secret(),
                true,
            ),
            (
                pubsub_proto::metadata::INSTANCE_URL,
                token.instance_url.as_str(),
                false,
            ),
            (
                pubsub_proto::metadata::TENANT_ID,
                token.org_id.as_str(),
                false,
            ),
        ] {
            // The error names the key, never the value.
            let mut value: MetadataValue<_> = value.parse().map_err(|_| {
                PubSubError::Auth(AuthError::InvalidResponse(format!(
                    "{key} holds characters gRPC metadata cannot carry"
                )))
            })?;
            value.set_sensitive(sensitive);
            metadata.insert(key, value);
        }
        Ok(request)
    }

    /// The parsed schema for `schema_id`, fetched with `GetSchema` once and cached.
    pub async fn schema(&self, schema_id: &str) -> Result<Arc<Schema>, PubSubError> {
        if let Some(schema) = self.schemas.read().await.get(schema_id) {
            return Ok(schema.clone());
        }
        let request = SchemaRequest {
            schema_id: schema_id.to_owned(),
        };
        let info = self
            .unary_with_auth_retry(
                |mut grpc, req| async move { grpc.get_schema(req).await },
                request,
            )
            .await?;
        let schema =
            Arc::new(
                parse_schema(&info.schema_json).map_err(|problem| PubSubError::Schema {
                    schema_id: schema_id.to_owned(),
                    problem,
                })?,
            );
        tracing::info!(schema_id, "Fetched and cached event schema.");
        self.schemas
            .write()
            .await
            .insert(schema_id.to_owned(), schema.clone());
        Ok(schema)
    }

    /// `GetTopic`: whether we may subscribe, and the topic's current schema.
    pub async fn topic(&self, topic_name: &str) -> Result<TopicInfo, PubSubError> {
        let request = TopicRequest {
            topic_name: topic_name.to_owned(),
        };
        self.unary_with_auth_retry(
            |mut grpc, req| async move { grpc.get_topic(req).await },
            request,
        )
        .await
    }

    /// Calls a unary RPC; when the token is rejected, fetches a new one and tries once more.
    async fn unary_with_auth_retry<Req, Resp, F, Fut>(
        &self,
        call: F,
        message: Req,
    ) -> Result<Resp, PubSubError>
    where
        Req: Clone,
        F: Fn(GrpcClient<Transport>, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let token = self.tokens.token().await?;
        let first = call(self.grpc.clone(), Self::authorize(message.clone(), &token)?).await;
        match first.map_err(PubSubError::from_status) {
            Ok(response) => Ok(response.into_inner()),
            Err(err) if err.is_auth_rejected() => {
                let fresh = self.tokens.refresh(&token).await?;
                call(self.grpc.clone(), Self::authorize(message, &fresh)?)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(PubSubError::from_status)
            }
            Err(err) => Err(err),
        }
    }

    /// Opens a Subscribe stream starting at `start`, with `num_requested` events requested in the
    /// first FetchRequest (the only one that carries topic and replay options).
    pub async fn subscribe(
        &self,
        topic_name: &str,
        start: &ReplayStart,
        num_requested: i32,
    ) -> Result<Subscription, PubSubError> {
        let token = self.tokens.token().await?;
        let (preset, replay_id) = match start {
            ReplayStart::Latest => (ReplayPreset::Latest, Vec::new()),
            ReplayStart::Earliest => (ReplayPreset::Earliest, Vec::new()),
            ReplayStart::After(id) => (ReplayPreset::Custom, id.clone()),
        };
        let (sender, receiver) = mpsc::channel(8);
        let first = FetchRequest {
            topic_name: topic_name.to_owned(),
            replay_preset: preset as i32,
            replay_id,
            num_requested,
            auth_refresh: String::new(),
        };
        sender
            .send(first)
            .await
            .map_err(|_| PubSubError::RequestSideClosed)?;
        let request = Self::authorize(ReceiverStream::new(receiver), &token)?;
        let response = self
            .grpc
            .clone()
            .subscribe(request)
            .await
            .map_err(PubSubError::from_status);
        match response {
            Ok(response) => Ok(Subscription {
                sender,
                inbound: response.into_inner(),
                token,
                tokens: self.tokens.clone(),
            }),
            Err(err) => {
                if err.is_auth_rejected() {
                    // The next attempt, made by the caller after its backoff, uses a new token.
                    self.tokens.refresh(&token).await?;
                }
                Err(err)
            }
        }
    }
}

/// An open Subscribe stream.
#[derive(Debug)]
pub struct Subscription {
    /// Feeds FetchRequests into the stream; dropping it half-closes the stream.
    sender: mpsc::Sender<FetchRequest>,
    inbound: tonic::Streaming<FetchResponse>,
    /// The token the stream was opened with, to report if Salesforce rejects it mid-stream.
    token: Arc<Token>,
    tokens: Arc<TokenProvider>,
}

impl Subscription {
    /// Asks for `n` more events (Salesforce adds it to what is outstanding, up to 100).
    pub async fn request(&self, n: i32) -> Result<(), PubSubError> {
        let request = FetchRequest {
            num_requested: n,
            ..Default::default()
        };
        self.sender
            .send(request)
            .await
            .map_err(|_| PubSubError::RequestSideClosed)
    }

    /// The next response (events, or an empty keepalive); `None` when the server ended the
    /// stream cleanly.
    ///
    /// A stream Salesforce ends with `UNAUTHENTICATED` (the session expired or was revoked while
    /// the stream was open) invalidates the stream's token before the error is returned: the
    /// caller's next `subscribe` then signs a new assertion, instead of presenting the dead
    /// session once more and being refused.
    pub async fn next(&mut self) -> Result<Option<FetchResponse>, PubSubError> {
        match self.inbound.message().await {
            Ok(response) => Ok(response),
            Err(status) => {
                let err = PubSubError::from_status(status);
                if err.is_auth_rejected() {
                    self.tokens.invalidate(&self.token);
                }
                Err(err)
            }
        }
    }

    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_token_metadata_is_sensitive() {
        let body = br#"{"access_token":"00D!AQ-tok-81f0c","instance_url":"https://i.example","id":"https://l.example/id/00D5g000000abcdEAA/005"}"#;
        let token = crate::auth::parse_token_response(200, body, 1).unwrap();
        let request = PubSubClient::authorize((), &token).unwrap();
        let metadata = request.metadata();
        let value = metadata.get(pubsub_proto::metadata::ACCESS_TOKEN).unwrap();
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().unwrap(), "00D!AQ-tok-81f0c");
        assert!(!metadata
            .get(pubsub_proto::metadata::INSTANCE_URL)
            .unwrap()
            .is_sensitive());
        let shown = format!("{request:?}");
        assert!(!shown.contains("tok-81f0c"), "{shown}");
        assert!(shown.contains("00D5g000000abcdEAA"), "{shown}");
    }
}
