//! provctl against a real nats-server, with the streams, consumers and buckets the services
//! create (same definitions: platform::streams, platform::nats::ensure_bucket) and messages in the
//! contract's shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use base64::Engine;
use messages::subjects::{self, buckets, streams};
use messages::{DeadLetterOrigin, DeadLetterV1};
use provctl::{Ctl, CtlError, CursorTarget, Names};
use serde_json::{json, Value};
use testkit::nats::NatsServer;

const ORDER: &str = "801000000000001AAA";
const OTHER_ORDER: &str = "801000000000002AAA";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CHANNEL_KEY: &str = "event.OrderProvisionRequested__e";

struct Pipeline {
    _server: NatsServer,
    url: String,
    js: jetstream::Context,
    ctl: Ctl,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn requested(order_id: &str, event_id: &str) -> Value {
    json!({
        "schema": "provisioning.requested.v1", "event_id": event_id, "replay_id": b64(b"\x00\x01"),
        "channel": "/event/OrderProvisionRequested__e", "schema_id": "s1", "order_id": order_id,
        "idem_key": null, "correlation_id": "corr-1", "requested_by": null, "version": null,
        "created_at": null, "created_by_id": null, "received_at": "2026-01-01T00:00:00Z"
    })
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) {
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    js.publish_with_headers(subject, map, body.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn dead_letter(service: &str, subject: Option<&str>, payload: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&DeadLetterV1 {
        schema: DeadLetterV1::SCHEMA.to_owned(),
        service: service.to_owned(),
        reason: format!("{service} could not process it"),
        reason_code: "invalid_body".to_owned(),
        payload_base64: b64(payload),
        origin: DeadLetterOrigin {
            subject: subject.map(str::to_owned),
            stream: subject.map(|_| streams::REQUESTS.to_owned()),
            stream_sequence: subject.map(|_| 7),
            channel: subject
                .is_none()
                .then(|| "/event/OrderProvisionRequested__e".to_owned()),
            ..Default::default()
        },
        dead_lettered_at: "2026-01-01T00:00:00Z".to_owned(),
    })
    .unwrap()
}

/// What a running pipeline leaves in JetStream: streams, consumers, buckets, a leader holding the
/// lease, a cursor, a journal entry, an outcome, a pending request and two dead letters.
async fn pipeline() -> Pipeline {
    let server = NatsServer::start().await;
    let url = server.url();
    let client = server.client().await;
    let js = jetstream::new(client.clone());
    use platform::nats::{ensure_bucket, ensure_stream};
    use platform::streams as defs;
    let requests = ensure_stream(
        &js,
        defs::requests(
            streams::REQUESTS,
            Duration::from_secs(3600),
            Duration::from_secs(7200),
        ),
    )
    .await
    .unwrap();
    ensure_stream(&js, defs::outcomes(streams::OUTCOMES))
        .await
        .unwrap();
    let updates = ensure_stream(&js, defs::order_updates(streams::ORDER_UPDATES))
        .await
        .unwrap();
    ensure_stream(&js, defs::deadletter(streams::DEADLETTER))
        .await
        .unwrap();
    requests
        .create_consumer(consumer::pull::Config {
            durable_name: Some("provisioner".to_owned()),
            filter_subject: subjects::PROVISIONING_REQUESTED_ALL.to_owned(),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    updates
        .create_consumer(consumer::pull::Config {
            durable_name: Some("sf-writer".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let bucket = |name: &str, history: i64, max_age: Duration| kv::Config {
        bucket: name.to_owned(),
        history,
        max_age,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let cursor = ensure_bucket(&js, bucket(buckets::BRIDGE_CURSOR, 10, Duration::ZERO))
        .await
        .unwrap();
    let lease = ensure_bucket(
        &js,
        bucket(buckets::BRIDGE_LEASE, 1, Duration::from_secs(600)),
    )
    .await
    .unwrap();
    let journal = ensure_bucket(&js, bucket(buckets::JOBS, 5, Duration::ZERO))
        .await
        .unwrap();

    lease
        .create(CHANNEL_KEY, "bridge-a-1234".into())
        .await
        .unwrap();
    let stored_cursor = json!({
        "replay_id": b64(b"\x00\x00\x00\x2a"), "updated_at": "2026-01-01T00:00:00Z",
        "event_id": "evt-1", "written_by": "bridge-a-1234"
    });
    cursor
        .put(
            CHANNEL_KEY,
            serde_json::to_vec(&stored_cursor).unwrap().into(),
        )
        .await
        .unwrap();
    let record = json!({
        "order_id": ORDER, "state": "activated", "event_id": "evt-1", "idem_key": null,
        "correlation_id": "corr-1", "step": "sf_success_update", "worker": "prov-1",
        "lease_until_ms": null, "whmcs_client_id": 1, "whmcs_order_id": 501,
        "whmcs_service_ids": [601], "whmcs_invoice_id": 701, "error_code": null, "attempts": 1,
        "processed_event_ids": ["evt-1"], "processed_idem_keys": [],
        "traceparent": format!("00-{TRACE}-00f067aa0ba902b7-01"),
        "started_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:01Z"
    });
    journal
        .put(
            format!("order.{ORDER}"),
            serde_json::to_vec(&record).unwrap().into(),
        )
        .await
        .unwrap();

    // One request still waiting for the provisioner.
    publish(
        &js,
        subjects::provisioning_requested(OTHER_ORDER),
        &[("Nats-Msg-Id", "evt-2")],
        serde_json::to_vec(&requested(OTHER_ORDER, "evt-2")).unwrap(),
    )
    .await;
    // An older failed outcome, then the activated one (with its own trace).
    for (result, trace) in [
        ("failed", "11111111111111111111111111111111"),
        ("activated", TRACE),
    ] {
        let outcome = json!({
            "schema": "provisioning.outcome.v1", "order_id": ORDER, "result": result,
            "whmcs_order_id": 501, "whmcs_service_ids": [601], "whmcs_invoice_id": 701,
            "error_code": null, "error_message": null, "step": "sf_success_update",
            "correlation_id": "corr-1", "event_id": "evt-1", "idem_key": null,
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
            "duration_ms": 1000
        });
        let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
        publish(
            &js,
            subjects::provisioning_outcome(ORDER, result),
            &[("traceparent", traceparent.as_str())],
            serde_json::to_vec(&outcome).unwrap(),
        )
        .await;
    }
    // Dead letters: seq 1 from the provisioner (replayable), seq 2 from sf-bridge (Avro bytes).
    let original = serde_json::to_vec(&requested(ORDER, "evt-dl")).unwrap();
    publish(
        &js,
        subjects::deadletter("provisioner"),
        &[("Correlation-Id", "corr-dl")],
        dead_letter(
            "provisioner",
            Some(&subjects::provisioning_requested(ORDER)),
            &original,
        ),
    )
    .await;
    publish(
        &js,
        subjects::deadletter("sf-bridge"),
        &[],
        dead_letter("sf-bridge", None, b"\x02\xff avro"),
    )
    .await;

    let ctl = Ctl::new(client, Names::default(), "http://jaeger.example:16686/");
    Pipeline {
        _server: server,
        url,
        js,
        ctl,
    }
}

#[tokio::test]
async fn status_shows_leader_cursor_lag_and_dead_letters() {
    let p = Box::pin(pipeline()).await;
    let report = p.ctl.status().await.unwrap();
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["bridge"]["lease_holder"], "bridge-a-1234");
    assert_eq!(v["bridge"]["cursor"]["replay_id"], b64(b"\x00\x00\x00\x2a"));
    assert_eq!(v["bridge"]["cursor"]["written_by"], "bridge-a-1234");
    assert!(v["bridge"]["cursor"]["age_secs"].as_i64().unwrap() > 3600);
    let stream = |name: &str| {
        report
            .streams
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stream(streams::REQUESTS).messages, 1);
    assert_eq!(stream(streams::OUTCOMES).messages, 2);
    assert_eq!(stream(streams::ORDER_UPDATES).messages, 0);
    assert!(stream(streams::DEADLETTER).exists);
    let provisioner = report
        .consumers
        .iter()
        .find(|c| c.name == "provisioner")
        .unwrap();
    assert!(provisioner.exists);
    assert_eq!(provisioner.pending, 1);
    assert_eq!(provisioner.ack_pending, 0);
    let writer = report
        .consumers
        .iter()
        .find(|c| c.name == "sf-writer")
        .unwrap();
    assert!(writer.exists && writer.pending == 0);
    assert_eq!(report.dead_letters.total, 2);
    assert_eq!(
        report.dead_letters.by_subject,
        vec![
            ("provisioning.deadletter.provisioner".to_owned(), 1),
            ("provisioning.deadletter.sf-bridge".to_owned(), 1)
        ]
    );
    let text = report.render();
    assert!(
        text.contains("leader   bridge-a-1234 (subscribed)"),
        "{text}"
    );
    assert!(text.contains("PROVISIONING_REQUESTS"), "{text}");
    assert!(text.contains("provisioning.deadletter.sf-bridge"), "{text}");
    assert!(report.streams.iter().all(|s| !s.under_replicated));
    assert!(
        stream(&format!("KV_{}", buckets::JOBS)).exists,
        "buckets listed too"
    );

    // JETSTREAM_REPLICAS=3 against these R1 resources: every one is flagged.
    let strict = Ctl::new(
        p.js.client(),
        Names::default(),
        "http://jaeger.example:16686/",
    )
    .with_wanted_replicas(3);
    let report = strict.status().await.unwrap();
    let flagged: Vec<&str> = report
        .streams
        .iter()
        .filter(|s| s.under_replicated)
        .map(|s| s.name.as_str())
        .collect();
    let existing: Vec<&str> = report
        .streams
        .iter()
        .filter(|s| s.exists)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(flagged, existing);
    assert!(report.render().contains("1 UNDER-REPLICATED"));
}

#[tokio::test]
async fn status_of_an_empty_server_says_what_is_missing() {
    let server = NatsServer::start().await;
    let ctl = Ctl::new(server.client().await, Names::default(), "http://j:16686");
    let report = ctl.status().await.unwrap();
    assert!(!report.bridge.lease_bucket_exists && report.bridge.lease_holder.is_none());
    assert!(report.streams.iter().all(|s| !s.exists));
    assert!(report.consumers.iter().all(|c| !c.exists));
    let text = report.render();
    assert!(text.contains("does not exist yet"), "{text}");
    assert!(text.contains("missing"), "{text}");
}

#[tokio::test]
async fn order_shows_journal_last_outcome_and_trace_link() {
    let p = Box::pin(pipeline()).await;
    let report = p.ctl.order(ORDER).await.unwrap();
    let journal = report.journal.as_ref().unwrap();
    assert_eq!(journal.record["state"], "activated");
    assert_eq!(journal.record["whmcs_order_id"], 501);
    let outcome = report.outcome.as_ref().unwrap();
    assert_eq!(
        outcome.body["result"], "activated",
        "the newest outcome wins"
    );
    assert_eq!(
        outcome.subject,
        subjects::provisioning_outcome(ORDER, "activated")
    );
    assert_eq!(report.trace_id.as_deref(), Some(TRACE));
    assert_eq!(report.trace_source.as_deref(), Some("outcome"));
    assert_eq!(
        report.jaeger_url.as_deref(),
        Some(format!("http://jaeger.example:16686/trace/{TRACE}").as_str())
    );
    let text = report.render();
    assert!(text.contains("whmcs_order_id     501"), "{text}");
    assert!(text.contains(&format!("jaeger http://jaeger.example:16686/trace/{TRACE}")));

    // The 15-character spelling of the same Order finds the same story.
    let short = p.ctl.order(&ORDER[..15]).await.unwrap();
    assert_eq!(short.order_id, ORDER);
    assert_eq!(
        short.journal.as_ref().unwrap().record["whmcs_order_id"],
        501
    );

    // An order the pipeline never saw, and one that is not an id at all.
    let unknown = p.ctl.order(OTHER_ORDER).await.unwrap();
    assert!(unknown.journal.is_none() && unknown.outcome.is_none() && unknown.trace_id.is_none());
    assert!(matches!(
        p.ctl.order("not-an-id.>").await,
        Err(CtlError::InvalidOrderId(..))
    ));
}

#[tokio::test]
async fn cursor_set_respects_the_lease_and_writes_the_bridge_format() {
    let p = Box::pin(pipeline()).await;
    let cursor = p.js.get_key_value(buckets::BRIDGE_CURSOR).await.unwrap();
    let new_id = b64(b"\x00\x00\x00\x10");

    // A bridge holds the lease: refused, nothing changed.
    let err = p
        .ctl
        .cursor_set(CursorTarget::ReplayId(new_id.clone()), false)
        .await
        .unwrap_err();
    assert!(matches!(&err, CtlError::LeaseHeld { holder } if holder == "bridge-a-1234"));
    let before: Value =
        serde_json::from_slice(&cursor.get(CHANNEL_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(before["written_by"], "bridge-a-1234");

    // Forced: written, with a warning naming the holder.
    let report = p
        .ctl
        .cursor_set(CursorTarget::ReplayId(new_id.clone()), true)
        .await
        .unwrap();
    assert_eq!(report.lease_holder.as_deref(), Some("bridge-a-1234"));
    assert!(report.render().contains("WARNING"));

    // No bridge running: the JSON document sf-bridge reads.
    let lease = p.js.get_key_value(buckets::BRIDGE_LEASE).await.unwrap();
    lease.delete(CHANNEL_KEY).await.unwrap();
    let other_id = b64(b"\x00\x00\x00\x11");
    let report = p
        .ctl
        .cursor_set(CursorTarget::ReplayId(other_id.clone()), false)
        .await
        .unwrap();
    assert_eq!(report.action, "written");
    assert_eq!(report.previous.as_ref().unwrap()["replay_id"], new_id);
    let stored: Value =
        serde_json::from_slice(&cursor.get(CHANNEL_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["replay_id"], other_id);
    assert_eq!(stored["written_by"], "provctl");
    assert!(stored["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stored.as_object().unwrap().len(), 3, "{stored}");

    // Earliest: the cursor is gone and the operator is told how to start the bridge.
    let report = p
        .ctl
        .cursor_set(CursorTarget::Earliest, false)
        .await
        .unwrap();
    assert_eq!(report.action, "deleted");
    assert!(
        report.next_step.contains("SF_EVENTS_REPLAY=ALL"),
        "{}",
        report.next_step
    );
    assert!(cursor.get(CHANNEL_KEY).await.unwrap().is_none());
    let report = p.ctl.cursor_set(CursorTarget::Latest, false).await.unwrap();
    assert!(report.next_step.contains("SF_EVENTS_REPLAY=LATEST"));
    assert!(report.previous.is_none());

    assert!(matches!(
        p.ctl
            .cursor_set(CursorTarget::ReplayId("not base64!".to_owned()), false)
            .await,
        Err(CtlError::InvalidReplayId(_))
    ));
}

#[tokio::test]
async fn deadletters_list_show_and_replay() {
    let p = Box::pin(pipeline()).await;
    let list = p.ctl.deadletter_list(50, None).await.unwrap();
    assert_eq!(list.total, 2);
    let seqs: Vec<u64> = list.dead_letters.iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [2, 1], "newest first");
    assert_eq!(list.dead_letters[1].service.as_deref(), Some("provisioner"));
    assert_eq!(list.dead_letters[1].order_id.as_deref(), Some(ORDER));
    let only = p.ctl.deadletter_list(50, Some("sf-bridge")).await.unwrap();
    assert_eq!(only.dead_letters.len(), 1);
    assert_eq!(only.dead_letters[0].seq, 2);
    assert!(list.render().contains("invalid_body"));

    let shown = p.ctl.deadletter_show(1).await.unwrap();
    assert_eq!(shown.body.service, "provisioner");
    assert_eq!(shown.payload_json.as_ref().unwrap()["event_id"], "evt-dl");
    assert!(shown.replay_refused.is_none());
    assert!(shown
        .headers
        .contains(&("Correlation-Id".to_owned(), "corr-dl".to_owned())));
    let bridge_dl = p.ctl.deadletter_show(2).await.unwrap();
    assert!(bridge_dl.replay_refused.is_some());
    assert!(bridge_dl.render().contains("replay: not possible"));

    // Replay: the original bytes land on the original subject, past de-duplication.
    let replay = p.ctl.deadletter_replay(1).await.unwrap();
    assert_eq!(replay.subject, subjects::provisioning_requested(ORDER));
    assert_eq!(replay.stream, streams::REQUESTS);
    assert!(!replay.duplicate);
    let requests = p.js.get_stream(streams::REQUESTS).await.unwrap();
    let stored = requests
        .get_raw_message(replay.stream_sequence)
        .await
        .unwrap();
    let original = serde_json::to_vec(&requested(ORDER, "evt-dl")).unwrap();
    assert_eq!(stored.payload.as_ref(), original.as_slice());
    assert_eq!(
        stored.headers.get("Correlation-Id").map(|v| v.as_str()),
        Some("corr-dl")
    );
    assert_eq!(
        stored.headers.get("Schema").map(|v| v.as_str()),
        Some("provisioning.requested.v1")
    );
    // A second replay is a new message too (new Nats-Msg-Id).
    let again = p.ctl.deadletter_replay(1).await.unwrap();
    assert!(again.stream_sequence > replay.stream_sequence && again.msg_id != replay.msg_id);

    assert!(matches!(
        p.ctl.deadletter_replay(2).await,
        Err(CtlError::ReplayRefused { seq: 2, .. })
    ));
    assert!(matches!(
        p.ctl.deadletter_show(99).await,
        Err(CtlError::MessageNotFound { seq: 99, .. })
    ));
}

/// The binary end to end: environment, connection, subcommands, `--json`, exit codes.
#[tokio::test]
async fn binary_prints_tables_and_json() {
    let p = Box::pin(pipeline()).await;
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_provctl"))
            .args(args)
            .env("NATS_URL", &p.url)
            .env("JAEGER_UI_URL", "http://localhost:16686")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("bridge-a-1234"), "{out}");
    let (code, out, err) = run(&["--json", "order", ORDER]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["jaeger_url"],
        format!("http://localhost:16686/trace/{TRACE}")
    );
    let (code, out, _) = run(&["deadletter", "list", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dead_letters"].as_array().unwrap().len(), 2);
    let (code, _, err) = run(&["cursor", "set", "--latest"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("holds the subscription lease"), "{err}");
    let (code, _, err) = run(&["deadletter", "replay", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot be replayed"), "{err}");
}
