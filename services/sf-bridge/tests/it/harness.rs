//! Per-test environment: a nats-server, an sf-sim, and ways to run the bridge against them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use async_nats::jetstream;
use sf_bridge::BridgeSettings;
use sf_sim::{SfSim, SimConfig};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use testkit::service::RunningService;

pub use testkit::service::{get_json, sample as metric};

pub const STREAM: &str = "PROVISIONING_REQUESTS";
pub const DEADLETTER_STREAM: &str = "PROVISIONING_DEADLETTER";
pub const CURSOR_BUCKET: &str = "sf_bridge_cursor";
pub const CURSOR_KEY: &str = "event.OrderProvisionRequested__e";

pub struct Harness {
    pub nats: NatsServer,
    pub sim: SfSim,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut SimConfig)) -> Self {
        testkit::telemetry::init_once("sf-bridge-test", "warn");
        let nats = NatsServer::start().await;
        let mut config = testkit::sim::sf_config();
        configure(&mut config);
        let sim = testkit::sim::start_sf_with(config).await;
        Self { nats, sim }
    }

    /// The bridge's environment, as an operator would set it.
    pub fn bridge_env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = testkit::service::base_env(self.nats.url(), &self.sim);
        env.extend(testkit::sim::pubsub_env(&self.sim));
        env.extend([
            ("SF_BRIDGE_LEASE_TTL_SECS", "3".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
            ("RUST_LOG", "info,sf_bridge=debug".to_owned()),
        ]);
        testkit::service::with_overrides(env, extra)
    }

    /// Runs the bridge in this process.
    pub async fn start_bridge(&self, extra: &[(&str, &str)]) -> RunningBridge {
        let env = platform::config::Env::from_pairs(self.bridge_env(extra));
        let settings = BridgeSettings::from_env(&env).expect("bridge settings");
        RunningBridge(RunningService::start("the bridge", Duration::from_secs(20), settings).await)
    }

    /// Runs the bridge binary as a child process, with its HTTP listener on a fixed free port.
    pub fn spawn_bridge(
        &self,
        instance: &str,
        extra: &[(&str, &str)],
    ) -> (ChildProcess, SocketAddr) {
        let port = testkit::nats::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let http = addr.to_string();
        let mut all = vec![
            ("HTTP_ADDR", http.as_str()),
            ("SF_BRIDGE_INSTANCE_ID", instance),
        ];
        all.extend_from_slice(extra);
        let env = self.bridge_env(&all);
        (
            ChildProcess::spawn(env!("CARGO_BIN_EXE_sf-bridge"), &env),
            addr,
        )
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(self.nats.client().await)
    }

    /// Every message stored in `stream`, in order.
    pub async fn stored(&self, stream: &str) -> Vec<jetstream::message::StreamMessage> {
        testkit::stream::messages(&self.js().await, stream).await
    }

    pub async fn stored_count(&self, stream: &str) -> u64 {
        testkit::stream::count(&self.js().await, stream).await
    }

    /// Waits until `stream` holds `count` messages (and fails if it ever holds more).
    pub async fn wait_for_stored(&self, stream: &str, count: u64, timeout: Duration) {
        testkit::stream::wait_for_count(&self.js().await, stream, count, timeout).await;
    }

    /// The stored cursor document, if any.
    pub async fn cursor(&self) -> Option<serde_json::Value> {
        let js = self.js().await;
        let kv = js.get_key_value(CURSOR_BUCKET).await.ok()?;
        let bytes = kv.get(CURSOR_KEY).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    pub async fn cursor_replay_id(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let doc = self.cursor().await?;
        base64::engine::general_purpose::STANDARD
            .decode(doc["replay_id"].as_str()?)
            .ok()
    }

    /// Creates the requests stream before the bridge starts (the bridge uses an existing stream
    /// as it finds it), with the bridge's own configuration changed by `change`.
    pub async fn create_requests_stream(
        &self,
        change: impl FnOnce(&mut jetstream::stream::Config),
    ) -> jetstream::stream::Config {
        let mut config = platform::streams::requests(
            STREAM,
            Duration::from_secs(72 * 3600),
            Duration::from_secs(7 * 24 * 3600),
        );
        change(&mut config);
        self.js()
            .await
            .create_stream(config.clone())
            .await
            .expect("create the requests stream");
        config
    }

    /// Stores `value` under the cursor key as it is, creating the bucket the way the bridge does.
    pub async fn put_raw_cursor(&self, value: &[u8]) {
        let js = self.js().await;
        let kv = platform::nats::ensure_bucket(
            &js,
            jetstream::kv::Config {
                bucket: CURSOR_BUCKET.to_owned(),
                description: "sf-bridge replay cursor per Salesforce channel".to_owned(),
                history: 10,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await
        .expect("cursor bucket");
        kv.put(CURSOR_KEY, value.to_vec().into())
            .await
            .expect("put cursor");
    }

    /// Seeds an account, a product and `n` orders; returns the order ids.
    pub fn seed_orders(&self, n: usize) -> Vec<String> {
        let state = self.sim.state();
        let account = state.seed_account("Acme Ltd", Some("42"));
        let product = state.seed_product("Hosting S", Some("7"), Some("Monthly"));
        (0..n)
            .map(|_| state.seed_order(&account, &[(product.clone(), 1)]))
            .collect()
    }
}

/// The bridge in this process, with its Salesforce session's health.
pub struct RunningBridge(RunningService<sf_bridge::app::AppError>);

impl Deref for RunningBridge {
    type Target = RunningService<sf_bridge::app::AppError>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl RunningBridge {
    /// SIGTERM-equivalent: cancel and wait for the ordered shutdown.
    pub async fn stop(self) {
        self.0.stop().await;
    }

    pub async fn sf_events(&self) -> serde_json::Value {
        get_json(self.http_addr, "/health/sf-events").await.1
    }

    pub async fn wait_for_state(&self, state: &str, timeout: Duration) {
        testkit::wait::until(&format!("bridge state {state}"), timeout, || async {
            (self.sf_events().await["state"] == state).then_some(())
        })
        .await;
    }
}

/// Waits for `/health/sf-events` of a child-process bridge to report `state`.
pub async fn wait_for_child_state(addr: SocketAddr, state: &str, timeout: Duration) {
    testkit::wait::until(&format!("child bridge state {state}"), timeout, || async {
        let response = reqwest::get(format!("http://{addr}/health/sf-events"))
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        (body["state"] == state).then_some(())
    })
    .await;
}
