//! `/metrics` counts what happened: one provisioned and one failed order.

use messages::OutcomeResult;

use crate::harness::Harness;

/// The value of the first sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn a_provisioned_and_a_failed_order_are_counted() {
    let h = Harness::start().await;
    let good = h.seed_order();
    let sf = h.sf.state();
    let account = sf.seed_account("No Client Ltd", None);
    let product = sf.seed_product("Hosting", Some("1"), Some("Monthly"));
    let bad = sf.seed_order(&account, &[(product, 1)]);
    h.activate(&bad);

    let provisioner = h.start_provisioner(&[]).await;
    let mut good_outcomes = h.outcomes(&good.order_id).await;
    let mut bad_outcomes = h.outcomes(&bad).await;
    h.publish(&h.request(&good.order_id)).await;
    h.publish(&h.request(&bad)).await;
    assert_eq!(good_outcomes.next().await.result, OutcomeResult::Activated);
    assert_eq!(bad_outcomes.next().await.result, OutcomeResult::Failed);

    // The outcome is published just before the job's metrics move; give them a moment.
    let running = &provisioner;
    let text = testkit::wait::until(
        "both jobs' metrics",
        std::time::Duration::from_secs(10),
        || async move {
            let text = running.metrics().await;
            // The job's last metric moves after its outcome is published.
            (sample(&text, "provisioner_enqueue_to_outcome_seconds_count") == Some(2.0))
                .then_some(text)
        },
    )
    .await;
    provisioner.stop().await;

    let count =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
    assert_eq!(
        count(r#"provisioner_attempts_total{result="activated",error_code=""}"#),
        1.0
    );
    assert_eq!(
        count(r#"provisioner_attempts_total{result="failed",error_code="CLIENT_MISSING"}"#),
        1.0
    );
    assert_eq!(count("provisioner_duration_seconds_count"), 2.0);
    assert_eq!(
        count(r#"provisioner_step_duration_seconds_count{step="mapping"}"#),
        2.0
    );
    assert_eq!(
        count(r#"whmcs_api_calls_total{action="AddOrder",status="200"}"#),
        1.0
    );
    assert_eq!(
        count(r#"whmcs_api_calls_total{action="AcceptOrder",status="200"}"#),
        1.0
    );
    assert_eq!(
        count(r#"salesforce_api_calls_total{action="query",status="200"}"#),
        2.0
    );
    assert_eq!(
        count(r#"salesforce_api_calls_total{action="token",status="200"}"#),
        1.0
    );
    assert!(text.contains("provisioner_consumer_pending "), "{text}");
    assert!(
        text.contains("provisioner_enqueue_to_outcome_seconds_count 2"),
        "{text}"
    );
}
