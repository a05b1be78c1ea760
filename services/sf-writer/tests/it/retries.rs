//! Salesforce outages and expired sessions are retried until every update is applied, without
//! hammering Salesforce meanwhile.

use std::time::Duration;

use serde_json::json;
use sf_sim::Faults;

use crate::harness::{activated, Harness};

#[tokio::test]
async fn a_503_window_is_survived_with_every_update_applied() {
    let h = Harness::start().await;
    let orders = h.seed_orders(40);
    let writer = h.start_writer(&[("SF_WRITER_MAX_BATCH", "10")]).await;
    // Let the writer's token fetch happen first so the fault hits the writes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.sim.state().set_faults(Faults {
        rest_status: Some((503, 6)),
        ..Faults::default()
    });
    h.sim.state().reset_stats();
    let updates: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| activated(o, 1, i as u64 + 1))
        .collect();
    h.publish_all(&updates).await;

    let expected: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| (o.clone(), "WHMCS_Order_ID__c", json!((i + 1).to_string())))
        .collect();
    h.wait_for_fields(&expected).await;
    h.wait_until_drained().await;

    assert!(
        h.sim.state().faults().rest_status.is_none(),
        "the fault window was used up"
    );
    // Six failed calls, then the writes: with one probe at a time while unhealthy, the writer
    // sends barely more than that (four batches in flight may each fail once before the gate
    // closes), not a retry storm.
    let calls = h.sim.state().stats().rest_requests;
    assert!(calls <= 6 + 3 + 40 / 10 + 4, "{calls} REST calls");
    assert!(writer.metric("sf_writer_retries_total").await >= 1.0);
    assert_eq!(writer.metric("sf_writer_updates_applied_total").await, 40.0);
    assert_eq!(writer.metric("sf_writer_salesforce_up").await, 1.0);
    let (status, health) = writer.health().await;
    assert_eq!(status, 200, "{health}");
    writer.stop().await;
}

#[tokio::test]
async fn an_expired_session_is_replaced_and_the_update_applied() {
    let h = Harness::start().await;
    let orders = h.seed_orders(2);
    let writer = h.start_writer(&[]).await;
    h.publish_all(&[activated(&orders[0], 1, 11)]).await;
    h.wait_for_fields(&[(orders[0].clone(), "WHMCS_Order_ID__c", json!("11"))])
        .await;
    let tokens_before = h.sim.state().stats().token_requests;

    h.sim.state().expire_tokens();
    h.publish_all(&[activated(&orders[1], 1, 12)]).await;
    h.wait_for_fields(&[(orders[1].clone(), "WHMCS_Order_ID__c", json!("12"))])
        .await;
    assert!(h.sim.state().stats().token_requests > tokens_before);
    assert_eq!(writer.metric("sf_writer_dead_letters_total").await, 0.0);
    writer.stop().await;
}

#[tokio::test]
async fn a_slow_salesforce_is_survived_through_timeouts() {
    let h = Harness::start().await;
    let orders = h.seed_orders(5);
    let writer = h.start_writer(&[("SF_HTTP_TIMEOUT_SECS", "1")]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.sim.state().set_faults(Faults {
        rest_latency: Duration::from_millis(1500),
        ..Faults::default()
    });
    let updates: Vec<_> = orders.iter().map(|o| activated(o, 1, 5)).collect();
    h.publish_all(&updates).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(writer.metric("sf_writer_retries_total").await >= 1.0);
    let (status, health) = writer.health().await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["integrations"]["salesforce"]["status"], "down");

    h.sim.state().set_faults(Faults::default());
    let expected: Vec<_> = orders
        .iter()
        .map(|o| (o.clone(), "Activation_Status__c", json!("Activated")))
        .collect();
    h.wait_for_fields(&expected).await;
    h.wait_until_drained().await;
    writer.stop().await;
}
