//! Per-test environment: a nats-server, an sf-sim, and sf-writer replicas in this process.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use messages::{DeadLetterV1, OrderUpdateV1};
use serde_json::{json, Value};
use sf_sim::SfSim;
use sf_writer::WriterSettings;
use testkit::nats::NatsServer;
use testkit::service::RunningService;

pub const WAIT: Duration = Duration::from_secs(60);
pub const UPDATES_STREAM: &str = "SF_ORDER_UPDATES";
pub const DEADLETTER_STREAM: &str = "PROVISIONING_DEADLETTER";
pub const COLLECTION_ROUTE: &str = "PATCH /composite/sobjects";
pub const SINGLE_ROUTE: &str = "PATCH /sobjects/{sobject}/{id}";

pub struct Harness {
    pub nats: NatsServer,
    pub sim: SfSim,
    account: String,
}

/// A writer replica in this process.
pub type RunningWriter = RunningService<sf_writer::app::AppError>;

impl Harness {
    pub async fn start() -> Self {
        testkit::telemetry::init_once("sf-writer-test", "warn,sf_writer=info");
        let nats = NatsServer::start().await;
        let sim = testkit::sim::start_sf().await;
        let account = sim.state().seed_account("Acme Ltd", Some("1"));
        let harness = Self { nats, sim, account };
        // The stream exists before any writer runs, so tests can queue updates first.
        let js = harness.js().await;
        platform::nats::ensure_stream(&js, platform::streams::order_updates(UPDATES_STREAM))
            .await
            .expect("updates stream");
        harness
    }

    pub fn env(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = testkit::service::base_env(self.nats.url(), &self.sim);
        env.extend([
            ("SF_HTTP_TIMEOUT_SECS", "5".to_owned()),
            ("SF_WRITER_BACKOFF_BASE_MS", "50".to_owned()),
            ("SF_WRITER_BACKOFF_MAX_MS", "1000".to_owned()),
            ("SF_WRITER_SHUTDOWN_GRACE_SECS", "10".to_owned()),
            ("LOG_FORMAT", "pretty".to_owned()),
        ]);
        testkit::service::with_overrides(env, extra)
    }

    /// Runs a writer replica in this process.
    pub async fn start_writer(&self, extra: &[(&str, &str)]) -> RunningWriter {
        let env = platform::config::Env::from_pairs(self.env(extra));
        let settings = WriterSettings::from_env(&env).expect("writer settings");
        RunningService::start("the writer", Duration::from_secs(30), settings).await
    }

    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(self.nats.client().await)
    }

    /// Orders without items (sf-writer only touches the Order record).
    pub fn seed_orders(&self, n: usize) -> Vec<String> {
        let none: &[(&str, f64)] = &[];
        (0..n)
            .map(|_| self.sim.state().seed_order(&self.account, none))
            .collect()
    }

    pub fn order(&self, order_id: &str) -> Value {
        self.sim.state().order(order_id).expect("order exists")
    }

    /// Publishes as the provisioner does, through the same path (`Nats-Msg-Id` `update:<event
    /// id>`, `Correlation-Id`, `Schema`, `traceparent`).
    pub async fn publish(&self, js: &jetstream::Context, update: &OrderUpdateV1) {
        let message = platform::publish::Outgoing::contract(update).unwrap();
        platform::publish::send(js, message, &tracing::Span::none())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn publish_all(&self, updates: &[OrderUpdateV1]) {
        let js = self.js().await;
        for update in updates {
            self.publish(&js, update).await;
        }
    }

    pub async fn publish_raw(&self, subject: &str, payload: &[u8]) {
        let js = self.js().await;
        js.publish(subject.to_owned(), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub fn requests(&self, route: &str) -> u64 {
        self.sim
            .state()
            .stats()
            .rest_requests_by_route
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    pub async fn dead_letters(&self) -> Vec<(String, DeadLetterV1)> {
        testkit::stream::messages(&self.js().await, DEADLETTER_STREAM)
            .await
            .into_iter()
            .map(|m| {
                (
                    m.subject.to_string(),
                    serde_json::from_slice(&m.payload).unwrap(),
                )
            })
            .collect()
    }

    /// Waits until the consumer holds nothing: every update acked, termed or applied.
    pub async fn wait_until_drained(&self) {
        testkit::stream::wait_until_drained(&self.js().await, UPDATES_STREAM, "sf-writer", WAIT)
            .await;
    }

    /// Waits until every order's field has the expected value.
    pub async fn wait_for_fields(&self, expected: &[(String, &str, Value)]) {
        testkit::wait::until("the orders to show the updates", WAIT, || async {
            expected
                .iter()
                .all(|(order, field, value)| self.order(order)[*field] == *value)
                .then_some(())
        })
        .await;
    }
}

/// An update whose fields are exactly `fields`.
pub fn update(order_id: &str, sequence: u64, fields: Value) -> OrderUpdateV1 {
    OrderUpdateV1 {
        schema: OrderUpdateV1::SCHEMA.to_owned(),
        order_id: order_id.to_owned(),
        sequence,
        fields: fields.as_object().cloned().unwrap_or_default(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
        event_id: uuid::Uuid::new_v4().to_string(),
        created_at: "2026-11-25T00:00:00Z".to_owned(),
    }
}

/// The provisioner's success update.
pub fn activated(order_id: &str, sequence: u64, whmcs_order: u64) -> OrderUpdateV1 {
    update(
        order_id,
        sequence,
        json!({
            "Activation_Status__c": "Activated",
            "WHMCS_Order_ID__c": whmcs_order.to_string(),
            "Activation_Error_Code__c": null,
            "Activation_Error_Message__c": null,
        }),
    )
}

/// The provisioner's failure update.
pub fn failed(order_id: &str, sequence: u64, message: &str) -> OrderUpdateV1 {
    update(
        order_id,
        sequence,
        json!({
            "Activation_Status__c": "Failed",
            "Activation_Error_Code__c": "WHMCS_ERROR",
            "Activation_Error_Message__c": message,
        }),
    )
}
