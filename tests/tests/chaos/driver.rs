//! The chaos driver: the simulators in this process, two replicas of every service as child
//! processes on a single nats-server or a three-node cluster, a seeded mix of Salesforce Orders
//! approved at a steady rate, fault helpers, and the check of docs/contract.md §5's promises once the
//! pipeline has had time to recover.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use serde_json::Value;
use sf_sim::{SfSim, SimConfig, SimHandle};
use testkit::cluster::NatsCluster;
use testkit::nats::{free_port, NatsServer};
use testkit::process::ChildProcess;
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

use super::rng::{seed_from_env, Rng};

pub const REQUESTS: &str = "PROVISIONING_REQUESTS";
pub const OUTCOMES: &str = "PROVISIONING_OUTCOMES";
pub const DEADLETTER: &str = "PROVISIONING_DEADLETTER";
pub const ORDER_UPDATES: &str = "SF_ORDER_UPDATES";
/// The subject sf-bridge sets an event aside on (rule 5's dead letter).
const BRIDGE_DEADLETTER_SUBJECT: &str = "provisioning.deadletter.sf-bridge";
/// The streams a cluster node must have caught up on before the next node loss.
pub const CLUSTER_STREAMS: [&str; 4] = [REQUESTS, "KV_provisioning_jobs", OUTCOMES, ORDER_UPDATES];

/// How long a complete read of a stream may take (retried while a leader is being elected or
/// the read comes back short).
const STREAM_READ_DEADLINE: Duration = Duration::from_secs(60);
pub const JOURNAL_BUCKET: &str = "provisioning_jobs";

/// The provisioner's consumer `ack_wait` in these tests (PROVISIONER_ACK_WAIT_SECS).
pub const PROVISIONER_ACK_WAIT: Duration = Duration::from_secs(5);

/// Codes docs/contract.md §5 allows in `Activation_Error_Code__c` (plus any HTTP status).
const CONTRACT_CODES: &[&str] = &[
    "409",
    "CLIENT_MISSING",
    "NO_ITEMS",
    "MAPPING_MISSING",
    "WHMCS_ERROR",
    "ETIMEOUT",
    "ECONNREFUSED",
    "INTERRUPTED",
];

