//! Crashes, restarts and Salesforce's failure modes: nothing lost, nothing stored twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sf_sim::{EventSpec, Faults};

use crate::harness::{metric, wait_for_child_state, Harness, CURSOR_BUCKET, CURSOR_KEY, STREAM};

const WAIT: Duration = Duration::from_secs(30);

fn distinct_msg_ids(messages: &[async_nats::jetstream::message::StreamMessage]) -> HashSet<String> {
    messages
        .iter()
        .map(|m| {
            m.headers
                .get("Nats-Msg-Id")
                .expect("Nats-Msg-Id")
                .as_str()
                .to_owned()
        })
        .collect()
}

/// Publishes `total` events into sf-sim at a steady pace until done or stopped.
fn spawn_producer(
    h: &Harness,
    order: String,
    total: usize,
) -> (tokio::task::JoinHandle<usize>, Arc<AtomicBool>) {
    let state = h.sim.state().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total && !flag.load(Ordering::Relaxed) {
            state
                .publish_event(EventSpec {
                    order_id: Some(order.clone()),
                    ..Default::default()
                })
                .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sent
    });
    (task, stop)
}

#[tokio::test]
async fn bridge_killed_mid_stream_loses_nothing_and_stores_nothing_twice() {
    let h = Harness::start().await;
    let order = h.seed_orders(1).remove(0);
    let (mut bridge, addr) = h.spawn_bridge("bridge-a", &[("SF_PUBSUB_BATCH", "50")]);
    wait_for_child_state(addr, "subscribed", WAIT).await;

    let (producer, _) = spawn_producer(&h, order, 1500);
    testkit::wait::until("some events stored before the crash", WAIT, || async {
        (h.stored_count(STREAM).await >= 200).then_some(())
    })
    .await;
    bridge.kill();
    let at_crash = h.stored_count(STREAM).await;

    // Events keep arriving in Salesforce while the bridge is down.
    let (mut restarted, addr) = h.spawn_bridge("bridge-a2", &[("SF_PUBSUB_BATCH", "50")]);
    wait_for_child_state(addr, "subscribed", WAIT).await;
    let total = producer.await.unwrap();
    h.wait_for_stored(STREAM, total as u64, Duration::from_secs(60))
        .await;
    let stored = h.stored(STREAM).await;
    assert_eq!(stored.len(), total);
    assert_eq!(
        distinct_msg_ids(&stored).len(),
        total,
        "every event stored exactly once"
    );
    assert!(
        at_crash < total as u64,
        "the crash happened mid-stream ({at_crash} of {total})"
    );
    assert_eq!(h.sim.state().events().len(), total);
    let status = restarted.terminate().expect("exit status");
    assert!(
        status.success(),
        "graceful shutdown exits 0: {}",
        restarted.log()
    );
}

#[tokio::test]
async fn rejected_replay_id_falls_back_to_earliest_and_replays_are_deduplicated() {
    let h = Harness::start().await;
    let orders = h.seed_orders(3);
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    for order in &orders[..2] {
        h.sim.state().approve_order(order).unwrap();
    }
    h.wait_for_stored(STREAM, 2, WAIT).await;
    bridge.stop().await;

    // A cursor Salesforce does not know (an id from another org, or past retention).
    let js = h.js().await;
    let kv = js.get_key_value(CURSOR_BUCKET).await.unwrap();
    let bogus =
        serde_json::json!({"replay_id": "AAAAAAAAAAE=", "updated_at": "2026-01-01T00:00:00Z"});
    kv.put(CURSOR_KEY, serde_json::to_vec(&bogus).unwrap().into())
        .await
        .unwrap();

    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    let last = h.sim.state().approve_order(&orders[2]).unwrap();
    h.wait_for_stored(STREAM, 3, WAIT).await;
    testkit::wait::until("cursor replaced", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(last.replay_id.as_slice())).then_some(())
    })
    .await;
    assert_eq!(distinct_msg_ids(&h.stored(STREAM).await).len(), 3);
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sf_bridge_replay_id_fallbacks_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sf_bridge_events_duplicate_total 2"),
        "the two old events were replayed: {metrics}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn expired_tokens_are_renewed_and_the_stream_resumes() {
    let h = Harness::start().await;
    let orders = h.seed_orders(2);
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    let tokens_before = h.sim.state().stats().token_requests;

    // The session ends (as Salesforce does on maintenance) while every token is expired: the
    // reconnect is refused with UNAUTHENTICATED until the bridge signs a new assertion.
    h.sim.state().expire_tokens();
    h.sim.state().set_faults(Faults {
        pubsub_abort_after_events: Some(1),
        ..Default::default()
    });
    h.sim.state().approve_order(&orders[0]).unwrap();
    h.wait_for_stored(STREAM, 1, WAIT).await;
    h.sim.state().approve_order(&orders[1]).unwrap();
    h.wait_for_stored(STREAM, 2, WAIT).await;
    let stats = h.sim.state().stats();
    assert!(
        stats.token_requests > tokens_before,
        "a new token was requested"
    );
    assert!(stats.subscribe_calls >= 2, "the stream was re-opened");
    bridge.wait_for_state("subscribed", WAIT).await;
    bridge.stop().await;
}

