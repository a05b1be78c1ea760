//! The provisioner's Order reads coalesce under load: reads asked for while every query slot is
//! in flight go out together as one `Id IN (...)` query, and each job gets its own Order.

use std::sync::Arc;
use std::time::Duration;

use provisioner::order_reader::OrderReader;
use provisioner::ProvisionerSettings;
use salesforce::auth::TokenProvider;
use salesforce::rest::RestClient;

use crate::harness::Harness;

/// Waiters wait for the slot, whatever the machine's speed.
const NO_WAIT_BOUND: Duration = Duration::from_secs(3600);

fn rest_client(h: &Harness) -> RestClient {
    let env = platform::config::Env::from_pairs(h.env(&[]));
    let settings = ProvisionerSettings::from_env(&env).expect("settings");
    let http = reqwest::Client::new();
    RestClient::new(http.clone(), TokenProvider::new(settings.salesforce, http))
}

fn queries(h: &Harness) -> u64 {
    let stats = h.sf.state().stats();
    stats
        .rest_requests_by_route
        .get("GET /query")
        .copied()
        .unwrap_or(0)
}

/// An Order with `items` items, each its own product.
fn seed_order_with_items(h: &Harness, items: usize) -> String {
    let sf = h.sf.state();
    let account = sf.seed_account("Bulk Buyer Ltd", Some("7"));
    let lines: Vec<(String, u32)> = (1..=items)
        .map(|n| {
            let name = format!("Hosting {n}");
            (sf.seed_product(&name, Some("5"), Some("Monthly")), 1)
        })
        .collect();
    sf.seed_order(&account, &lines)
}

#[tokio::test]
async fn reads_that_wait_for_a_slot_go_out_as_one_query_and_each_gets_its_own_order() {
    let h = Harness::start().await;
    // Items in pages of two: a batched Order's items are still read to the end.
    h.sf.state()
        .update_faults(|f| f.soql_child_page_size = std::num::NonZeroUsize::new(2));
    let first = h.seed_order().order_id;
    let second = h.seed_order().order_id;
    let paged = seed_order_with_items(&h, 5);
    let cancelled = h.seed_order().order_id;
    let absent = messages::salesforce_id::canonical("801000000009999").expect("an id");
    let reader = OrderReader::new(rest_client(&h), 1, NO_WAIT_BOUND);

    // The one slot is taken by the first read; every read asked for meanwhile waits for it.
    let lone = reader.read(&first);
    tokio::pin!(lone);
    assert!(futures::poll!(&mut lone).is_pending());
    let waiting = [
        second.clone(),
        paged.clone(),
        absent.clone(),
        second.clone(),
    ];
    let mut waiters: Vec<_> = waiting.iter().map(|id| Box::pin(reader.read(id))).collect();
    for waiter in &mut waiters {
        assert!(futures::poll!(waiter.as_mut()).is_pending());
    }
    // A job cancelled while it waits leaves the batch to the others.
    let mut gone = Box::pin(reader.read(&cancelled));
    assert!(futures::poll!(gone.as_mut()).is_pending());
    drop(gone);

    let lone = lone.await.expect("lone read").expect("first order");
    assert_eq!(lone.id, first);
    let answers = futures::future::join_all(waiters).await;
    let ids: Vec<Option<String>> = answers
        .iter()
        .map(|answer| {
            answer
                .as_ref()
                .expect("batched read")
                .as_ref()
                .map(|o| o.id.clone())
        })
        .collect();
    assert_eq!(
        ids,
        [
            Some(second.clone()),
            Some(paged.clone()),
            None,
            Some(second)
        ]
    );
    let items = answers[1]
        .as_ref()
        .ok()
        .and_then(Option::as_ref)
        .and_then(|o| o.order_items.as_ref())
        .expect("items");
    assert_eq!(items.records.len(), 5, "every page of the items is read");
    assert!(items.done);
    assert_eq!(queries(&h), 2, "one query alone, one for the batch");
}

#[tokio::test]
async fn a_failed_batched_query_is_every_waiters_error_with_the_same_code() {
    let h = Harness::start().await;
    let orders: Vec<String> = (0..3).map(|_| h.seed_order().order_id).collect();
    let reader = OrderReader::new(rest_client(&h), 1, NO_WAIT_BOUND);
    // A token first, so the failures below are the queries'.
    assert!(reader.read(&orders[0]).await.expect("warm-up").is_some());
    h.sf.state()
        .update_faults(|f| f.rest_status = Some((503, 2)));

    let lone = reader.read(&orders[0]);
    tokio::pin!(lone);
    assert!(futures::poll!(&mut lone).is_pending());
    let mut waiters: Vec<_> = orders[1..]
        .iter()
        .map(|id| Box::pin(reader.read(id)))
        .collect();
    for waiter in &mut waiters {
        assert!(futures::poll!(waiter.as_mut()).is_pending());
    }
    let lone = lone.await.expect_err("the lone query fails");
    assert_eq!(lone.contract_code(), "503");
    for answer in futures::future::join_all(waiters).await {
        let err: Arc<_> = answer.expect_err("the batched query fails");
        assert_eq!(err.contract_code(), "503");
    }
    assert_eq!(queries(&h), 3);
    // The slot is free again: the next read goes out at once and succeeds.
    assert!(reader.read(&orders[2]).await.expect("read").is_some());
}

#[tokio::test]
async fn waiters_do_not_wait_past_the_bound_for_a_slot() {
    let h = Harness::start().await;
    // The lone read's Order has its items in three pages, three round trips at 300 ms each;
    // the waiters' batch, sent after the 20 ms bound, needs one.
    h.sf.state()
        .update_faults(|f| f.soql_child_page_size = std::num::NonZeroUsize::new(1));
    let slow = seed_order_with_items(&h, 3);
    let waiting: Vec<String> = (0..2).map(|_| h.seed_order().order_id).collect();
    let reader = OrderReader::new(rest_client(&h), 1, Duration::from_millis(20));
    assert!(reader.read(&waiting[0]).await.expect("warm-up").is_some());
    h.sf.state()
        .update_faults(|f| f.rest_latency = Duration::from_millis(300));

    let lone = reader.read(&slow);
    tokio::pin!(lone);
    assert!(futures::poll!(&mut lone).is_pending());
    let waiters = futures::future::join_all(waiting.iter().map(|id| reader.read(id)));
    let answers = tokio::select! {
        biased;
        answers = waiters => answers,
        _ = &mut lone => panic!("the waiters waited for the slot"),
    };
    for (answer, id) in answers.iter().zip(&waiting) {
        let order = answer
            .as_ref()
            .expect("batched read")
            .as_ref()
            .expect("order");
        assert_eq!(&order.id, id);
    }
    let lone = lone.await.expect("lone read").expect("order");
    assert_eq!(lone.order_items.expect("items").records.len(), 3);
    // The warm-up, the lone read and one batch.
    assert_eq!(queries(&h), 3);
}
