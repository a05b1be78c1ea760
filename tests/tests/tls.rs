//! One order end to end over TLS, as against Salesforce: sf-sim serves its login, REST and
//! Pub/Sub listeners with a certificate signed by a CA it generates, and sf-bridge, the
//! provisioner and sf-writer (the binaries, against a real nats-server) trust that CA only
//! through `SF_CA_FILE`. First the negative: a bridge without `SF_CA_FILE` must refuse sf-sim's
//! certificate (its `/health` names the TLS failure and sf-sim issues no token), so the CA file
//! is what makes the rest work. Then the order flows sf-sim -> sf-bridge -> provisioner ->
//! sf-writer -> sf-sim and ends `Activated` with its WHMCS order id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

mod support;

use sf_sim::{SfSim, SimConfig};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

const WAIT: Duration = Duration::from_secs(60);

struct Stack {
    nats: NatsServer,
    sf: SfSim,
    whmcs: WhmcsSim,
    login: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
    ca_file: String,
}

impl Stack {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let keys = testkit::keys::test_keys();
        let config = SimConfig::for_tests(keys.public_pem.clone()).with_generated_tls();
        let sf = SfSim::start(config.clone()).await.expect("sf-sim");
        for url in [sf.login_url(), sf.instance_url(), sf.pubsub_url()] {
            assert!(url.starts_with("https://"), "{url}");
        }
        let whmcs = WhmcsSim::start(WhmcsSimConfig::for_tests())
            .await
            .expect("whmcs-sim");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_path = dir.path().join("sf-sim-ca.pem");
        std::fs::write(&ca_path, sf.ca_pem().expect("a generated CA")).expect("write CA");
        let login =
            testkit::stack::salesforce_login(sf.login_url(), &config.client_id, &config.username);
        Self {
            nats,
            sf,
            whmcs,
            login,
            ca_file: ca_path.display().to_string(),
            _dir: dir,
        }
    }

    /// A service's environment; `trust` adds `SF_CA_FILE`.
    fn env(&self, trust: bool, extra: &[(&str, String)]) -> HashMap<String, String> {
        let mut env = vec![
            ("NATS_URL", self.nats.url()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        env.extend(self.login.iter().cloned());
        if trust {
            env.push(("SF_CA_FILE", self.ca_file.clone()));
        }
        let extra = extra.iter().map(|(k, v)| (*k, v.clone()));
        testkit::stack::env(env.into_iter().chain(extra))
    }

    fn bridge_env(&self, trust: bool) -> HashMap<String, String> {
        self.env(
            trust,
            &[
                ("SF_PUBSUB_ENDPOINT", self.sf.pubsub_url()),
                ("SF_EVENTS_REPLAY", "ALL".to_owned()),
            ],
        )
    }
}

/// The `salesforce` integration of the bridge's `/health` while it is down: its reason.
async fn salesforce_down_reason(port: u16) -> Option<String> {
    let answer = testkit::stack::http_get(port, "/health", Duration::from_secs(2)).await?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    let salesforce = &body["integrations"]["salesforce"];
    (salesforce["status"] == "down").then(|| {
        assert!(
            head.starts_with("HTTP/1.1 503"),
            "a down integration is not ok: {answer}"
        );
        salesforce["reason"].as_str().unwrap_or_default().to_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_over_tls_with_sf_ca_file_and_none_without() {
    let binaries = testkit::process::workspace_binaries(&["sf-bridge", "provisioner", "sf-writer"]);
    let bin = |i: usize| binaries[i].to_str().unwrap().to_owned();
    let stack = Stack::start().await;

    // Without SF_CA_FILE the bridge knows only the system's roots, which do not hold sf-sim's
    // CA: the token request's handshake fails, and says so.
    let mut untrusting = ChildProcess::spawn(&bin(0), &stack.bridge_env(false));
    let port = testkit::process::wait_http_port("sf-bridge", &mut untrusting, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    let reason = loop {
        if let Some(reason) = salesforce_down_reason(port).await {
            break reason;
        }
        assert!(
            !untrusting.has_exited() && std::time::Instant::now() < deadline,
            "the bridge without SF_CA_FILE did not report Salesforce down:\n{}",
            untrusting.log()
        );
        // Its /health is another process's state: polled, as testkit::wait does.
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(
        reason.contains("invalid peer certificate") && reason.contains("UnknownIssuer"),
        "the reason names the untrusted certificate: {reason}"
    );
    assert!(
        stack.sf.state().issued_tokens().is_empty(),
        "no request got through the handshake"
    );
    let status = untrusting.terminate();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");

    // With it, the whole flow.
    let order = support::seed_good_order(&stack.sf, &stack.whmcs, "Acme TLS Ltd");
    let mut writes = stack.sf.state().watch_order_writes();
    let mut services = vec![
        ChildProcess::spawn(&bin(0), &stack.bridge_env(true)),
        ChildProcess::spawn(
            &bin(1),
            &stack.env(
                true,
                &[
                    ("WHMCS_API_URL", stack.whmcs.api_url()),
                    ("WHMCS_API_IDENTIFIER", stack.whmcs.identifier().to_owned()),
                    ("WHMCS_API_SECRET", stack.whmcs.secret().to_owned()),
                    ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
                ],
            ),
        ),
        ChildProcess::spawn(
            &bin(2),
            &stack.env(true, &[("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned())]),
        ),
    ];
    let bridge_port = testkit::process::wait_http_port("sf-bridge", &mut services[0], WAIT).await;
    stack.sf.state().approve_order(&order).expect("approve");
    let logs = |services: &[ChildProcess]| {
        services
            .iter()
            .map(ChildProcess::log)
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    let final_status = tokio::time::timeout(WAIT, async {
        while let Some(write) = writes.recv().await {
            if write.order_id == order && matches!(write.status.as_str(), "Activated" | "Failed") {
                return Some(write.status);
            }
        }
        None
    })
    .await;
    let Ok(Some(final_status)) = final_status else {
        panic!(
            "the order did not end within {WAIT:?} ({:?}):\n{}",
            support::status_of(&stack.sf, &order),
            logs(&services)
        );
    };
    assert_eq!(final_status, "Activated", "{}", logs(&services));
    let stored = stack.sf.state().order(&order).expect("the order");
    let whmcs_order_id = stored["WHMCS_Order_ID__c"].as_str().unwrap_or_default();
    let placed: Vec<String> = stack
        .whmcs
        .state()
        .orders()
        .iter()
        .map(|o| o.id.to_string())
        .collect();
    assert!(
        placed.iter().any(|id| id == whmcs_order_id),
        "the order holds WHMCS's order id {whmcs_order_id:?} (WHMCS has {placed:?})"
    );
    // The bridge, trusting the CA, is healthy: its Salesforce integration is up.
    let answer = testkit::stack::http_get(bridge_port, "/health", Duration::from_secs(5))
        .await
        .expect("the bridge's /health");
    assert!(
        testkit::stack::ok_body(&answer).is_some(),
        "healthy with SF_CA_FILE: {answer}"
    );
    for service in &mut services {
        let status = service.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "a service did not stop cleanly: {status:?}\n{}",
            service.log()
        );
    }
}
