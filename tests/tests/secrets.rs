//! Secrets never leave through a side door (docs/security.md, "Secrets").
//!
//! The whole pipeline runs as processes (sf-bridge, the provisioner, sf-writer: the binaries,
//! against a real nats-server that requires authentication and the simulators in this process)
//! with distinctive secret values: the WHMCS secret and access key, a wrong WHMCS secret (a
//! provisioner that authenticates badly), the Salesforce RSA private key, the JWT assertions
//! signed with it, the access tokens sf-sim issues, and the NATS token or password. Orders that
//! provision, fail for business reasons, fail WHMCS authentication, hit a WHMCS 403 from a
//! proxy, a poison event, and Salesforce sessions revoked mid-stream with the next token request
//! refused all flow through, so the error paths log too. Then every value is searched for in
//! every log line of every service, every span (attributes, events, links, status) exported
//! over OTLP, every `/metrics`, `/health`, `/health/sf-events` and `/livez` answer, every
//! message of every stream (dead letters, outcomes, updates, requests, KV entries) and every
//! field written back to the Salesforce Orders.
//!
//! Each search is shown to work: the same search finds the order id in the logs, spans,
//! streams and Salesforce records, and a known metric name and health field in the HTTP
//! answers, so an empty or unread source cannot pass as "no secret found".
//!
//! Two runs: `RUST_LOG=info` with JSON logs and NATS token auth, `RUST_LOG=debug` (every
//! crate, dependencies included) with the pretty format and NATS user/password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sf_sim::{Faults, PoisonKind, SfSim};
use testkit::nats::{free_port, NatsServer};
use testkit::otlp::Collector;
use testkit::process::ChildProcess;
use tokio_stream::StreamExt as _;
use whmcs_sim::{ActionFaults, WhmcsSim, WhmcsSimConfig};

mod support;

const WAIT: Duration = Duration::from_secs(90);

/// Distinctive values: nothing else in the pipeline contains them, and they hold only
/// characters that JSON, URL-encoding and the pretty log format leave as they are, so a leak
/// reads as the value itself.
const WHMCS_SECRET: &str = "wh-secret-9f3c71d2e8b4a6";
const WHMCS_ACCESS_KEY: &str = "wh-access-5e8a2c9f17d3b0";
const WHMCS_WRONG_SECRET: &str = "wh-wrong-secret-c4d18e2b7a";
const NATS_TOKEN: &str = "nats-token-7b2f9e4c1a6d83";
const STATUS_API_TOKEN: &str = "status-token-2c7e9a41f8d35b";
const STATUS_API_WRONG_TOKEN: &str = "status-wrong-token-81d4f0c6";
const NATS_USER: &str = "pipeline";
const NATS_PASSWORD: &str = "nats-pass-3d8e6f1b9c2a47";

