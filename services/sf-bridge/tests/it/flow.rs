//! Events into the stream: body, headers, de-duplication, poison events, flow control, cursor.

use std::collections::HashSet;
use std::time::Duration;

use sf_sim::{EventSpec, Faults, PoisonKind};

use crate::harness::{get_json, Harness, DEADLETTER_STREAM, STREAM};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn approved_orders_arrive_with_the_contract_body_and_headers() {
    let h = Harness::start().await;
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;

    let orders = h.seed_orders(3);
    let mut published = Vec::new();
    for order in &orders {
        published.push(h.sim.state().approve_order(order).expect("approve"));
    }
    h.wait_for_stored(STREAM, 3, WAIT).await;

    let stored = h.stored(STREAM).await;
    for ((message, order), event) in stored.iter().zip(&orders).zip(&published) {
        assert_eq!(
            message.subject.as_str(),
            format!("provisioning.requested.{order}")
        );
        let headers = message.headers.clone();
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(event.event_id.as_str())
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["schema"], "provisioning.requested.v1");
        assert_eq!(body["event_id"], event.event_id.as_str());
        assert_eq!(body["order_id"], order.as_str());
        assert_eq!(body["channel"], "/event/OrderProvisionRequested__e");
        assert_eq!(body["schema_id"], event.schema_id.as_str());
        assert_eq!(body["requested_by"], "sim-operator");
        assert_eq!(body["version"], 1.0);
        assert!(body["idem_key"].as_str().is_some_and(|k| !k.is_empty()));
        assert!(body["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')));
        assert!(body["received_at"].as_str().is_some());
        assert!(body["created_by_id"].as_str().is_some());
        use base64::Engine;
        let replay = base64::engine::general_purpose::STANDARD
            .decode(body["replay_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(replay, event.replay_id);
        let correlation = headers
            .get("Correlation-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap();
        assert_eq!(body["correlation_id"], correlation.as_str());
        let traceparent = headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned())
            .unwrap();
        assert!(
            traceparent.starts_with("00-") && traceparent.len() == 55,
            "{traceparent}"
        );
    }
    // The cursor follows the last acknowledged event.
    let last = published.last().unwrap();
    testkit::wait::until("cursor at the last event", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(last.replay_id.as_slice())).then_some(())
    })
    .await;
    let status = bridge.sf_events().await;
    assert_eq!(status["enabled"], true);
    assert_eq!(status["events_received"], 3);
    assert_eq!(status["events_published"], 3);
    assert!(status["last_event_at"].as_str().is_some());
    assert!(status["cursor"]["updated_at"].as_str().is_some());

    let (code, health) = get_json(bridge.http_addr, "/health").await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["integrations"]["nats"]["status"], "up");
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sf_bridge_events_published_total 3"),
        "{metrics}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn missing_correlation_id_is_generated_once_and_carried_in_header_and_body() {
    let h = Harness::start().await;
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    let order = h.seed_orders(1).remove(0);
    h.sim
        .state()
        .publish_event(EventSpec {
            order_id: Some(order),
            ..Default::default()
        })
        .unwrap();
    h.wait_for_stored(STREAM, 1, WAIT).await;
    let message = h.stored(STREAM).await.remove(0);
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    let header = message
        .headers
        .get("Correlation-Id")
        .unwrap()
        .as_str()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
    assert_eq!(body["correlation_id"], header.as_str());
    assert_eq!(body["idem_key"], serde_json::Value::Null);
    bridge.stop().await;
}

