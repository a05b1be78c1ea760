//! `sf-sim`: a stateful stand-in for one Salesforce org, faithful to the public protocols the
//! pipeline uses, for tests, the local demo and benchmarks. Never needed in production.
//!
//! Three listeners, as Salesforce has three hosts:
//! - **login** ([`SfSim::login_url`]): the OAuth 2.0 JWT bearer token endpoint
//!   (`POST /services/oauth2/token`, see [`oauth`]), `userinfo`, `/health`, and the admin API
//!   under `/admin` ([`admin`]).
//! - **instance** ([`SfSim::instance_url`], the token response's `instance_url`): the REST API
//!   ([`rest`]): SOQL queries (a subset, [`rest::soql`]), Order updates one by one and in
//!   collections.
//! - **pubsub** ([`SfSim::pubsub_url`]): the Pub/Sub gRPC API ([`pubsub`]) over HTTP/2,
//!   with flow control, keepalives, replay and Salesforce's error trailers.
//!
//! All three speak plain HTTP unless [`SimConfig::tls`] turns TLS on ([`tls`]): then the URLs it
//! hands out are `https://` and [`SfSim::ca_pem`] is the CA clients must trust.
//!
//! Data lives in memory ([`store`]); the one Platform Event topic's events are Avro datums
//! ([`avro`]) with two schema versions. [`SimHandle`] seeds data, publishes events (good and
//! poisoned), expires tokens, injects faults ([`faults`]) and exposes counters for assertions.
//!
//! ```no_run
//! # async fn demo(public_key_pem: String) -> anyhow::Result<()> {
//! let sim = sf_sim::SfSim::start(sf_sim::SimConfig::for_tests(public_key_pem)).await?;
//! let account = sim.state().seed_account("Acme", Some("42"));
//! let product = sim.state().seed_product("Hosting", Some("7"), Some("Monthly"));
//! let order = sim.state().seed_order(&account, &[(product.as_str(), 1)]);
//! let event = sim.state().approve_order(&order)?;
//! # let _ = event; sim.shutdown().await; Ok(()) }
//! ```

pub mod admin;
pub mod avro;
pub mod config;
pub mod error;
pub mod faults;
pub mod oauth;
pub mod pubsub;
pub mod rest;
pub mod sobjects;
pub mod stand_in;
pub mod state;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use avro::SchemaVersion;
pub use config::SimConfig;
pub use error::SimError;
pub use faults::Faults;
pub use state::{
    DemoSeed, EventSpec, OrderWrite, PoisonKind, PublishedEvent, SimHandle, SimStats,
    StoredEventInfo,
};

use state::{Inner, Urls};

/// A running simulator. Dropping it stops the listeners; [`SfSim::shutdown`] also waits.
#[derive(Debug)]
pub struct SfSim {
    handle: SimHandle,
    login_addr: SocketAddr,
    instance_addr: SocketAddr,
    pubsub_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The generated CA's PEM (TLS with a generated certificate only).
    ca_pem: Option<String>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), SimError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { what, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| SimError::Bind { what, addr, source })?;
    Ok((listener, local))
}

impl SfSim {
    /// Binds the three listeners and serves until [`SfSim::shutdown`]. Connections are accepted
    /// as soon as this returns.
    pub async fn start(config: SimConfig) -> anyhow::Result<SfSim> {
        let decoding_key =
            jsonwebtoken::DecodingKey::from_rsa_pem(config.jwt_public_key_pem.as_bytes())
                .map_err(SimError::PublicKey)?;
        let (login, login_addr) = bind("login", config.login_addr).await?;
        let (instance, instance_addr) = bind("instance", config.instance_addr).await?;
        let (pubsub, pubsub_addr) = bind("pubsub", config.pubsub_addr).await?;
        let identity = tls::ServerIdentity::resolve(&config.tls, &config.public_host)?;
        let http_tls = identity
            .as_ref()
            .map(tls::ServerIdentity::http_acceptor)
            .transpose()?;
        let host = config.public_host.clone();
        let scheme = if identity.is_some() { "https" } else { "http" };
        let urls = Urls {
            login: format!("{scheme}://{host}:{}", login_addr.port()),
            instance: format!("{scheme}://{host}:{}", instance_addr.port()),
            pubsub: format!("{scheme}://{host}:{}", pubsub_addr.port()),
        };
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner::new(config, urls, decoding_key, cancel.clone())?);
        let handle = SimHandle {
            inner: inner.clone(),
        };

