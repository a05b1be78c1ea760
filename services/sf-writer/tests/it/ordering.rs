//! An older update never overwrites a newer one for the same Order: not within a batch, not
//! when it arrives late, not with several replicas.

use std::collections::HashMap;
use std::time::Duration;

use rand::seq::SliceRandom;
use serde_json::json;
use sf_sim::Faults;
use tokio_util::sync::CancellationToken;

use crate::harness::{activated, failed, update, Harness};

#[tokio::test]
async fn an_older_update_arriving_after_a_newer_one_is_skipped() {
    let h = Harness::start().await;
    let orders = h.seed_orders(1);
    let order = &orders[0];
    let writer = h.start_writer(&[]).await;
    h.publish_all(&[activated(order, 2, 99)]).await;
    h.wait_for_fields(&[(order.clone(), "Activation_Status__c", json!("Activated"))])
        .await;
    h.wait_until_drained().await;

    h.publish_all(&[failed(order, 1, "late and old")]).await;
    h.wait_until_drained().await;
    let record = h.order(order);
    assert_eq!(record["Activation_Status__c"], "Activated");
    assert_eq!(record["WHMCS_Order_ID__c"], "99");
    assert_eq!(
        writer.metric("sf_writer_updates_skipped_stale_total").await,
        1.0
    );

    // Redelivery of the applied one (a republish under a new message id) is skipped too.
    let mut again = activated(order, 2, 99);
    again
        .fields
        .insert("WHMCS_Order_ID__c".into(), json!("100"));
    h.publish_all(&[again]).await;
    h.wait_until_drained().await;
    assert_eq!(h.order(order)["WHMCS_Order_ID__c"], "99");
    writer.stop().await;
}

#[tokio::test]
async fn an_18_character_id_with_a_lower_case_suffix_is_the_same_order() {
    let h = Harness::start().await;
    let orders = h.seed_orders(1);
    let order = &orders[0];
    // The checksum suffix is case-insensitive; docs/contract.md §4 makes every spelling one order.
    let spelled = format!("{}{}", &order[..15], order[15..].to_ascii_lowercase());
    assert_ne!(&spelled, order, "the seeded id's suffix has letters");
    let writer = h.start_writer(&[]).await;
    h.publish_all(&[activated(order, 2, 99)]).await;
    h.wait_for_fields(&[(order.clone(), "Activation_Status__c", json!("Activated"))])
        .await;
    h.wait_until_drained().await;

    h.publish_all(&[failed(&spelled, 1, "late, old and spelled differently")])
        .await;
    h.wait_until_drained().await;
    let record = h.order(order);
    assert_eq!(record["Activation_Status__c"], "Activated", "{record}");
    assert_eq!(record["WHMCS_Order_ID__c"], "99");
    assert_eq!(
        writer.metric("sf_writer_updates_skipped_stale_total").await,
        1.0
    );
    writer.stop().await;
}

#[tokio::test]
async fn updates_to_one_order_in_one_batch_merge_into_the_newest() {
    let h = Harness::start().await;
    let orders = h.seed_orders(1);
    let order = &orders[0];
    h.publish_all(&[
        update(
            order,
            1,
            json!({"Activation_Status__c": "Activating", "Activation_Error_Code__c": "OLD"}),
        ),
        update(
            order,
            3,
            json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "3"}),
        ),
        update(
            order,
            2,
            json!({"Activation_Status__c": "Failed", "WHMCS_Order_ID__c": "2"}),
        ),
    ])
    .await;
    let writer = h.start_writer(&[]).await;
    h.wait_until_drained().await;
    let record = h.order(order);
    assert_eq!(record["Activation_Status__c"], "Activated");
    assert_eq!(record["WHMCS_Order_ID__c"], "3");
    // A field only the oldest update set is written, as applying them in order would.
    assert_eq!(record["Activation_Error_Code__c"], "OLD");
    assert_eq!(writer.metric("sf_writer_updates_applied_total").await, 3.0);
    assert_eq!(h.requests(crate::harness::SINGLE_ROUTE), 1);
    writer.stop().await;
}

#[tokio::test]
async fn two_replicas_and_500_shuffled_updates_leave_every_order_at_its_newest() {
    let h = Harness::start().await;
    let orders = h.seed_orders(50);
    // Small batches, several in flight per replica and a little Salesforce latency, so that
    // updates of one Order really are written concurrently by both replicas.
    let extra = [
        ("SF_WRITER_MAX_BATCH", "7"),
        ("SF_WRITER_CONCURRENCY", "4"),
        ("SF_WRITER_LINGER_MS", "1"),
    ];
    let first = h.start_writer(&extra).await;
    let second = h.start_writer(&extra).await;
    h.sim.state().set_faults(Faults {
        rest_latency: Duration::from_millis(5),
        ..Faults::default()
    });
    let mut updates = Vec::new();
    for order in &orders {
        for seq in 1..=10u64 {
            let status = if seq % 2 == 0 { "Activated" } else { "Failed" };
            updates.push(update(
                order,
                seq,
                json!({"Activation_Status__c": status, "Activation_Error_Message__c": format!("seq-{seq}")}),
            ));
        }
    }
    updates.shuffle(&mut rand::rng());

    // Watches Salesforce while the replicas write: the sequence an Order shows must never go
    // down, which catches an older write landing after a newer one even if a later write hides
    // it in the final state.
    let watching = CancellationToken::new();
    let watcher = tokio::spawn({
        let state = h.sim.state().clone();
        let orders = orders.clone();
        let watching = watching.clone();
        async move {
            let mut seen: HashMap<String, u64> = HashMap::new();
            let mut regressions = Vec::new();
            while !watching.is_cancelled() {
                for order in &orders {
                    let shown = state
                        .order(order)
                        .and_then(|r| r["Activation_Error_Message__c"].as_str().map(str::to_owned))
                        .and_then(|m| m.strip_prefix("seq-").and_then(|n| n.parse::<u64>().ok()))
                        .unwrap_or(0);
                    let before = seen.entry(order.clone()).or_default();
                    if shown < *before {
                        regressions.push(format!("{order}: {before} -> {shown}"));
                    }
                    *before = shown.max(*before);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            regressions
        }
    });
    h.publish_all(&updates).await;

    h.wait_until_drained().await;
    watching.cancel();
    let regressions = watcher.await.unwrap();
    assert!(
        regressions.is_empty(),
        "older updates overwrote newer ones: {regressions:?}"
    );
    for order in &orders {
        let record = h.order(order);
        assert_eq!(
            record["Activation_Error_Message__c"], "seq-10",
            "{order}: {record}"
        );
        assert_eq!(record["Activation_Status__c"], "Activated", "{order}");
    }
    let applied = first.metric("sf_writer_updates_applied_total").await
        + second.metric("sf_writer_updates_applied_total").await;
    let stale = first.metric("sf_writer_updates_skipped_stale_total").await
        + second.metric("sf_writer_updates_skipped_stale_total").await;
    assert!(applied >= 50.0, "{applied} applied");
    assert!(
        applied + stale >= 500.0,
        "{applied} applied + {stale} stale"
    );
    assert!(first.metric("sf_writer_updates_applied_total").await > 0.0);
    assert!(second.metric("sf_writer_updates_applied_total").await > 0.0);
    let conflicts = first.metric("sf_writer_claim_conflicts_total").await
        + second.metric("sf_writer_claim_conflicts_total").await;
    eprintln!(
        "two replicas: {applied} applied, {stale} skipped as stale, {conflicts} claim conflicts"
    );
    first.stop().await;
    second.stop().await;
}
