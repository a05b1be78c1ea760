//! Every error code of the contract (docs/contract.md §5), each with the Salesforce update it produces.

use std::time::Duration;

use messages::{OutcomeResult, ProvisioningOutcomeV1};
use whmcs_sim::ActionFaults;

use crate::harness::{Harness, SeededOrder};

/// Provisions `order` once and returns the outcome, after checking that a failed job hands
/// sf-writer exactly the failure fields.
async fn run_once(h: &Harness, order_id: &str, extra: &[(&str, &str)]) -> ProvisioningOutcomeV1 {
    let provisioner = h.start_provisioner(extra).await;
    let mut outcomes = h.outcomes(order_id).await;
    h.publish(&h.request(order_id)).await;
    let outcome = outcomes.next().await;
    // The journal is closed before the outcome is published: the status API already says so.
    let status = crate::status::status_of(&provisioner, order_id).await;
    crate::status::assert_matches_outcome(&status, &outcome);
    provisioner.stop().await;
    if outcome.result == OutcomeResult::Failed {
        let updates = h.updates_for(order_id).await;
        assert_eq!(updates.len(), 1, "one Salesforce update per failed job");
        let fields = &updates[0].fields;
        assert_eq!(fields["Activation_Status__c"], "Failed");
        assert_eq!(
            fields["Activation_Error_Code__c"].as_str(),
            outcome.error_code.as_deref()
        );
        assert_eq!(
            fields["Activation_Error_Message__c"].as_str(),
            outcome.error_message.as_deref()
        );
        assert!(outcome
            .error_message
            .as_deref()
            .is_some_and(|m| !m.is_empty() && m.chars().count() <= 255));
    }
    outcome
}

fn assert_failed(outcome: &ProvisioningOutcomeV1, code: &str, step: &str) {
    assert_eq!(outcome.result, OutcomeResult::Failed, "{outcome:?}");
    assert_eq!(outcome.error_code.as_deref(), Some(code), "{outcome:?}");
    assert_eq!(outcome.step, step, "{outcome:?}");
}

#[tokio::test]
async fn account_without_whmcs_client_fails_client_missing() {
    let h = Harness::start().await;
    let sf = h.sf.state();
    let account = sf.seed_account("No Client Ltd", None);
    let product = sf.seed_product("Hosting", Some("1"), Some("Monthly"));
    let order = sf.seed_order(&account, &[(product, 1)]);
    h.activate(&order);
    let outcome = run_once(&h, &order, &[]).await;
    assert_failed(&outcome, "CLIENT_MISSING", "mapping");
    assert_eq!(h.whmcs_calls("AddOrder"), 0);
}

#[tokio::test]
async fn order_without_items_fails_no_items() {
    let h = Harness::start().await;
    let sf = h.sf.state();
    let account = sf.seed_account("Acme", Some("1"));
    let order = sf.seed_order::<String, f64>(&account, &[]);
    h.activate(&order);
    assert_failed(&run_once(&h, &order, &[]).await, "NO_ITEMS", "mapping");
}

#[tokio::test]
async fn unmapped_items_fail_mapping_missing_naming_the_items() {
    let h = Harness::start().await;
    let sf = h.sf.state();
    let account = sf.seed_account("Acme", Some("1"));
    let unmapped = sf.seed_product("Legacy Box", None, Some("Monthly"));
    let yearly = sf.seed_product("Odd Cycle", Some("3"), Some("Yearly"));
    let fine = sf.seed_product("Hosting", Some("2"), Some("Annually"));
    let order = sf.seed_order(&account, &[(unmapped, 1), (yearly, 1), (fine, 1)]);
    h.activate(&order);
    let outcome = run_once(&h, &order, &[]).await;
    assert_failed(&outcome, "MAPPING_MISSING", "mapping");
    let message = outcome.error_message.unwrap();
    assert!(
        message.contains("Legacy Box") && message.contains("Odd Cycle"),
        "{message}"
    );
    assert!(!message.contains("Hosting"), "{message}");
}

