//! Updates waiting at the same moment share one sObject Collections request.

use serde_json::json;

use crate::harness::{activated, Harness, COLLECTION_ROUTE, SINGLE_ROUTE};

#[tokio::test]
async fn updates_under_load_go_out_in_few_collection_requests() {
    let h = Harness::start().await;
    let orders = h.seed_orders(600);
    let updates: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| activated(o, 1, 1000 + i as u64))
        .collect();
    h.publish_all(&updates).await;

    let writer = h.start_writer(&[]).await;
    let expected: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| {
            (
                o.clone(),
                "WHMCS_Order_ID__c",
                json!((1000 + i as u64).to_string()),
            )
        })
        .collect();
    h.wait_for_fields(&expected).await;
    h.wait_until_drained().await;

    let collections = h.requests(COLLECTION_ROUTE);
    let singles = h.requests(SINGLE_ROUTE);
    // 600 updates in batches of up to 200: three requests when nothing races, a few more when
    // the first batch starts before all are visible. Far fewer than one per update either way.
    assert!(
        collections + singles <= 12,
        "{collections} collection + {singles} single requests for 600 updates"
    );
    assert!(collections >= 3, "{collections} collection requests");
    assert_eq!(h.order(&orders[0])["Activation_Status__c"], "Activated");
    assert_eq!(
        writer.metric("sf_writer_updates_applied_total").await,
        600.0
    );
    assert!(writer.metric("sf_writer_salesforce_api_usage").await > 0.0);
    assert_eq!(
        writer.metric("sf_writer_salesforce_api_limit").await,
        15000.0
    );
    let metrics = writer.metrics().await;
    assert!(
        metrics.contains("sf_writer_batch_updates_bucket"),
        "{metrics}"
    );

    // A lone update goes out as a single-record PATCH.
    let lone = activated(&orders[0], 2, 7);
    h.publish_all(std::slice::from_ref(&lone)).await;
    h.wait_for_fields(&[(orders[0].clone(), "WHMCS_Order_ID__c", json!("7"))])
        .await;
    assert_eq!(h.requests(SINGLE_ROUTE), singles + 1);

    let (status, health) = writer.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["integrations"]["salesforce"]["status"], "up");
    assert_eq!(health["integrations"]["nats"]["status"], "up");
    writer.stop().await;
}
