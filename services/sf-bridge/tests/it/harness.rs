//! Per-test environment: a nats-server, an sf-sim, and ways to run the bridge against them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use sf_bridge::{App, BridgeSettings};
use sf_sim::{SfSim, SimConfig};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use tokio_util::sync::CancellationToken;

pub const STREAM: &str = "PROVISIONING_REQUESTS";
pub const DEADLETTER_STREAM: &str = "PROVISIONING_DEADLETTER";
pub const CURSOR_BUCKET: &str = "sf_bridge_cursor";
pub const CURSOR_KEY: &str = "event.OrderProvisionRequested__e";

pub struct Harness {
    pub nats: NatsServer,
    pub sim: SfSim,
    pub client_id: String,
    pub username: String,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut SimConfig)) -> Self {
        testkit::telemetry::init_once("sf-bridge-test", "warn");
        let keys = testkit::keys::test_keys();
        let nats = NatsServer::start().await;
        let mut config = SimConfig::for_tests(keys.public_pem.clone());
        configure(&mut config);
        let (client_id, username) = (config.client_id.clone(), config.username.clone());
        let sim = SfSim::start(config).await.expect("start sf-sim");
        Self {
            nats,
            sim,
            client_id,
            username,
        }
    }

    /// The bridge's environment, as an operator would set it.
    pub fn bridge_env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let keys = testkit::keys::test_keys();
        let mut env: HashMap<String, String> = [
            ("NATS_URL", self.nats.url()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SF_LOGIN_URL", self.sim.login_url()),
            ("SF_CLIENT_ID", self.client_id.clone()),
            ("SF_USERNAME", self.username.clone()),
            (
                "SF_PRIVATE_KEY_PATH",
                keys.private_key_path.display().to_string(),
            ),
            ("SF_PUBSUB_ENDPOINT", self.sim.pubsub_url()),
            ("SF_EVENTS_REPLAY", "ALL".to_owned()),
            ("SF_BRIDGE_LEASE_TTL_SECS", "3".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
            ("RUST_LOG", "info,sf_bridge=debug".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    /// Runs the bridge in this process.
    pub async fn start_bridge(&self, extra: &[(&str, &str)]) -> RunningBridge {
        let env = platform::config::Env::from_pairs(self.bridge_env(extra));
        let settings = BridgeSettings::from_env(&env).expect("bridge settings");
        let cancel = CancellationToken::new();
        let app = App::build(settings, &cancel).await.expect("build bridge");
        let http_addr = app.http_addr();
        let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
        RunningBridge {
            cancel,
            task: Some(task),
            http_addr,
        }
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
        let js = self.js().await;
        let mut stream = match js.get_stream(stream).await {
            Ok(stream) => stream,
            Err(_) => return Vec::new(),
        };
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut messages = Vec::new();
        for seq in 1..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                messages.push(message);
            }
        }
        messages
    }

    pub async fn stored_count(&self, stream: &str) -> u64 {
        let js = self.js().await;
        match js.get_stream(stream).await {
            Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Waits until `stream` holds `count` messages (and fails if it ever holds more).
    pub async fn wait_for_stored(&self, stream: &str, count: u64, timeout: Duration) {
        testkit::wait::until(
            &format!("{count} messages in {stream}"),
            timeout,
            || async {
                let stored = self.stored_count(stream).await;
                assert!(
                    stored <= count,
                    "{stream} holds {stored} messages, more than the {count} expected"
                );
                (stored == count).then_some(())
            },
        )
        .await;
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

pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The value of one sample on `/metrics` (`name` with its labels, as the exposition spells it).
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub struct RunningBridge {
    pub cancel: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<Result<(), sf_bridge::app::AppError>>>,
    pub http_addr: SocketAddr,
}

impl RunningBridge {
    /// SIGTERM-equivalent: cancel and wait for the ordered shutdown.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("bridge stops within 20 s")
                .expect("bridge task")
                .expect("bridge ran without error");
        }
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

impl Drop for RunningBridge {
    fn drop(&mut self) {
        self.cancel.cancel();
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
