//! Per-test environment: nats-server, sf-sim, whmcs-sim, and the provisioner against them.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use messages::{OrderUpdateV1, ProvisioningOutcomeV1, ProvisioningRequestedV1};
use provisioner::{App, ProvisionerSettings};
use sf_sim::{SfSim, SimConfig};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use tokio_util::sync::CancellationToken;
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub nats: NatsServer,
    pub sf: SfSim,
    pub whmcs: WhmcsSim,
    client_id: String,
    username: String,
}

/// A Salesforce order wired to a WHMCS client and product.
#[derive(Debug, Clone)]
pub struct SeededOrder {
    pub order_id: String,
    pub whmcs_client: u64,
}

impl Harness {
    pub async fn start() -> Self {
        testkit::telemetry::init_once("provisioner-test", "warn");
        let keys = testkit::keys::test_keys();
        let nats = NatsServer::start().await;
        let config = SimConfig::for_tests(keys.public_pem.clone());
        let (client_id, username) = (config.client_id.clone(), config.username.clone());
        let sf = SfSim::start(config).await.expect("sf-sim");
        let whmcs = WhmcsSim::start(WhmcsSimConfig::for_tests())
            .await
            .expect("whmcs-sim");
        Self {
            nats,
            sf,
            whmcs,
            client_id,
            username,
        }
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let keys = testkit::keys::test_keys();
        let mut env: HashMap<String, String> = [
            ("NATS_URL", self.nats.url()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SF_LOGIN_URL", self.sf.login_url()),
            ("SF_CLIENT_ID", self.client_id.clone()),
            ("SF_USERNAME", self.username.clone()),
            (
                "SF_PRIVATE_KEY_PATH",
                keys.private_key_path.display().to_string(),
            ),
            ("WHMCS_API_URL", self.whmcs.api_url()),
            ("WHMCS_API_IDENTIFIER", self.whmcs.identifier().to_owned()),
            ("WHMCS_API_SECRET", self.whmcs.secret().to_owned()),
            ("WHMCS_TIMEOUT_SECS", "2".to_owned()),
            ("PROVISIONER_JOB_LEASE_SECS", "3".to_owned()),
            ("PROVISIONER_RECOVERY_INTERVAL_SECS", "1".to_owned()),
            ("PROVISIONER_ACK_WAIT_SECS", "5".to_owned()),
            ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    pub async fn start_provisioner(&self, extra: &[(&str, &str)]) -> Running {
        let env = platform::config::Env::from_pairs(self.env(extra));
        let settings = ProvisionerSettings::from_env(&env).expect("settings");
        let cancel = CancellationToken::new();
        let app = Box::pin(App::build(settings, &cancel))
            .await
            .expect("build provisioner");
        let http_addr = app.http_addr();
        let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
        Running {
            cancel,
            task: Some(task),
            http_addr,
        }
    }

    pub fn spawn_provisioner(&self, worker: &str, extra: &[(&str, &str)]) -> ChildProcess {
        let mut all = vec![("PROVISIONER_WORKER_ID", worker)];
        all.extend_from_slice(extra);
        ChildProcess::spawn(env!("CARGO_BIN_EXE_provisioner"), &self.env(&all))
    }

    /// An order that should provision: WHMCS client with a pay method, a mapped monthly product.
    pub fn seed_order(&self) -> SeededOrder {
        let whmcs_client = self.whmcs.state().seed_client("Acme Ltd", true);
        let pid = self
            .whmcs
            .state()
            .seed_product("Hosting S", &["monthly", "annually"]);
        let sf = self.sf.state();
        let account = sf.seed_account("Acme Ltd", Some(&whmcs_client.to_string()));
        let product = sf.seed_product("Hosting S", Some(&pid.to_string()), Some("Monthly"));
        let order_id = sf.seed_order(&account, &[(product, 2)]);
        self.activate(&order_id);
        SeededOrder {
            order_id,
            whmcs_client,
        }
    }

    /// What the Salesforce Flow does before publishing the event.
    pub fn activate(&self, order_id: &str) {
        self.sf
            .state()
            .set_order_field(
                order_id,
                "Activation_Status__c",
                serde_json::json!("Activating"),
            )
            .expect("set Activating");
    }

    pub fn request(&self, order_id: &str) -> ProvisioningRequestedV1 {
        let event_id = uuid::Uuid::new_v4().to_string();
        ProvisioningRequestedV1 {
            schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
            event_id,
            replay_id: "AAAAAAAAAAE=".to_owned(),
            channel: "/event/OrderProvisionRequested__e".to_owned(),
            schema_id: "schema".to_owned(),
            order_id: order_id.to_owned(),
            idem_key: Some(uuid::Uuid::new_v4().to_string()),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            requested_by: Some("test".to_owned()),
            version: Some(1.0),
            created_at: None,
            created_by_id: None,
            received_at: "2026-11-25T00:00:00Z".to_owned(),
        }
    }

    /// Publishes as sf-bridge does (Nats-Msg-Id = event id); returns the stream ack.
    pub async fn publish(
        &self,
        request: &ProvisioningRequestedV1,
    ) -> jetstream::publish::PublishAck {
        self.publish_with_msg_id(request, &request.event_id).await
    }

    pub async fn publish_with_msg_id(
        &self,
        request: &ProvisioningRequestedV1,
        msg_id: &str,
    ) -> jetstream::publish::PublishAck {
        let js = jetstream::new(self.nats.client().await);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Correlation-Id", request.correlation_id.as_str());
        // A trace started upstream, as sf-bridge's span would start it.
        let trace_id = uuid::Uuid::new_v4().simple().to_string();
        headers.insert(
            "traceparent",
            format!("00-{trace_id}-{}-01", &trace_id[..16]).as_str(),
        );
        let message = jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(request).unwrap().into())
            .headers(headers)
            .message_id(msg_id);
        js.send_publish(
            messages::subjects::provisioning_requested(&request.order_id),
            message,
        )
        .await
        .unwrap()
        .await
        .unwrap()
    }

    /// Subscribes to the outcomes of one order (before the request is published).
    pub async fn outcomes(&self, order_id: &str) -> Outcomes {
        let client = self.nats.client().await;
        let subscriber = client
            .subscribe(format!("provisioning.outcome.{order_id}.>"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        Outcomes {
            subscriber,
            _client: client,
        }
    }

    /// Every message stored in a stream, decoded.
    pub async fn stored<T: serde::de::DeserializeOwned>(
        &self,
        stream: &str,
        subject_filter: &str,
    ) -> Vec<T> {
        let js = jetstream::new(self.nats.client().await);
        let Ok(mut stream) = js.get_stream(stream).await else {
            return Vec::new();
        };
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await {
                if m.subject.starts_with(subject_filter) {
                    out.push(serde_json::from_slice(&m.payload).unwrap());
                }
            }
        }
        out
    }

    pub async fn updates_for(&self, order_id: &str) -> Vec<OrderUpdateV1> {
        self.stored("SF_ORDER_UPDATES", &format!("sf.order.update.{order_id}"))
            .await
    }

    pub async fn outcomes_for(&self, order_id: &str) -> Vec<ProvisioningOutcomeV1> {
        self.stored(
            "PROVISIONING_OUTCOMES",
            &format!("provisioning.outcome.{order_id}."),
        )
        .await
    }

    pub fn whmcs_orders(&self, client: u64) -> Vec<whmcs_sim::state::Order> {
        self.whmcs.state().orders_for_client(client)
    }

    pub fn whmcs_calls(&self, action: &str) -> u64 {
        self.whmcs
            .state()
            .stats()
            .calls
            .get(action)
            .copied()
            .unwrap_or(0)
    }
}

pub struct Outcomes {
    subscriber: async_nats::Subscriber,
    _client: async_nats::Client,
}

impl Outcomes {
    pub async fn next(&mut self) -> ProvisioningOutcomeV1 {
        let message = tokio::time::timeout(WAIT, self.subscriber.next())
            .await
            .expect("an outcome within the deadline")
            .expect("subscription open");
        assert!(
            message
                .headers
                .as_ref()
                .and_then(|h| h.get("traceparent"))
                .is_some(),
            "outcome carries traceparent"
        );
        serde_json::from_slice(&message.payload).unwrap()
    }
}

pub struct Running {
    pub cancel: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<Result<(), provisioner::app::AppError>>>,
    pub http_addr: std::net::SocketAddr,
}

impl Running {
    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http_addr))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("stops")
                .expect("task")
                .expect("ok");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