/// Salesforce ends an open stream with UNAUTHENTICATED and revokes the session (it expired, or
/// an admin revoked it). The bridge must drop the token and sign a new assertion before it
/// re-subscribes: a Subscribe with the revoked token would only be refused again.
#[tokio::test]
async fn unauthenticated_mid_stream_gets_a_new_token_before_resubscribing() {
    let h = Harness::start().await;
    let orders = h.seed_orders(3);
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    // A first event makes the bridge fetch and cache the schema, so that the only calls after
    // the revocation are the ones this test is about (a GetSchema racing the revocation would
    // be refused once and retried with a new token, by design).
    h.sim.state().approve_order(&orders[0]).unwrap();
    h.wait_for_stored(STREAM, 1, WAIT).await;
    let before = h.sim.state().stats();

    h.sim.state().set_faults(Faults {
        pubsub_unauthenticated_after_events: Some(1),
        ..Default::default()
    });
    let first = h.sim.state().approve_order(&orders[1]).unwrap();
    h.wait_for_stored(STREAM, 2, WAIT).await;
    let second = h.sim.state().approve_order(&orders[2]).unwrap();
    h.wait_for_stored(STREAM, 3, WAIT).await;
    testkit::wait::until("cursor at the second event", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(second.replay_id.as_slice())).then_some(())
    })
    .await;

    let stats = h.sim.state().stats();
    assert_eq!(
        stats.pubsub_auth_refusals, before.pubsub_auth_refusals,
        "a call was made with the revoked token"
    );
    assert!(
        stats.token_requests > before.token_requests,
        "a new token was requested"
    );
    assert!(
        stats.subscribe_calls > before.subscribe_calls,
        "re-subscribed"
    );
    let ids = distinct_msg_ids(&h.stored(STREAM).await);
    assert!(ids.contains(&first.event_id) && ids.contains(&second.event_id));
    bridge.stop().await;
}

/// A cursor that cannot be read says the bridge ran before, so LATEST would skip everything
/// since: the bridge starts from EARLIEST instead (replays are de-duplicated).
async fn unreadable_cursor_starts_from_earliest(stored: &[u8]) {
    let h = Harness::start().await;
    let orders = h.seed_orders(2);
    h.sim.state().approve_order(&orders[0]).unwrap();
    let last = h.sim.state().approve_order(&orders[1]).unwrap();
    h.put_raw_cursor(stored).await;

    let bridge = h.start_bridge(&[("SF_EVENTS_REPLAY", "LATEST")]).await;
    h.wait_for_stored(STREAM, 2, WAIT).await;
    testkit::wait::until("a readable cursor at the last event", WAIT, || async {
        (h.cursor_replay_id().await.as_deref() == Some(last.replay_id.as_slice())).then_some(())
    })
    .await;
    let unreadable = metric(bridge.http_addr, "sf_bridge_cursor_unreadable_total").await;
    assert!(
        unreadable.is_some_and(|n| n >= 1.0),
        "counted: {unreadable:?}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn cursor_that_is_not_json_falls_back_to_earliest_not_latest() {
    Box::pin(unreadable_cursor_starts_from_earliest(b"\x00garbage{")).await;
}

#[tokio::test]
async fn cursor_whose_replay_id_is_not_base64_falls_back_to_earliest_not_latest() {
    Box::pin(unreadable_cursor_starts_from_earliest(
        br#"{"replay_id": "not base64 %%%", "updated_at": "2026-01-01T00:00:00Z"}"#,
    ))
    .await;
}

#[tokio::test]
async fn silent_stream_is_treated_as_dead_and_reopened() {
    let h = Harness::start().await;
    h.sim.state().set_faults(Faults {
        pubsub_stall: true,
        ..Default::default()
    });
    let bridge = h
        .start_bridge(&[("SF_PUBSUB_IDLE_TIMEOUT_SECS", "1")])
        .await;
    testkit::wait::until("a second Subscribe call", WAIT, || async {
        (h.sim.state().stats().subscribe_calls >= 2).then_some(())
    })
    .await;
    h.sim.state().set_faults(Faults::default());
    let order = h.seed_orders(1).remove(0);
    h.sim.state().approve_order(&order).unwrap();
    h.wait_for_stored(STREAM, 1, WAIT).await;
    let metrics = reqwest::get(format!("http://{}/metrics", bridge.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"sf_bridge_reconnects_total{reason="idle"}"#),
        "{metrics}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn nats_restart_mid_stream_loses_nothing() {
    let mut h = Harness::start().await;
    let order = h.seed_orders(1).remove(0);
    let bridge = h.start_bridge(&[]).await;
    bridge.wait_for_state("subscribed", WAIT).await;
    for _ in 0..20 {
        h.sim
            .state()
            .publish_event(EventSpec {
                order_id: Some(order.clone()),
                ..Default::default()
            })
            .unwrap();
    }
    h.wait_for_stored(STREAM, 20, WAIT).await;

    h.nats.kill();
    for _ in 0..20 {
        h.sim
            .state()
            .publish_event(EventSpec {
                order_id: Some(order.clone()),
                ..Default::default()
            })
            .unwrap();
    }
    h.nats.restart().await;
    h.wait_for_stored(STREAM, 40, Duration::from_secs(60)).await;
    assert_eq!(distinct_msg_ids(&h.stored(STREAM).await).len(), 40);
    bridge.stop().await;
}
