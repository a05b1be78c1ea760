//! Ingest benchmark: events/s from sf-sim's Pub/Sub API into JetStream through the sf-bridge
//! binary, beside a raw JetStream publish of the same messages in the same run, with CPU per
//! event for both and the bridge's peak resident memory (VmHWM).
//!
//! `cargo bench -p sf-bridge --bench ingest`. Environment:
//! - `BENCH_EVENTS` (50,000): events published into sf-sim and drained each round.
//! - `BENCH_ROUNDS` (3): bridge and raw publish run alternately this many times; the summary
//!   row takes the median of each figure and the median of the per-round ratios.
//! - `BENCH_BATCH` (100): `SF_PUBSUB_BATCH` of the bridge.
//! - `BENCH_RUST_LOG` (`info`): the bridge's `RUST_LOG` (JSON logs, as in production).
//! - `NATS_SERVER_BIN`: the nats-server binary to run.
//! - `BENCH_REPORT=<file>`: also write the Markdown tables to that file (they are always
//!   printed).
//! - `BENCH_BRIDGE_BIN`: a program to run instead of the bridge binary, for profiling: a script
//!   that `exec`s `valgrind --tool=callgrind` or `perf record` on it (the built binary is
//!   `target/release/sf-bridge`).
//!
//! Fairness: the raw reference publishes the very messages the bridge stored (subject, headers,
//! body, `Nats-Msg-Id`) into a stream with the bridge's own stream configuration, keeping as
//! many acks in flight as the bridge may (`SF_BRIDGE_MAX_IN_FLIGHT`, set explicitly here).
//! Every round starts from empty streams and buckets, so neither side meets duplicates.
//!
//! CPU: the bridge's is its utime+stime (`/proc/<pid>/stat`) from its first stored message to
//! its last; the raw publisher's is this whole bench process's utime+stime (`/proc/self/stat`,
//! all threads: the publishing task and the NATS client's connection task; sf-sim is idle then)
//! over the raw phase. Both are in clock ticks (10 ms), hence 50,000 events by default.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use sf_sim::{EventSpec, SfSim};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;

const STREAM: &str = "PROVISIONING_REQUESTS";
/// The bridge's maximum of publishes awaiting their ack, and the raw publisher's window.
const MAX_IN_FLIGHT: usize = 1000;

struct Round {
    bridge_rate: f64,
    bridge_cpu_us: f64,
    bridge_peak_kib: u64,
    raw_rate: f64,
    raw_cpu_us: f64,
}

