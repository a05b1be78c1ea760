//! provctl against a real nats-server, with the streams, consumers and buckets the services
//! create (same definitions: platform::streams, platform::nats::ensure_bucket) and messages in the
//! contract's shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use base64::Engine;
use messages::journal::{JobRecord, JobState};
use messages::subjects::{self, buckets, streams};
use messages::{DeadLetterOrigin, DeadLetterV1};
use provctl::{CheckSettings, Ctl, CtlError, CursorTarget, Names, OrdersQuery, ProblemKind};
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
    let client = server.client().await;
    Box::pin(pipeline_on(server, client)).await
}

/// [`pipeline`] on `server`, seeded through `client` (which may create everything).
async fn pipeline_on(server: NatsServer, client: async_nats::Client) -> Pipeline {
    let url = server.url();
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

/// Runs the provctl binary against `url`: (exit code, stdout, stderr).
fn run_provctl(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    run_provctl_with(url, &[], args)
}

/// [`run_provctl`] with more variables.
fn run_provctl_with(
    url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_provctl"))
        .args(args)
        .envs(env.iter().copied())
        .env("NATS_URL", url)
        .env("JAEGER_UI_URL", "http://localhost:16686")
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn kinds(report: &provctl::CheckReport) -> Vec<ProblemKind> {
    report.problems.iter().map(|p| p.kind).collect()
}

fn rfc3339_ago(secs: i64) -> String {
    messages::bodies::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
}

async fn last_seq(js: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

#[tokio::test]
async fn status_check_names_each_problem_and_exits_3() {
    let p = Box::pin(pipeline()).await;
    let quiet = CheckSettings {
        deadletter_window: Duration::ZERO,
        ..CheckSettings::default()
    };

    // The running pipeline with its two dead letters of a moment ago: those need attention.
    let report = p.ctl.check(&CheckSettings::default()).await.unwrap();
    assert_eq!(
        kinds(&report),
        [ProblemKind::DeadLetters, ProblemKind::DeadLetters],
        "{:?}",
        report.problems
    );
    assert_eq!(
        report.problems[0].resource,
        "provisioning.deadletter.provisioner"
    );
    assert!(
        report.problems[1]
            .message
            .contains("provctl deadletter list --service sf-bridge"),
        "{}",
        report.problems[1].message
    );
    // Ignoring dead letters: healthy. The request in the stream was received before the cursor
    // was written, and one pending message is under the lag threshold.
    let report = p.ctl.check(&quiet).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.render().contains("check: nothing needs attention"));
    let lag = CheckSettings {
        max_lag: 0,
        ..quiet
    };
    let report = p.ctl.check(&lag).await.unwrap();
    assert_eq!(kinds(&report), [ProblemKind::ConsumerLag]);
    assert_eq!(
        report.problems[0].resource,
        "PROVISIONING_REQUESTS/provisioner"
    );

    // The binary: exit 0 when healthy, 3 with one line per problem, JSON with the list.
    let (code, out, err) = run_provctl(&p.url, &["status", "--check", "--deadletter-window", "0s"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("check: nothing needs attention"), "{out}");
    let (code, out, err) = run_provctl(&p.url, &["status", "--check"]);
    assert_eq!(code, Some(3), "{out}{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("ATTENTION "))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("ATTENTION dead_letters: ")),
        "{out}"
    );
    let (code, out, _) = run_provctl(
        &p.url,
        &[
            "--json",
            "status",
            "--check",
            "--max-lag",
            "0",
            "--deadletter-window",
            "0s",
        ],
    );
    assert_eq!(code, Some(3));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["problems"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["problems"][0]["kind"], "consumer_lag");
    assert_eq!(
        v["bridge"]["lease_holder"], "bridge-a-1234",
        "the status report is there too"
    );
    assert_eq!(v["thresholds"]["max_lag"], 0);

    // An event the bridge received ten minutes ago, newer than the stored cursor: the cursor does
    // not follow the events.
    let mut event = requested(OTHER_ORDER, "evt-3");
    event["received_at"] = json!(rfc3339_ago(600));
    publish(
        &p.js,
        subjects::provisioning_requested(OTHER_ORDER),
        &[("Nats-Msg-Id", "evt-3")],
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    let report = p.ctl.check(&quiet).await.unwrap();
    assert_eq!(
        kinds(&report),
        [ProblemKind::CursorStalled],
        "{:?}",
        report.problems
    );
    assert_eq!(
        report.problems[0].resource,
        format!("{}/{CHANNEL_KEY}", buckets::BRIDGE_CURSOR)
    );
    // Within the grace it is not yet a problem; a cursor written after it is none either.
    let patient = CheckSettings {
        cursor_grace: Duration::from_secs(3_600),
        ..quiet
    };
    assert!(p.ctl.check(&patient).await.unwrap().problems.is_empty());
    let cursor = p.js.get_key_value(buckets::BRIDGE_CURSOR).await.unwrap();
    let fresh = json!({
        "replay_id": b64(b"\x00\x00\x00\x2b"), "updated_at": rfc3339_ago(5),
        "written_by": "bridge-a-1234"
    });
    cursor
        .put(CHANNEL_KEY, serde_json::to_vec(&fresh).unwrap().into())
        .await
        .unwrap();
    assert!(p.ctl.check(&quiet).await.unwrap().problems.is_empty());

    // A cursor that is not the bridge's document: a restart would start from the earliest event.
    cursor.put(CHANNEL_KEY, "garbage".into()).await.unwrap();
    let report = p.ctl.check(&quiet).await.unwrap();
    assert_eq!(kinds(&report), [ProblemKind::CursorUnreadable]);
    cursor
        .put(CHANNEL_KEY, serde_json::to_vec(&fresh).unwrap().into())
        .await
        .unwrap();

    // The lease gone (expired or released): no leader, and the cursor is not judged.
    let lease = p.js.get_key_value(buckets::BRIDGE_LEASE).await.unwrap();
    lease.delete(CHANNEL_KEY).await.unwrap();
    let report = p.ctl.check(&quiet).await.unwrap();
    assert_eq!(kinds(&report), [ProblemKind::NoLeader]);
    let (code, out, _) = run_provctl(&p.url, &["status", "--check", "--deadletter-window", "0s"]);
    assert_eq!(code, Some(3));
    assert!(out.contains("ATTENTION no_leader: "), "{out}");

    // JETSTREAM_REPLICAS=3 against these R1 streams and buckets: each one is named.
    let strict =
        Ctl::new(p.js.client(), Names::default(), "http://j:16686").with_wanted_replicas(3);
    let report = strict.check(&quiet).await.unwrap();
    let under: Vec<&str> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::UnderReplicated)
        .map(|p| p.resource.as_str())
        .collect();
    assert_eq!(under.len(), 7, "{:?}", report.problems);
    assert!(under.contains(&"KV_provisioning_jobs"));
}

#[tokio::test]
async fn status_check_of_an_empty_server_names_what_is_missing() {
    let server = NatsServer::start().await;
    let ctl = Ctl::new(server.client().await, Names::default(), "http://j:16686");
    let report = ctl.check(&CheckSettings::default()).await.unwrap();
    let missing = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::Missing)
        .count();
    assert_eq!(
        missing,
        4 + 3 + 2,
        "streams, buckets, consumers: {:?}",
        report.problems
    );
    assert!(report
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::NoLeader));
    let (code, _, err) = run_provctl(&server.url(), &["status", "--check"]);
    assert_eq!(code, Some(3), "{err}");
}

#[tokio::test]
async fn order_unknown_to_the_pipeline_exits_4() {
    let p = Box::pin(pipeline()).await;
    let (code, out, err) = run_provctl(&p.url, &["order", OTHER_ORDER]);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(err.contains("not found"), "{err}");
    assert!(
        out.contains("journal: no entry"),
        "the report is printed too: {out}"
    );
    let (code, out, _) = run_provctl(&p.url, &["--json", "order", &OTHER_ORDER[..15]]);
    assert_eq!(code, Some(4));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["journal"].is_null() && v["outcome"].is_null(), "{v}");
    // Known orders, and ids that are not ids, keep their codes.
    assert_eq!(run_provctl(&p.url, &["order", ORDER]).0, Some(0));
    assert_eq!(run_provctl(&p.url, &["order", "not-an-id"]).0, Some(1));
}

