//! The happy path, the guard, and what the messages carry.

use crate::harness::Harness;

#[tokio::test]
async fn approved_order_is_provisioned_and_reported() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    let request = h.request(&seeded.order_id);
    h.publish(&request).await;

    let outcome = outcomes.next().await;
    assert_eq!(outcome.schema, "provisioning.outcome.v1");
    assert_eq!(
        outcome.result,
        messages::OutcomeResult::Activated,
        "{outcome:?}"
    );
    assert_eq!(outcome.step, "sf_success_update");
    assert_eq!(outcome.event_id, request.event_id);
    assert_eq!(outcome.correlation_id, request.correlation_id);
    assert_eq!(outcome.idem_key, request.idem_key);
    assert!(outcome.error_code.is_none());

    let orders = h.whmcs_orders(seeded.whmcs_client);
    assert_eq!(orders.len(), 1);
    let order = &orders[0];
    assert_eq!(Some(order.id), outcome.whmcs_order_id);
    assert_eq!(order.status, "Active", "AcceptOrder ran");
    assert!(
        order
            .notes
            .contains(&format!("[sf-order:{}]", seeded.order_id)),
        "{}",
        order.notes
    );
    assert_eq!(outcome.whmcs_service_ids, order.service_ids());
    assert_eq!(outcome.whmcs_invoice_id, order.invoice_id);

    let updates = h.updates_for(&seeded.order_id).await;
    assert_eq!(updates.len(), 1);
    let fields = &updates[0].fields;
    assert_eq!(fields["Activation_Status__c"], "Activated");
    assert_eq!(fields["WHMCS_Order_ID__c"], order.id.to_string());
    assert_eq!(fields["Activation_Error_Code__c"], serde_json::Value::Null);
    assert_eq!(
        fields["Activation_Error_Message__c"],
        serde_json::Value::Null
    );
    assert!(updates[0].sequence > 0);
    provisioner.stop().await;
}

#[tokio::test]
async fn order_not_activating_is_skipped_without_touching_whmcs() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    h.sf.state()
        .set_order_field(
            &seeded.order_id,
            "Activation_Status__c",
            serde_json::json!("Activated"),
        )
        .unwrap();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, messages::OutcomeResult::Skipped);
    assert_eq!(outcome.step, "guard");
    assert_eq!(h.whmcs_calls("AddOrder"), 0);
    assert_eq!(h.whmcs_calls("GetPayMethods"), 0);
    assert!(
        h.updates_for(&seeded.order_id).await.is_empty(),
        "a skipped job changes nothing in Salesforce"
    );
    provisioner.stop().await;
}

#[tokio::test]
async fn malformed_request_is_dead_lettered_and_the_next_one_runs() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let js = async_nats::jetstream::new(h.nats.client().await);
    js.publish("provisioning.requested.garbage", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let seeded = h.seed_order();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    assert_eq!(
        outcomes.next().await.result,
        messages::OutcomeResult::Activated
    );
    let dead: Vec<messages::DeadLetterV1> = h
        .stored(
            "PROVISIONING_DEADLETTER",
            "provisioning.deadletter.provisioner",
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason_code, "invalid_request");
    assert_eq!(
        dead[0].origin.stream.as_deref(),
        Some("PROVISIONING_REQUESTS")
    );
    assert_eq!(dead[0].origin.stream_sequence, Some(1));
    provisioner.stop().await;
}