#[tokio::main]
async fn main() {
    let events: u64 = env_or("BENCH_EVENTS", 50_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let batch = std::env::var("BENCH_BATCH").unwrap_or_else(|_| "100".to_owned());
    let log_level = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let nats = NatsServer::start().await;
    let sim = testkit::sim::start_sf().await;
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

    let sim_only_rate = sim_delivery_rate(&sim, events).await;

    let js = jetstream::new(nats.client().await);
    let env: HashMap<String, String> = [
        ("NATS_URL", nats.url()),
        (
            "HTTP_ADDR",
            format!("127.0.0.1:{}", testkit::nats::free_port()),
        ),
        ("SF_PUBSUB_ENDPOINT", sim.pubsub_url()),
        ("SF_EVENTS_REPLAY", "ALL".to_owned()),
        ("SF_PUBSUB_BATCH", batch.clone()),
        ("SF_BRIDGE_MAX_IN_FLIGHT", MAX_IN_FLIGHT.to_string()),
        ("RUST_LOG", log_level.clone()),
        ("LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .chain(testkit::sim::sf_env(&sim))
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let mut results = Vec::with_capacity(rounds);
    let mut stored: Option<(
        stream::Config,
        Vec<async_nats::jetstream::message::StreamMessage>,
    )> = None;
    for round in 0..rounds {
        delete_all_streams(&js).await;
        let (bridge_rate, bridge_cpu_us, bridge_peak_kib) =
            run_bridge(&js, &env, events, round).await;
        if stored.is_none() {
            stored = Some(stored_messages(&js, events).await);
        }
        let (config, messages) = stored.as_ref().expect("stored messages");
        delete_all_streams(&js).await;
        let (raw_rate, raw_cpu_us) = run_raw(&js, config, messages).await;
        results.push(Round {
            bridge_rate,
            bridge_cpu_us,
            bridge_peak_kib,
            raw_rate,
            raw_cpu_us,
        });
    }

    let server = testkit::nats::server_binary();
    let version = nats_server_version(&server);
    let mut table = String::new();
    writeln!(
        table,
        "| round | events | batch | in flight (both) | logs | bridge events/s | raw publish events/s | bridge / raw | bridge CPU µs/event | raw CPU µs/event | bridge peak RSS | sf-sim delivery alone, events/s | nats-server |"
    )
    .unwrap();
    writeln!(
        table,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    .unwrap();
    let logs = format!("{log_level} (JSON)");
    for (i, r) in results.iter().enumerate() {
        writeln!(
            table,
            "| {} | {events} | {batch} | {MAX_IN_FLIGHT} | {logs} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} MiB | {sim_only_rate:.0} | {version} |",
            i + 1,
            r.bridge_rate,
            r.raw_rate,
            r.bridge_rate / r.raw_rate,
            r.bridge_cpu_us,
            r.raw_cpu_us,
            r.bridge_peak_kib as f64 / 1024.0,
        )
        .unwrap();
    }
    writeln!(
        table,
        "| **median** | {events} | {batch} | {MAX_IN_FLIGHT} | {logs} | **{:.0}** | **{:.0}** | **{:.2}** | **{:.1}** | **{:.1}** | **{:.1} MiB** (max) | {sim_only_rate:.0} | {version} |",
        median(results.iter().map(|r| r.bridge_rate)),
        median(results.iter().map(|r| r.raw_rate)),
        median(results.iter().map(|r| r.bridge_rate / r.raw_rate)),
        median(results.iter().map(|r| r.bridge_cpu_us)),
        median(results.iter().map(|r| r.raw_cpu_us)),
        results.iter().map(|r| r.bridge_peak_kib).max().unwrap_or(0) as f64 / 1024.0,
    )
    .unwrap();
    print!("{table}");
    if let Ok(path) = std::env::var("BENCH_REPORT") {
        std::fs::write(&path, &table).expect("write BENCH_REPORT");
    }
    sim.shutdown().await;
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Every stream and bucket goes, so that the next phase starts empty (no duplicates, no
/// cursor, no lease held).
async fn delete_all_streams(js: &jetstream::Context) {
    let names: Vec<String> = js
        .stream_names()
        .map(|name| name.expect("stream name"))
        .collect()
        .await;
    for name in names {
        js.delete_stream(&name).await.expect("delete stream");
    }
}

/// Starts the bridge with `SF_EVENTS_REPLAY=ALL` and waits until it stored every event: the
/// rate and CPU from its first stored message to its last, and its peak RSS.
async fn run_bridge(
    js: &jetstream::Context,
    env: &HashMap<String, String>,
    events: u64,
    round: usize,
) -> (f64, f64, u64) {
    let started = Instant::now();
    let binary = std::env::var("BENCH_BRIDGE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sf-bridge").to_owned());
    let mut bridge = ChildProcess::spawn(&binary, env);
    let pid = bridge.pid().expect("pid");
    let mut first: Option<(Instant, u64)> = None;
    let mut peak_kib = 0;
    loop {
        let stored = match js.get_stream(STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if stored > 0 && first.is_none() {
            first = Some((Instant::now(), cpu_ticks(pid)));
        }
        peak_kib = peak_kib.max(testkit::process::status_kib(pid, "VmHWM:"));
        if stored >= events {
            break;
        }
        assert!(!bridge.has_exited(), "bridge exited:\n{}", bridge.log());
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "round {round}: timed out at {stored} of {events}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (done_at, done_ticks) = (Instant::now(), cpu_ticks(pid));
    peak_kib = peak_kib.max(testkit::process::status_kib(pid, "VmHWM:"));
    let (first_at, first_ticks) = first.unwrap_or((started, 0));
    bridge.terminate();
    let secs = (done_at - first_at).as_secs_f64();
    let cpu_us = ticks_to_us(done_ticks - first_ticks) / events as f64;
    (events as f64 / secs, cpu_us, peak_kib)
}

/// The messages the bridge stored, in order, and its stream's configuration.
async fn stored_messages(
    js: &jetstream::Context,
    events: u64,
) -> (
    stream::Config,
    Vec<async_nats::jetstream::message::StreamMessage>,
) {
    let mut s = js.get_stream(STREAM).await.expect("stream");
    let info = s.info().await.expect("info").clone();
    let mut messages = Vec::with_capacity(events as usize);
    for seq in info.state.first_sequence..=info.state.last_sequence {
        messages.push(s.get_raw_message(seq).await.expect("message"));
    }
    (info.config.clone(), messages)
}

/// Publishes `messages` (same subjects, headers, bodies and `Nats-Msg-Id`) into a fresh stream
/// with the bridge's configuration, `MAX_IN_FLIGHT` acks in flight: the rate and this process's
/// CPU per message.
async fn run_raw(
    js: &jetstream::Context,
    config: &stream::Config,
    messages: &[async_nats::jetstream::message::StreamMessage],
) -> (f64, f64) {
    js.create_stream(config.clone())
        .await
        .expect("baseline stream");
    let self_pid = std::process::id();
    let (started, started_ticks) = (Instant::now(), cpu_ticks(self_pid));
    let mut window = FuturesOrdered::new();
    for message in messages {
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
            .send_publish(message.subject.clone(), publish)
            .await
            .expect("publish");
        window.push_back(std::future::IntoFuture::into_future(ack));
        if window.len() >= MAX_IN_FLIGHT {
            let ack = window.next().await.expect("ack").expect("ack ok");
            assert!(!ack.duplicate, "raw publish met a duplicate");
        }
    }
    while let Some(ack) = window.next().await {
        ack.expect("ack ok");
    }
    let (secs, ticks) = (
        started.elapsed().as_secs_f64(),
        cpu_ticks(self_pid) - started_ticks,
    );
    let n = messages.len() as f64;
    (n / secs, ticks_to_us(ticks) / n)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Clock ticks are USER_HZ, 100 per second on Linux.
fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 * 10_000.0
}

fn nats_server_version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|v| {
            v.split_whitespace()
                .last()
                .map(|v| v.trim_start_matches('v').to_owned())
        })
        .unwrap_or_else(|| binary.display().to_string())
}

/// How fast sf-sim alone hands out the events to a bare Subscribe client (decoding nothing,
/// publishing nothing): the ceiling the bridge is measured against.
async fn sim_delivery_rate(sim: &SfSim, events: u64) -> f64 {
    let config = sim.config();
    let tokens = testkit::salesforce_client::sf_sim_tokens(
        sim.login_url(),
        &config.client_id,
        &config.username,
    );
    testkit::salesforce_client::subscribe_rate(
        &sim.pubsub_url(),
        tokens,
        "/event/OrderProvisionRequested__e",
        events,
    )
    .await
}
