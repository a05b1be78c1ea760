//! Errors of the simulator's own operations (start-up, seeding, admin). Errors a WHMCS caller
//! must see are rendered by [`crate::api`] in WHMCS's envelope instead.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("cannot bind the WHMCS simulator on {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid {0}")]
    Invalid(String),
}