#[tokio::test]
async fn duplicate_deliveries_from_salesforce_are_stored_once() {
    let h = Harness::start().await;
    h.sim.state().set_faults(Faults {
        pubsub_duplicate_deliveries: true,
        ..Default::default()
    });
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    let orders = h.seed_orders(5);
    for order in &orders {
        h.sim.state().approve_order(order).unwrap();
    }
    testkit::wait::until("ten deliveries received", WAIT, || async {
        (bridge.sf_events().await["events_received"] == 10).then_some(())
    })
    .await;
    h.wait_for_stored(STREAM, 5, WAIT).await;
    let subjects: HashSet<String> = h
        .stored(STREAM)
        .await
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(subjects.len(), 5);
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sf_bridge_events_duplicate_total 5"),
        "{metrics}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn poison_events_are_set_aside_and_the_stream_moves_on() {
    let h = Harness::start().await;
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    let orders = h.seed_orders(2);
    let state = h.sim.state();
    state.approve_order(&orders[0]).unwrap();
    let poisons = [
        (PoisonKind::UndecodableAvro, "avro_decode"),
        (PoisonKind::MissingOrderId, "order_id_missing"),
        (PoisonKind::MalformedOrderId, "order_id_invalid"),
        (PoisonKind::UnknownSchema, "schema_unavailable"),
    ];
    let mut poison_events = Vec::new();
    for (kind, _) in &poisons {
        poison_events.push(state.publish_poison(*kind).unwrap());
    }
    let last = state.approve_order(&orders[1]).unwrap();

    h.wait_for_stored(STREAM, 2, WAIT).await;
    h.wait_for_stored(DEADLETTER_STREAM, 4, WAIT).await;
    let dead = h.stored(DEADLETTER_STREAM).await;
    for ((message, (_, reason_code)), event) in dead.iter().zip(&poisons).zip(&poison_events) {
        assert_eq!(
            message.subject.as_str(),
            "provisioning.deadletter.sf-bridge"
        );
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["schema"], "provisioning.deadletter.v1");
        assert_eq!(body["reason_code"], *reason_code, "{body}");
        assert!(!body["reason"].as_str().unwrap().is_empty());
        assert_eq!(
            body["origin"]["channel"],
            "/event/OrderProvisionRequested__e"
        );
        assert_eq!(body["origin"]["event_id"], event.event_id.as_str());
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(body["origin"]["replay_id"], b64.encode(&event.replay_id));
        assert!(body["payload_base64"].as_str().is_some());
        assert!(message.headers.get("Correlation-Id").is_some());
        assert!(message.headers.get("traceparent").is_some());
    }
    // The cursor went past the poison events to the last good one.
    testkit::wait::until("cursor past the poison events", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(last.replay_id.as_slice())).then_some(())
    })
    .await;
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sf_bridge_events_dead_lettered_total{reason="avro_decode"} 1"#),
        "{metrics}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn flow_control_never_has_more_than_a_batch_outstanding() {
    let h = Harness::start().await;
    let orders = h.seed_orders(1);
    for _ in 0..120 {
        h.sim
            .state()
            .publish_event(EventSpec {
                order_id: Some(orders[0].clone()),
                ..Default::default()
            })
            .unwrap();
    }
    let bridge = h.start_bridge(&[("SF_PUBSUB_BATCH", "7")]).await;
    h.wait_for_stored(STREAM, 120, WAIT).await;
    let stats = h.sim.state().stats();
    assert!(
        stats.max_outstanding_seen <= 7,
        "outstanding reached {}",
        stats.max_outstanding_seen
    );
    // 120 events at 7 a batch, topped up at half: many more than one FetchRequest.
    assert!(
        stats.fetch_requests >= 120 / 7,
        "only {} FetchRequests",
        stats.fetch_requests
    );
    bridge.stop().await;
}

#[tokio::test]
async fn keepalives_move_the_cursor_when_nothing_is_in_flight() {
    let h =
        Harness::start_with(|config| config.keepalive_interval = Duration::from_millis(200)).await;
    // Events from before the bridge started, skipped by LATEST: the keepalive's
    // latest_replay_id points at the newest of them.
    let order = h.seed_orders(1).remove(0);
    let mut tip = None;
    for _ in 0..3 {
        tip = Some(
            h.sim
                .state()
                .publish_event(EventSpec {
                    order_id: Some(order.clone()),
                    ..Default::default()
                })
                .unwrap(),
        );
    }
    let tip = tip.unwrap();
    let bridge = h.start_bridge(&[("SF_EVENTS_REPLAY", "LATEST")]).await;
    testkit::wait::until("keepalive cursor", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(tip.replay_id.as_slice())).then_some(())
    })
    .await;
    assert_eq!(
        h.stored_count(STREAM).await,
        0,
        "LATEST must not replay old events"
    );
    let cursor = h.cursor().await.unwrap();
    assert!(
        cursor.get("event_id").is_none(),
        "a keepalive cursor follows no event: {cursor}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn disabled_bridge_stays_healthy_and_says_so() {
    let h = Harness::start().await;
    let bridge = h.start_bridge(&[("SF_EVENTS_ENABLED", "false")]).await;
    bridge.wait_for_state("disabled", WAIT).await;
    let status = bridge.sf_events().await;
    assert_eq!(status["enabled"], false);
    assert_eq!(status["channel"], "/event/OrderProvisionRequested__e");
    let (code, _) = get_json(bridge.http_addr, "/health").await;
    assert_eq!(code, 200);
    assert_eq!(h.sim.state().stats().subscribe_calls, 0);
    bridge.stop().await;
}

#[tokio::test]
async fn fifteen_character_order_ids_are_published_in_their_18_character_form() {
    let h = Harness::start().await;
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    let order = h.seed_orders(1).remove(0);
    let canonical = messages::salesforce_id::canonical(&order).unwrap();
    let short = &canonical[..15];
    h.sim
        .state()
        .publish_event(EventSpec {
            order_id: Some(short.to_owned()),
            ..Default::default()
        })
        .unwrap();
    h.wait_for_stored(STREAM, 1, WAIT).await;
    let message = h.stored(STREAM).await.remove(0);
    assert_eq!(
        message.subject.as_str(),
        format!("provisioning.requested.{canonical}")
    );
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["order_id"], canonical.as_str());
    bridge.stop().await;
}