#[tokio::test]
async fn client_without_pay_method_fails_409() {
    let h = Harness::start().await;
    let client = h.whmcs.state().seed_client("Cardless", false);
    let pid = h.whmcs.state().seed_product("Hosting", &["monthly"]);
    let sf = h.sf.state();
    let account = sf.seed_account("Cardless", Some(&client.to_string()));
    let product = sf.seed_product("Hosting", Some(&pid.to_string()), Some("Monthly"));
    let order = sf.seed_order(&account, &[(product, 1)]);
    h.activate(&order);
    let outcome = run_once(&h, &order, &[]).await;
    assert_failed(&outcome, "409", "payment_method");
    assert_eq!(
        outcome.error_message.as_deref(),
        Some("Payment method missing")
    );
    assert_eq!(h.whmcs_calls("AddOrder"), 0);
}

#[tokio::test]
async fn whmcs_business_error_fails_whmcs_error_with_its_message() {
    let h = Harness::start().await;
    let SeededOrder {
        order_id,
        whmcs_client,
    } = h.seed_order();
    h.whmcs.state().set_faults(
        "AddOrder",
        ActionFaults::error("Unable to add order when client status is Closed", 1),
    );
    let outcome = run_once(&h, &order_id, &[]).await;
    assert_failed(&outcome, "WHMCS_ERROR", "whmcs_create");
    assert_eq!(
        outcome.error_message.as_deref(),
        Some("Unable to add order when client status is Closed")
    );
    assert!(h.whmcs_orders(whmcs_client).is_empty());
}

#[tokio::test]
async fn whmcs_http_failure_fails_with_the_status() {
    let h = Harness::start().await;
    let SeededOrder { order_id, .. } = h.seed_order();
    h.whmcs
        .state()
        .set_faults("AcceptOrder", ActionFaults::http_status(503, 1));
    assert_failed(&run_once(&h, &order_id, &[]).await, "503", "whmcs_accept");
}

#[tokio::test]
async fn salesforce_http_failure_fails_with_the_status() {
    let h = Harness::start().await;
    let SeededOrder { order_id, .. } = h.seed_order();
    h.sf.state()
        .update_faults(|f| f.rest_status = Some((500, 1)));
    let outcome = run_once(&h, &order_id, &[]).await;
    assert_failed(&outcome, "500", "order_details");
    assert_eq!(h.whmcs_calls("GetPayMethods"), 0);
}

#[tokio::test]
async fn whmcs_timeout_fails_etimeout() {
    let h = Harness::start().await;
    let SeededOrder { order_id, .. } = h.seed_order();
    h.whmcs.state().set_faults(
        "GetPayMethods",
        ActionFaults::hang(Duration::from_secs(10), 1),
    );
    assert_failed(
        &run_once(&h, &order_id, &[]).await,
        "ETIMEOUT",
        "payment_method",
    );
}

#[tokio::test]
async fn unreachable_whmcs_fails_econnrefused() {
    let h = Harness::start().await;
    let SeededOrder { order_id, .. } = h.seed_order();
    let closed = format!(
        "http://127.0.0.1:{}/includes/api.php",
        testkit::nats::free_port()
    );
    assert_failed(
        &run_once(&h, &order_id, &[("WHMCS_API_URL", &closed)]).await,
        "ECONNREFUSED",
        // The first WHMCS call is GetProducts, in the mapping step.
        "mapping",
    );
}

#[tokio::test]
async fn products_whmcs_would_silently_drop_or_change_fail_mapping_missing() {
    let h = Harness::start().await;
    let client = h.whmcs.state().seed_client("Acme", true);
    let monthly_only = h.whmcs.state().seed_product("Hosting S", &["monthly"]);
    let sf = h.sf.state();
    let account = sf.seed_account("Acme", Some(&client.to_string()));
    // WHMCS would replace the cycle with Monthly, and drop product 999 without a word.
    let yearly = sf.seed_product(
        "Hosting S yearly",
        Some(&monthly_only.to_string()),
        Some("Annually"),
    );
    let ghost = sf.seed_product("Ghost Box", Some("999"), Some("Monthly"));
    let order = sf.seed_order(&account, &[(yearly, 1), (ghost, 1)]);
    h.activate(&order);
    let outcome = run_once(&h, &order, &[]).await;
    assert_failed(&outcome, "MAPPING_MISSING", "mapping");
    let message = outcome.error_message.unwrap();
    assert!(
        message.contains("Hosting S yearly") && message.contains("not offered Annually"),
        "{message}"
    );
    assert!(
        message.contains("Ghost Box") && message.contains("999"),
        "{message}"
    );
    assert_eq!(h.whmcs_calls("AddOrder"), 0);
}
