//! `whmcs-sim`: a stateful stand-in for one WHMCS installation's External API
//! (`POST /includes/api.php`), faithful to the behaviour the provisioner depends on (reference
//! `whmcs.md`), for tests, the local demo and benchmarks. Never needed in production.
//!
//! - [`api`]: the request pipeline: IP/access-key check, action normalisation, identifier/secret
//!   authentication, API role, `responsetype` (JSON, or WHMCS's NVP/XML defaults when omitted),
//!   WHMCS's error texts and its status split (403 before the action, 200 + `result=error` from
//!   it, 400 for an empty action), optional IP ban after repeated failed logins.
//! - [`actions`]: GetClientsDetails, GetPayMethods, GetProducts, GetPaymentMethods, AddOrder,
//!   AcceptOrder, CancelOrder, GetOrders, with WHMCS's quirks (silent billing-cycle fallback,
//!   unknown pids dropped, `notes` stored, AcceptOrder Pending-only and its `autosetup` trap).
//! - [`faults`]: per action: latency, HTTP status for the next N calls, `result=error` for the
//!   next N, a hang without running the action, and "fail after commit" (500 or a held reply
//!   after the order was created/accepted).
//! - [`state`]: [`WhmcsHandle`], the in-process control API; [`admin`]: the same over HTTP.
//!
//! Routes: `POST /includes/api.php`, `GET /health`, `/admin/...` (see [`admin`]).
//!
//! # Binary
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WHMCS_SIM_ADDR` | `0.0.0.0:8090` | listen address |
//! | `WHMCS_SIM_PUBLIC_HOST` | `127.0.0.1` | host in the URLs logged at start |
//! | `WHMCS_SIM_IDENTIFIER`, `WHMCS_SIM_SECRET` | required | the accepted API credential pair |
//! | `WHMCS_SIM_ACCESS_KEY` | unset | `$api_access_key`: callers sending it skip the IP allow-list; a wrong one is `Invalid Access Key` |
//! | `WHMCS_SIM_ALLOWED_IPS` | unset (everyone) | comma-separated API IP allow-list; others get `Invalid IP <ip>` |
//! | `WHMCS_SIM_BAN_AFTER_FAILURES` | unset (no ban) | failed logins from one IP within 30 min before `IP Banned` for 15 min (WHMCS: 3) |
//! | `WHMCS_SIM_GATEWAYS` | `mailin,stripe,banktransfer` | active gateway modules (AddOrder `paymentmethod`) |
//! | `WHMCS_SIM_SEED_DEMO` | `false` | seed the demo data below at start |
//! | `RUST_LOG`, `LOG_FORMAT`, `OTEL_*` | | as every service (docs/contract.md §2) |
//!
//! # Demo data (`WHMCS_SIM_SEED_DEMO=true` or `POST /admin/seed-demo` on an empty simulator)
//!
//! Matches the `WH_Account__c` / `WH_Product_ID__c` values of sf-sim's demo.
//!
//! | client id | name | status | stored pay method |
//! |---|---|---|---|
//! | 1 | Acme Hosting GmbH | Active | Visa ••4242 on `stripe` |
//! | 2 | Globex Corporation | Active | Visa ••4242 on `stripe` |
//! | 3 | Umbrella Labs (no pay method) | Active | none (the contract's `409 Payment method missing`) |
//! | 4 | Closed Industries | Closed | Visa ••4242 (AddOrder refuses Closed clients) |
//!
//! | pid | product | pay type | cycles (USD) | quantities |
//! |---|---|---|---|---|
//! | 1 | Web Hosting Starter | recurring | monthly 5.00, quarterly 15.00, annually 60.00 | yes |
//! | 2 | VPS Pro | recurring | monthly 20.00, semiannually 120.00, annually 240.00 | yes |
//! | 3 | Domain Registration | one-time | onetime 12.00 | no |
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use whmcs_sim::{ActionFaults, WhmcsSim, WhmcsSimConfig};
//! let sim = WhmcsSim::start(WhmcsSimConfig::for_tests()).await?;
//! let client = sim.state().seed_client("Acme", true);
//! let pid = sim.state().seed_product("Hosting", &["monthly", "annually"]);
//! sim.state().set_faults("AddOrder", ActionFaults::fail_after_commit_status(500, 1));
//! // point a client at sim.api_url() with sim.identifier() / sim.secret() ...
//! # let _ = (client, pid); sim.shutdown().await; Ok(()) }
//! ```

pub mod actions;
pub mod admin;
pub mod api;
pub mod config;
pub mod error;
pub mod faults;
pub mod php;
pub mod stand_in;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::WhmcsSimConfig;
pub use error::SimError;
pub use faults::{ActionFaults, AfterCommitFault, ErrorFault, HangFault, StatusFault};
pub use state::{
    AcceptRecord, Client, ClientSpec, ClientStatus, DemoSeed, Invoice, Order, PayMethod, PayType,
    Product, ProductSpec, Service, WhmcsHandle, WhmcsStats,
};

/// A running simulator. Dropping it stops the listener; [`WhmcsSim::shutdown`] also waits.
#[derive(Debug)]
pub struct WhmcsSim {
    handle: WhmcsHandle,
    addr: SocketAddr,
    base_url: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl WhmcsSim {
    /// Binds and serves until [`WhmcsSim::shutdown`]; connections are accepted on return.
    pub async fn start(config: WhmcsSimConfig) -> anyhow::Result<WhmcsSim> {
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.addr,
            source,
        })?;
        let base_url = format!("http://{}:{}", config.public_host, addr.port());
        let handle = WhmcsHandle::new(config);
        let app = Router::new()
            .route("/includes/api.php", post(api::api_php))
            .route(
                "/health",
                get(|| async {
                    Json(serde_json::json!({ "status": "ok", "service": "whmcs-sim" }))
                }),
            )
            .with_state(handle.clone())
            .merge(admin::router(handle.clone()));
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await;
            if let Err(err) = served {
                tracing::error!(error = %platform::error::Chain(&err), "The WHMCS simulator listener failed.");
            }
        });
        Ok(WhmcsSim {
            handle,
            addr,
            base_url,
            cancel,
            task: Some(task),
        })
    }

    /// `http://host:port`.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The full URL of `includes/api.php` (`WHMCS_API_URL` for clients).
    pub fn api_url(&self) -> String {
        format!("{}/includes/api.php", self.base_url)
    }

    pub fn admin_url(&self) -> String {
        format!("{}/admin", self.base_url)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn identifier(&self) -> &str {
        &self.handle.inner.config.identifier
    }

    pub fn secret(&self) -> &str {
        &self.handle.inner.config.secret
    }

    pub fn access_key(&self) -> Option<&str> {
        self.handle.inner.config.access_key.as_deref()
    }

    pub fn state(&self) -> &WhmcsHandle {
        &self.handle
    }

    /// Stops accepting and waits up to five seconds for open requests (held ones included)
    /// before aborting them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("whmcs-sim did not stop within 5 s; aborting it.");
                abort.abort();
            }
        }
    }
}

impl Drop for WhmcsSim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
