//! End-to-end benchmark: an order from its approval in sf-sim (the OrderProvisionRequested__e
//! event) to its status written back into sf-sim, through the three services running as release
//! child processes (sf-bridge, provisioner, sf-writer) with production logging (`info`, JSON),
//! a real nats-server, and sf-sim and whmcs-sim in this process.
//!
//! `cargo bench -p testkit --bench pipeline` (or `scripts/bench.sh`). Every figure stands beside
//! its reference measured in the same run:
//! - zero latency: orders/s for a backlog approved at once (services running and idle), and
//!   p50/p95/p99/max latency under an open-loop paced load at a fraction of that rate;
//! - realistic latency (sf-sim 80 ms per REST call, whmcs-sim 250 ms per call): orders/s for a
//!   backlog beside the ideal (provisioner concurrency / critical path), and latency under a
//!   paced load beside the sum of the external calls on the critical path;
//! - API cost: Salesforce REST requests and WHMCS calls per order, by kind;
//! - backlog: events retained in sf-sim while the services are down, then all three start;
//! - memory: VmRSS idle, VmHWM under load, VmRSS after the backlog, per service;
//! - simulator ceilings: each simulator's own rate with a bare client.
//!
//! Knobs: `BENCH_QUICK=1` (small counts, for development), `BENCH_SCALE` (multiplies the
//! counts), `BENCH_ORDERS`, `BENCH_PACED`, `BENCH_REAL_WAVES` (the realistic-latency backlog in
//! waves of `PROVISIONER_CONCURRENCY` orders, default 12) or `BENCH_REAL_ORDERS`,
//! `BENCH_REAL_PACED`, `BENCH_BACKLOG` (default 100000), `BENCH_PACE` (fraction of the measured
//! rate for the paced loads, default 0.5), `BENCH_PROVISIONER_CONCURRENCY` (32, the service
//! default), `BENCH_WRITER_CONCURRENCY` (4), `BENCH_SF_LATENCY_MS` (80),
//! `BENCH_WHMCS_LATENCY_MS` (250), `BENCH_REPORT=<file>` (the
//! Markdown tables are also written there), `NATS_SERVER_BIN`. The services' own `SF_WRITER_*`,
//! `PROVISIONER_*`, `SF_BRIDGE_*`, `SF_PUBSUB_*` and `WHMCS_TIMEOUT_SECS` variables pass through
//! (and are named under the tables).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use sf_sim::{OrderWrite, SfSim, SimStats};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use tokio::sync::mpsc::UnboundedReceiver;
use whmcs_sim::WhmcsSim;

const SERVICES: [&str; 3] = ["sf-bridge", "provisioner", "sf-writer"];
/// No order finished for this long: the pipeline is stuck, the bench stops with the logs.
const STALL: Duration = Duration::from_secs(90);

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Plan {
    quick: bool,
    orders: usize,
    paced: usize,
    real_orders: usize,
    real_paced: usize,
    backlog: usize,
    pace: f64,
    provisioner_concurrency: usize,
    writer_concurrency: usize,
    sf_latency: Duration,
    whmcs_latency: Duration,
}

impl Plan {
    fn from_env() -> Self {
        let mut plan = Self::counts();
        // Whole waves of PROVISIONER_CONCURRENCY orders, so that the backlog's ideal makespan is
        // waves × critical path (a partial last wave would cost a whole critical path).
        let waves = env_num("BENCH_REAL_WAVES", if plan.quick { 3 } else { 12 });
        plan.real_orders = env_num("BENCH_REAL_ORDERS", waves * plan.provisioner_concurrency);
        plan
    }