/// Both runs start six processes and the simulators; one at a time on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy)]
enum NatsAuth {
    Token,
    UserPassword,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    log_level: &'static str,
    log_format: &'static str,
    nats: NatsAuth,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_spans_metrics_health_or_messages_at_info() {
    run_alone(Run {
        log_level: "info",
        log_format: "json",
        nats: NatsAuth::Token,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_spans_metrics_health_or_messages_at_debug() {
    run_alone(Run {
        log_level: "debug",
        log_format: "pretty",
        nats: NatsAuth::UserPassword,
    })
    .await;
}

/// One run at a time (see [`SERIAL`]).
async fn run_alone(settings: Run) {
    let _serial = SERIAL.lock().await;
    Box::pin(run(settings)).await;
}

/// One service process and where its HTTP endpoints are.
struct Service {
    name: &'static str,
    http_port: u16,
    process: ChildProcess,
}

impl Service {
    fn spawn(
        name: &'static str,
        http_port: u16,
        binary: &std::path::Path,
        env: &HashMap<String, String>,
    ) -> Service {
        Service {
            name,
            http_port,
            process: ChildProcess::spawn(binary.to_str().unwrap(), env),
        }
    }
}

/// Everything a secret could leak into, as (where, text).
#[derive(Default)]
struct Haystacks(Vec<(String, String)>);

impl Haystacks {
    fn add(&mut self, source: impl Into<String>, text: impl Into<String>) {
        self.0.push((source.into(), text.into()));
    }

    /// The sources whose text contains `needle`.
    fn find(&self, needle: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .map(|(source, _)| source.as_str())
            .collect()
    }

    /// Whether some source whose name starts with `prefix` contains `needle`: the proof that
    /// a kind of source was read and is searchable.
    fn found_in(&self, prefix: &str, needle: &str) -> bool {
        self.find(needle).iter().any(|s| s.starts_with(prefix))
    }

    fn count(&self, prefix: &str) -> usize {
        self.0.iter().filter(|(s, _)| s.starts_with(prefix)).count()
    }
}

struct Stack {
    run: Run,
    nats: NatsServer,
    sf: SfSim,
    whmcs: WhmcsSim,
    collector: Collector,
}

impl Stack {
    fn env(
        &self,
        service: &str,
        http_port: u16,
        own: Vec<(&'static str, String)>,
    ) -> HashMap<String, String> {
        let mut env = testkit::service::base_env(self.nats.url(), &self.sf);
        env.push(("HTTP_ADDR", format!("127.0.0.1:{http_port}")));
        env.extend(testkit::stack::otlp_export(
            self.collector.endpoint(),
            service,
        ));
        env.extend([
            ("SF_HTTP_TIMEOUT_SECS", "5".to_owned()),
            ("LOG_FORMAT", self.run.log_format.to_owned()),
            ("RUST_LOG", self.run.log_level.to_owned()),
        ]);
        match self.run.nats {
            NatsAuth::Token => env.push(("NATS_TOKEN", NATS_TOKEN.to_owned())),
            NatsAuth::UserPassword => env.extend([
                ("NATS_USER", NATS_USER.to_owned()),
                ("NATS_PASSWORD", NATS_PASSWORD.to_owned()),
            ]),
        }
        env.extend(own);
        // Later pairs win: the fixed HTTP port over base_env's port 0, a service's own values.
        testkit::stack::env(env)
    }

    fn provisioner_env(&self, http_port: u16, secret: &str) -> HashMap<String, String> {
        let mut own = testkit::sim::whmcs_env(&self.whmcs);
        own.extend([
            ("WHMCS_API_SECRET", secret.to_owned()),
            ("WHMCS_API_ACCESS_KEY", WHMCS_ACCESS_KEY.to_owned()),
            ("STATUS_API_TOKEN", STATUS_API_TOKEN.to_owned()),
            ("WHMCS_TIMEOUT_SECS", "5".to_owned()),
            ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
        ]);
        self.env("provisioner", http_port, own)
    }

    async fn nats_client(&self) -> async_nats::Client {
        let options = match self.run.nats {
            NatsAuth::Token => async_nats::ConnectOptions::with_token(NATS_TOKEN.into()),
            NatsAuth::UserPassword => async_nats::ConnectOptions::with_user_and_password(
                NATS_USER.into(),
                NATS_PASSWORD.into(),
            ),
        };
        options
            .connect(self.nats.url())
            .await
            .expect("connect to the test nats-server with credentials")
    }

    fn status_of(&self, order_id: &str) -> Option<String> {
        support::status_of(&self.sf, order_id)
    }

    /// A provisionable order: WHMCS client with a pay method, a mapped product.
    fn seed_good_order(&self, name: &str) -> String {
        support::seed_good_order(&self.sf, &self.whmcs, name)
    }

    /// Fails at `mapping` (`CLIENT_MISSING`): the Account has no WHMCS client.
    fn seed_client_missing_order(&self) -> String {
        support::seed_client_missing_order(&self.sf)
    }

    /// Fails at `payment_method` (409): the WHMCS client has no pay method.
    fn seed_no_pay_method_order(&self) -> String {
        let client = self.whmcs.state().seed_client("No Card Ltd", false);
        let pid = self.whmcs.state().seed_product("Hosting M", &["monthly"]);
        let sf = self.sf.state();
        let account = sf.seed_account("No Card Ltd", Some(&client.to_string()));
        let product = sf.seed_product("Hosting M", Some(&pid.to_string()), Some("Monthly"));
        sf.seed_order(&account, &[(product, 1)])
    }
}

async fn run(run: Run) {
    let started = Instant::now();
    let binaries = testkit::process::workspace_binaries(&["sf-bridge", "provisioner", "sf-writer"]);
    let keys = testkit::keys::test_keys();
    let nats_args: Vec<String> = match run.nats {
        NatsAuth::Token => vec!["--auth".into(), NATS_TOKEN.into()],
        NatsAuth::UserPassword => vec![
            "--user".into(),
            NATS_USER.into(),
            "--pass".into(),
            NATS_PASSWORD.into(),
        ],
    };
    let whmcs_config = WhmcsSimConfig {
        secret: WHMCS_SECRET.to_owned(),
        access_key: Some(WHMCS_ACCESS_KEY.to_owned()),
        ..WhmcsSimConfig::for_tests()
    };
    let nats = NatsServer::start_with_args(nats_args).await;
    let sims = support::Simulators::start_with(whmcs_config).await;
    let org_id = sims.config.org_id.clone();
    let stack = Stack {
        run,
        nats,
        sf: sims.sf,
        whmcs: sims.whmcs,
        collector: Collector::start().await.expect("collector"),
    };
    // The server really requires the credentials: a plain client is refused.
    assert!(
        async_nats::connect(stack.nats.url()).await.is_err(),
        "nats-server accepts clients without credentials"
    );

    let mut haystacks = Haystacks::default();
    let bridge_port = free_port();
    let provisioner_port = free_port();
    let writer_port = free_port();
    let mut services = vec![
        Service::spawn(
            "sf-bridge",
            bridge_port,
            &binaries[0],
            &stack.env(
                "sf-bridge",
                bridge_port,
                testkit::sim::pubsub_env(&stack.sf),
            ),
        ),
        // First a provisioner with the wrong WHMCS secret: its job fails authentication.
        Service::spawn(
            "provisioner-wrong-secret",
            provisioner_port,
            &binaries[1],
            &stack.provisioner_env(provisioner_port, WHMCS_WRONG_SECRET),
        ),
        Service::spawn(
            "sf-writer",
            writer_port,
            &binaries[2],
            &stack.env(
                "sf-writer",
                writer_port,
                vec![("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned())],
            ),
        ),
    ];
    let mut finished: Vec<Service> = Vec::new();

    // Phase 1: a WHMCS authentication failure (wrong secret, right access key).
    let auth_failed = stack.seed_good_order("Wrong Secret Ltd");
    stack
        .sf
        .state()
        .approve_order(&auth_failed)
        .expect("approve");
    wait_final(&stack, &mut services, &mut haystacks, &[&auth_failed]).await;
    assert_eq!(
        stack.status_of(&auth_failed).as_deref(),
        Some("Failed"),
        "a provisioner with the wrong WHMCS secret cannot provision"
    );
    assert!(
        stack.whmcs.state().stats().auth_failures > 0,
        "whmcs-sim saw the failed authentication"
    );
    scrape(&services, &mut haystacks, "after WHMCS auth failure", true).await;
    let mut wrong = services.remove(1);
    assert!(
        wrong.process.terminate().is_some_and(|s| s.success()),
        "the wrong-secret provisioner stops cleanly"
    );
    finished.push(wrong);

    // Phase 2: the right secret; provisioned, business failures, a proxy's 403, a poison event.
    let provisioner_port = free_port();
    services.insert(
        1,
        Service::spawn(
            "provisioner",
            provisioner_port,
            &binaries[1],
            &stack.provisioner_env(provisioner_port, WHMCS_SECRET),
        ),
    );
    let good = stack.seed_good_order("Acme Ltd");
    let proxy_403 = stack.seed_good_order("Behind A Proxy Ltd");
    let client_missing = stack.seed_client_missing_order();
    let no_pay_method = stack.seed_no_pay_method_order();
    stack
        .whmcs
        .state()
        .set_faults("AddOrder", ActionFaults::http_status(403, 1));
    for order in [&good, &proxy_403, &client_missing, &no_pay_method] {
        stack.sf.state().approve_order(order).expect("approve");
    }
    stack
        .sf
        .state()
        .publish_poison(PoisonKind::UndecodableAvro)
        .expect("poison event");
    wait_final(
        &stack,
        &mut services,
        &mut haystacks,
        &[&good, &proxy_403, &client_missing, &no_pay_method],
    )
    .await;
    assert_eq!(stack.status_of(&client_missing).as_deref(), Some("Failed"));
    assert_eq!(stack.status_of(&no_pay_method).as_deref(), Some("Failed"));
    // The status API, asked with the token, with a wrong one and with none (debug logging
    // shows every request the listener handles).
    for (token, expected) in [
        (Some(STATUS_API_TOKEN), "HTTP/1.1 200"),
        (Some(STATUS_API_WRONG_TOKEN), "HTTP/1.1 401"),
        (None, "HTTP/1.1 401"),
    ] {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        let answer = testkit::stack::http_get_with(
            provisioner_port,
            &format!("/orders/{good}?wait=1"),
            &headers,
            WAIT,
        )
        .await
        .expect("a status answer");
        assert!(answer.starts_with(expected), "{token:?}: {answer}");
        haystacks.add("status API answer", answer);
    }
    assert!(
        stack.whmcs.state().stats().faults_fired > 0,
        "the proxy 403 was answered"
    );
    scrape(&services, &mut haystacks, "after business failures", true).await;

    // Phase 3: Salesforce authentication failures. The session is revoked mid-stream
    // (UNAUTHENTICATED), every token is revoked (REST answers 401), and the next token requests
    // are refused (invalid_grant); the services sign new assertions and recover.
    let token_failures_before = stack.sf.state().stats().token_failures;
    stack.sf.state().update_faults(|f: &mut Faults| {
        f.pubsub_unauthenticated_after_events = Some(1);
        f.token_status = Some((400, 2));
    });
    let after_revocation = stack.seed_good_order("Revoked Session Ltd");
    stack
        .sf
        .state()
        .approve_order(&after_revocation)
        .expect("approve");
    wait_final(&stack, &mut services, &mut haystacks, &[&after_revocation]).await;
    let later = stack.seed_good_order("Later Ltd");
    stack.sf.state().approve_order(&later).expect("approve");
    wait_final(&stack, &mut services, &mut haystacks, &[&later]).await;
    assert!(
        stack.sf.state().stats().token_failures > token_failures_before,
        "a token request was refused"
    );
    assert!(
        stack
            .sf
            .state()
            .faults()
            .pubsub_unauthenticated_after_events
            .is_none(),
        "the Subscribe stream was ended UNAUTHENTICATED (the one-shot fault fired)"
    );
    scrape(
        &services,
        &mut haystacks,
        "after Salesforce auth failures",
        true,
    )
    .await;

    // Stop everything (SIGTERM flushes spans), then collect what is left to read.
    for service in &mut services {
        let status = service.process.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly: {status:?}\n{}",
            service.name,
            service.process.log()
        );
    }
    finished.append(&mut services);
    for service in &finished {
        let log = service.process.log();
        assert!(
            log.lines().count() > 3,
            "{} logged almost nothing:\n{log}",
            service.name
        );
        for (n, line) in log.lines().enumerate() {
            haystacks.add(format!("log {} line {}", service.name, n + 1), line);
        }
    }
    for span in stack.collector.spans() {
        haystacks.add(
            format!("span {} {:?}", span.service, span.name()),
            format!("{:?}", span.span),
        );
    }
    read_streams(&stack, &mut haystacks).await;
    let all_orders = [
        &auth_failed,
        &good,
        &proxy_403,
        &client_missing,
        &no_pay_method,
        &after_revocation,
        &later,
    ];
    for order in all_orders {
        let record = stack.sf.state().order(order).expect("order record");
        haystacks.add(format!("salesforce order {order}"), record.to_string());
    }

    // Every kind of source was read and the search finds what is known to be in it.
    for (prefix, needle) in [
        ("log provisioner", good.as_str()),
        ("log provisioner-wrong-secret", auth_failed.as_str()),
        // The failures were logged (their error text is searched with the rest).
        ("log provisioner-wrong-secret", "Authentication Failed"),
        ("log ", "invalid_grant"),
        // Every service logs the org id when it obtains a token.
        ("log provisioner", org_id.as_str()),
        ("log sf-bridge", org_id.as_str()),
        ("log sf-writer", org_id.as_str()),
        ("span ", good.as_str()),
        ("stream PROVISIONING_REQUESTS", good.as_str()),
        ("stream PROVISIONING_OUTCOMES", good.as_str()),
        ("stream SF_ORDER_UPDATES", good.as_str()),
        (
            "stream PROVISIONING_DEADLETTER",
            "provisioning.deadletter.sf-bridge",
        ),
        ("salesforce order", good.as_str()),
        ("http provisioner /metrics", "whmcs_api_calls_total"),
        ("http sf-bridge /health/sf-events", "state"),
        // The revoked session's error reached the bridge's status report: error text is
        // searched too.
        ("http sf-bridge /health/sf-events", "Unauthenticated"),
        ("http sf-writer /health", "status"),
        ("http sf-bridge /livez", "HTTP/1.1 200"),
    ] {
        assert!(
            haystacks.found_in(prefix, needle),
            "the search does not find {needle:?} in {prefix:?} (sources: {})",
            source_summary(&haystacks)
        );
    }
    let wrong_message = stack
        .sf
        .state()
        .order(&auth_failed)
        .and_then(|o| o.get("Activation_Error_Message__c").cloned())
        .unwrap_or_default()
        .to_string();
    assert!(
        wrong_message.contains("Authentication Failed"),
        "WHMCS's own message reaches Salesforce: {wrong_message}"
    );

    // The secrets, and where each was really used: the test must know the values it searches.
    let sf_state = stack.sf.state();
    let tokens = sf_state.issued_tokens();
    let assertions = sf_state.received_assertions();
    assert!(
        tokens.len() >= 4,
        "tokens issued: three services, then again after the revocation: {}",
        tokens.len()
    );
    assert!(assertions.len() > tokens.len(), "refused assertions too");
    let mut needles: Vec<(String, String)> = vec![
        ("WHMCS secret".into(), WHMCS_SECRET.into()),
        ("WHMCS secret (tail)".into(), WHMCS_SECRET[10..].into()),
        ("WHMCS access key".into(), WHMCS_ACCESS_KEY.into()),
        (
            "WHMCS access key (tail)".into(),
            WHMCS_ACCESS_KEY[10..].into(),
        ),
        ("status API token".into(), STATUS_API_TOKEN.into()),
        (
            "status API token (tail)".into(),
            STATUS_API_TOKEN[13..].into(),
        ),
        (
            "wrong status API token".into(),
            STATUS_API_WRONG_TOKEN.into(),
        ),
        ("wrong WHMCS secret".into(), WHMCS_WRONG_SECRET.into()),
        (
            "wrong WHMCS secret (tail)".into(),
            WHMCS_WRONG_SECRET[16..].into(),
        ),
    ];
    match run.nats {
        NatsAuth::Token => {
            needles.push(("NATS token".into(), NATS_TOKEN.into()));
            needles.push(("NATS token (tail)".into(), NATS_TOKEN[11..].into()));
        }
        NatsAuth::UserPassword => {
            needles.push(("NATS password".into(), NATS_PASSWORD.into()));
            needles.push(("NATS password (tail)".into(), NATS_PASSWORD[10..].into()));
        }
    }
    let pem_lines: Vec<&str> = keys
        .private_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .collect();
    assert!(pem_lines.len() > 20, "a 2048-bit key has ~26 PEM lines");
    for (n, line) in pem_lines.iter().enumerate() {
        needles.push((
            format!("private key PEM line {}", n + 1),
            (*line).to_owned(),
        ));
    }
    for (n, token) in tokens.iter().enumerate() {
        needles.push((format!("access token {}", n + 1), token.clone()));
        // The random part alone: a token cut, masked at the start or split over lines.
        let random = token.split_once("!AQ").map_or(token.as_str(), |(_, r)| r);
        needles.push((
            format!("access token {} (random part)", n + 1),
            random[..24.min(random.len())].to_owned(),
        ));
    }
    for (n, assertion) in assertions.iter().enumerate() {
        // Header and claims are public (base64 of JSON everyone can read); the signature is
        // what makes the assertion a credential.
        let signature = assertion.rsplit('.').next().unwrap_or(assertion);
        assert!(signature.len() > 300, "an RS256 signature: {signature}");
        needles.push((
            format!("JWT assertion {} signature", n + 1),
            signature.to_owned(),
        ));
        needles.push((
            format!("JWT assertion {} signature (start)", n + 1),
            signature[..32].to_owned(),
        ));
    }

    let mut leaks = Vec::new();
    for (what, value) in &needles {
        for source in haystacks.find(value) {
            leaks.push(format!("{what} in {source}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets leaked ({} places):\n{}\n\nfirst leaking text:\n{}",
        leaks.len(),
        leaks
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        first_leak_text(&haystacks, &needles)
    );
    eprintln!(
        "{:?}: {} secret values searched in {} texts ({} log lines, {} spans, {} stream \
         messages, {} HTTP answers) after {:?}",
        run,
        needles.len(),
        haystacks.0.len(),
        haystacks.count("log "),
        haystacks.count("span "),
        haystacks.count("stream "),
        haystacks.count("http "),
        started.elapsed()
    );
}

fn source_summary(haystacks: &Haystacks) -> String {
    let mut kinds: Vec<String> = haystacks
        .0
        .iter()
        .map(|(s, _)| s.split(" line ").next().unwrap_or(s).to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds.join(", ")
}

fn first_leak_text(haystacks: &Haystacks, needles: &[(String, String)]) -> String {
    needles
        .iter()
        .find_map(|(_, value)| {
            haystacks
                .0
                .iter()
                .find(|(_, text)| text.contains(value.as_str()))
                .map(|(source, text)| {
                    format!("{source}: {}", text.chars().take(2000).collect::<String>())
                })
        })
        .unwrap_or_default()
}

/// Waits until every order in `orders` is final in Salesforce (`Activated` or `Failed`), failing
/// with the services' logs when one exits or the time is up. The HTTP endpoints are read on
/// every poll, so `/health` is also seen while a failure is being reported, not only after.
async fn wait_final(
    stack: &Stack,
    services: &mut [Service],
    haystacks: &mut Haystacks,
    orders: &[&String],
) {
    let deadline = Instant::now() + WAIT;
    let mut polls = 0u32;
    loop {
        polls += 1;
        scrape(services, haystacks, &format!("poll {polls}"), false).await;
        let done = orders
            .iter()
            .all(|o| matches!(stack.status_of(o).as_deref(), Some("Activated" | "Failed")));
        if done {
            return;
        }
        let exited: Vec<&str> = services
            .iter_mut()
            .filter_map(|s| s.process.has_exited().then_some(s.name))
            .collect();
        if !exited.is_empty() || Instant::now() > deadline {
            let statuses: Vec<_> = orders.iter().map(|o| (o, stack.status_of(o))).collect();
            let logs: Vec<String> = services
                .iter()
                .map(|s| format!("== {}\n{}", s.name, tail(&s.process.log(), 60)))
                .collect();
            panic!(
                "orders not final (exited: {exited:?}): {statuses:?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every HTTP answer of every service, whole (status line, headers and body), whatever its
/// status: a `/health` that reports a failure is where an error message would show.
/// `required`: every endpoint must answer (between phases); while polling, a service that is
/// still starting may not listen yet.
async fn scrape(services: &[Service], haystacks: &mut Haystacks, when: &str, required: bool) {
    for service in services {
        let mut paths = vec!["/metrics", "/health", "/livez"];
        if service.name == "sf-bridge" {
            paths.push("/health/sf-events");
        }
        for path in paths {
            match testkit::stack::http_get(service.http_port, path, Duration::from_secs(5)).await {
                Some(answer) => {
                    haystacks.add(format!("http {} {path} ({when})", service.name), answer);
                }
                None => assert!(!required, "{} answers {path}", service.name),
            }
        }
    }
}

/// Every message still stored in every stream (the pipeline's streams and the KV buckets'):
/// subject, headers and payload.
async fn read_streams(stack: &Stack, haystacks: &mut Haystacks) {
    let client = stack.nats_client().await;
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = names.next().await {
        streams.push(name.expect("stream name"));
    }
    assert!(streams.len() >= 4, "the pipeline's streams: {streams:?}");
    for name in streams {
        let stream = js.get_stream(&name).await.expect("stream");
        let info = stream.get_info().await.expect("stream info");
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if info.state.messages == 0 {
            continue;
        }
        for sequence in first..=last {
            // A sequence may be gone (a KV key's older revision, a deleted message).
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let headers: Vec<String> = message
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v:?}"))
                .collect();
            haystacks.add(
                format!("stream {name} #{sequence}"),
                format!(
                    "{}\n{}\n{}",
                    message.subject,
                    headers.join("\n"),
                    String::from_utf8_lossy(&message.payload)
                ),
            );
        }
    }
}
