//! Errors of the simulator's own operations (start-up, seeding, data inspection). Protocol errors
//! that a client must see are rendered by each protocol module in Salesforce's shape instead.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("the JWT public key is not a PEM RSA public key: {0}")]
    PublicKey(#[source] jsonwebtoken::errors::Error),
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("Avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
    #[error("JSON: {0}")]
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

impl From<apache_avro::Error> for SimError {
    fn from(err: apache_avro::Error) -> Self {
        SimError::Avro(Box::new(err))
    }
}
