//! The order status API (contract §3): `GET /orders/{OrderId}[?wait=N]` and the NATS service
//! `provisioning-status` on `provisioning.status.<OrderId>`.

use std::time::Duration;

use futures::StreamExt as _;
use messages::journal::{JobRecord, JobState};
use messages::{ProvisioningOutcomeV1, ProvisioningStatusV1};
use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Harness, Running, SeededOrder, WAIT};

/// `GET /orders/{id}` with an optional query and bearer token: the status and the JSON body.
pub async fn get(
    running: &Running,
    path_and_query: &str,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new().get(format!(
        "http://{}/orders/{path_and_query}",
        running.http_addr
    ));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET /orders");
    let status = response.status();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

/// The status of a known order over HTTP, checked against its schema.
pub async fn status_of(running: &Running, order_id: &str) -> ProvisioningStatusV1 {
    let (code, body) = get(running, order_id, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    testkit::schemas::assert_valid(ProvisioningStatusV1::SCHEMA, &body);
    serde_json::from_value(body).expect("a provisioning.status.v1 body")
}

/// What the status of a finished job must say, given the outcome it published.
pub fn assert_matches_outcome(status: &ProvisioningStatusV1, outcome: &ProvisioningOutcomeV1) {
    assert_eq!(status.schema, ProvisioningStatusV1::SCHEMA);
    assert_eq!(status.order_id, outcome.order_id);
    assert_eq!(status.state.as_str(), outcome.result.as_str(), "{status:?}");
    assert!(status.r#final, "{status:?}");
    assert_eq!(status.error_code, outcome.error_code, "{status:?}");
    assert_eq!(status.error_message, outcome.error_message, "{status:?}");
    assert_eq!(status.step, outcome.step, "{status:?}");
    if outcome.result == messages::OutcomeResult::Activated {
        assert_eq!(status.whmcs_order_id, outcome.whmcs_order_id);
        assert_eq!(status.whmcs_service_ids, outcome.whmcs_service_ids);
        assert_eq!(status.whmcs_invoice_id, outcome.whmcs_invoice_id);
    } else if outcome.whmcs_order_id.is_some() {
        // A job that failed after AddOrder: the status still names the WHMCS order it made
        // (the journal remembers it so that a retry reuses it).
        assert_eq!(status.whmcs_order_id, outcome.whmcs_order_id);
    }
    assert_eq!(status.correlation_id, outcome.correlation_id);
    assert!(
        status.trace_id.as_deref().is_some_and(|t| t.len() == 32),
        "{status:?}"
    );
}

/// A NATS request to `provisioning.status.<id>`: the reply's service error code, if any, and body.
async fn nats_status(client: &async_nats::Client, order_id: &str) -> (Option<String>, Vec<u8>) {
    let reply = client
        .request(
            messages::subjects::provisioning_status(order_id),
            bytes::Bytes::new(),
        )
        .await
        .expect("a status reply");
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_owned());
    (code, reply.payload.to_vec())
}

/// `GET /orders/{order_id}?wait=60`, running in the background.
fn spawn_long_poll(
    running: &Running,
    order_id: &str,
) -> tokio::task::JoinHandle<ProvisioningStatusV1> {
    let url = format!("http://{}/orders/{order_id}?wait=60", running.http_addr);
    tokio::spawn(async move {
        reqwest::get(url)
            .await
            .expect("long poll")
            .json::<ProvisioningStatusV1>()
            .await
            .expect("a status body")
    })
}

/// Writes a journal entry by hand, as the provisioner would store it.
async fn put_entry(h: &Harness, record: &JobRecord) {
    async_nats::jetstream::new(h.nats.client().await)
        .get_key_value(messages::subjects::buckets::JOBS)
        .await
        .expect("the journal bucket")
        .put(
            messages::journal::key(&record.order_id),
            serde_json::to_vec(record).unwrap().into(),
        )
        .await
        .unwrap();
}

/// Waits until `/metrics` shows `waiting` long polls waiting (the gauge is the only outside sign
/// that a request has reached its wait).
async fn until_waiting(running: &Running, waiting: u64) {
    let line = format!("provisioner_status_waiting {waiting}");
    tokio::time::timeout(WAIT, async {
        while !running.metrics().await.lines().any(|l| l == line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{line} within the deadline"));
}

#[tokio::test]
async fn status_follows_a_job_from_running_to_activated_and_a_long_poll_returns_when_it_ends() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[("WHMCS_TIMEOUT_SECS", "60")]).await;
    let SeededOrder { order_id, .. } = h.seed_order();
    let mut accept = h.whmcs.state().gate("AcceptOrder");
    let mut outcomes = h.outcomes(&order_id).await;
    let request = h.request(&order_id);
    h.publish(&request).await;
    tokio::time::timeout(WAIT, accept.arrived(1))
        .await
        .expect("the job reaches AcceptOrder");

    // Running, seen the same way over HTTP (either spelling) and over NATS.
    let running = status_of(&provisioner, &order_id).await;
    assert_eq!(running.state, JobState::Running);
    assert!(!running.r#final);
    assert_eq!(running.step, "whmcs_accept");
    assert!(running.whmcs_order_id.is_some(), "AddOrder has returned");
    assert_eq!(running.correlation_id, request.correlation_id);
    assert_eq!(running.attempts, 1);
    let short_id = &order_id[..15];
    assert_eq!(status_of(&provisioner, short_id).await, running);
    let client = h.nats.client().await;
    let (error, body) = nats_status(&client, short_id).await;
    assert_eq!(error, None);
    let over_nats: Value = serde_json::from_slice(&body).unwrap();
    testkit::schemas::assert_valid(ProvisioningStatusV1::SCHEMA, &over_nats);
    assert_eq!(
        serde_json::from_value::<ProvisioningStatusV1>(over_nats).unwrap(),
        running
    );

    // A long poll waits for the end of the job, and no longer.
    let long_poll = spawn_long_poll(&provisioner, &order_id);
    until_waiting(&provisioner, 1).await;
    assert!(
        !long_poll.is_finished(),
        "the long poll waits while the job runs"
    );
    accept.open();
    let finished = tokio::time::timeout(WAIT, long_poll)
        .await
        .expect("the long poll returns when the job ends")
        .unwrap();
    let outcome = outcomes.next().await;
    assert_eq!(finished.state, JobState::Activated, "{finished:?}");
    assert_matches_outcome(&finished, &outcome);
    assert_eq!(finished.whmcs_order_id, running.whmcs_order_id);
    until_waiting(&provisioner, 0).await;

    // Once final, a long poll answers at once.
    let (code, again) = get(&provisioner, &format!("{order_id}?wait=60"), None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(again["state"], "activated");
    let metrics = provisioner.metrics().await;
    assert!(
        metrics.contains(r#"provisioner_status_requests_total{transport="nats",result="found"} 1"#),
        "{metrics}"
    );
    provisioner.stop().await;
}

#[tokio::test]
async fn a_long_poll_that_times_out_answers_with_the_running_status() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[("WHMCS_TIMEOUT_SECS", "60")]).await;
    let SeededOrder { order_id, .. } = h.seed_order();
    let mut accept = h.whmcs.state().gate("AcceptOrder");
    let mut outcomes = h.outcomes(&order_id).await;
    h.publish(&h.request(&order_id)).await;
    tokio::time::timeout(WAIT, accept.arrived(1))
        .await
        .expect("the job reaches AcceptOrder");

    let (code, body) = get(&provisioner, &format!("{order_id}?wait=1"), None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    assert_eq!(body["final"], false);
    until_waiting(&provisioner, 0).await;

    accept.open();
    assert_eq!(outcomes.next().await.result.as_str(), "activated");
    provisioner.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_refused_clearly_over_http_and_nats() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let unknown = "801000000000099AAA";
    for path in [
        unknown.to_owned(),
        format!("{unknown}?wait=5"),
        unknown[..15].to_owned(),
    ] {
        let (code, body) = get(&provisioner, &path, None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("801000000000099AAA")),
            "{body}"
        );
    }
    for malformed in [
        "abc",
        "801000000000099AAB",
        "801000000000099%27%3B",
        "8010000000000990000",
    ] {
        let (code, body) = get(&provisioner, malformed, None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{malformed}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("malformed")),
            "{body}"
        );
    }
    for bad_wait in ["61", "-1", "soon"] {
        let (code, body) = get(&provisioner, &format!("{unknown}?wait={bad_wait}"), None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "wait={bad_wait}: {body}");
    }

    let client = h.nats.client().await;
    let (error, body) = nats_status(&client, unknown).await;
    assert_eq!(error.as_deref(), Some("404"));
    assert!(body.is_empty());
    let (error, _) = nats_status(&client, "abc").await;
    assert_eq!(error.as_deref(), Some("400"));
    provisioner.stop().await;
}

#[tokio::test]
async fn an_interrupted_job_reads_as_interrupted_and_final() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let order_id = "801000000000042AAA";
    let mut record = JobRecord::new(order_id);
    record.state = JobState::Interrupted;
    record.step = "whmcs_create".to_owned();
    record.error_code = Some("INTERRUPTED".to_owned());
    record.error_message = Some("the worker stopped in the middle of the job".to_owned());
    record.correlation_id = "corr-42".to_owned();
    record.attempts = 2;
    record.started_at = "2026-12-01T00:00:00Z".to_owned();
    record.updated_at = "2026-12-01T00:00:05Z".to_owned();
    put_entry(&h, &record).await;
    let status = status_of(&provisioner, order_id).await;
    assert_eq!(status.state, JobState::Interrupted);
    assert!(status.r#final);
    assert_eq!(status.error_code.as_deref(), Some("INTERRUPTED"));
    assert_eq!(status.step, "whmcs_create");
    assert_eq!(status.attempts, 2);
    assert_eq!(status.trace_id, None);
    provisioner.stop().await;
}

#[tokio::test]
async fn the_bearer_token_guards_orders_and_nothing_else() {
    let h = Harness::start().await;
    let token = "status-token-7f3a9c";
    let provisioner = h
        .start_provisioner(&[("STATUS_API_TOKEN", token), ("RUST_LOG", "debug")])
        .await;
    let unknown = "801000000000099AAA";
    let (code, _) = get(&provisioner, unknown, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = get(&provisioner, unknown, Some("status-token-7f3a9d")).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = get(&provisioner, unknown, Some(token)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "the right token passes");
    for open in ["health", "livez", "metrics"] {
        let response = reqwest::get(format!("http://{}/{open}", provisioner.http_addr))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "/{open} needs no token");
        assert!(!response.text().await.unwrap().contains(token));
    }
    provisioner.stop().await;
}

#[tokio::test]
async fn every_replica_joins_the_discoverable_status_service() {
    let h = Harness::start().await;
    let first = h
        .start_provisioner(&[("PROVISIONER_WORKER_ID", "one")])
        .await;
    let second = h
        .start_provisioner(&[("PROVISIONER_WORKER_ID", "two")])
        .await;
    let client = h.nats.client().await;

    let ping: Value = serde_json::from_slice(
        &client
            .request("$SRV.PING.provisioning-status", bytes::Bytes::new())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(ping["name"], "provisioning-status");
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    let info: Value = serde_json::from_slice(
        &client
            .request("$SRV.INFO.provisioning-status", bytes::Bytes::new())
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(
        info["endpoints"][0]["subject"], "provisioning.status.*",
        "{info}"
    );
    assert!(info["endpoints"][0]["queue_group"].is_string(), "{info}");

    let asked = 20;
    for _ in 0..asked {
        assert_eq!(
            nats_status(&client, "801000000000099AAA")
                .await
                .0
                .as_deref(),
            Some("404")
        );
    }
    // Every instance answers STATS; together they answered each request exactly once.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.STATS.provisioning-status", inbox, bytes::Bytes::new())
        .await
        .unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut answered = 0;
    for _ in 0..2 {
        let stats = tokio::time::timeout(WAIT, replies.next())
            .await
            .unwrap()
            .unwrap();
        let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
        ids.insert(stats["id"].as_str().unwrap().to_owned());
        answered += stats["endpoints"][0]["num_requests"].as_u64().unwrap();
    }
    assert_eq!(ids.len(), 2, "two service instances");
    assert_eq!(answered, asked, "queue-grouped: each request answered once");
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_shutdown_answers_waiting_long_polls_at_once() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    // A job that no replica runs (its worker is elsewhere): nothing here will finish it.
    let order_id = "801000000000043AAA";
    let mut record = JobRecord::new(order_id);
    record.step = "whmcs_create".to_owned();
    record.worker = Some("another-replica".to_owned());
    record.started_at = "2026-12-01T00:00:00Z".to_owned();
    record.updated_at = "2026-12-01T00:00:01Z".to_owned();
    put_entry(&h, &record).await;
    let long_poll = spawn_long_poll(&provisioner, order_id);
    until_waiting(&provisioner, 1).await;
    // Well inside the poll's 60 s: the shutdown released it.
    let (stopped, answered) = tokio::join!(
        tokio::time::timeout(WAIT, provisioner.stop()),
        tokio::time::timeout(WAIT, long_poll)
    );
    stopped.expect("the provisioner stops while a long poll waits");
    let status = answered.expect("the long poll is answered").unwrap();
    assert_eq!(status.state, JobState::Running, "{status:?}");
    assert!(!status.r#final);
}

#[tokio::test]
async fn back_to_back_long_polls_share_one_journal_watch() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let order_id = "801000000000044AAA";
    let mut record = JobRecord::new(order_id);
    record.step = "whmcs_create".to_owned();
    record.started_at = "2026-12-01T00:00:00Z".to_owned();
    record.updated_at = "2026-12-01T00:00:01Z".to_owned();
    put_entry(&h, &record).await;
    let js = async_nats::jetstream::new(h.nats.client().await);
    let watch_consumers = || {
        let js = js.clone();
        async move {
            js.get_stream(format!("KV_{}", messages::subjects::buckets::JOBS))
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .consumer_count
        }
    };
    assert_eq!(watch_consumers().await, 0, "no watch before anyone waits");
    for poll in 1..=3 {
        let (code, body) = get(&provisioner, &format!("{order_id}?wait=1"), None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["state"], "running");
        // The watch outlived the poll, and the next poll used it instead of making another.
        assert_eq!(watch_consumers().await, 1, "after long poll {poll}");
    }
    provisioner.stop().await;
}
