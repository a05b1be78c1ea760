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

use sf_sim::SfSim;
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

const WAIT: Duration = Duration::from_secs(60);

struct Stack {
    nats: NatsServer,
    sf: SfSim,
    whmcs: WhmcsSim,
    _dir: tempfile::TempDir,
    ca_file: String,
}

impl Stack {
    async fn start() -> Self {
        let nats = NatsServer::start().await;
        let sims = support::Simulators::start_configured(
            testkit::sim::sf_config().with_generated_tls(),
            WhmcsSimConfig::for_tests(),
        )
        .await;
        let (sf, whmcs) = (sims.sf, sims.whmcs);
        for url in [sf.login_url(), sf.instance_url(), sf.pubsub_url()] {
            assert!(url.starts_with("https://"), "{url}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_path = dir.path().join("sf-sim-ca.pem");
        std::fs::write(&ca_path, sf.ca_pem().expect("a generated CA")).expect("write CA");
        Self {
            nats,
            sf,
            whmcs,
            ca_file: ca_path.display().to_string(),
            _dir: dir,
        }
    }

    /// A service's environment with its `own` variables and the test's `extra`; `trust` adds
    /// `SF_CA_FILE`.
    fn env(
        &self,
        trust: bool,
        own: Vec<(&'static str, String)>,
        extra: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let mut env = testkit::service::process_env(self.nats.url(), &self.sf);
        if trust {
            env.push(("SF_CA_FILE", self.ca_file.clone()));
        }
        env.extend(own);
        testkit::service::with_overrides(env, extra)
    }

    fn bridge_env(&self, trust: bool) -> HashMap<String, String> {
        self.env(trust, testkit::sim::pubsub_env(&self.sf), &[])
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
    let binaries = testkit::process::workspace_binaries(&testkit::service::PIPELINE);
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
    let envs = [
        stack.bridge_env(true),
        stack.env(
            true,
            testkit::sim::whmcs_env(&stack.whmcs),
            &[("PROVISIONER_SHUTDOWN_GRACE_SECS", "5")],
        ),
        stack.env(true, Vec::new(), &[("SF_WRITER_SHUTDOWN_GRACE_SECS", "5")]),
    ];
    let mut services = testkit::service::spawn_all(&binaries, &envs);
    let bridge_port = testkit::process::wait_http_port("sf-bridge", &mut services[0], WAIT).await;
    stack.sf.state().approve_order(&order).expect("approve");
    let logs = testkit::service::logs;
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
