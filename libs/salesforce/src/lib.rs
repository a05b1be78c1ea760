//! Salesforce client for the pipeline.
//!
//! - [`settings`]: the contract's `SF_*` variables; the private key is loaded (and checked) at
//!   start so a bad key stops the process with a line naming `SF_PRIVATE_KEY_PATH`.
//! - [`auth`]: OAuth 2.0 JWT bearer flow (RS256), token cached and refreshed on age or on an
//!   authentication error.
//! - [`rest`]: SOQL query and record updates (single and sObject Collections).
//! - [`pubsub`]: Pub/Sub API client (gRPC): schemas, topics, and a Subscribe stream the caller
//!   drives (flow control, cursor and reconnects stay with the caller).
//! - [`avro`]: decoding of event payloads with the writer schema from `GetSchema`.
//! - [`tls`]: the extra CAs of `SF_CA_FILE`, and the one HTTP client builder for the token
//!   endpoint and REST ([`http_client_builder`]).
//! - [`trailers`]: the guard that keeps unreadable gRPC status details from panicking tonic.

pub mod auth;
pub mod avro;
pub mod pubsub;
pub mod rest;
pub mod settings;
pub mod tls;
pub mod trailers;

pub use auth::{AuthError, Token, TokenProvider};
pub use settings::SalesforceSettings;
pub use tls::{http_client_builder, CaFileError, ExtraRoots};