fn is_contract_code(code: &str) -> bool {
    CONTRACT_CODES.contains(&code)
        || (code.len() == 3
            && code.bytes().all(|b| b.is_ascii_digit())
            && (400..600).contains(&code.parse::<u16>().unwrap_or(0)))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Number of orders per scenario: `CHAOS_ORDERS`, default 200.
pub fn order_count() -> usize {
    usize::try_from(env_u64("CHAOS_ORDERS", 200)).unwrap_or(200)
}

// ---------------------------------------------------------------------------------------------
// Broker

pub enum Broker {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Broker {
    pub fn urls(&self) -> String {
        match self {
            Self::Single(s) => s.url(),
            Self::Cluster(c) => c.client_urls(),
        }
    }

    pub fn replicas(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(c) => c.len(),
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        match self {
            Self::Single(s) => s.client().await,
            Self::Cluster(c) => c.client().await,
        }
    }

    fn label(&self) -> String {
        let version = std::process::Command::new(testkit::nats::server_binary())
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.split_whitespace().last().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned());
        match self {
            Self::Single(_) => format!("{version} ×1"),
            Self::Cluster(c) => format!("{version} ×{}", c.len()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Services

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bridge,
    Provisioner,
    Writer,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Bridge, Kind::Provisioner, Kind::Writer];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bridge => "sf-bridge",
            Self::Provisioner => "provisioner",
            Self::Writer => "sf-writer",
        }
    }
}

struct Service {
    kind: Kind,
    replica: usize,
    binary: PathBuf,
    env: HashMap<String, String>,
    http_port: u16,
    process: Option<ChildProcess>,
    /// Log files of every incarnation, oldest first.
    logs: Vec<PathBuf>,
}

impl Service {
    fn label(&self) -> String {
        format!("{}#{}", self.kind.name(), self.replica)
    }

    fn start(&mut self) {
        let process = ChildProcess::spawn(&self.binary.display().to_string(), &self.env);
        self.logs.push(process.log_path.clone());
        self.process = Some(process);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Whether the process we started has exited without being killed by us.
    fn exited_on_its_own(&mut self) -> bool {
        self.process.as_mut().is_some_and(ChildProcess::has_exited)
    }
}

/// `GET path` on 127.0.0.1:port; the body when the status is 200.
async fn http_get(port: u16, path: &str) -> Option<String> {
    let answer = testkit::stack::http_get(port, path, Duration::from_secs(2)).await?;
    testkit::stack::ok_body(&answer)
}

// ---------------------------------------------------------------------------------------------
// Orders

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Good,
    NoPayMethod,
    ClientMissing,
    NoItems,
    MappingMissing,
}

impl Category {
    const ALL: [Category; 5] = [
        Category::Good,
        Category::NoPayMethod,
        Category::ClientMissing,
        Category::NoItems,
        Category::MappingMissing,
    ];
    const WEIGHTS: [u64; 5] = [60, 10, 10, 10, 10];

    /// The code the order fails with when nothing else goes wrong (`None`: it activates).
    fn expected_code(self) -> Option<&'static str> {
        match self {
            Self::Good => None,
            Self::NoPayMethod => Some("409"),
            Self::ClientMissing => Some("CLIENT_MISSING"),
            Self::NoItems => Some("NO_ITEMS"),
            Self::MappingMissing => Some("MAPPING_MISSING"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlannedOrder {
    pub id: String,
    pub category: Category,
}

#[derive(Debug, Clone)]
pub struct Approval {
    pub order_id: String,
    pub event_id: String,
    /// When the Platform Event was published.
    pub at: Instant,
}

// ---------------------------------------------------------------------------------------------
// The run

pub struct ChaosOptions {
    pub scenario: &'static str,
    pub cluster: bool,
    /// Extra or overriding environment per service kind.
    pub extra_env: Vec<(Kind, &'static str, String)>,
    /// The approvals take at least this long (the rate drops below `CHAOS_RATE` when needed),
    /// so the scenario's faults land while events flow.
    pub min_flow: Duration,
    /// Latency WHMCS adds to every call for the whole run, so that jobs are in flight (between
    /// AddOrder and AcceptOrder, say) when a fault strikes.
    pub whmcs_latency: Duration,
}

pub struct Chaos {
    pub scenario: &'static str,
    pub seed: u64,
    pub rng: Rng,
    pub broker: Broker,
    pub sf: SfSim,
    pub whmcs: WhmcsSim,
    services: Vec<Service>,
    pub orders: Vec<PlannedOrder>,
    pub faults: Vec<String>,
    started: Instant,
    last_fault_at: Option<Instant>,
    approvals: Option<tokio::task::JoinHandle<Vec<Approval>>>,
    /// How long the approvals take (orders / rate).
    pub flow: Duration,
}

impl Chaos {
    pub async fn start(options: ChaosOptions) -> Self {
        let seed = seed_from_env();
        eprintln!(
            "chaos {}: seed {seed} (replay with CHAOS_SEED={seed})",
            options.scenario
        );
        let mut rng = Rng::new(seed);
        let binaries =
            testkit::process::workspace_binaries(&["sf-bridge", "provisioner", "sf-writer"]);
        let keys = testkit::keys::test_keys();
        let config = SimConfig::for_tests(keys.public_pem.clone());
        let (client_id, username) = (config.client_id.clone(), config.username.clone());
        let sf = SfSim::start(config).await.expect("sf-sim");
        let whmcs = WhmcsSim::start(WhmcsSimConfig::for_tests())
            .await
            .expect("whmcs-sim");
        let broker = if options.cluster {
            Broker::Cluster(NatsCluster::start().await)
        } else {
            Broker::Single(NatsServer::start().await)
        };

        let orders = seed_orders(&sf, &whmcs, &mut rng, order_count());
        whmcs.state().set_latency_all(options.whmcs_latency);
        let mut common: Vec<(&str, String)> = vec![
            ("NATS_URL", broker.urls()),
            ("JETSTREAM_REPLICAS", broker.replicas().to_string()),
            ("SF_HTTP_TIMEOUT_SECS", "3".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        common.extend(testkit::stack::salesforce_login(
            sf.login_url(),
            &client_id,
            &username,
        ));
        let per_kind = |kind: Kind| -> Vec<(&'static str, String)> {
            match kind {
                Kind::Bridge => vec![
                    ("SF_PUBSUB_ENDPOINT", sf.pubsub_url()),
                    ("SF_EVENTS_REPLAY", "ALL".to_owned()),
                    ("SF_BRIDGE_LEASE_TTL_SECS", "5".to_owned()),
                ],
                Kind::Provisioner => vec![
                    ("WHMCS_API_URL", whmcs.api_url()),
                    ("WHMCS_API_IDENTIFIER", whmcs.identifier().to_owned()),
                    ("WHMCS_API_SECRET", whmcs.secret().to_owned()),
                    ("WHMCS_TIMEOUT_SECS", "3".to_owned()),
                    (
                        "PROVISIONER_ACK_WAIT_SECS",
                        PROVISIONER_ACK_WAIT.as_secs().to_string(),
                    ),
                    ("PROVISIONER_JOB_LEASE_SECS", "9".to_owned()),
                    ("PROVISIONER_RECOVERY_INTERVAL_SECS", "3".to_owned()),
                    ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
                ],
                Kind::Writer => vec![
                    ("SF_WRITER_ACK_WAIT_SECS", "6".to_owned()),
                    ("SF_WRITER_CLAIM_TTL_SECS", "10".to_owned()),
                    ("SF_WRITER_BACKOFF_MAX_MS", "2000".to_owned()),
                    ("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
                ],
            }
        };
        let mut services = Vec::new();
        for (kind, binary) in Kind::ALL.iter().zip(&binaries) {
            for replica in 0..2 {
                let http_port = free_port();
                let mut env: HashMap<String, String> = common
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                env.insert("HTTP_ADDR".into(), format!("127.0.0.1:{http_port}"));
                env.insert(
                    "OTEL_SERVICE_NAME".into(),
                    format!("{}-{replica}", kind.name()),
                );
                for (k, v) in per_kind(*kind) {
                    env.insert(k.to_owned(), v);
                }
                for (k2, name, value) in &options.extra_env {
                    if k2 == kind {
                        env.insert((*name).to_owned(), value.clone());
                    }
                }
                services.push(Service {
                    kind: *kind,
                    replica,
                    binary: binary.clone(),
                    env,
                    http_port,
                    process: None,
                    logs: Vec::new(),
                });
            }
        }
        let rate = env_u64("CHAOS_RATE", 10).max(1);
        let flow = Duration::from_millis(orders.len() as u64 * 1000 / rate).max(options.min_flow);
        eprintln!(
            "chaos {}: {} orders approved over {:.0} s",
            options.scenario,
            orders.len(),
            flow.as_secs_f64()
        );
        let mut chaos = Self {
            scenario: options.scenario,
            seed,
            rng,
            broker,
            sf,
            whmcs,
            services,
            orders,
            faults: Vec::new(),
            started: Instant::now(),
            last_fault_at: None,
            approvals: None,
            flow,
        };
        for service in &mut chaos.services {
            service.start();
        }
        chaos.wait_healthy().await;
        chaos.started = Instant::now();
        chaos
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for i in 0..self.services.len() {
            loop {
                let port = self.services[i].http_port;
                if http_get(port, "/health").await.is_some() {
                    break;
                }
                let exited = self.services[i].exited_on_its_own();
                if exited || Instant::now() > deadline {
                    panic!(
                        "{} not healthy (exited: {exited}):\n{}",
                        self.services[i].label(),
                        self.service_log_tail(i, 40)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn service_log_tail(&self, i: usize, lines: usize) -> String {
        let Some(path) = self.services[i].logs.last() else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Approves every order, one every `1/CHAOS_RATE` s (default 10 per second), in a task.
    pub fn start_approvals(&mut self) {
        let sf: SimHandle = self.sf.state().clone();
        let ids: Vec<String> = self.orders.iter().map(|o| o.id.clone()).collect();
        let period = self.flow / u32::try_from(ids.len().max(1)).unwrap_or(1);
        self.approvals = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                tick.tick().await;
                let event = sf.approve_order(&id).expect("approve order");
                out.push(Approval {
                    order_id: id,
                    event_id: event.event_id,
                    at: Instant::now(),
                });
            }
            out
        }));
    }

    /// Time since the approvals started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a fault (what and when) for the result row. Its end is marked by
    /// [`Chaos::fault_over`] (or [`Chaos::fault_over_at`]).
    pub fn fault(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!(
            "chaos {}: t={:.1}s {what}",
            self.scenario,
            self.started.elapsed().as_secs_f64()
        );
        self.faults.push(what);
    }

    /// Marks the end of a fault (service back, server back, simulator healthy) now.
    pub fn fault_over(&mut self) {
        self.fault_over_at(Instant::now());
    }

    /// Marks the end of a fault at `at` (when the node came back, say, before the harness
    /// waited for it to catch up): "recovered after" counts from the last such end.
    pub fn fault_over_at(&mut self, at: Instant) {
        self.last_fault_at = Some(self.last_fault_at.map_or(at, |t| t.max(at)));
    }

    /// A random pause in `[min_ms, max_ms)`: the fault schedule, not synchronisation.
    pub async fn pause(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        let d = self.rng.millis(min_ms, max_ms);
        tokio::time::sleep(d).await;
        d
    }

    /// Indices of the running replicas of `kind`.
    pub fn replicas_of(&self, kind: Kind) -> Vec<usize> {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.kind == kind)
            .map(|(i, _)| i)
            .collect()
    }

    pub fn service_label(&self, i: usize) -> String {
        self.services[i].label()
    }

    /// kill -9 of service `i`.
    pub fn kill_service(&mut self, i: usize) {
        self.services[i].kill();
    }

    pub fn restart_service(&mut self, i: usize) {
        self.services[i].kill();
        self.services[i].start();
    }

    /// The sf-bridge replica that holds the subscription (`state: subscribed`), if any.
    pub async fn active_bridge(&self) -> Option<usize> {
        for i in self.replicas_of(Kind::Bridge) {
            if let Some(body) = http_get(self.services[i].http_port, "/health/sf-events").await {
                if body.contains("\"subscribed\"") {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Waits for the approvals, then for the pipeline to settle (bounded: `CHAOS_RECOVERY_SECS`,
    /// default 180, after the last fault), and checks the invariants.
    pub async fn finish(mut self) -> ChaosResult {
        let approvals = match self.approvals.take() {
            Some(handle) => handle.await.expect("approvals task"),
            None => Vec::new(),
        };
        // "Recovered after" counts from the end of the last fault or the last approval,
        // whichever is later.
        let last_approval = approvals.iter().map(|a| a.at).max();
        let recover_from = match (self.last_fault_at, last_approval) {
            (Some(f), Some(a)) => f.max(a),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => Instant::now(),
        };
        let budget = Duration::from_secs(env_u64("CHAOS_RECOVERY_SECS", 180));
        let deadline = recover_from + budget;
        let client = self.broker.client().await;
        let js = jetstream::new(client.clone());
        let mut converged = None;
        loop {
            if self.all_final() {
                let snapshot = Snapshot::take(&js).await;
                if snapshot.complete(&approvals) {
                    converged = Some(recover_from.elapsed());
                    break;
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // Anything that would still change a final state (a late INTERRUPTED, a redelivered
        // update) has a few lease and recovery periods to show itself.
        let first: BTreeMap<String, (Option<String>, Option<String>)> = self
            .orders
            .iter()
            .map(|o| (o.id.clone(), self.sf_state(&o.id)))
            .collect();
        if converged.is_some() {
            tokio::time::sleep(Duration::from_secs(env_u64("CHAOS_SETTLE_SECS", 15))).await;
        }
        let snapshot = Snapshot::take(&js).await;
        let kv = js.get_key_value(JOURNAL_BUCKET).await.ok();
        let mut result = ChaosResult {
            scenario: self.scenario.to_owned(),
            broker: self.broker.label(),
            seed: self.seed,
            faults: self.faults.clone(),
            orders: self.orders.len(),
            activated: 0,
            failed: BTreeMap::new(),
            duplicates: 0,
            lost: 0,
            stuck: 0,
            recovered_after: converged,
            violations: Vec::new(),
        };
        self.check(&approvals, &snapshot, &first, &mut result);
        for v in &mut result.violations {
            v.detail
                .push_str(&self.explain(&v.order_id, &snapshot, kv.as_ref()).await);
        }
        for i in 0..self.services.len() {
            if self.services[i].exited_on_its_own() {
                result.violations.push(Violation {
                    invariant: "service exited on its own".into(),
                    order_id: String::new(),
                    detail: format!(
                        "{}:\n{}",
                        self.services[i].label(),
                        self.service_log_tail(i, 30)
                    ),
                });
            }
        }
        result.print();
        // Stop the services before the broker and the simulators go away.
        for s in &mut self.services {
            s.kill();
        }
        result
    }

    fn all_final(&self) -> bool {
        self.orders.iter().all(|o| {
            matches!(
                self.sf_state(&o.id).0.as_deref(),
                Some("Activated" | "Failed")
            )
        })
    }

    /// `(Activation_Status__c, Activation_Error_Code__c)` of an order.
    fn sf_state(&self, id: &str) -> (Option<String>, Option<String>) {
        let order = self.sf.state().order(id).unwrap_or_default();
        let field = |name: &str| order.get(name).and_then(Value::as_str).map(str::to_owned);
        (
            field("Activation_Status__c"),
            field("Activation_Error_Code__c"),
        )
    }

    fn check(
        &self,
        approvals: &[Approval],
        snapshot: &Snapshot,
        first: &BTreeMap<String, (Option<String>, Option<String>)>,
        result: &mut ChaosResult,
    ) {
        let mut violation = |invariant: &str, order_id: &str, detail: String| {
            result.violations.push(Violation {
                invariant: invariant.to_owned(),
                order_id: order_id.to_owned(),
                detail,
            });
        };
        let whmcs_orders = self.whmcs.state().orders();
        let mut counts = (0usize, BTreeMap::<String, usize>::new(), 0, 0, 0);
        for order in &self.orders {
            let sf = self.sf.state().order(&order.id).unwrap_or_default();
            let field = |name: &str| sf.get(name).and_then(Value::as_str).map(str::to_owned);
            let status = field("Activation_Status__c");
            let code = field("Activation_Error_Code__c");
            let whmcs_id = field("WHMCS_Order_ID__c");
            let marker = format!("[sf-order:{}]", order.id);
            let in_whmcs: Vec<&whmcs_sim::state::Order> = whmcs_orders
                .iter()
                .filter(|o| o.notes.contains(&marker))
                .collect();
            match status.as_deref() {
                Some("Activated") => {
                    counts.0 += 1;
                    if order.category.expected_code().is_some() {
                        violation(
                            "wrong outcome",
                            &order.id,
                            format!(
                                "{:?} order is Activated (expected Failed {:?})",
                                order.category,
                                order.category.expected_code()
                            ),
                        );
                    }
                    let matches = in_whmcs
                        .iter()
                        .any(|o| whmcs_id.as_deref() == Some(o.id.to_string().as_str()));
                    if !matches {
                        violation(
                            "activated without its WHMCS order",
                            &order.id,
                            format!(
                                "WHMCS_Order_ID__c {whmcs_id:?}, WHMCS orders with the marker: {:?}",
                                in_whmcs.iter().map(|o| o.id).collect::<Vec<_>>()
                            ),
                        );
                    }
                }
                Some("Failed") => {
                    let code = code.clone().unwrap_or_default();
                    *counts.1.entry(code.clone()).or_default() += 1;
                    if !is_contract_code(&code) {
                        violation(
                            "failed without a contract code",
                            &order.id,
                            format!("Activation_Error_Code__c = {code:?}"),
                        );
                    }
                }
                other => {
                    counts.4 += 1;
                    violation(
                        "stuck (not final)",
                        &order.id,
                        format!("Activation_Status__c = {other:?}"),
                    );
                }
            }
            if in_whmcs.len() > 1 {
                counts.2 += in_whmcs.len() - 1;
                violation(
                    "at most one WHMCS order per Salesforce Order",
                    &order.id,
                    format!(
                        "{} WHMCS orders carry {marker}: {:?}",
                        in_whmcs.len(),
                        in_whmcs
                            .iter()
                            .map(|o| (o.id, o.status.clone()))
                            .collect::<Vec<_>>()
                    ),
                );
            }
            let before = first.get(&order.id).cloned().unwrap_or_default();
            if before.0.is_some() && before != (status.clone(), code.clone()) {
                violation(
                    "final state changed after convergence",
                    &order.id,
                    format!("{before:?} → {:?}", (status, code)),
                );
            }
        }
        // Rule 1 and 5: each approved event is one requests-stream message (or one dead letter).
        for approval in approvals {
            let stored = snapshot
                .requests
                .get(&approval.event_id)
                .map_or(0, Vec::len);
            let dead = snapshot.deadletters_of(&approval.event_id);
            if stored > 1 {
                counts.2 += stored - 1;
                violation(
                    "each event stored once in the requests stream",
                    &approval.order_id,
                    format!("event {} stored {stored} times", approval.event_id),
                );
            }
            if stored == 0 {
                match dead.len() {
                    0 => {
                        counts.3 += 1;
                        violation(
                            "every event is a requests-stream message or a dead letter",
                            &approval.order_id,
                            format!("event {} is in neither", approval.event_id),
                        );
                    }
                    1 => {}
                    n => {
                        counts.2 += n - 1;
                        violation(
                            "each event dead-lettered once",
                            &approval.order_id,
                            format!(
                                "event {} dead-lettered {n} times on {BRIDGE_DEADLETTER_SUBJECT} \
                                 (stream seq {dead:?})",
                                approval.event_id
                            ),
                        );
                    }
                }
            }
        }
        for (seq, why) in &snapshot.unreadable_deadletters {
            violation(
                "a dead letter is a provisioning.deadletter.v1 body",
                "",
                format!("{DEADLETTER} seq {seq} on {BRIDGE_DEADLETTER_SUBJECT}: {why}"),
            );
        }
        // Rule 6: every requests-stream message has exactly one outcome.
        for (event_id, messages) in &snapshot.requests {
            let order_id = messages
                .first()
                .map(|m| m.order_id.clone())
                .unwrap_or_default();
            match snapshot.outcomes.get(event_id).map_or(0, Vec::len) {
                0 => {
                    counts.3 += 1;
                    violation(
                        "every requests-stream message has an outcome",
                        &order_id,
                        format!(
                            "event {event_id} (stream seq {:?}) has no outcome",
                            messages.iter().map(|m| m.seq).collect::<Vec<_>>()
                        ),
                    );
                }
                1 => {}
                n => {
                    counts.2 += n - 1;
                    violation(
                        "one outcome per event",
                        &order_id,
                        format!("event {event_id} has {n} outcomes"),
                    );
                }
            }
        }
        result.activated = counts.0;
        result.failed = counts.1;
        result.duplicates = counts.2;
        result.lost = counts.3;
        result.stuck = counts.4;
    }

    /// Everything known about one order, for a violation's report.
    async fn explain(
        &self,
        order_id: &str,
        snapshot: &Snapshot,
        kv: Option<&jetstream::kv::Store>,
    ) -> String {
        if order_id.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        let category = self
            .orders
            .iter()
            .find(|o| o.id == order_id)
            .map(|o| o.category);
        let sf = self.sf.state().order(order_id).unwrap_or_default();
        let pick = |name: &str| sf.get(name).cloned().unwrap_or(Value::Null);
        let _ = write!(
            out,
            "\n    category: {category:?}\n    Salesforce: status={} code={} message={} whmcs={}",
            pick("Activation_Status__c"),
            pick("Activation_Error_Code__c"),
            pick("Activation_Error_Message__c"),
            pick("WHMCS_Order_ID__c"),
        );
        if let Some(kv) = kv {
            let entry = kv.get(format!("order.{order_id}")).await.ok().flatten();
            let _ = write!(
                out,
                "\n    journal order.{order_id}: {}",
                entry.map_or("(none)".to_owned(), |b| String::from_utf8_lossy(&b)
                    .into_owned())
            );
        }
        for (event_id, msgs) in &snapshot.requests {
            for m in msgs.iter().filter(|m| m.order_id == order_id) {
                let _ = write!(out, "\n    requests seq {} event {event_id}", m.seq);
                for o in snapshot.outcomes.get(event_id).into_iter().flatten() {
                    let _ = write!(out, "\n      outcome seq {}: {}", o.seq, o.summary);
                }
            }
        }
        let marker = format!("[sf-order:{order_id}]");
        for o in self.whmcs.state().orders() {
            if o.notes.contains(&marker) {
                let _ = write!(
                    out,
                    "\n    WHMCS order {} status {} accepted {}",
                    o.id,
                    o.status,
                    o.accept.is_some()
                );
            }
        }
        // The provisioner's log lines about the order (all incarnations), last ones first.
        let mut lines = Vec::new();
        for s in self.services.iter().filter(|s| s.kind != Kind::Bridge) {
            for (n, path) in s.logs.iter().enumerate() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                for line in text.lines().filter(|l| l.contains(order_id)) {
                    let v: Value = serde_json::from_str(line).unwrap_or_default();
                    lines.push(format!(
                        "{} {}#{}.{n} {} {} step={} code={}",
                        v["timestamp"].as_str().unwrap_or(""),
                        s.kind.name(),
                        s.replica,
                        v["level"].as_str().unwrap_or(""),
                        v["message"].as_str().unwrap_or(line),
                        v["step"],
                        v["error_code"],
                    ));
                }
            }
        }
        lines.sort();
        for line in lines.iter().rev().take(12).rev() {
            let _ = write!(out, "\n    log: {line}");
        }
        out
    }
}

/// Seeds WHMCS clients and products, Salesforce accounts and products, and `n` Orders in the
/// proportions of [`Category::WEIGHTS`].
fn seed_orders(sf: &SfSim, whmcs: &WhmcsSim, rng: &mut Rng, n: usize) -> Vec<PlannedOrder> {
    let w = whmcs.state();
    let s = sf.state();
    let good_accounts: Vec<String> = (0..4)
        .map(|i| {
            let client = w.seed_client(&format!("Client {i} Ltd"), true);
            s.seed_account(&format!("Client {i} Ltd"), Some(&client.to_string()))
        })
        .collect();
    let poor = w.seed_client("No Card Ltd", false);
    let poor_account = s.seed_account("No Card Ltd", Some(&poor.to_string()));
    let orphan_account = s.seed_account("No WHMCS client Ltd", None);
    let products: Vec<String> = [
        ("Hosting S", "monthly", "Monthly"),
        ("VPS M", "annually", "Annually"),
        ("Domain", "monthly", "Monthly"),
    ]
    .iter()
    .map(|(name, cycle, sf_cycle)| {
        let pid = w.seed_product(name, &[cycle]);
        s.seed_product(name, Some(&pid.to_string()), Some(sf_cycle))
    })
    .collect();
    let unmapped = s.seed_product("Legacy add-on", None, Some("Monthly"));
    let weekly = s.seed_product("Odd cycle", Some("1"), Some("Weekly"));
    (0..n)
        .map(|_| {
            let category = Category::ALL[rng.weighted(&Category::WEIGHTS)];
            let account = &good_accounts[rng.index(good_accounts.len())];
            let product = &products[rng.index(products.len())];
            let id = match category {
                Category::Good => s.seed_order(account, &[(product.as_str(), 1.0)]),
                Category::NoPayMethod => s.seed_order(&poor_account, &[(product.as_str(), 1.0)]),
                Category::ClientMissing => {
                    s.seed_order(&orphan_account, &[(product.as_str(), 1.0)])
                }
                Category::NoItems => s.seed_order::<&str, f64>(account, &[]),
                Category::MappingMissing => {
                    let bad = if rng.index(2) == 0 {
                        &unmapped
                    } else {
                        &weekly
                    };
                    s.seed_order(account, &[(product.as_str(), 1.0), (bad.as_str(), 1.0)])
                }
            };
            PlannedOrder { id, category }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Stream contents

struct StoredRequest {
    seq: u64,
    order_id: String,
}

struct StoredOutcome {
    seq: u64,
    summary: String,
}

#[derive(Default)]
struct Snapshot {
    /// Requests-stream messages by event id.
    requests: BTreeMap<String, Vec<StoredRequest>>,
    /// Outcomes by event id.
    outcomes: BTreeMap<String, Vec<StoredOutcome>>,
    /// sf-bridge's dead letters (subject `provisioning.deadletter.sf-bridge`), by
    /// `origin.event_id`: their stream sequences.
    deadletters: BTreeMap<String, Vec<u64>>,
    /// sf-bridge dead letters that are not a `DeadLetterV1` (sequence, why).
    unreadable_deadletters: Vec<(u64, String)>,
}

impl Snapshot {
    async fn take(js: &jetstream::Context) -> Self {
        let mut snap = Self::default();
        for (seq, body) in read_stream_json(js, REQUESTS).await {
            let event_id = body["event_id"].as_str().unwrap_or_default().to_owned();
            let order_id = body["order_id"].as_str().unwrap_or_default().to_owned();
            snap.requests
                .entry(event_id)
                .or_default()
                .push(StoredRequest { seq, order_id });
        }
        for (seq, body) in read_stream_json(js, OUTCOMES).await {
            let event_id = body["event_id"].as_str().unwrap_or_default().to_owned();
            let summary = format!(
                "{} code={} step={} whmcs={} message={}",
                body["result"].as_str().unwrap_or("?"),
                body["error_code"],
                body["step"],
                body["whmcs_order_id"],
                body["error_message"]
            );
            snap.outcomes
                .entry(event_id)
                .or_default()
                .push(StoredOutcome { seq, summary });
        }
        for m in read_stream(js, DEADLETTER).await {
            // Other services' dead letters (sf-writer's, the provisioner's) are not events
            // set aside by the bridge.
            if m.subject.as_str() != BRIDGE_DEADLETTER_SUBJECT {
                continue;
            }
            match serde_json::from_slice::<messages::DeadLetterV1>(&m.payload) {
                // One without an event id (an event Salesforce sent without one) cannot be an
                // approval's; an approval it would have stood for is reported lost.
                Ok(dead) => {
                    if let Some(event_id) = dead.origin.event_id {
                        snap.deadletters
                            .entry(event_id)
                            .or_default()
                            .push(m.sequence);
                    }
                }
                Err(e) => snap.unreadable_deadletters.push((
                    m.sequence,
                    format!("{e}: {}", String::from_utf8_lossy(&m.payload)),
                )),
            }
        }
        snap
    }

    /// Stream sequences of sf-bridge's dead letters for `event_id` (exact `origin.event_id`).
    fn deadletters_of(&self, event_id: &str) -> &[u64] {
        self.deadletters.get(event_id).map_or(&[], Vec::as_slice)
    }

    /// Every approved event is stored (or dead-lettered) and every stored event has an outcome.
    fn complete(&self, approvals: &[Approval]) -> bool {
        let all_stored = approvals.iter().all(|a| {
            self.requests.contains_key(&a.event_id) || !self.deadletters_of(&a.event_id).is_empty()
        });
        all_stored && self.requests.keys().all(|e| self.outcomes.contains_key(e))
    }
}

/// Every message of a stream as `(sequence, JSON body)`; see [`read_stream`].
async fn read_stream_json(js: &jetstream::Context, name: &str) -> Vec<(u64, Value)> {
    read_stream(js, name)
        .await
        .into_iter()
        .map(|m| {
            (
                m.sequence,
                serde_json::from_slice(&m.payload).unwrap_or_default(),
            )
        })
        .collect()
}

/// Every message of a stream, complete: the read is retried (a leader election, a message get
/// that failed) until it returns as many messages as the stream info counts between its first
/// and last sequence (sequences reported missing are deleted ones), and panics when it is still
/// incomplete after [`STREAM_READ_DEADLINE`]. A partial read would report events as lost or
/// hide duplicates.
async fn read_stream(js: &jetstream::Context, name: &str) -> Vec<StreamMessage> {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let problem = match read_stream_once(js, name).await {
            Ok(messages) => return messages,
            Err(problem) => problem,
        };
        assert!(
            started.elapsed() < STREAM_READ_DEADLINE,
            "cannot read stream {name} completely: still incomplete after {attempts} attempts \
             over {:.0} s; last attempt: {problem}",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One read of every message of a stream; `Err` says why it is not complete.
async fn read_stream_once(
    js: &jetstream::Context,
    name: &str,
) -> Result<Vec<StreamMessage>, String> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| format!("stream info: {e}"))?;
    let state = stream
        .info()
        .await
        .map_err(|e| format!("stream info: {e}"))?
        .state
        .clone();
    let (first, last) = (state.first_sequence.max(1), state.last_sequence);
    let mut out = Vec::with_capacity(usize::try_from(state.messages).unwrap_or(0));
    let mut missing = 0u64;
    for seq in first..=last {
        match stream.get_raw_message(seq).await {
            Ok(m) => out.push(m),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => missing += 1,
            Err(e) => return Err(format!("message {seq} of {first}..={last}: {e}")),
        }
    }
    if out.len() as u64 != state.messages {
        return Err(format!(
            "read {} messages of {first}..={last}, the stream info counts {} ({missing} \
             sequences missing, {:?} deleted per the info)",
            out.len(),
            state.messages,
            state.deleted_count
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug)]
pub struct Violation {
    pub invariant: String,
    pub order_id: String,
    pub detail: String,
}

#[derive(Debug)]
pub struct ChaosResult {
    pub scenario: String,
    pub broker: String,
    pub seed: u64,
    pub faults: Vec<String>,
    pub orders: usize,
    pub activated: usize,
    pub failed: BTreeMap<String, usize>,
    pub duplicates: usize,
    pub lost: usize,
    pub stuck: usize,
    pub recovered_after: Option<Duration>,
    pub violations: Vec<Violation>,
}

impl ChaosResult {
    pub const HEADER: &'static str = "| scenario | nats | seed | faults | orders | activated | failed by code | duplicates | lost | stuck | recovered after | violations |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

    pub fn row(&self) -> String {
        let failed = self
            .failed
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let recovered = self
            .recovered_after
            .map_or("not within the bound".to_owned(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            });
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.broker,
            self.seed,
            self.faults.len(),
            self.orders,
            self.activated,
            failed,
            self.duplicates,
            self.lost,
            self.stuck,
            recovered,
            self.violations.len()
        )
    }

    pub fn print(&self) {
        let mut text = format!("\n{}\n{}\n", Self::HEADER, self.row());
        let _ = write!(text, "faults injected ({}):", self.faults.len());
        for f in &self.faults {
            let _ = write!(text, "\n  - {f}");
        }
        const SHOWN: usize = 15;
        for v in self.violations.iter().take(SHOWN) {
            let _ = write!(
                text,
                "\nVIOLATION [{}] order {}: {}",
                v.invariant, v.order_id, v.detail
            );
        }
        if self.violations.len() > SHOWN {
            let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &self.violations {
                *by_kind.entry(v.invariant.as_str()).or_default() += 1;
            }
            let _ = write!(
                text,
                "\n... {} violations in all: {by_kind:?}",
                self.violations.len()
            );
        }
        eprintln!("{text}");
        if let Ok(path) = std::env::var("CHAOS_RESULTS") {
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                use std::io::Write as _;
                let _ = writeln!(file, "{}", self.row());
            }
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(format!("{path}.details"))
            {
                use std::io::Write as _;
                let _ = writeln!(file, "{text}\n");
            }
        }
    }

    /// Fails the test with the row and every violation.
    pub fn assert_ok(&self) {
        assert!(
            self.violations.is_empty(),
            "chaos {} (seed {}): {} invariant violations (see above)\n{}",
            self.scenario,
            self.seed,
            self.violations.len(),
            self.row()
        );
    }
}