fn job(order: &str, state: JobState, updated_secs_ago: i64, code: Option<&str>) -> JobRecord {
    let mut record = JobRecord::new(order);
    record.state = state;
    record.step = "whmcs_create".to_owned();
    record.attempts = 2;
    record.correlation_id = format!("corr-{order}");
    record.error_code = code.map(str::to_owned);
    record.error_message = code.map(|c| format!("{c}: {}", "WHMCS said no. ".repeat(10)));
    record.started_at = rfc3339_ago(updated_secs_ago + 5);
    record.updated_at = rfc3339_ago(updated_secs_ago);
    record
}

#[tokio::test]
async fn orders_lists_a_state_newest_first() {
    let p = Box::pin(pipeline()).await;
    let journal = p.js.get_key_value(buckets::JOBS).await.unwrap();
    let put = |record: JobRecord| {
        let journal = journal.clone();
        async move {
            journal
                .put(
                    messages::journal::key(&record.order_id),
                    serde_json::to_vec(&record).unwrap().into(),
                )
                .await
                .unwrap();
        }
    };
    // Three failed orders of different ages, and other states around them.
    put(job(
        "801000000000010AAA",
        JobState::Failed,
        3 * 86_400,
        Some("CLIENT_MISSING"),
    ))
    .await;
    put(job(
        "801000000000011AAA",
        JobState::Failed,
        60,
        Some("MAPPING_MISSING"),
    ))
    .await;
    put(job(
        "801000000000012AAA",
        JobState::Failed,
        7_200,
        Some("WHMCS_ADD_ORDER"),
    ))
    .await;
    put(job("801000000000013AAA", JobState::Running, 10, None)).await;
    put(job(
        "801000000000014AAA",
        JobState::Interrupted,
        30,
        Some("INTERRUPTED"),
    ))
    .await;
    // An order that failed, then was activated by a retry: only its current state counts.
    put(job(
        "801000000000015AAA",
        JobState::Failed,
        120,
        Some("NO_ITEMS"),
    ))
    .await;
    put(job("801000000000015AAA", JobState::Activated, 20, None)).await;
    // A deleted entry, keys that are not order entries, and an entry that is not a JobRecord.
    put(job("801000000000016AAA", JobState::Failed, 40, Some("X"))).await;
    journal.delete("order.801000000000016AAA").await.unwrap();
    journal.put("skipped.evt-9", "{}".into()).await.unwrap();
    journal
        .put("reconciled.provisioner", "17".into())
        .await
        .unwrap();
    journal
        .put("order.801000000000017AAA.extra", "{}".into())
        .await
        .unwrap();
    journal
        .put("order.801000000000018AAA", "not json".into())
        .await
        .unwrap();

    let query = |state, since: Option<u64>, limit| OrdersQuery {
        state,
        since: since.map(Duration::from_secs),
        limit,
    };
    let ids = |report: &provctl::OrdersReport| -> Vec<String> {
        report.orders.iter().map(|o| o.order_id.clone()).collect()
    };

    let failed = p
        .ctl
        .orders(&query(Some(JobState::Failed), None, 50))
        .await
        .unwrap();
    assert_eq!(
        ids(&failed),
        [
            "801000000000011AAA",
            "801000000000012AAA",
            "801000000000010AAA"
        ],
        "newest first"
    );
    assert_eq!(failed.matching, 3);
    assert_eq!(
        failed.orders[0].error_code.as_deref(),
        Some("MAPPING_MISSING")
    );
    assert_eq!(failed.orders[0].step, "whmcs_create");
    assert_eq!(failed.orders[0].attempts, 2);
    assert_eq!(failed.orders[0].correlation_id, "corr-801000000000011AAA");
    // pipeline()'s ORDER plus 7 current order entries (one deleted), one unreadable.
    assert_eq!(failed.entries_read, 8);
    assert_eq!(failed.unreadable, 1);
    assert_eq!(failed.unreadable_keys, ["order.801000000000018AAA"]);
    assert_eq!(failed.other_keys, 1, "order.<id>.extra");

    let recent = p
        .ctl
        .orders(&query(Some(JobState::Failed), Some(3_600), 50))
        .await
        .unwrap();
    assert_eq!(ids(&recent), ["801000000000011AAA"]);
    let limited = p
        .ctl
        .orders(&query(Some(JobState::Failed), None, 2))
        .await
        .unwrap();
    assert_eq!(ids(&limited), ["801000000000011AAA", "801000000000012AAA"]);
    assert_eq!(limited.matching, 3);
    let running = p
        .ctl
        .orders(&query(Some(JobState::Running), None, 50))
        .await
        .unwrap();
    assert_eq!(ids(&running), ["801000000000013AAA"]);
    let interrupted = p
        .ctl
        .orders(&query(Some(JobState::Interrupted), None, 50))
        .await
        .unwrap();
    assert_eq!(ids(&interrupted), ["801000000000014AAA"]);
    let activated = p
        .ctl
        .orders(&query(Some(JobState::Activated), None, 50))
        .await
        .unwrap();
    assert_eq!(ids(&activated), ["801000000000015AAA", ORDER]);

    // The binary: a table with the message cut to a readable width, and JSON with all of it.
    let (code, out, err) = run_provctl(&p.url, &["orders", "--state", "failed", "--since", "2d"]);
    assert_eq!(code, Some(0), "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("801")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].starts_with("801000000000011AAA") && rows[0].contains("MAPPING_MISSING"));
    assert!(rows[0].ends_with('…'), "message cut: {}", rows[0]);
    assert!(out.contains("skipped: 1 unreadable entries"), "{out}");
    let (code, out, _) = run_provctl(
        &p.url,
        &["--json", "orders", "--state", "failed", "--limit", "1"],
    );
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["orders"].as_array().unwrap().len(), 1);
    assert_eq!(v["orders"][0]["state"], "failed");
    assert!(v["orders"][0]["error_message"].as_str().unwrap().len() > 100);
    assert_eq!(v["matching"], 3);
    assert_eq!(
        run_provctl(&p.url, &["orders", "--since", "1 hour"]).0,
        Some(2)
    );
}

