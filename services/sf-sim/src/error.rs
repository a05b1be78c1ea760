//! Errors of the simulator's own operations (start-up, seeding, data inspection). Protocol errors
//! that a client must see are rendered by each protocol module in Salesforce's shape instead.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("the JWT public key is not a PEM RSA public key")]
    PublicKey(#[source] jsonwebtoken::errors::Error),
    #[error("cannot bind {what} listener on {addr}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Setting up TLS failed at `step`; the cause, when there is one, is the source.
    #[error("TLS: {step}")]
    Tls {
        step: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("Avro")]
    Avro(#[from] Box<apache_avro::Error>),
    #[error("JSON")]
    Json(#[from] serde_json::Error),
    #[error("unknown schema id")]
    UnknownSchema,
    #[error("payload has {0} bytes after the record")]
    TrailingBytes(usize),
    #[error("no record with id {0}")]
    NotFound(String),
    #[error("Order has no field {0}")]
    UnknownField(String),
    #[error("{0} is not a valid Salesforce id")]
    InvalidId(String),
}

impl SimError {
    /// TLS set-up failed at `step` because of `cause`.
    pub(crate) fn tls(
        step: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Tls {
            step: step.into(),
            source: Some(Box::new(cause)),
        }
    }
}

impl From<apache_avro::Error> for SimError {
    fn from(err: apache_avro::Error) -> Self {
        SimError::Avro(Box::new(err))
    }
}
