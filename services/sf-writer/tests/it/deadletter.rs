//! Records Salesforce refuses for good go to the dead-letter subject; the rest of their batch is
//! applied.

use base64::Engine;
use serde_json::json;

use crate::harness::{activated, failed, update, Harness, COLLECTION_ROUTE, UPDATES_STREAM};

#[tokio::test]
async fn refused_records_are_dead_lettered_while_the_rest_of_the_batch_applies() {
    let h = Harness::start().await;
    let orders = h.seed_orders(10);
    assert!(h.sim.state().delete_order(&orders[3]));
    let mut updates: Vec<_> = orders.iter().map(|o| activated(o, 1, 42)).collect();
    // Over the 255 characters Activation_Error_Message__c holds.
    updates[5] = failed(&orders[5], 1, &"x".repeat(300));
    // Not a picklist value.
    updates[7] = update(&orders[7], 1, json!({"Activation_Status__c": "Sideways"}));
    h.publish_all(&updates).await;
    h.publish_raw("sf.order.update.801000000000009AAA", b"{not json")
        .await;

    let writer = h.start_writer(&[]).await;
    h.wait_until_drained().await;

    for (i, order) in orders.iter().enumerate() {
        if [3, 5, 7].contains(&i) {
            continue;
        }
        assert_eq!(
            h.order(order)["Activation_Status__c"],
            "Activated",
            "order {i}"
        );
    }
    assert!(h.order(&orders[5])["Activation_Status__c"].is_null());
    assert!(h.order(&orders[7])["Activation_Status__c"].is_null());
    // All valid updates went out together (plus, at most, a few stragglers).
    assert!(h.requests(COLLECTION_ROUTE) >= 1);

    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 4, "{letters:#?}");
    assert!(letters
        .iter()
        .all(|(subject, _)| subject == "provisioning.deadletter.sf-writer"));
    let by_code = |code: &str| {
        letters
            .iter()
            .find(|(_, l)| l.reason_code == code)
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| panic!("no dead letter {code}: {letters:#?}"))
    };
    let deleted = by_code("ENTITY_IS_DELETED");
    assert_eq!(deleted.service, "sf-writer");
    assert_eq!(deleted.origin.stream.as_deref(), Some(UPDATES_STREAM));
    assert_eq!(deleted.origin.stream_sequence, Some(4));
    assert_eq!(
        deleted.origin.subject.as_deref(),
        Some(format!("sf.order.update.{}", orders[3]).as_str())
    );
    let original = base64::engine::general_purpose::STANDARD
        .decode(&deleted.payload_base64)
        .unwrap();
    let original: messages::OrderUpdateV1 = serde_json::from_slice(&original).unwrap();
    assert_eq!(original.event_id, updates[3].event_id);
    assert!(by_code("STRING_TOO_LONG")
        .reason
        .contains("Activation_Error_Message__c"));
    by_code("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST");
    assert!(by_code("invalid_update")
        .reason
        .contains("not sf.order.update.v1"));

    assert_eq!(writer.metric("sf_writer_dead_letters_total").await, 4.0);
    assert_eq!(writer.metric("sf_writer_updates_applied_total").await, 7.0);
    writer.stop().await;
}