        let login_app = Router::new()
            .route("/services/oauth2/token", post(oauth::token))
            .route("/services/oauth2/userinfo", get(oauth::userinfo))
            .route(
                "/health",
                get(|| async { Json(serde_json::json!({ "status": "ok", "service": "sf-sim" })) }),
            )
            .with_state(inner.clone())
            .merge(admin::router(handle.clone()));
        let instance_app = rest::router(inner.clone());
        let grpc_service =
            pubsub_proto::pub_sub_server::PubSubServer::new(pubsub::PubSubService::new(inner));
        let mut grpc = tonic::transport::Server::builder();
        if let Some(identity) = &identity {
            grpc = grpc
                .tls_config(identity.grpc_config())
                .map_err(|e| SimError::tls("the Pub/Sub listener", e))?;
        }
        let grpc = grpc.serve_with_incoming_shutdown(
            grpc_service,
            // Without TCP_NODELAY the tail segment of each FetchResponse waits for the
            // client's delayed ACK (about 40 ms on Linux), capping delivery near 2,500 events/s;
            // tonic sets it only on listeners it binds itself.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(pubsub),
                |accepted| {
                    if let Ok(stream) = &accepted {
                        let _ = stream.set_nodelay(true);
                    }
                    accepted
                },
            ),
            cancel.clone().cancelled_owned(),
        );

        let http = |what: &'static str, listener: TcpListener, app: Router| match &http_tls {
            Some(acceptor) => tokio::spawn(serve_http(
                what,
                tls::TlsListener::new(what, listener, acceptor.clone()),
                app,
                cancel.clone(),
            )),
            None => tokio::spawn(serve_http(what, listener, app, cancel.clone())),
        };
        let tasks = vec![
            http("login", login, login_app),
            http("instance", instance, instance_app),
            tokio::spawn(async move {
                if let Err(err) = grpc.await {
                    tracing::error!(error = %platform::error::Chain(&err), "The Pub/Sub listener failed.");
                }
            }),
        ];
        Ok(SfSim {
            handle,
            login_addr,
            instance_addr,
            pubsub_addr,
            cancel,
            tasks,
            ca_pem: identity.and_then(|i| i.ca_pem),
        })
    }

    /// The PEM of the CA that signed the generated certificate, for clients to trust
    /// (`SF_CA_FILE`). `None` with TLS off or with a certificate given in files.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// `http(s)://host:port` of the login listener: `SF_LOGIN_URL` for clients, and the JWT `aud`.
    pub fn login_url(&self) -> String {
        self.handle.inner.urls.login.clone()
    }

    /// REST base (the token response's `instance_url`).
    pub fn instance_url(&self) -> String {
        self.handle.inner.urls.instance.clone()
    }

    /// `http(s)://host:port` of the Pub/Sub listener (`SF_PUBSUB_ENDPOINT`).
    pub fn pubsub_url(&self) -> String {
        self.handle.inner.urls.pubsub.clone()
    }

    pub fn admin_url(&self) -> String {
        format!("{}/admin", self.handle.inner.urls.login)
    }

    /// The bound addresses (login, instance, pubsub), useful when ports were 0.
    pub fn local_addrs(&self) -> (SocketAddr, SocketAddr, SocketAddr) {
        (self.login_addr, self.instance_addr, self.pubsub_addr)
    }

    pub fn config(&self) -> &SimConfig {
        &self.handle.inner.config
    }

    pub fn state(&self) -> &SimHandle {
        &self.handle
    }

    /// Stops accepting, ends open Subscribe streams with UNAVAILABLE (as a server going away
    /// does), and waits up to five seconds for the listeners to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        if tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("sf-sim listeners did not stop within 5 s; aborting them.");
            for abort in aborts {
                abort.abort();
            }
        }
    }
}

impl Drop for SfSim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve_http<L>(what: &'static str, listener: L, app: Router, cancel: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(err) = served {
        tracing::error!(listener = what, error = %platform::error::Chain(&err), "An HTTP listener failed.");
    }
}
