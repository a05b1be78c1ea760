//! Idempotency rules (docs/contract.md §5): WHMCS side effects happen once per Salesforce Order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use messages::{OutcomeResult, ProvisioningOutcomeV1};
use whmcs_sim::ActionFaults;

use crate::harness::{Harness, WAIT};

#[tokio::test]
async fn the_same_event_republished_runs_one_job() {
    let h = Harness::start().await;
    let provisioner = h
        .start_provisioner(&[("PROVISIONER_CONCURRENCY", "1")])
        .await;
    let seeded = h.seed_order();
    let request = h.request(&seeded.order_id);
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    let first = h.publish(&request).await;
    let again = h.publish(&request).await;
    assert!(
        again.duplicate && again.sequence == first.sequence,
        "the stream stores the event once"
    );
    assert_eq!(outcomes.next().await.result, OutcomeResult::Activated);

    // Past the stream's duplicate window (a different message id), the journal still knows it.
    h.publish_with_msg_id(&request, "replayed-much-later").await;
    // With one job slot, the next order's outcome means the replay was handled before it.
    let marker = h.seed_order();
    let mut marker_outcomes = h.outcomes(&marker.order_id).await;
    h.publish(&h.request(&marker.order_id)).await;
    assert_eq!(
        marker_outcomes.next().await.result,
        OutcomeResult::Activated
    );

    assert_eq!(h.whmcs_orders(seeded.whmcs_client).len(), 1);
    assert_eq!(h.whmcs_calls("AddOrder"), 2, "one per order");
    assert_eq!(h.outcomes_for(&seeded.order_id).await.len(), 1);
    provisioner.stop().await;
}

#[tokio::test]
async fn a_repeated_idem_key_is_skipped() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    let first = h.request(&seeded.order_id);
    h.publish(&first).await;
    assert_eq!(outcomes.next().await.result, OutcomeResult::Activated);

    h.activate(&seeded.order_id);
    let mut repeat = h.request(&seeded.order_id);
    repeat.idem_key.clone_from(&first.idem_key);
    h.publish(&repeat).await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Skipped);
    assert_eq!(outcome.event_id, repeat.event_id);
    assert!(outcome.error_message.unwrap().contains("IdemKey__c"));
    assert_eq!(h.whmcs_calls("AddOrder"), 1);
    provisioner.stop().await;
}

/// Runs an order whose AddOrder creates the WHMCS order and then fails (`fault`), then retries
/// it the way an operator does (a new event); the retry must reuse the order.
async fn retry_after_unknown_add_order_outcome(fault: ActionFaults, expected_code: &str) {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    h.whmcs.state().set_faults("AddOrder", fault);
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    let failed = outcomes.next().await;
    assert_eq!(failed.result, OutcomeResult::Failed);
    assert_eq!(
        failed.error_code.as_deref(),
        Some(expected_code),
        "{failed:?}"
    );
    assert_eq!(failed.step, "whmcs_create");
    assert_eq!(
        h.whmcs_orders(seeded.whmcs_client).len(),
        1,
        "WHMCS committed the order before failing"
    );

    h.whmcs.state().clear_faults();
    h.activate(&seeded.order_id);
    h.publish(&h.request(&seeded.order_id)).await;
    let retried = outcomes.next().await;
    assert_eq!(retried.result, OutcomeResult::Activated, "{retried:?}");
    let orders = h.whmcs_orders(seeded.whmcs_client);
    assert_eq!(orders.len(), 1, "the retry reused the WHMCS order");
    assert_eq!(Some(orders[0].id), retried.whmcs_order_id);
    assert_eq!(orders[0].status, "Active");
    assert_eq!(
        h.whmcs_calls("AddOrder"),
        1,
        "AddOrder was not called again"
    );
    provisioner.stop().await;
}

#[tokio::test]
async fn retry_after_fail_after_commit_reuses_the_whmcs_order() {
    Box::pin(retry_after_unknown_add_order_outcome(
        ActionFaults::fail_after_commit_status(500, 1),
        "500",
    ))
    .await;
}

#[tokio::test]
async fn retry_after_add_order_timeout_reuses_the_whmcs_order() {
    Box::pin(retry_after_unknown_add_order_outcome(
        ActionFaults::fail_after_commit_hang(Duration::from_secs(6), 1),
        "ETIMEOUT",
    ))
    .await;
}

