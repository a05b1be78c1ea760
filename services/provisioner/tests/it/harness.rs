//! Per-test environment: nats-server, sf-sim, whmcs-sim, and the provisioner against them.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use messages::{OrderUpdateV1, ProvisioningOutcomeV1, ProvisioningRequestedV1};
use provisioner::ProvisionerSettings;
use sf_sim::SfSim;
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use testkit::service::RunningService;
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Harness {
    pub nats: NatsServer,
    pub sf: SfSim,
    pub whmcs: WhmcsSim,
}

/// A Salesforce order wired to a WHMCS client and product.
#[derive(Debug, Clone)]
pub struct SeededOrder {
    pub order_id: String,
    pub whmcs_client: u64,
}

/// The provisioner in this process.
pub type Running = RunningService<provisioner::app::AppError>;

impl Harness {
    pub async fn start() -> Self {
        testkit::telemetry::init_once("provisioner-test", "warn");
        let nats = NatsServer::start().await;
        let sf = testkit::sim::start_sf().await;
        let whmcs = testkit::sim::start_whmcs_with(WhmcsSimConfig::for_tests()).await;
        Self { nats, sf, whmcs }
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = testkit::service::base_env(self.nats.url(), &self.sf);
        env.extend(testkit::sim::whmcs_env(&self.whmcs));
        env.extend([
            ("WHMCS_TIMEOUT_SECS", "2".to_owned()),
            ("PROVISIONER_JOB_LEASE_SECS", "3".to_owned()),
            ("PROVISIONER_RECOVERY_INTERVAL_SECS", "1".to_owned()),
            ("PROVISIONER_ACK_WAIT_SECS", "5".to_owned()),
            ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]);
        testkit::service::with_overrides(env, extra)
    }

    pub async fn start_provisioner(&self, extra: &[(&str, &str)]) -> Running {
        let env = platform::config::Env::from_pairs(self.env(extra));
        let settings = ProvisionerSettings::from_env(&env).expect("settings");
        RunningService::start("the provisioner", Duration::from_secs(30), settings).await
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
        testkit::publish::provisioning_request(&js, request, msg_id).await
    }

    /// Subscribes to the outcomes of one order (before the request is published).
    pub async fn outcomes(&self, order_id: &str) -> Outcomes {
        let subject = format!("provisioning.outcome.{order_id}.>");
        Outcomes(testkit::stream::Subscription::new(self.nats.client().await, subject).await)
    }

    /// Every message stored in a stream, decoded.
    pub async fn stored<T: serde::de::DeserializeOwned>(
        &self,
        stream: &str,
        subject_filter: &str,
    ) -> Vec<T> {
        let js = jetstream::new(self.nats.client().await);
        testkit::stream::decoded(&js, stream, subject_filter).await
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

pub struct Outcomes(testkit::stream::Subscription);

impl Outcomes {
    pub async fn next(&mut self) -> ProvisioningOutcomeV1 {
        let message = self.0.next(WAIT).await;
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
