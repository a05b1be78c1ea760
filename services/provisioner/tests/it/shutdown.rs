//! SIGTERM: stop pulling, let running jobs finish within the grace period, report the rest as
//! INTERRUPTED (the worker itself, without waiting for recovery).

use std::time::Duration;

use messages::OutcomeResult;
use whmcs_sim::ActionFaults;

use crate::harness::{Harness, WAIT};

#[tokio::test]
async fn a_job_finishing_within_the_grace_period_completes() {
    let h = Harness::start().await;
    let provisioner = h
        .start_provisioner(&[("PROVISIONER_SHUTDOWN_GRACE_SECS", "10")])
        .await;
    let seeded = h.seed_order();
    h.whmcs.state().set_faults(
        "AcceptOrder",
        ActionFaults::latency(Duration::from_millis(700)),
    );
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    testkit::wait::until("AcceptOrder in progress", WAIT, || async {
        (h.whmcs_calls("AcceptOrder") >= 1).then_some(())
    })
    .await;
    provisioner.stop().await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Activated, "{outcome:?}");
}

#[tokio::test]
async fn a_job_outliving_the_grace_period_is_reported_interrupted_by_its_worker() {
    let h = Harness::start().await;
    let provisioner = h
        .start_provisioner(&[
            ("PROVISIONER_SHUTDOWN_GRACE_SECS", "1"),
            ("PROVISIONER_RECOVERY_INTERVAL_SECS", "600"),
        ])
        .await;
    let seeded = h.seed_order();
    h.whmcs.state().set_faults(
        "AcceptOrder",
        ActionFaults::latency(Duration::from_secs(30)),
    );
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    testkit::wait::until("AcceptOrder in progress", WAIT, || async {
        (h.whmcs_calls("AcceptOrder") >= 1).then_some(())
    })
    .await;
    provisioner.stop().await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Failed, "{outcome:?}");
    assert_eq!(outcome.error_code.as_deref(), Some("INTERRUPTED"));
    assert_eq!(outcome.step, "whmcs_accept");
    let updates = h.updates_for(&seeded.order_id).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].fields["Activation_Error_Code__c"], "INTERRUPTED");
}

/// A supervised task that dies stops the provisioner with its failure (its exit is non-zero).
#[tokio::test]
async fn a_dead_background_task_stops_the_provisioner_with_an_error() {
    let h = Harness::start().await;
    let env = platform::config::Env::from_pairs(h.env(&[]));
    let settings = provisioner::ProvisionerSettings::from_env(&env).unwrap();
    testkit::service::assert_a_dead_task_stops_the_service(settings).await;
}