#[tokio::test]
async fn provisioner_killed_during_accept_order_ends_interrupted_with_one_whmcs_order() {
    let h = Harness::start().await;
    // Let the in-process replica create the stream and consumer, then leave the work to the child.
    h.start_provisioner(&[]).await.stop().await;
    let seeded = h.seed_order();
    h.whmcs
        .state()
        .set_faults("AcceptOrder", ActionFaults::latency(Duration::from_secs(8)));
    let mut child = h.spawn_provisioner("doomed-worker", &[]);
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    testkit::wait::until("AcceptOrder in progress", WAIT, || async {
        (h.whmcs_calls("AcceptOrder") >= 1).then_some(())
    })
    .await;
    child.kill();

    let survivor = h.start_provisioner(&[]).await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Failed, "{outcome:?}");
    assert_eq!(outcome.error_code.as_deref(), Some("INTERRUPTED"));
    assert_eq!(outcome.step, "whmcs_accept");
    let updates = h.updates_for(&seeded.order_id).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].fields["Activation_Error_Code__c"], "INTERRUPTED");

    // The operator retries: the WHMCS order is reused, never duplicated.
    h.whmcs.state().clear_faults();
    h.activate(&seeded.order_id);
    h.publish(&h.request(&seeded.order_id)).await;
    assert_eq!(outcomes.next().await.result, OutcomeResult::Activated);
    assert_eq!(h.whmcs_orders(seeded.whmcs_client).len(), 1);
    assert_eq!(h.whmcs_calls("AddOrder"), 1);
    survivor.stop().await;
}

#[tokio::test]
async fn two_replicas_provision_200_orders_exactly_once() {
    let h = Harness::start().await;
    let first = h
        .start_provisioner(&[("PROVISIONER_WORKER_ID", "replica-1")])
        .await;
    let second = h
        .start_provisioner(&[("PROVISIONER_WORKER_ID", "replica-2")])
        .await;
    let client = h.whmcs.state().seed_client("Bulk Ltd", true);
    let pid = h.whmcs.state().seed_product("Hosting", &["monthly"]);
    let sf = h.sf.state();
    let account = sf.seed_account("Bulk Ltd", Some(&client.to_string()));
    let product = sf.seed_product("Hosting", Some(&pid.to_string()), Some("Monthly"));
    let orders: Vec<String> = (0..200)
        .map(|_| {
            let order = sf.seed_order(&account, &[(product.clone(), 1)]);
            h.activate(&order);
            order
        })
        .collect();
    let nats = h.nats.client().await;
    let mut all = nats.subscribe("provisioning.outcome.>").await.unwrap();
    nats.flush().await.unwrap();
    for order in &orders {
        let request = h.request(order);
        h.publish(&request).await;
        // The same event again under another message id: both replicas may race for it.
        h.publish_with_msg_id(&request, &format!("again-{}", request.event_id))
            .await;
    }
    let mut results: HashMap<String, ProvisioningOutcomeV1> = HashMap::new();
    while results.len() < orders.len() {
        let message = tokio::time::timeout(Duration::from_secs(120), all.next())
            .await
            .expect("outcomes")
            .unwrap();
        let outcome: ProvisioningOutcomeV1 = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(outcome.result, OutcomeResult::Activated, "{outcome:?}");
        assert!(
            results.insert(outcome.order_id.clone(), outcome).is_none(),
            "one outcome per order"
        );
    }
    let whmcs_orders = h.whmcs_orders(client);
    assert_eq!(whmcs_orders.len(), 200);
    assert_eq!(h.whmcs_calls("AddOrder"), 200);
    let mut marked = HashSet::new();
    for order in &whmcs_orders {
        assert_eq!(order.status, "Active");
        let sf_order = orders
            .iter()
            .find(|o| order.notes.contains(&format!("[sf-order:{o}]")))
            .expect("marker");
        assert!(
            marked.insert(sf_order.clone()),
            "two WHMCS orders for {sf_order}"
        );
        assert_eq!(results[sf_order].whmcs_order_id, Some(order.id));
    }
    first.stop().await;
    second.stop().await;
}
