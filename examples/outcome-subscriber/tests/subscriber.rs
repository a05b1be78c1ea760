//! The example subscriber against a real nats-server: it prints one line per outcome (and one
//! for a body it cannot read, without stopping), acks what it printed, stops cleanly on SIGTERM,
//! and after a restart resumes after the last outcome it acked (its durable consumer).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use messages::{OutcomeResult, ProvisioningOutcomeV1};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;

const WAIT: Duration = Duration::from_secs(30);
const STREAM: &str = messages::subjects::streams::OUTCOMES;
const CONSUMER: &str = "subscriber-test";

fn outcome(order_id: &str, result: OutcomeResult, event_id: &str) -> ProvisioningOutcomeV1 {
    let failed = result == OutcomeResult::Failed;
    ProvisioningOutcomeV1 {
        schema: ProvisioningOutcomeV1::SCHEMA.to_owned(),
        order_id: order_id.to_owned(),
        result,
        whmcs_order_id: (!failed).then_some(1042),
        whmcs_service_ids: Vec::new(),
        whmcs_invoice_id: None,
        error_code: failed.then(|| "CLIENT_MISSING".to_owned()),
        error_message: failed.then(|| "The Account has no WH_Account__c".to_owned()),
        step: if failed { "mapping" } else { "whmcs_accept" }.to_owned(),
        correlation_id: format!("corr-{event_id}"),
        event_id: event_id.to_owned(),
        idem_key: None,
        started_at: "2026-01-01T00:00:00Z".to_owned(),
        finished_at: "2026-01-01T00:00:02Z".to_owned(),
        duration_ms: 2000,
    }
}

async fn publish(js: &jetstream::Context, subject: String, body: Vec<u8>) {
    js.publish(subject, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn publish_outcome(js: &jetstream::Context, outcome: &ProvisioningOutcomeV1) {
    let mut body = serde_json::to_value(outcome).unwrap();
    // A field added within v1 that this reader does not know: it must be ignored.
    body["added_later_within_v1"] = serde_json::json!({"anything": true});
    let subject =
        messages::subjects::provisioning_outcome(&outcome.order_id, outcome.result.as_str());
    publish(js, subject, serde_json::to_vec(&body).unwrap()).await;
}

/// The subscriber's output lines that are not its own status lines.
fn output_lines(process: &ChildProcess) -> Vec<String> {
    process
        .log()
        .lines()
        .filter(|l| !l.starts_with("outcome-subscriber:"))
        .map(str::to_owned)
        .collect()
}

async fn wait_for_lines(process: &mut ChildProcess, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let lines = output_lines(process);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            !process.has_exited() && std::time::Instant::now() < deadline,
            "expected {n} lines; the subscriber's log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the consumer has nothing pending or unacknowledged (the acks reached the server).
async fn wait_all_acked(js: &jetstream::Context) {
    testkit::wait::until("every outcome acked", WAIT, || async {
        let stream = js.get_stream(STREAM).await.ok()?;
        let mut consumer = stream
            .get_consumer::<jetstream::consumer::pull::Config>(CONSUMER)
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn prints_each_outcome_skips_what_it_cannot_read_and_resumes_after_a_restart() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.client().await);
    js.create_stream(jetstream::stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![messages::subjects::PROVISIONING_OUTCOME_ALL.to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    let good = "801000000000001AAA";
    let bad = "801000000000002AAA";
    publish_outcome(&js, &outcome(good, OutcomeResult::Activated, "e1")).await;
    publish(
        &js,
        messages::subjects::provisioning_outcome(bad, "failed"),
        b"{not json".to_vec(),
    )
    .await;
    publish_outcome(&js, &outcome(bad, OutcomeResult::Failed, "e2")).await;

    let binary = env!("CARGO_BIN_EXE_outcome-subscriber");
    let env: HashMap<String, String> = testkit::stack::env([
        ("NATS_URL", nats.url()),
        ("OUTCOME_CONSUMER", CONSUMER.to_owned()),
    ]);
    let mut first = ChildProcess::spawn(binary, &env);
    let lines = wait_for_lines(&mut first, 3).await;
    assert_eq!(
        lines,
        [
            format!("{good} activated whmcs_order_id=1042 correlation_id=corr-e1 event_id=e1"),
            format!(
                "unreadable outcome on provisioning.outcome.{bad}.failed (9 bytes): \
                 key must be a string at line 1 column 2; acked and skipped"
            ),
            format!("{bad} failed error_code=CLIENT_MISSING correlation_id=corr-e2 event_id=e2"),
        ],
        "log:\n{}",
        first.log()
    );
    wait_all_acked(&js).await;
    let status = first.terminate().expect("exit status");
    assert!(status.success(), "{status:?}\n{}", first.log());
    assert!(first.log().contains("outcome-subscriber: stopped"));

    // Published while it was down: after the restart only this one is new to the consumer.
    publish_outcome(&js, &outcome(good, OutcomeResult::Skipped, "e3")).await;
    let mut second = ChildProcess::spawn(binary, &env);
    let lines = wait_for_lines(&mut second, 1).await;
    wait_all_acked(&js).await;
    let status = second.terminate().expect("exit status");
    assert!(status.success(), "{status:?}\n{}", second.log());
    assert_eq!(
        output_lines(&second),
        [format!("{good} skipped correlation_id=corr-e3 event_id=e3")],
        "{lines:?}"
    );
}

#[test]
fn help_describes_the_settings() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outcome-subscriber"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "NATS_URL",
        "NATS_CREDS_FILE",
        "--consumer",
        "--stream",
        "provisioning.outcome.>",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outcome-subscriber"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
