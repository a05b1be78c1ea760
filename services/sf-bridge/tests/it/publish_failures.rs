//! Publishes JetStream does not store: a transient failure is replayed, even when later events of
//! the same session were stored; a refusal for good is dead-lettered and the stream moves on
//! (docs/contract.md §5 rule 5: every event ends in the requests stream or as a dead letter, and the
//! cursor never passes one that is neither).

use std::time::Duration;

use sf_sim::EventSpec;

use crate::harness::{metric, Harness, DEADLETTER_STREAM, STREAM};

const WAIT: Duration = Duration::from_secs(30);

fn msg_id(message: &async_nats::jetstream::message::StreamMessage) -> String {
    message
        .headers
        .get("Nats-Msg-Id")
        .expect("Nats-Msg-Id")
        .as_str()
        .to_owned()
}

/// Event A's publish fails (no stream captures its subject: JetStream answers "no responders",
/// as it does while a stream elects a new leader) and event B, delivered in the same
/// FetchResponse, is stored. B's ack arrives after A's failure; it must not move the cursor past
/// A. Once the stream captures A's subject again, the replay stores A.
#[tokio::test]
async fn a_failed_publish_is_replayed_even_when_later_publishes_succeeded() {
    let h = Harness::start().await;
    let orders = h.seed_orders(2);
    let (order_a, order_b) = (&orders[0], &orders[1]);
    let config = h
        .create_requests_stream(|config| {
            config.subjects = vec![format!("provisioning.requested.{order_b}")];
        })
        .await;
    // Both exist before the bridge subscribes, so they arrive in one FetchResponse and both
    // publishes are in flight when A's ack fails.
    let event_a = h.sim.state().approve_order(order_a).unwrap();
    let event_b = h.sim.state().approve_order(order_b).unwrap();
    let bridge = h.start_bridge(&[]).await;

    h.wait_for_stored(STREAM, 1, WAIT).await;
    // Each session ends on A's failure, after settling B's ack and storing the cursor; the
    // second one replayed A (failing again) and B (a duplicate).
    for sessions in [1.0, 2.0] {
        testkit::wait::until(
            &format!("{sessions} sessions ended by the failed publish"),
            WAIT,
            || async {
                let failed = metric(
                    bridge.http_addr,
                    r#"sf_bridge_reconnects_total{reason="publish_failed"}"#,
                )
                .await?;
                (failed >= sessions).then_some(())
            },
        )
        .await;
        assert_eq!(
            h.cursor_replay_id().await,
            None,
            "the cursor moved although event A (the first) was never stored"
        );
    }
    let stored = h.stored(STREAM).await;
    assert_eq!(msg_id(&stored[0]), event_b.event_id);

    // The stream captures every order again: the next session replays A (and B, a duplicate).
    let mut healed = config;
    healed.subjects = vec!["provisioning.requested.>".to_owned()];
    h.js().await.update_stream(healed).await.unwrap();
    h.wait_for_stored(STREAM, 2, WAIT).await;
    let stored = h.stored(STREAM).await;
    assert_eq!(msg_id(&stored[1]), event_a.event_id);
    assert_eq!(
        stored[1].subject.as_str(),
        format!("provisioning.requested.{order_a}")
    );
    testkit::wait::until("cursor at event B", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(event_b.replay_id.as_slice())).then_some(())
    })
    .await;
    assert_eq!(h.stored_count(DEADLETTER_STREAM).await, 0);
    bridge.stop().await;
}

/// A message larger than the stream's `max_msg_size` is refused with JetStream error 10054,
/// however often it is sent: it is dead-lettered once with the server's reason, the events after
/// it are stored, and the cursor moves past both.
#[tokio::test]
async fn a_publish_refused_for_good_is_dead_lettered_and_the_stream_moves_on() {
    let h = Harness::start().await;
    let orders = h.seed_orders(3);
    h.create_requests_stream(|config| config.max_message_size = 4096)
        .await;
    let state = h.sim.state();
    let before = state.approve_order(&orders[0]).unwrap();
    let huge = state
        .publish_event(EventSpec {
            order_id: Some(orders[1].clone()),
            requested_by: Some("x".repeat(6000)),
            ..Default::default()
        })
        .unwrap();
    let after = state.approve_order(&orders[2]).unwrap();
    let bridge = h.start_bridge(&[]).await;

    h.wait_for_stored(DEADLETTER_STREAM, 1, WAIT).await;
    h.wait_for_stored(STREAM, 2, WAIT).await;
    testkit::wait::until("cursor past the refused event", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(after.replay_id.as_slice())).then_some(())
    })
    .await;

    let stored = h.stored(STREAM).await;
    let ids: Vec<String> = stored.iter().map(msg_id).collect();
    assert_eq!(ids, [before.event_id.clone(), after.event_id.clone()]);

    let dead = h.stored(DEADLETTER_STREAM).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].subject.as_str(),
        "provisioning.deadletter.sf-bridge"
    );
    let body: serde_json::Value = serde_json::from_slice(&dead[0].payload).unwrap();
    assert_eq!(body["reason_code"], "publish_refused", "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("10054") && reason.contains("maximum"),
        "the reason carries the server's description: {reason}"
    );
    assert_eq!(body["origin"]["event_id"], huge.event_id.as_str());
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(body["origin"]["replay_id"], b64.encode(&huge.replay_id));
    let payload = b64
        .decode(body["payload_base64"].as_str().unwrap())
        .unwrap();
    assert!(payload.len() > 6000, "the original Avro bytes are kept");

    assert_eq!(
        metric(
            bridge.http_addr,
            r#"sf_bridge_events_dead_lettered_total{reason="publish_refused"}"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            bridge.http_addr,
            r#"sf_bridge_reconnects_total{reason="publish_failed"}"#
        )
        .await,
        None,
        "a refusal for good is not retried"
    );
    bridge.stop().await;
    // Nothing more was stored while the bridge shut down.
    assert_eq!(h.stored_count(DEADLETTER_STREAM).await, 1);
    assert_eq!(h.stored_count(STREAM).await, 2);
}
