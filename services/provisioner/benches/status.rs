//! The order status API under load, against the provisioner binary (release build) as a child
//! process, so its memory and CPU are its own:
//! - status reads per second over HTTP (`GET /orders/{id}`) and over NATS
//!   (`provisioning.status.<id>`), with 32 requests in flight, of 1,000 finished orders;
//! - 1,000 concurrent long polls (`?wait=60`) of running orders: the provisioner's resident
//!   memory before and while they wait, its CPU time over 5 s of waiting (the cost of waiting),
//!   then how long each answer takes once its order's journal entry is closed.
//!
//! `cargo bench -p provisioner --bench status` prints Markdown tables for docs/benchmarks.md.
//! `BENCH_READS` (default 20000) sets the number of reads per transport; `BENCH_POLLS` (default
//! 1000) the number of long polls.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use messages::journal::{JobRecord, JobState};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;

const IN_FLIGHT: usize = 32;
const IDLE_WINDOW: Duration = Duration::from_secs(5);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let reads = env_usize("BENCH_READS", 20_000);
    let polls = env_usize("BENCH_POLLS", 1_000);
    let nats = NatsServer::start().await;
    let port = testkit::nats::free_port();
    let provisioner = spawn_provisioner(&nats, port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(polls + IN_FLIGHT)
        .build()
        .unwrap();
    testkit::wait::until("the provisioner's journal", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), format!("{base}/orders/801000000000001AAA"));
        async move {
            let status = http.get(url).send().await.ok()?.status();
            (status == reqwest::StatusCode::NOT_FOUND).then_some(())
        }
    })
    .await;
    let client = nats.client().await;
    let journal = jetstream::new(client.clone())
        .get_key_value(messages::subjects::buckets::JOBS)
        .await
        .unwrap();

    // Reads of finished orders.
    let finished: Arc<Vec<String>> = Arc::new(seed(&journal, 0, 1_000, JobState::Activated).await);
    let pid = provisioner.pid().unwrap();
    let before = usage(pid);
    let started = Instant::now();
    futures::stream::iter(0..reads)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (http, url) = (
                http.clone(),
                format!("{base}/orders/{}", finished[i % finished.len()]),
            );
            async move {
                let response = http.get(url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
            }
        })
        .await;
    let http_elapsed = started.elapsed();
    let after_http = usage(pid);
    let started = Instant::now();
    futures::stream::iter(0..reads)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (client, subject) = (
                client.clone(),
                messages::subjects::provisioning_status(&finished[i % finished.len()]),
            );
            async move {
                let reply = client.request(subject, bytes::Bytes::new()).await.unwrap();
                assert!(reply.headers.is_none(), "a status, not an error");
            }
        })
        .await;
    let nats_elapsed = started.elapsed();
    let after_nats = usage(pid);
    println!("| transport | reads | in flight | reads/s | provisioner CPU µs per read |");
    println!("|---|---|---|---|---|");
    for (transport, elapsed, cpu) in [
        ("HTTP", http_elapsed, after_http.cpu - before.cpu),
        ("NATS", nats_elapsed, after_nats.cpu - after_http.cpu),
    ] {
        println!(
            "| {transport} | {reads} | {IN_FLIGHT} | {:.0} | {:.0} |",
            reads as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / reads as f64
        );
    }

    // Long polls of running orders.
    let running = seed(&journal, 10_000, polls, JobState::Running).await;
    let idle = usage(pid);
    let waiting: Vec<_> = running
        .iter()
        .map(|order_id| {
            let (http, url) = (http.clone(), format!("{base}/orders/{order_id}?wait=60"));
            tokio::spawn(async move {
                let body: serde_json::Value =
                    http.get(url).send().await.unwrap().json().await.unwrap();
                let answered = Instant::now();
                assert_eq!(body["state"], "activated", "{body}");
                answered
            })
        })
        .collect();
    let gauge = format!("provisioner_status_waiting {polls}");
    testkit::wait::until("every long poll waiting", Duration::from_secs(60), || {
        let (http, url, gauge) = (http.clone(), format!("{base}/metrics"), gauge.clone());
        async move {
            let text = http.get(url).send().await.ok()?.text().await.ok()?;
            text.lines().any(|l| l == gauge).then_some(())
        }
    })
    .await;
    let waiting_start = usage(pid);
    tokio::time::sleep(IDLE_WINDOW).await;
    let waiting_end = usage(pid);
    // Close every entry; each long poll answers when its own entry's write reaches it.
    let closed_at = Instant::now();
    for order_id in &running {
        let mut record = record(order_id, JobState::Activated);
        record.whmcs_order_id = Some(1);
        put(&journal, &record).await;
    }
    let writes_done = closed_at.elapsed();
    let mut latencies: Vec<Duration> = Vec::with_capacity(polls);
    for task in waiting {
        latencies.push(task.await.unwrap() - closed_at);
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!();
    println!("| long polls | RSS idle | RSS while all wait | CPU while waiting ({} s) | all answered after the closing writes | p50 / p99 / max from the first write |", IDLE_WINDOW.as_secs());
    println!("|---|---|---|---|---|---|");
    println!(
        "| {polls} | {:.1} MiB | {:.1} MiB | {:.0} ms | {:.0} ms (writes took {:.0} ms) | {:.0} / {:.0} / {:.0} ms |",
        mib(idle.rss_kib),
        mib(waiting_end.rss_kib),
        (waiting_end.cpu - waiting_start.cpu).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        writes_done.as_secs_f64() * 1e3,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    println!(
        "(provisioner peak RSS {:.1} MiB, nats-server {})",
        mib(usage(pid).peak_kib),
        nats_version()
    );
}

fn spawn_provisioner(nats: &NatsServer, port: u16) -> ChildProcess {
    let keys = testkit::keys::test_keys();
    let env: HashMap<String, String> = [
        ("NATS_URL", nats.url()),
        ("HTTP_ADDR", format!("127.0.0.1:{port}")),
        // Nothing is provisioned: the status API reads the journal only.
        ("SF_LOGIN_URL", "http://127.0.0.1:9".to_owned()),
        ("SF_CLIENT_ID", "bench".to_owned()),
        ("SF_USERNAME", "bench@example.com".to_owned()),
        (
            "SF_PRIVATE_KEY_PATH",
            keys.private_key_path.display().to_string(),
        ),
        (
            "WHMCS_API_URL",
            "http://127.0.0.1:9/includes/api.php".to_owned(),
        ),
        ("WHMCS_API_IDENTIFIER", "bench".to_owned()),
        ("WHMCS_API_SECRET", "bench".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    ChildProcess::spawn(env!("CARGO_BIN_EXE_provisioner"), &env)
}

fn record(order_id: &str, state: JobState) -> JobRecord {
    let mut record = JobRecord::new(order_id);
    record.state = state;
    record.step = "whmcs_accept".to_owned();
    record.correlation_id = format!("bench-{order_id}");
    record.attempts = 1;
    record.started_at = "2026-12-01T00:00:00Z".to_owned();
    record.updated_at = "2026-12-01T00:00:01Z".to_owned();
    record
}

async fn put(journal: &kv::Store, record: &JobRecord) {
    journal
        .put(
            messages::journal::key(&record.order_id),
            serde_json::to_vec(record).unwrap().into(),
        )
        .await
        .unwrap();
}

/// `count` journal entries in `state`, with ids numbered from `first`.
async fn seed(journal: &kv::Store, first: usize, count: usize, state: JobState) -> Vec<String> {
    let ids: Vec<String> = (first..first + count)
        .map(|n| messages::salesforce_id::to_18(&format!("801{n:012}")))
        .collect();
    for id in &ids {
        put(journal, &record(id, state)).await;
    }
    ids
}

struct Usage {
    cpu: Duration,
    rss_kib: u64,
    peak_kib: u64,
}

/// CPU time (user + system) and resident memory of `pid`, from /proc.
fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        // Linux reports in clock ticks of 1/100 s (USER_HZ) on every common configuration.
        cpu: Duration::from_millis(ticks * 10),
        rss_kib: kib("VmRSS:"),
        peak_kib: kib("VmHWM:"),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn nats_version() -> String {
    std::process::Command::new(testkit::nats::server_binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
