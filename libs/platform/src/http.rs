//! The health and metrics listener every service runs on `HTTP_ADDR`
//! (docs/contract.md §3): `GET /health` (readiness), `GET /livez` (liveness) and `GET /metrics`, plus
//! routes a service adds. `/metrics` serves the service's registry followed by the standard
//! `process_*` metrics ([`crate::metrics::ProcessCollector`]).
//!
//! `/livez` says only whether the process itself still works: it never looks at NATS,
//! Salesforce or WHMCS, so a liveness probe does not restart a healthy process during their
//! outage. It fails once a supervised task has died ([`crate::supervise`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// An HTTP API's error answer: the status and `{"error": message}`, as the provisioner's status
/// API and the stand-ins' admin APIs answer.
#[derive(Debug)]
pub struct ErrorAnswer(pub StatusCode, pub String);

impl IntoResponse for ErrorAnswer {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// A JSON request body, parsed by hand so that a bad one gets a JSON answer naming the problem
/// (axum's `Json` extractor answers in plain text). An empty body reads as `{}`.
pub fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ErrorAnswer> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ErrorAnswer(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

type Probe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What `/health` reports: each integration the service depends on, up or down with a reason.
/// Integrations are either set by the task that uses them or probed when `/health` is read.
pub struct Health {
    service: String,
    version: String,
    states: RwLock<BTreeMap<String, Result<(), String>>>,
    probes: RwLock<Vec<(String, Probe)>>,
    /// Tasks of the process that died, with the reason: `/livez` fails while any is here.
    dead: RwLock<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Health {
    pub fn new(service: &str, version: &str) -> Arc<Self> {
        Arc::new(Self {
            service: service.to_owned(),
            version: version.to_owned(),
            states: RwLock::default(),
            probes: RwLock::default(),
            dead: RwLock::default(),
        })
    }

    pub fn set_up(&self, integration: &str) {
        self.set(integration, Ok(()));
    }

    pub fn set_down(&self, integration: &str, reason: impl Into<String>) {
        self.set(integration, Err(reason.into()));
    }

    fn set(&self, integration: &str, state: Result<(), String>) {
        if let Ok(mut states) = self.states.write() {
            states.insert(integration.to_owned(), state);
        }
    }

    /// Marks the process as no longer live: `task` died for `reason`. `/livez` answers 503 from
    /// now on; there is no way back, the process is expected to exit.
    pub fn set_dead(&self, task: &str, reason: impl Into<String>) {
        if let Ok(mut dead) = self.dead.write() {
            dead.insert(task.to_owned(), reason.into());
        }
    }

    /// The `/livez` body and whether the process is live.
    pub fn liveness(&self) -> (bool, serde_json::Value) {
        let dead = self.dead.read().map(|d| d.clone()).unwrap_or_default();
        let live = dead.is_empty();
        let mut body = json!({
            "status": if live { "ok" } else { "failed" },
            "service": self.service,
            "version": self.version,
        });
        if !live {
            body["failed_tasks"] = json!(dead);
        }
        (live, body)
    }

    /// Registers a check run on every `/health` read (cheap, non-blocking checks only).
    pub fn add_probe(
        &self,
        integration: &str,
        probe: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        if let Ok(mut probes) = self.probes.write() {
            probes.push((integration.to_owned(), Box::new(probe)));
        }
    }

    /// Registers the NATS connection as the `nats` integration.
    pub fn add_nats(&self, client: async_nats::Client) {
        self.add_probe("nats", move || {
            if crate::nats::is_connected(&client) {
                Ok(())
            } else {
                Err("not connected".to_owned())
            }
        });
    }

    /// The `/health` body and whether every integration is up.
    pub fn report(&self) -> (bool, serde_json::Value) {
        let mut all: BTreeMap<String, Result<(), String>> =
            self.states.read().map(|s| s.clone()).unwrap_or_default();
        if let Ok(probes) = self.probes.read() {
            for (name, probe) in probes.iter() {
                all.insert(name.clone(), probe());
            }
        }
        let healthy = all.values().all(Result::is_ok);
        let integrations: serde_json::Map<String, serde_json::Value> = all
            .into_iter()
            .map(|(name, state)| {
                let value = match state {
                    Ok(()) => json!({"status": "up"}),
                    Err(reason) => json!({"status": "down", "reason": reason}),
                };
                (name, value)
            })
            .collect();
        let body = json!({
            "status": if healthy { "ok" } else { "degraded" },
            "service": self.service,
            "version": self.version,
            "integrations": integrations,
        });
        (healthy, body)
    }
}

#[derive(Clone)]
struct ServerState {
    health: Arc<Health>,
    registry: Arc<Registry>,
    /// The process metrics, kept apart so that no service has to register them itself.
    process: Arc<Registry>,
}

/// A running listener: its bound address (port 0 resolved) and its task.
#[derive(Debug)]
pub struct HttpServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `addr` and serves `/health`, `/livez`, `/metrics` and the service's `extra` routes until
/// `cancel`.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    registry: Arc<Registry>,
    extra: Router,
    cancel: CancellationToken,
) -> std::io::Result<HttpServer> {
    let mut process = Registry::default();
    process.register_collector(Box::new(crate::metrics::ProcessCollector));
    let state = ServerState {
        health,
        registry,
        process: Arc::new(process),
    };
    let app = Router::new()
        .route("/health", get(health_handler))
        .route("/livez", get(livez_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(state)
        .merge(extra);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    tracing::info!(%local_addr, "Serving /health, /livez and /metrics.");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
    });
    Ok(HttpServer { local_addr, task })
}

async fn health_handler(State(state): State<ServerState>) -> Response {
    let (healthy, body) = state.health.report();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn livez_handler(State(state): State<ServerState>) -> Response {
    let (live, body) = state.health.liveness();
    let status = if live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_handler(State(state): State<ServerState>) -> Response {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut text = String::new();
    let encoded = encode_registry(&mut text, &state.registry)
        .and_then(|()| encode_registry(&mut text, &state.process))
        .and_then(|()| encode_eof(&mut text));
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Patch {
        #[serde(default)]
        status: Option<String>,
    }

    #[test]
    fn a_json_body_reads_empty_as_an_empty_object_and_names_what_does_not_parse() {
        assert_eq!(json_body::<Patch>(b" \n").unwrap(), Patch { status: None });
        assert_eq!(
            json_body::<Patch>(br#"{"status":"Active"}"#).unwrap(),
            Patch {
                status: Some("Active".to_owned())
            }
        );
        let ErrorAnswer(code, message) = json_body::<Patch>(b"{status").unwrap_err();
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(message.starts_with("invalid JSON body: "), "{message}");
    }

    #[test]
    fn health_is_degraded_while_an_integration_is_down() {
        let health = Health::new("svc", "1.0");
        health.set_up("salesforce");
        health.add_probe("nats", || Err("not connected".into()));
        let (healthy, body) = health.report();
        assert!(!healthy);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["integrations"]["nats"]["status"], "down");
        assert_eq!(body["integrations"]["salesforce"]["status"], "up");
    }

    #[test]
    fn liveness_ignores_integrations_and_fails_once_a_task_died() {
        let health = Health::new("svc", "1.0");
        health.set_down("nats", "not connected");
        assert!(
            health.liveness().0,
            "an integration outage is not a liveness failure"
        );
        health.set_dead("lease-keeper", "panicked: boom");
        let (live, body) = health.liveness();
        assert!(!live);
        assert_eq!(body["status"], "failed");
        assert_eq!(body["failed_tasks"]["lease-keeper"], "panicked: boom");
    }

    #[tokio::test]
    async fn server_answers_health_and_metrics() {
        let health = Health::new("svc", "1.0");
        health.set_up("nats");
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        registry.register("demo_events", "Events seen", counter.clone());
        counter.inc();
        let cancel = CancellationToken::new();
        let server = serve(
            "127.0.0.1:0".parse().unwrap(),
            health,
            Arc::new(registry),
            Router::new(),
            cancel.clone(),
        )
        .await
        .unwrap();
        let base = format!("http://{}", server.local_addr);
        let health: serde_json::Value = reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
        assert_eq!(health["integrations"]["nats"]["status"], "up");
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("demo_events_total 1"), "{metrics}");
        // The process metrics come after the service's own and before the one end marker.
        #[cfg(target_os = "linux")]
        for family in [
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_start_time_seconds gauge",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(metrics.contains(family), "{family} in {metrics}");
        }
        assert!(metrics.ends_with("# EOF\n"), "{metrics}");
        assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
        let livez = reqwest::get(format!("{base}/livez")).await.unwrap();
        assert_eq!(livez.status(), 200);
        cancel.cancel();
        server.task.await.unwrap().unwrap();
    }
}
