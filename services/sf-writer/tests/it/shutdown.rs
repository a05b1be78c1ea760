//! On shutdown the writer flushes the batch in hand and leaves the rest for the next start.

use std::time::Duration;

use serde_json::json;
use sf_sim::Faults;

use crate::harness::{activated, Harness};

#[tokio::test]
async fn shutdown_flushes_the_batch_in_hand_and_the_next_start_does_the_rest() {
    let h = Harness::start().await;
    let orders = h.seed_orders(30);
    let updates: Vec<_> = orders.iter().map(|o| activated(o, 1, 3)).collect();
    h.publish_all(&updates).await;
    h.sim.state().set_faults(Faults {
        rest_latency: Duration::from_millis(400),
        ..Faults::default()
    });
    let writer = h
        .start_writer(&[("SF_WRITER_MAX_BATCH", "5"), ("SF_WRITER_CONCURRENCY", "1")])
        .await;
    // Stop while the first request is in flight.
    testkit::wait::until(
        "the first write to start",
        Duration::from_secs(20),
        || async { (h.sim.state().stats().rest_requests > 0).then_some(()) },
    )
    .await;
    writer.stop().await;
    let written = orders
        .iter()
        .filter(|o| h.order(o)["Activation_Status__c"] == "Activated")
        .count();
    assert!(
        (5..30).contains(&written),
        "{written} written before the stop"
    );

    // Nothing is left hanging on ack_wait: the next start finishes at once.
    h.sim.state().set_faults(Faults::default());
    let writer = h.start_writer(&[]).await;
    let expected: Vec<_> = orders
        .iter()
        .map(|o| (o.clone(), "Activation_Status__c", json!("Activated")))
        .collect();
    tokio::time::timeout(Duration::from_secs(20), h.wait_for_fields(&expected))
        .await
        .expect("the rest is applied well before ack_wait would redeliver it");
    h.wait_until_drained().await;
    writer.stop().await;
}
