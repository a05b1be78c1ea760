//! Long rounds: a batch whose collection request was refused is written one record at a time,
//! and such a round can outlast both an Order's write claim and the messages' `ack_wait`. A claim
//! lost meanwhile must not let the older update land over a newer one another replica wrote, and
//! the messages must not be handed to anyone else while the round still works on them.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use sf_sim::faults::SlowRecords;
use sf_sim::Faults;

use crate::harness::{activated, failed, Harness, SINGLE_ROUTE, UPDATES_STREAM};

/// Every Salesforce call about a slow record takes this long: well inside the HTTP timeout the
/// tests give the writers (5 s), so each write succeeds even on a busy machine, but many of them
/// make a long round.
const SLOW: Duration = Duration::from_secs(2);

#[tokio::test]
async fn an_update_whose_claim_expired_mid_round_does_not_overwrite_a_newer_one() {
    let h = Harness::start().await;
    let orders = h.seed_orders(21);
    let (slow, order) = (&orders[..20], &orders[20]);
    // The shortest claim TTL the HTTP timeout allows (its write window, 10.4 s, holds two 5 s
    // requests), so the claim runs out within seconds; one batch at a time on A, so the newer
    // update goes to the other replica. B takes over about one TTL plus a redelivery delay
    // (at most 4 s) after it first runs into A's claim: some 18 s into A's round of 40 s.
    let settings = [
        ("SF_HTTP_TIMEOUT_SECS", "5"),
        ("SF_WRITER_CLAIM_TTL_SECS", "13"),
        ("SF_WRITER_CONCURRENCY", "1"),
    ];

    // A's batch: twenty slow Orders, then the Order under test at sequence 1 (an old failure).
    let mut first = slow.iter().map(|o| activated(o, 1, 7)).collect::<Vec<_>>();
    first.push(failed(order, 1, "old: seq 1"));
    h.publish_all(&first).await;
    // The collection request is refused as a whole, so the round after it writes the records
    // one by one in batch order: forty seconds of slow records before the Order under test.
    h.sim.state().set_faults(Faults {
        rest_status: Some((400, 1)),
        rest_slow_records: Some(SlowRecords {
            ids: slow.to_vec(),
            latency: SLOW,
        }),
        ..Faults::default()
    });
    let a = h.start_writer(&settings).await;
    testkit::wait::until(
        "replica A to write its records one by one",
        Duration::from_secs(30),
        || async { (h.requests(SINGLE_ROUTE) >= 1).then_some(()) },
    )
    .await;

    // Replica B gets the newer update of the Order while A's round is still on the slow ones.
    let b = h.start_writer(&settings).await;
    h.publish_all(&[activated(order, 2, 42)]).await;
    // B writes it once A's claim has expired (A renews only the claims it is about to use).
    h.wait_for_fields(&[(order.clone(), "WHMCS_Order_ID__c", json!("42"))])
        .await;
    // Twenty slow writes and B's one: more would mean A wrote the Order first.
    assert!(
        h.requests(SINGLE_ROUTE) <= 21,
        "A reached the Order before B wrote seq 2: the test did not set up the race"
    );

    // A's round now reaches the Order at full speed, holding a claim that was lost.
    h.sim.state().update_faults(|f| f.rest_slow_records = None);
    h.wait_until_drained().await;

    let record = h.order(order);
    assert_eq!(record["Activation_Status__c"], "Activated", "{record}");
    assert_eq!(record["WHMCS_Order_ID__c"], "42", "{record}");
    assert_eq!(
        record["Activation_Error_Message__c"],
        json!(null),
        "{record}"
    );
    for o in slow {
        assert_eq!(h.order(o)["Activation_Status__c"], "Activated", "{o}");
    }
    assert_eq!(a.metric("sf_writer_claims_lost_total").await, 1.0);
    assert_eq!(b.metric("sf_writer_updates_applied_total").await, 1.0);
    assert_eq!(a.metric("sf_writer_updates_applied_total").await, 20.0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_round_longer_than_ack_wait_keeps_its_messages() {
    const RECORDS: usize = 6;
    let h = Harness::start().await;
    let orders = h.seed_orders(RECORDS);
    let updates: Vec<_> = orders.iter().map(|o| activated(o, 1, 5)).collect();
    h.publish_all(&updates).await;
    // Split, then six slow records one by one: 12 s, twice the ack_wait of 6 s. In-progress
    // acks go out every 2 s, so a stall of up to about 4 s still cannot cause a redelivery.
    h.sim.state().set_faults(Faults {
        rest_status: Some((400, 1)),
        rest_slow_records: Some(SlowRecords {
            ids: orders.clone(),
            latency: SLOW,
        }),
        ..Faults::default()
    });
    // The default concurrency leaves batch slots free to pull whatever JetStream redelivers.
    let writer = h.start_writer(&[("SF_WRITER_ACK_WAIT_SECS", "6")]).await;
    let expected: Vec<_> = orders
        .iter()
        .map(|o| (o.clone(), "Activation_Status__c", json!("Activated")))
        .collect();
    h.wait_for_fields(&expected).await;
    h.wait_until_drained().await;

    // Each message was delivered once: no ack_wait ran out while the round wrote.
    let js = h.js().await;
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_stream(UPDATES_STREAM)
        .await
        .unwrap()
        .get_consumer("sf-writer")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.delivered.consumer_sequence, RECORDS as u64, "{info:?}");
    assert_eq!(writer.metric("sf_writer_claim_conflicts_total").await, 0.0);
    assert_eq!(h.requests(SINGLE_ROUTE), RECORDS as u64);
    writer.stop().await;
}
