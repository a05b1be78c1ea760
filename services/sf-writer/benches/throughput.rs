//! Write throughput: updates/s from JetStream into sf-sim's Orders through one sf-writer replica
//! (in this process, default settings), and Salesforce requests per 1,000 updates, with no added
//! latency and with 100 ms added to every Salesforce call.
//!
//! `cargo bench -p sf-writer --bench throughput` (BENCH_UPDATES to change the update count,
//! NATS_SERVER_BIN to pick the server). Prints a Markdown table for docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use messages::OrderUpdateV1;
use platform::service::Running;
use sf_sim::Faults;
use sf_writer::{App, WriterSettings};
use testkit::nats::NatsServer;
use tokio_util::sync::CancellationToken;

struct Row {
    latency_ms: u64,
    concurrency: usize,
    updates: usize,
    secs: f64,
    requests: u64,
    collection: u64,
    single: u64,
}

#[tokio::main]
async fn main() {
    let updates: usize = std::env::var("BENCH_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut rows = Vec::new();
    for (latency_ms, concurrency) in [(0, 4), (100, 4), (100, 16)] {
        rows.push(Box::pin(run(updates, latency_ms, concurrency)).await);
    }
    println!("| Salesforce latency | batches in flight | updates | updates/s | Salesforce requests per 1,000 updates | collection / single requests |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} ms | {} | {} | {:.0} | {:.1} | {} / {} |",
            row.latency_ms,
            row.concurrency,
            row.updates,
            row.updates as f64 / row.secs,
            row.requests as f64 * 1000.0 / row.updates as f64,
            row.collection,
            row.single,
        );
    }
    println!(
        "\nOne replica, SF_WRITER_MAX_BATCH=200, SF_WRITER_LINGER_MS=5, one update per Order, all \
         queued before the writer starts; nats-server {}",
        testkit::nats::server_binary().display()
    );
}

async fn run(count: usize, latency_ms: u64, concurrency: usize) -> Row {
    let nats = NatsServer::start().await;
    let sim = testkit::sim::start_sf().await;
    let state = sim.state();
    let account = state.seed_account("Bench Ltd", Some("1"));
    let none: &[(&str, f64)] = &[];
    let orders: Vec<String> = (0..count)
        .map(|_| state.seed_order(&account, none))
        .collect();

    let js = jetstream::new(nats.client().await);
    platform::nats::ensure_stream(&js, platform::streams::order_updates("SF_ORDER_UPDATES"))
        .await
        .expect("stream");
    let mut acks = FuturesUnordered::new();
    for (i, order) in orders.iter().enumerate() {
        let update = OrderUpdateV1 {
            schema: OrderUpdateV1::SCHEMA.to_owned(),
            order_id: order.clone(),
            sequence: 1,
            fields: serde_json::json!({
                "Activation_Status__c": "Activated",
                "WHMCS_Order_ID__c": (i + 1).to_string(),
                "Activation_Error_Code__c": null,
                "Activation_Error_Message__c": null,
            })
            .as_object()
            .cloned()
            .unwrap(),
            correlation_id: format!("corr-{i}"),
            event_id: format!("event-{i}"),
            created_at: "2026-11-25T00:00:00Z".to_owned(),
        };
        let message = platform::publish::Outgoing::contract(&update).expect("serialise");
        let ack = platform::publish::send(&js, message, &tracing::Span::none())
            .await
            .expect("publish");
        acks.push(std::future::IntoFuture::into_future(ack));
        if acks.len() >= 1000 {
            acks.next().await.expect("ack").expect("ack ok");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("ack ok");
    }

    let mut env = testkit::service::base_env(nats.url(), &sim);
    env.extend([
        ("SF_WRITER_CONCURRENCY", concurrency.to_string()),
        ("LOG_FORMAT", "pretty".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]);
    let settings = WriterSettings::from_env(&platform::config::Env::from_pairs(env)).unwrap();
    let cancel = CancellationToken::new();
    let app = App::build(settings, &cancel).await.expect("writer");
    state.set_faults(Faults {
        rest_latency: Duration::from_millis(latency_ms),
        ..Faults::default()
    });
    state.reset_stats();

    let started = Instant::now();
    let task = tokio::spawn(app.run_until_stopped(cancel.clone()));
    let mut consumer: jetstream::consumer::PullConsumer = loop {
        if let Ok(stream) = js.get_stream("SF_ORDER_UPDATES").await {
            if let Ok(consumer) = stream.get_consumer("sf-writer").await {
                break consumer;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "timed out with {} pending",
            info.num_pending + info.num_ack_pending as u64
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let last = orders.last().expect("orders");
    assert_eq!(
        state.order(last).expect("order")["WHMCS_Order_ID__c"],
        count.to_string()
    );
    let stats = state.stats();
    let route = |r: &str| stats.rest_requests_by_route.get(r).copied().unwrap_or(0);
    let collection = route("PATCH /composite/sobjects");
    let single = route("PATCH /sobjects/{sobject}/{id}");
    cancel.cancel();
    task.await.expect("task").expect("writer ok");
    sim.shutdown().await;
    Row {
        latency_ms,
        concurrency,
        updates: count,
        secs,
        requests: stats.rest_requests,
        collection,
        single,
    }
}