    fn counts() -> Self {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let scale: f64 = env_num("BENCH_SCALE", 1.0);
        let n = |name: &str, full: usize, small: usize| -> usize {
            let base = if quick { small } else { full };
            env_num(name, ((base as f64 * scale) as usize).max(10))
        };
        Self {
            quick,
            orders: n("BENCH_ORDERS", 10_000, 1_000),
            paced: n("BENCH_PACED", 5_000, 500),
            real_orders: 0,
            real_paced: n("BENCH_REAL_PACED", 600, 200),
            backlog: n("BENCH_BACKLOG", 100_000, 5_000),
            pace: env_num("BENCH_PACE", 0.5),
            provisioner_concurrency: env_num(
                "BENCH_PROVISIONER_CONCURRENCY",
                env_num("PROVISIONER_CONCURRENCY", 32),
            ),
            writer_concurrency: env_num(
                "BENCH_WRITER_CONCURRENCY",
                env_num("SF_WRITER_CONCURRENCY", 4),
            ),
            sf_latency: Duration::from_millis(env_num("BENCH_SF_LATENCY_MS", 80)),
            whmcs_latency: Duration::from_millis(env_num("BENCH_WHMCS_LATENCY_MS", 250)),
        }
    }
}

/// The simulators, the seeded data and the observer of status writes.
struct World {
    nats: NatsServer,
    sf: SfSim,
    whmcs: WhmcsSim,
    login: Vec<(&'static str, String)>,
    account: String,
    product: String,
    client_id: u64,
    writes: UnboundedReceiver<OrderWrite>,
    /// Approval instants by order id, filled just before each approval.
    approved: Arc<Mutex<HashMap<String, Instant>>>,
    binaries: Vec<std::path::PathBuf>,
}

struct Services {
    children: Vec<ChildProcess>,
    ports: Vec<u16>,
}

impl Services {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.pid().unwrap_or(0)).collect()
    }

    fn check_alive(&mut self) {
        for (name, child) in SERVICES.iter().zip(self.children.iter_mut()) {
            assert!(
                !child.has_exited(),
                "{name} exited:\n{}",
                tail(&child.log())
            );
        }
    }

    fn logs(&self) -> String {
        SERVICES
            .iter()
            .zip(&self.children)
            .map(|(name, c)| format!("--- {name}\n{}", tail(&c.log())))
            .collect()
    }

    fn stop(mut self) {
        for child in &mut self.children {
            child.terminate();
            let _ = std::fs::remove_file(&child.log_path);
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl World {
    async fn start() -> Self {
        let binaries = testkit::process::workspace_binaries(&SERVICES);
        let nats = NatsServer::start().await;
        let testkit::sim::Simulators { sf, whmcs, .. } = testkit::sim::Simulators::start().await;
        let client_id = whmcs.state().seed_client("Bench Ltd", true);
        let pid = whmcs.state().seed_product("Hosting S", &["monthly"]);
        let account = sf
            .state()
            .seed_account("Bench Ltd", Some(&client_id.to_string()));
        let product = sf
            .state()
            .seed_product("Hosting S", Some(&pid.to_string()), Some("Monthly"));
        let login = testkit::sim::sf_env(&sf);
        let writes = sf.state().watch_order_writes();
        Self {
            nats,
            sf,
            whmcs,
            login,
            account,
            product,
            client_id,
            writes,
            approved: Arc::default(),
            binaries,
        }
    }

    /// `n` Draft orders with one mapped item each, ready to approve.
    fn seed_orders(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.sf
                    .state()
                    .seed_order(&self.account, &[(self.product.as_str(), 1.0)])
            })
            .collect()
    }

    /// What the approval Flow does (`Activation_Status__c = Activating` and the event), with
    /// the instant it happened.
    fn approve(&self, order: &str) {
        self.approved
            .lock()
            .unwrap()
            .insert(order.to_owned(), Instant::now());
        self.sf.state().approve_order(order).expect("approve");
    }

    fn set_latency(&self, sf: Duration, whmcs: Duration) {
        self.sf.state().update_faults(|f| f.rest_latency = sf);
        self.whmcs.state().set_latency_all(whmcs);
    }

    fn reset_stats(&self) {
        self.sf.state().reset_stats();
        self.whmcs.state().reset_stats();
    }

    async fn spawn_services(&self, plan: &Plan) -> Services {
        let ports: Vec<u16> = (0..3).map(|_| testkit::nats::free_port()).collect();
        let env = |i: usize, extra: Vec<(&str, String)>| {
            let base = [
                ("NATS_URL", self.nats.url()),
                ("HTTP_ADDR", format!("127.0.0.1:{}", ports[i])),
                ("OTEL_SERVICE_NAME", SERVICES[i].to_owned()),
                ("LOG_FORMAT", "json".to_owned()),
                ("RUST_LOG", "info".to_owned()),
            ];
            testkit::stack::env(
                base.into_iter()
                    .chain(self.login.iter().cloned())
                    .chain(extra),
            )
        };
        let envs = [
            env(
                0,
                vec![
                    ("SF_PUBSUB_ENDPOINT", self.sf.pubsub_url()),
                    ("SF_EVENTS_REPLAY", "ALL".to_owned()),
                ],
            ),
            env(
                1,
                vec![
                    ("WHMCS_API_URL", self.whmcs.api_url()),
                    ("WHMCS_API_IDENTIFIER", self.whmcs.identifier().to_owned()),
                    ("WHMCS_API_SECRET", self.whmcs.secret().to_owned()),
                    (
                        "PROVISIONER_CONCURRENCY",
                        plan.provisioner_concurrency.to_string(),
                    ),
                    ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
                ],
            ),
            env(
                2,
                vec![
                    ("SF_WRITER_CONCURRENCY", plan.writer_concurrency.to_string()),
                    ("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
                ],
            ),
        ];
        let children = self
            .binaries
            .iter()
            .zip(envs.map(|mut env| {
                env.extend(service_overrides());
                env
            }))
            .map(|(binary, env)| ChildProcess::spawn(binary.to_str().unwrap(), &env))
            .collect();
        Services { children, ports }
    }

    /// Waits until `orders` all have a final status written (Activated or Failed): the instant
    /// of each write, in the order of `orders`' completion.
    async fn await_written(
        &mut self,
        services: &mut Services,
        orders: &HashSet<String>,
    ) -> Vec<(String, Instant)> {
        let mut done: Vec<(String, Instant)> = Vec::with_capacity(orders.len());
        let mut seen = HashSet::with_capacity(orders.len());
        while seen.len() < orders.len() {
            let write = match tokio::time::timeout(STALL, self.writes.recv()).await {
                Ok(Some(write)) => write,
                Ok(None) => panic!("sf-sim stopped"),
                Err(_) => {
                    services.check_alive();
                    panic!(
                        "no status written for {} s ({} of {} done):\n{}",
                        STALL.as_secs(),
                        seen.len(),
                        orders.len(),
                        services.logs()
                    );
                }
            };
            let is_final = matches!(write.status.as_str(), "Activated" | "Failed");
            if is_final && orders.contains(&write.order_id) && seen.insert(write.order_id.clone()) {
                done.push((write.order_id, write.at));
            }
        }
        done
    }

    /// Latencies (approval → status stored) of `done`.
    fn latencies(&self, done: &[(String, Instant)]) -> Vec<Duration> {
        let approved = self.approved.lock().unwrap();
        let mut latencies: Vec<Duration> = done
            .iter()
            .filter_map(|(order, at)| {
                approved
                    .get(order)
                    .map(|t| at.saturating_duration_since(*t))
            })
            .collect();
        latencies.sort();
        latencies
    }
}

/// The services' own settings given to the bench (`SF_WRITER_LINGER_MS=0 cargo bench ...`),
/// passed to every service after the bench's, so a setting can be tried without editing.
fn service_overrides() -> Vec<(String, String)> {
    const PREFIXES: [&str; 5] = [
        "SF_WRITER_",
        "PROVISIONER_",
        "SF_BRIDGE_",
        "SF_PUBSUB_",
        "WHMCS_TIMEOUT",
    ];
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| PREFIXES.iter().any(|p| name.starts_with(p)))
        .collect();
    vars.sort();
    vars
}