#[tokio::test]
async fn orders_of_an_empty_or_missing_journal() {
    let server = NatsServer::start().await;
    let client = server.client().await;
    let ctl = Ctl::new(client.clone(), Names::default(), "http://j:16686");
    let query = OrdersQuery {
        limit: 10,
        ..OrdersQuery::default()
    };
    let report = ctl.orders(&query).await.unwrap();
    assert!(!report.exists && report.orders.is_empty());
    let js = jetstream::new(client);
    platform::nats::ensure_bucket(
        &js,
        kv::Config {
            bucket: buckets::JOBS.to_owned(),
            history: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let report = ctl.orders(&query).await.unwrap();
    assert!(report.exists && report.entries_read == 0 && report.orders.is_empty());
    assert!(report.render().contains("no orders"));
}

#[tokio::test]
async fn replay_dry_run_shows_the_message_and_publishes_nothing() {
    let p = Box::pin(pipeline()).await;
    let before = last_seq(&p.js, streams::REQUESTS).await;

    let plan = p.ctl.deadletter_replay_plan(1).await.unwrap();
    assert_eq!(
        plan.subject.as_deref(),
        Some(subjects::provisioning_requested(ORDER).as_str())
    );
    assert!(plan.refused.is_none() && !plan.published);
    let original = serde_json::to_vec(&requested(ORDER, "evt-dl")).unwrap();
    assert_eq!(plan.payload_bytes, original.len());
    let header = |name: &str| {
        plan.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("Correlation-Id").as_deref(), Some("corr-dl"));
    assert_eq!(
        header("Schema").as_deref(),
        Some("provisioning.requested.v1")
    );
    assert!(header("Nats-Msg-Id")
        .unwrap()
        .starts_with("provctl-replay:1:"));
    // The refusal the real replay would give.
    let refused = p.ctl.deadletter_replay_plan(2).await.unwrap();
    assert!(refused
        .refused
        .as_deref()
        .unwrap()
        .contains("sf-bridge dead letters"));

    let (code, out, err) = run_provctl(&p.url, &["deadletter", "replay", "1", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("nothing was published"), "{out}");
    assert!(
        out.contains(&subjects::provisioning_requested(ORDER)),
        "{out}"
    );
    let (code, out, err) = run_provctl(
        &p.url,
        &["--json", "deadletter", "replay", "2", "--dry-run"],
    );
    assert_eq!(code, Some(1), "a replay that would be refused: {out}");
    assert!(err.contains("cannot be replayed"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["published"], false);

    assert_eq!(
        last_seq(&p.js, streams::REQUESTS).await,
        before,
        "a dry run stored nothing"
    );
}

#[test]
fn completions_for_each_shell_without_nats() {
    for shell in ["bash", "zsh", "fish"] {
        // Nothing listens on port 1: a connection attempt would fail the command.
        let (code, out, err) = run_provctl("nats://127.0.0.1:1", &["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(
            out.len() > 1_000 && out.contains("provctl"),
            "{shell}: {out}"
        );
        assert!(out.contains("orders") && out.contains("dry-run"), "{shell}");
    }
    assert_eq!(
        run_provctl("nats://127.0.0.1:1", &["completions", "tcsh"]).0,
        Some(2)
    );
}

/// The new commands with provctl's least-privilege user (deploy/nats/permissions.conf): every
/// JetStream call they make is allowed, and the server logs no violation.
#[tokio::test]
async fn new_commands_run_with_the_provctl_permission_set() {
    // nats-server refuses a variable no user references: one user per set of the file, the
    // provctl user among them, plus an unrestricted admin that seeds the pipeline.
    let permissions =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/permissions.conf");
    let users: String = std::fs::read_to_string(&permissions)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(" = {").map(|(name, _)| name.trim().to_owned()))
        .map(|set| {
            let user = if set == "PROVCTL_PERMISSIONS" {
                "provctl".to_owned()
            } else {
                set.to_lowercase()
            };
            format!("  {{ user: {user}, password: {user}-pw, permissions: ${set} }}\n")
        })
        .collect();
    assert!(users.contains("user: provctl,"), "{users}");
    let (conf, args) = testkit::secure_nats::config_args(&format!(
        "include ./permissions.conf\nauthorization {{ users: [\n{users}  {{ user: admin, password: admin-pw }}\n] }}\n"
    ));
    // nats-server resolves an include relative to the including file.
    std::fs::copy(&permissions, conf.path().join("permissions.conf")).unwrap();
    let server = NatsServer::start_with_args(args).await;
    let admin = async_nats::ConnectOptions::with_user_and_password(
        "admin".to_owned(),
        "admin-pw".to_owned(),
    )
    .connect(server.url())
    .await
    .unwrap();
    let p = Box::pin(pipeline_on(server, admin)).await;
    let user = [("NATS_USER", "provctl"), ("NATS_PASSWORD", "provctl-pw")];
    let before = last_seq(&p.js, streams::REQUESTS).await;
    // A stalled cursor makes status --check read the newest request too.
    let mut event = requested(OTHER_ORDER, "evt-4");
    event["received_at"] = json!(rfc3339_ago(600));
    publish(
        &p.js,
        subjects::provisioning_requested(OTHER_ORDER),
        &[("Nats-Msg-Id", "evt-4")],
        serde_json::to_vec(&event).unwrap(),
    )
    .await;
    for (args, expected) in [
        (&["--json", "status", "--check"][..], 3),
        (
            &["--json", "orders", "--state", "activated", "--since", "1w"],
            0,
        ),
        (&["orders"], 0),
        (&["deadletter", "replay", "1", "--dry-run"], 0),
        (&["order", OTHER_ORDER], 4),
    ] {
        let (code, out, err) = run_provctl_with(&p.url, &user, args);
        assert_eq!(code, Some(expected), "provctl {args:?}:\n{out}{err}");
    }
    let (_, out, _) = run_provctl_with(&p.url, &user, &["--json", "status", "--check"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cursor_stalled", "dead_letters", "dead_letters"]);
    let (_, out, _) = run_provctl_with(&p.url, &user, &["--json", "orders"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["orders"][0]["order_id"], ORDER, "{v}");
    assert_eq!(last_seq(&p.js, streams::REQUESTS).await, before + 1);

    let log = std::fs::read_to_string(p._server.store_dir().join("nats-server.log")).unwrap();
    let violations: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Violation") && !l.contains("Authorization Violation"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
}
