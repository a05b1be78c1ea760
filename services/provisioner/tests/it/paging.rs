//! An Order with more items than one page of Salesforce's nested `OrderItems` result is read
//! whole: the provisioner follows the items' `nextRecordsUrl` before mapping.

use messages::OutcomeResult;

use crate::harness::Harness;

/// An activated order with one item per product, each product its own WHMCS product, so every
/// WHMCS line can be traced to its Salesforce item. Returns the order, the WHMCS client and the
/// WHMCS product ids in item order.
fn seed_order_with_items(h: &Harness, items: usize) -> (String, u64, Vec<u64>) {
    let whmcs = h.whmcs.state();
    let sf = h.sf.state();
    let client = whmcs.seed_client("Bulk Buyer Ltd", true);
    let account = sf.seed_account("Bulk Buyer Ltd", Some(&client.to_string()));
    let mut pids = Vec::new();
    let mut lines = Vec::new();
    for n in 1..=items {
        let name = format!("Hosting {n}");
        let pid = whmcs.seed_product(&name, &["monthly"]);
        lines.push((
            sf.seed_product(&name, Some(&pid.to_string()), Some("Monthly")),
            1,
        ));
        pids.push(pid);
    }
    let order = sf.seed_order(&account, &lines);
    h.activate(&order);
    (order, client, pids)
}

#[tokio::test]
async fn an_order_with_more_items_than_a_page_is_provisioned_whole() {
    let h = Harness::start().await;
    // Five items in pages of two: the query's page and two more through nextRecordsUrl.
    h.sf.state()
        .update_faults(|f| f.soql_child_page_size = std::num::NonZeroUsize::new(2));
    let (order, client, pids) = seed_order_with_items(&h, 5);
    let provisioner = h.start_provisioner(&[]).await;
    let mut outcomes = h.outcomes(&order).await;
    h.publish(&h.request(&order)).await;

    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Activated, "{outcome:?}");
    let orders = h.whmcs_orders(client);
    assert_eq!(orders.len(), 1);
    let lines: Vec<u64> = orders[0].services.iter().map(|s| s.pid).collect();
    assert_eq!(lines, pids, "every item is a WHMCS line, in order");
    assert_eq!(outcome.whmcs_service_ids.len(), 5);
    let stats = h.sf.state().stats();
    assert_eq!(
        stats.rest_requests_by_route.get("GET /query/{locator}"),
        Some(&2),
        "{stats:?}"
    );
    provisioner.stop().await;
}

#[tokio::test]
async fn a_salesforce_error_on_a_later_page_fails_order_details_without_touching_whmcs() {
    let h = Harness::start().await;
    // The items' cursor is released before the provisioner asks for its second page.
    h.sf.state().update_faults(|f| {
        f.soql_child_page_size = std::num::NonZeroUsize::new(2);
        f.soql_locator_idle_ms = Some(0);
    });
    let (order, client, _) = seed_order_with_items(&h, 5);
    let provisioner = h.start_provisioner(&[]).await;
    let mut outcomes = h.outcomes(&order).await;
    h.publish(&h.request(&order)).await;

    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Failed, "{outcome:?}");
    assert_eq!(outcome.step, "order_details", "{outcome:?}");
    assert_eq!(outcome.error_code.as_deref(), Some("400"), "{outcome:?}");
    assert!(
        outcome
            .error_message
            .as_deref()
            .is_some_and(|m| m.contains("INVALID_QUERY_LOCATOR")),
        "{outcome:?}"
    );
    assert!(h.whmcs_orders(client).is_empty());
    assert_eq!(h.whmcs_calls("AddOrder"), 0);
    let updates = h.updates_for(&order).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].fields["Activation_Status__c"], "Failed");
    assert_eq!(updates[0].fields["Activation_Error_Code__c"], "400");
    provisioner.stop().await;
}
