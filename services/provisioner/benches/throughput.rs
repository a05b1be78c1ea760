//! Provisioner throughput: orders/s from a backlog of `provisioning.requested` messages to their
//! outcomes, with sf-sim and whmcs-sim answering at zero latency and at 100 ms per call, for
//! several `PROVISIONER_CONCURRENCY` values; and the job-journal writes per order.
//!
//! `cargo bench -p provisioner --bench throughput` prints a Markdown table for
//! docs/benchmarks.md. `BENCH_SCALE` (default 1.0) scales the order counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use messages::ProvisioningRequestedV1;
use platform::service::Running;
use provisioner::{App, ProvisionerSettings};
use testkit::nats::NatsServer;
use tokio_util::sync::CancellationToken;
use whmcs_sim::WhmcsSimConfig;

struct Scenario {
    latency: Duration,
    concurrency: usize,
    orders: usize,
}

#[tokio::main]
async fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let scaled = |n: usize| ((n as f64 * scale) as usize).max(4);
    let scenarios = [
        Scenario {
            latency: Duration::ZERO,
            concurrency: 32,
            orders: scaled(2000),
        },
        Scenario {
            latency: Duration::from_millis(100),
            concurrency: 1,
            orders: scaled(20),
        },
        Scenario {
            latency: Duration::from_millis(100),
            concurrency: 32,
            orders: scaled(400),
        },
        Scenario {
            latency: Duration::from_millis(100),
            concurrency: 256,
            orders: scaled(2000),
        },
    ];
    println!("| latency per call | concurrency | orders | orders/s | ideal (concurrency / 0.4 s) | journal writes per order |");
    println!("|---|---|---|---|---|---|");
    for scenario in &scenarios {
        let (rate, writes) = Box::pin(run(scenario)).await;
        let ideal = if scenario.latency.is_zero() {
            "n/a".to_owned()
        } else {
            format!(
                "{:.0}",
                scenario.concurrency as f64 / (4.0 * scenario.latency.as_secs_f64())
            )
        };
        println!(
            "| {} ms | {} | {} | {rate:.1} | {ideal} | {writes:.2} |",
            scenario.latency.as_millis(),
            scenario.concurrency,
            scenario.orders
        );
    }
}

async fn run(scenario: &Scenario) -> (f64, f64) {
    let nats = NatsServer::start().await;
    let sf = testkit::sim::start_sf().await;
    let whmcs = testkit::sim::start_whmcs_with(WhmcsSimConfig::for_tests()).await;
    let client = whmcs.state().seed_client("Bench Ltd", true);
    let pid = whmcs.state().seed_product("Hosting", &["monthly"]);
    let account = sf
        .state()
        .seed_account("Bench Ltd", Some(&client.to_string()));
    let product = sf
        .state()
        .seed_product("Hosting", Some(&pid.to_string()), Some("Monthly"));
    let orders: Vec<String> = (0..scenario.orders)
        .map(|_| {
            let order = sf.state().seed_order(&account, &[(product.clone(), 1)]);
            sf.state()
                .set_order_field(
                    &order,
                    "Activation_Status__c",
                    serde_json::json!("Activating"),
                )
                .unwrap();
            order
        })
        .collect();

    let concurrency = scenario.concurrency.to_string();
    let mut env = testkit::service::base_env(nats.url(), &sf);
    env.extend(testkit::sim::whmcs_env(&whmcs));
    env.extend([
        ("PROVISIONER_CONCURRENCY", concurrency),
        ("RUST_LOG", "warn".to_owned()),
    ]);
    let env = platform::config::Env::from_pairs(env);
    let settings = ProvisionerSettings::from_env(&env).unwrap();
    let cancel = CancellationToken::new();
    let app = App::build(settings, &cancel).await.unwrap();
    // Latency applies from here on; the first token fetch stays inside the measurement, as it
    // would for a backlog after a restart.
    sf.state()
        .update_faults(|f| f.rest_latency = scenario.latency);
    whmcs.state().set_latency_all(scenario.latency);

    let js = jetstream::new(nats.client().await);
    for order in &orders {
        let request = ProvisioningRequestedV1 {
            schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
            event_id: uuid::Uuid::new_v4().to_string(),
            replay_id: "AAAAAAAAAAE=".to_owned(),
            channel: "/event/OrderProvisionRequested__e".to_owned(),
            schema_id: "bench".to_owned(),
            order_id: order.clone(),
            idem_key: Some(uuid::Uuid::new_v4().to_string()),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            requested_by: None,
            version: None,
            created_at: None,
            created_by_id: None,
            received_at: "2026-11-25T00:00:00Z".to_owned(),
        };
        testkit::publish::provisioning_request(&js, &request, &request.event_id).await;
    }
    let client = nats.client().await;
    let mut outcomes = client.subscribe("provisioning.outcome.>").await.unwrap();
    client.flush().await.unwrap();

    let started = Instant::now();
    let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
    let mut done = 0;
    while done < orders.len() {
        let message = tokio::time::timeout(Duration::from_secs(300), outcomes.next())
            .await
            .unwrap()
            .unwrap();
        let outcome: messages::ProvisioningOutcomeV1 =
            serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            outcome.result,
            messages::OutcomeResult::Activated,
            "{outcome:?}"
        );
        done += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    cancel.cancel();
    task.await.unwrap().unwrap();
    let mut journal = js.get_stream("KV_provisioning_jobs").await.unwrap();
    let writes = journal.info().await.unwrap().state.messages as f64 / orders.len() as f64;
    (orders.len() as f64 / elapsed, writes)
}
