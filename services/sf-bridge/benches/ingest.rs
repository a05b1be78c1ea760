//! Ingest benchmark: events/s from sf-sim's Pub/Sub API into JetStream through the sf-bridge
//! binary, beside a raw JetStream publish of the same messages in the same run, and the bridge's
//! peak resident memory (VmHWM).
//!
//! `cargo bench -p sf-bridge --bench ingest` (BENCH_EVENTS to change the event count,
//! NATS_SERVER_BIN to pick the server). Prints a Markdown table for docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use sf_sim::{EventSpec, SfSim, SimConfig};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;

const STREAM: &str = "PROVISIONING_REQUESTS";

#[tokio::main]
async fn main() {
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let batch = std::env::var("BENCH_BATCH").unwrap_or_else(|_| "100".to_owned());
    let keys = testkit::keys::test_keys();
    let nats = NatsServer::start().await;
    let config = SimConfig::for_tests(keys.public_pem.clone());
    let (client_id, username) = (config.client_id.clone(), config.username.clone());
    let sim = SfSim::start(config).await.expect("sf-sim");
    let state = sim.state();
    let account = state.seed_account("Bench Ltd", Some("1"));
    let product = state.seed_product("Bench", Some("1"), Some("Monthly"));
    let orders: Vec<String> = (0..100)
        .map(|_| state.seed_order(&account, &[(product.clone(), 1)]))
        .collect();
    for i in 0..events {
        let spec = EventSpec {
            order_id: Some(orders[(i % 100) as usize].clone()),
            idem_key: Some(format!("idem-{i}")),
            correlation_id: Some(format!("corr-{i}")),
            requested_by: Some("bench".to_owned()),
            version: Some(1.0),
            ..Default::default()
        };
        state.publish_event(spec).expect("publish into sf-sim");
    }

    let sim_only_rate = sim_delivery_rate(&sim, keys, events).await;

    let js = jetstream::new(nats.client().await);
    let env: HashMap<String, String> = [
        ("NATS_URL", nats.url()),
        (
            "HTTP_ADDR",
            format!("127.0.0.1:{}", testkit::nats::free_port()),
        ),
        ("SF_LOGIN_URL", sim.login_url()),
        ("SF_CLIENT_ID", client_id),
        ("SF_USERNAME", username),
        (
            "SF_PRIVATE_KEY_PATH",
            keys.private_key_path.display().to_string(),
        ),
        ("SF_PUBSUB_ENDPOINT", sim.pubsub_url()),
        ("SF_EVENTS_REPLAY", "ALL".to_owned()),
        ("SF_PUBSUB_BATCH", batch.clone()),
        (
            "RUST_LOG",
            std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let started = Instant::now();
    let mut bridge = ChildProcess::spawn(env!("CARGO_BIN_EXE_sf-bridge"), &env);
    let pid = bridge.pid().expect("pid");
    let mut first_at = None;
    let mut peak_kib = 0;
    loop {
        let stored = match js.get_stream(STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if stored > 0 && first_at.is_none() {
            first_at = Some(Instant::now());
        }
        peak_kib = peak_kib.max(vm_hwm_kib(pid));
        if stored >= events {
            break;
        }
        assert!(!bridge.has_exited(), "bridge exited:\n{}", bridge.log());
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "timed out at {stored} of {events}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done_at = Instant::now();
    peak_kib = peak_kib.max(vm_hwm_kib(pid));
    let bridge_secs = (done_at - first_at.unwrap_or(started)).as_secs_f64();
    let end_to_end_secs = (done_at - started).as_secs_f64();
    bridge.terminate();

    // The same messages, published straight to JetStream with a window of in-flight acks.
    let stored = {
        let mut s = js.get_stream(STREAM).await.expect("stream");
        let last = s.info().await.expect("info").state.last_sequence;
        let mut messages = Vec::with_capacity(events as usize);
        for seq in 1..=last {
            messages.push(s.get_raw_message(seq).await.expect("message"));
        }
        messages
    };
    js.create_stream(stream::Config {
        name: "RAW_BASELINE".to_owned(),
        subjects: vec!["raw.>".to_owned()],
        duplicate_window: Duration::from_secs(72 * 3600),
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    })
    .await
    .expect("baseline stream");
    let raw_started = Instant::now();
    let mut window = FuturesOrdered::new();
    for message in &stored {
        let publish = jetstream::message::PublishMessage::build()
            .payload(message.payload.clone())
            .headers(message.headers.clone())
            .message_id(
                message
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str())
                    .unwrap_or_default(),
            );
        let ack = js
            .send_publish(format!("raw.{}", message.subject), publish)
            .await
            .expect("publish");
        window.push_back(std::future::IntoFuture::into_future(ack));
        if window.len() >= 1000 {
            window.next().await.expect("ack").expect("ack ok");
        }
    }
    while let Some(ack) = window.next().await {
        ack.expect("ack ok");
    }
    let raw_secs = raw_started.elapsed().as_secs_f64();

    let bridge_rate = events as f64 / bridge_secs;
    let raw_rate = events as f64 / raw_secs;
    let server = testkit::nats::server_binary();
    println!("| events | batch | bridge events/s | raw publish events/s | bridge / raw | sf-sim delivery alone, events/s | bridge peak RSS | end to end (incl. start) | nats-server |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {events} | {batch} | {bridge_rate:.0} | {raw_rate:.0} | {:.2} | {sim_only_rate:.0} | {:.1} MiB | {end_to_end_secs:.2} s | {} |",
        bridge_rate / raw_rate,
        peak_kib as f64 / 1024.0,
        server.display()
    );
    sim.shutdown().await;
}

/// How fast sf-sim alone hands out the events to a bare Subscribe client (decoding nothing,
/// publishing nothing): the ceiling the bridge is measured against.
async fn sim_delivery_rate(sim: &SfSim, keys: &testkit::keys::TestKeys, events: u64) -> f64 {
    let settings = salesforce::SalesforceSettings::from_env(&platform::config::Env::from_pairs([
        ("SF_LOGIN_URL", sim.login_url()),
        ("SF_CLIENT_ID", sim.config().client_id.clone()),
        ("SF_USERNAME", sim.config().username.clone()),
        (
            "SF_PRIVATE_KEY_PATH",
            keys.private_key_path.display().to_string(),
        ),
    ]))
    .expect("settings");
    let tokens = salesforce::TokenProvider::new(settings, reqwest::Client::new());
    let client = salesforce::pubsub::PubSubClient::new(&sim.pubsub_url(), tokens).expect("client");
    let started = Instant::now();
    let mut subscription = client
        .subscribe(
            "/event/OrderProvisionRequested__e",
            &salesforce::pubsub::ReplayStart::Earliest,
            100,
        )
        .await
        .expect("subscribe");
    let (mut received, mut outstanding) = (0u64, 100i32);
    while received < events {
        let response = subscription.next().await.expect("stream").expect("open");
        received += response.events.len() as u64;
        outstanding -= response.events.len() as i32;
        if outstanding <= 50 {
            subscription
                .request(100 - outstanding)
                .await
                .expect("request");
            outstanding = 100;
        }
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmHWM:")
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}