async fn wait_healthy(services: &mut Services) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for port in services.ports.clone() {
        loop {
            let answer = testkit::stack::http_get(port, "/health", Duration::from_secs(2)).await;
            if answer
                .as_deref()
                .and_then(testkit::stack::ok_body)
                .is_some()
            {
                break;
            }
            services.check_alive();
            assert!(
                Instant::now() < deadline,
                "a service never became healthy:\n{}",
                services.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Approves `orders` at once; orders/s from the first approval to the last status, and the
/// rate between the 10th and the 90th percentile of completions (the steady state, without the
/// pipeline's fill and drain).
async fn backlog_run(world: &mut World, services: &mut Services, orders: &[String]) -> Throughput {
    let set: HashSet<String> = orders.iter().cloned().collect();
    let started = Instant::now();
    for order in orders {
        world.approve(order);
    }
    let approved_in = started.elapsed();
    let done = world.await_written(services, &set).await;
    let last = done.last().map_or(started, |(_, at)| *at);
    let total = last.duration_since(started).as_secs_f64();
    let (lo, hi) = (done.len() / 10, done.len() * 9 / 10);
    let steady = if hi > lo + 1 {
        (hi - lo) as f64 / done[hi - 1].1.duration_since(done[lo].1).as_secs_f64()
    } else {
        f64::NAN
    };
    Throughput {
        orders: orders.len(),
        rate: orders.len() as f64 / total,
        steady,
        seconds: total,
        approved_in,
    }
}

struct Throughput {
    orders: usize,
    rate: f64,
    steady: f64,
    seconds: f64,
    approved_in: Duration,
}

/// Open loop: order `i` is approved at `i / rate` s whatever the pipeline does.
async fn paced_run(
    world: &mut World,
    services: &mut Services,
    orders: &[String],
    rate: f64,
) -> Latency {
    let set: HashSet<String> = orders.iter().cloned().collect();
    let (sf, approved) = (world.sf.state().clone(), world.approved.clone());
    let schedule: Vec<String> = orders.to_vec();
    let started = tokio::time::Instant::now();
    let pacer = tokio::spawn(async move {
        let mut behind = Duration::ZERO;
        for (i, order) in schedule.iter().enumerate() {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due).await;
            behind = behind.max(tokio::time::Instant::now().saturating_duration_since(due));
            approved
                .lock()
                .unwrap()
                .insert(order.clone(), Instant::now());
            sf.approve_order(order).expect("approve");
        }
        behind
    });
    let done = world.await_written(services, &set).await;
    let behind = pacer.await.expect("pacer");
    let latencies = world.latencies(&done);
    let pick = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    Latency {
        orders: orders.len(),
        rate,
        p50: pick(0.50),
        p95: pick(0.95),
        p99: pick(0.99),
        max: *latencies.last().unwrap(),
        pacer_behind: behind,
    }
}

struct Latency {
    orders: usize,
    rate: f64,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
    pacer_behind: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Salesforce REST requests and WHMCS calls per order, by kind.
struct Cost {
    label: String,
    orders: usize,
    sf: SimStats,
    whmcs: BTreeMap<String, u64>,
}

impl Cost {
    fn take(world: &World, label: &str, orders: usize) -> Self {
        Self {
            label: label.to_owned(),
            orders,
            sf: world.sf.state().stats(),
            whmcs: world.whmcs.state().stats().calls,
        }
    }

    fn row(&self) -> String {
        let n = self.orders as f64;
        let route = |name: &str| {
            self.sf
                .rest_requests_by_route
                .get(name)
                .copied()
                .unwrap_or(0)
        };
        let query = route("GET /query") + route("GET /query/{locator}");
        let single = route("PATCH /sobjects/{sobject}/{id}");
        let collection = route("PATCH /composite/sobjects");
        let other = self.sf.rest_requests - query - single - collection;
        let rest = self.sf.rest_requests as f64 / n;
        let whmcs: Vec<String> = self
            .whmcs
            .iter()
            .map(|(action, calls)| format!("{action} {:.3}", *calls as f64 / n))
            .collect();
        let whmcs_total: u64 = self.whmcs.values().sum();
        format!(
            "| {} | {} | {:.4} | {:.3} | {:.4} | {:.4} | {} | {:.4} | {} | {:.2} |",
            self.label,
            self.orders,
            self.sf.token_requests as f64 / n,
            query as f64 / n,
            single as f64 / n,
            collection as f64 / n,
            other,
            rest,
            whmcs.join(", "),
            whmcs_total as f64 / n,
        )
    }
}

/// Bare clients against the simulators: how fast each answers alone.
async fn sf_query_ceiling(world: &World, seconds: f64) -> f64 {
    let tokens = sf_tokens(world);
    let client = salesforce::rest::RestClient::new(reqwest::Client::new(), tokens);
    let order = world.seed_orders(1).remove(0);
    let soql = provisioner::salesforce_order::soql(&order);
    client
        .query::<serde_json::Value>(&soql)
        .await
        .expect("query");
    closed_loop(32, seconds, move || {
        let (client, soql) = (client.clone(), soql.clone());
        async move {
            client
                .query::<serde_json::Value>(&soql)
                .await
                .expect("query");
        }
    })
    .await
}

async fn whmcs_ceiling(world: &World, seconds: f64) -> f64 {
    let settings = whmcs::WhmcsSettings::from_env(&platform::config::Env::from_pairs([
        ("WHMCS_API_URL", world.whmcs.api_url()),
        ("WHMCS_API_IDENTIFIER", world.whmcs.identifier().to_owned()),
        ("WHMCS_API_SECRET", world.whmcs.secret().to_owned()),
    ]))
    .expect("whmcs settings");
    let client = whmcs::WhmcsClient::new(settings).expect("whmcs client");
    let client_id = world.client_id;
    closed_loop(32, seconds, move || {
        let client = client.clone();
        async move {
            client
                .get_pay_methods(client_id)
                .await
                .expect("GetPayMethods");
        }
    })
    .await
}

/// `workers` loops calling `call` for `seconds`: calls/s.
async fn closed_loop<F, Fut>(workers: usize, seconds: f64, call: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    call().await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// How fast sf-sim alone delivers `events` retained events to a bare Subscribe client.
async fn pubsub_ceiling(world: &World, events: u64) -> f64 {
    testkit::salesforce_client::subscribe_rate(
        &world.sf.pubsub_url(),
        sf_tokens(world),
        world.sf.state().channel(),
        events,
    )
    .await
}

/// A token provider for the bench's own Salesforce clients.
fn sf_tokens(world: &World) -> std::sync::Arc<salesforce::TokenProvider> {
    let config = world.sf.config();
    testkit::salesforce_client::sf_sim_tokens(
        world.sf.login_url(),
        &config.client_id,
        &config.username,
    )
}

async fn stream_messages(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

#[tokio::main]
async fn main() {
    let plan = Plan::from_env();
    let bench_started = Instant::now();
    let mut world = World::start().await;
    let js = jetstream::new(world.nats.client().await);
    let mut report = String::new();
    let server = testkit::nats::server_binary();
    let server_version = std::process::Command::new(&server)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!("pipeline bench: {server_version}");

    // Simulator ceilings, alone on the machine (the services are not started yet).
    let soql_ceiling = sf_query_ceiling(&world, 3.0).await;
    let whmcs_calls_ceiling = whmcs_ceiling(&world, 3.0).await;
    eprintln!("ceilings: SOQL {soql_ceiling:.0}/s, WHMCS {whmcs_calls_ceiling:.0}/s");

    let mut services = world.spawn_services(&plan).await;
    wait_healthy(&mut services).await;
    // One order through the whole pipeline: tokens fetched, streams and consumers created,
    // the product cached. The services are then running and idle.
    let warm = world.seed_orders(1);
    backlog_run(&mut world, &mut services, &warm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pids = services.pids();
    let idle_rss: Vec<u64> = pids
        .iter()
        .map(|p| testkit::process::status_kib(*p, "VmRSS:"))
        .collect();

    // Zero latency.
    world.reset_stats();
    let orders = world.seed_orders(plan.orders);
    let zero = backlog_run(&mut world, &mut services, &orders).await;
    eprintln!("zero latency: {:.0} orders/s", zero.rate);
    let zero_cost = Cost::take(&world, "0 ms, backlog approved at once", plan.orders);
    world.reset_stats();
    let paced_orders = world.seed_orders(plan.paced);
    let zero_paced = paced_run(
        &mut world,
        &mut services,
        &paced_orders,
        zero.rate * plan.pace,
    )
    .await;
    let zero_paced_cost = Cost::take(
        &world,
        &format!("0 ms, paced at {:.0} orders/s", zero_paced.rate),
        plan.paced,
    );
    let zero_hwm: Vec<u64> = pids
        .iter()
        .map(|p| testkit::process::status_kib(*p, "VmHWM:"))
        .collect();

    // Realistic latency.
    let sum_provisioner = plan.sf_latency + 3 * plan.whmcs_latency;
    let sum_calls = sum_provisioner + plan.sf_latency;
    let ideal = plan.provisioner_concurrency as f64 / sum_provisioner.as_secs_f64();
    world.set_latency(plan.sf_latency, plan.whmcs_latency);
    world.reset_stats();
    let orders = world.seed_orders(plan.real_orders);
    let real = backlog_run(&mut world, &mut services, &orders).await;
    eprintln!(
        "realistic latency: {:.1} orders/s, ideal {ideal:.1}",
        real.rate
    );
    let latency_label = format!(
        "{} / {} ms",
        plan.sf_latency.as_millis(),
        plan.whmcs_latency.as_millis()
    );
    let real_cost = Cost::take(
        &world,
        &format!("{latency_label}, backlog approved at once"),
        plan.real_orders,
    );
    world.reset_stats();
    let paced_orders = world.seed_orders(plan.real_paced);
    let real_paced = paced_run(&mut world, &mut services, &paced_orders, ideal * plan.pace).await;
    let real_paced_cost = Cost::take(
        &world,
        &format!("{latency_label}, paced at {:.0} orders/s", real_paced.rate),
        plan.real_paced,
    );
    let load_hwm: Vec<u64> = pids
        .iter()
        .map(|p| testkit::process::status_kib(*p, "VmHWM:"))
        .collect();

    // Backlog: the services go away, events pile up in sf-sim, then all three start.
    world.set_latency(Duration::ZERO, Duration::ZERO);
    services.stop();
    let outcomes_before = stream_messages(&js, "PROVISIONING_OUTCOMES").await;
    let orders = world.seed_orders(plan.backlog);
    for order in &orders {
        world.approve(order);
    }
    let retained = world.sf.state().events().len() as u64;
    let pubsub_rate = pubsub_ceiling(&world, retained).await;
    eprintln!(
        "backlog of {} retained; Pub/Sub alone {pubsub_rate:.0} events/s",
        plan.backlog
    );
    world.reset_stats();
    let started = Instant::now();
    let mut services = world.spawn_services(&plan).await;
    let set: HashSet<String> = orders.iter().cloned().collect();
    let target = outcomes_before + plan.backlog as u64;
    let js_watch = js.clone();
    let outcomes = tokio::spawn(async move {
        loop {
            if stream_messages(&js_watch, "PROVISIONING_OUTCOMES").await >= target {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let done = world.await_written(&mut services, &set).await;
    let written_at = done.last().map_or(started, |(_, at)| *at);
    let outcomes_at = outcomes.await.expect("outcomes watch");
    let backlog_cost = Cost::take(&world, "0 ms (backlog drain)", plan.backlog);
    let pids_after = services.pids();
    let after_rss: Vec<u64> = pids_after
        .iter()
        .map(|p| testkit::process::status_kib(*p, "VmRSS:"))
        .collect();
    let backlog_hwm: Vec<u64> = pids_after
        .iter()
        .map(|p| testkit::process::status_kib(*p, "VmHWM:"))
        .collect();
    services.stop();

    // The report.
    let waves = plan.real_orders as f64 / plan.provisioner_concurrency as f64;
    let best_makespan =
        waves.ceil() * sum_provisioner.as_secs_f64() + plan.sf_latency.as_secs_f64();
    let w = &mut report;
    writeln!(w, "#### End to end at zero latency\n").unwrap();
    writeln!(
        w,
        "| figure | orders | result | reference in the same run |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|").unwrap();
    writeln!(
        w,
        "| throughput, backlog approved at once (first approval → last status) | {} | **{:.0} orders/s** ({:.2} s; steady state {:.0}/s) | aim ≥ 1000 orders/s; approving took {} ms |",
        zero.orders, zero.rate, zero.seconds, zero.steady, ms(zero.approved_in)
    )
    .unwrap();
    writeln!(
        w,
        "| latency under paced load, p50 / p95 / p99 / max | {} | **{} / {} / {} / {} ms** | open loop at {:.0} orders/s ({} × the throughput; pacer at most {} ms late) |",
        zero_paced.orders,
        ms(zero_paced.p50),
        ms(zero_paced.p95),
        ms(zero_paced.p99),
        ms(zero_paced.max),
        zero_paced.rate,
        plan.pace,
        ms(zero_paced.pacer_behind)
    )
    .unwrap();
    writeln!(
        w,
        "\n#### End to end at realistic latency (Salesforce {} ms, WHMCS {} ms per call)\n",
        plan.sf_latency.as_millis(),
        plan.whmcs_latency.as_millis()
    )
    .unwrap();
    writeln!(
        w,
        "| figure | orders | result | reference in the same run |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|").unwrap();
    writeln!(
        w,
        "| throughput, backlog approved at once (first approval → last status) | {} | **{:.1} orders/s** ({:.0} % of ideal; {:.2} s) | ideal {:.1} orders/s = {} / {} ms (SOQL + GetPayMethods + AddOrder + AcceptOrder); aim ≥ 90 %. For this backlog ({:.1} waves of {}) the best makespan is {:.2} s (waves × {} ms + the sf-writer's {} ms): {:.0} % of it |",
        real.orders,
        real.rate,
        100.0 * real.rate / ideal,
        real.seconds,
        ideal,
        plan.provisioner_concurrency,
        ms(sum_provisioner),
        waves,
        plan.provisioner_concurrency,
        best_makespan,
        ms(sum_provisioner),
        ms(plan.sf_latency),
        100.0 * best_makespan / real.seconds,
    )
    .unwrap();
    writeln!(
        w,
        "| latency under paced load, p50 / p95 / p99 / max | {} | **{} / {} / {} / {} ms** | sum of the external calls on the critical path {} ms (provisioner {} + sf-writer {}); aim p99 ≤ {} ms; open loop at {:.0} orders/s ({} × ideal) |",
        real_paced.orders,
        ms(real_paced.p50),
        ms(real_paced.p95),
        ms(real_paced.p99),
        ms(real_paced.max),
        ms(sum_calls),
        ms(sum_provisioner),
        ms(plan.sf_latency),
        ms(sum_calls + Duration::from_millis(20)),
        real_paced.rate,
        plan.pace
    )
    .unwrap();
    writeln!(
        w,
        "\nSettings: PROVISIONER_CONCURRENCY={}, SF_WRITER_CONCURRENCY={}, the other variables at their defaults (SF_WRITER_LINGER_MS=5, SF_WRITER_MAX_BATCH=200, SF_PUBSUB_BATCH=100); RUST_LOG=info, LOG_FORMAT=json.",
        plan.provisioner_concurrency, plan.writer_concurrency
    )
    .unwrap();
    let overrides = service_overrides();
    if !overrides.is_empty() {
        let list: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(w, "Overridden for this run: {}.", list.join(", ")).unwrap();
    }
    writeln!(w, "\n#### API cost per order\n").unwrap();
    writeln!(w, "| load | orders | SF token | SF query | SF single PATCH | SF collection PATCH | SF other (requests) | **SF REST requests per order** (aim ≤ 1.05) | WHMCS calls per order by action | WHMCS calls per order |").unwrap();
    writeln!(w, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for cost in [
        &zero_cost,
        &zero_paced_cost,
        &real_cost,
        &real_paced_cost,
        &backlog_cost,
    ] {
        writeln!(w, "{}", cost.row()).unwrap();
    }
    writeln!(w, "\n#### Backlog\n").unwrap();
    writeln!(w, "| events retained | all outcomes published | all statuses written | orders/s | reference: zero-latency throughput above |").unwrap();
    writeln!(w, "|---|---|---|---|---|").unwrap();
    let to_written = written_at.duration_since(started).as_secs_f64();
    writeln!(
        w,
        "| {} | {:.1} s | {:.1} s | {:.0} | {:.0} orders/s |",
        plan.backlog,
        outcomes_at.duration_since(started).as_secs_f64(),
        to_written,
        plan.backlog as f64 / to_written,
        zero.rate
    )
    .unwrap();
    writeln!(
        w,
        "\nTimes run from the start of the three processes (as after an outage)."
    )
    .unwrap();
    writeln!(w, "\n#### Memory\n").unwrap();
    writeln!(w, "| service | VmRSS idle | VmHWM after the zero-latency loads | VmHWM after the realistic-latency loads (aim ≤ 20 MiB) | VmRSS after the backlog | VmHWM during the backlog |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|---|---|").unwrap();
    for i in 0..3 {
        writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} |",
            SERVICES[i],
            mib(idle_rss[i]),
            mib(zero_hwm[i]),
            mib(load_hwm[i]),
            mib(after_rss[i]),
            mib(backlog_hwm[i])
        )
        .unwrap();
    }
    writeln!(w, "\n#### Simulator ceilings (bare clients, same run)\n").unwrap();
    writeln!(
        w,
        "| simulator | what | rate | the pipeline needs at its zero-latency throughput |"
    )
    .unwrap();
    writeln!(w, "|---|---|---|---|").unwrap();
    writeln!(
        w,
        "| sf-sim | SOQL query requests/s (the provisioner's query, 32 in flight) | {soql_ceiling:.0} | {:.0} |",
        zero.rate
    )
    .unwrap();
    writeln!(
        w,
        "| sf-sim | Pub/Sub delivery events/s ({retained} events, batches of 100) | {pubsub_rate:.0} | {:.0} |",
        zero.rate
    )
    .unwrap();
    writeln!(
        w,
        "| whmcs-sim | api.php calls/s (GetPayMethods, 32 in flight) | {whmcs_calls_ceiling:.0} | {:.0} (3 calls per order) |",
        3.0 * zero.rate
    )
    .unwrap();
    writeln!(
        w,
        "\n{server_version}. Whole bench: {:.0} s.",
        bench_started.elapsed().as_secs_f64()
    )
    .unwrap();

    println!("{report}");
    if let Ok(path) = std::env::var("BENCH_REPORT") {
        if !path.is_empty() {
            std::fs::write(&path, &report).expect("write BENCH_REPORT");
        }
    }
    world.sf.shutdown().await;
}
