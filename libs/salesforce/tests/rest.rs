//! The REST client against sf-sim: `query_more` reads a child relationship's pages through its
//! `nextRecordsUrl`, and a released cursor is a typed HTTP error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use salesforce::rest::{QueryResult, RestClient, RestError};
use salesforce::{SalesforceSettings, TokenProvider};
use serde_json::Value;
use sf_sim::SfSim;

async fn start() -> (SfSim, RestClient) {
    let sim = testkit::sim::start_sf().await;
    let settings = SalesforceSettings::from_env(&platform::config::Env::from_pairs(
        testkit::sim::sf_env(&sim),
    ))
    .expect("settings");
    let http = reqwest::Client::new();
    let rest = RestClient::new(http.clone(), TokenProvider::new(settings, http));
    (sim, rest)
}

/// An order with five items and a child page size of two: three pages.
fn seed(sim: &SfSim) -> String {
    let s = sim.state();
    let account = s.seed_account("Acme", Some("42"));
    let product = s.seed_product("Hosting", Some("7"), Some("Monthly"));
    let items: Vec<(&str, u32)> = (1..=5).map(|q| (product.as_str(), q)).collect();
    let order = s.seed_order(&account, &items);
    s.update_faults(|f| f.soql_child_page_size = std::num::NonZeroUsize::new(2));
    order
}

fn first_next_url(records: &[Value]) -> String {
    records[0]["OrderItems"]["nextRecordsUrl"]
        .as_str()
        .expect("paged child result")
        .to_owned()
}

#[tokio::test]
async fn query_more_reads_a_child_cursor_page_by_page() {
    let (sim, rest) = start().await;
    let order = seed(&sim);
    let records: Vec<Value> = rest
        .query(&format!(
            "SELECT Id, (SELECT Id, Quantity FROM OrderItems) FROM Order WHERE Id = '{order}'"
        ))
        .await
        .unwrap();
    let mut next = Some(first_next_url(&records));
    let mut quantities = Vec::new();
    while let Some(url) = next.take() {
        let page: QueryResult<Value> = rest.query_more(&url).await.unwrap();
        assert_eq!(page.total_size, 5);
        quantities.extend(page.records.iter().map(|r| r["Quantity"].as_f64().unwrap()));
        next = page.next_records_url.filter(|_| !page.done);
    }
    assert_eq!(quantities, [3.0, 4.0, 5.0]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_released_cursor_is_an_http_error_with_salesforces_code() {
    let (sim, rest) = start().await;
    let order = seed(&sim);
    let records: Vec<Value> = rest
        .query(&format!(
            "SELECT Id, (SELECT Id FROM OrderItems) FROM Order WHERE Id = '{order}'"
        ))
        .await
        .unwrap();
    sim.state().expire_query_locators();
    let err = rest
        .query_more::<Value>(&first_next_url(&records))
        .await
        .unwrap_err();
    match &err {
        RestError::Http { status, errors } => {
            assert_eq!(*status, 400);
            assert_eq!(errors[0].error_code, "INVALID_QUERY_LOCATOR");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.contract_code(), "400");
    assert!(!err.is_transient());
    sim.shutdown().await;
}
