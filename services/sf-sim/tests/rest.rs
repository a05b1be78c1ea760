//! The REST API: the contract's SOQL reads and their response shape, query errors and
//! injection attempts, Order updates one by one and in collections, auth and faults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use sf_sim::{Faults, SfSim};

const ORDER_QUERY: &str = "SELECT Id, AccountId, Status, Activation_Status__c, WHMCS_Order_ID__c, \
    Account.WH_Account__c, (SELECT Id, Quantity, Product2.Name, Product2.WH_Product_ID__c, \
    Product2.Billing_Cycle__c FROM OrderItems) FROM Order WHERE Id = '{id}'";

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn new(sim: &SfSim) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("{}/services/data/v62.0", sim.instance_url()),
            token: token(sim).await,
        }
    }

    async fn query(&self, soql: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/query", self.base))
            .query(&[("q", soql)])
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .patch(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }
}

#[tokio::test]
async fn contract_order_query_has_salesforce_shape() {
    let sim = start().await;
    let s = sim.state();
    let account = s.seed_account("Acme", Some("42"));
    let hosting = s.seed_product("Hosting", Some("7"), Some("Monthly"));
    let domain = s.seed_product("Domain", None, Some("Annually"));
    let order = s.seed_order(&account, &[(hosting.as_str(), 2), (domain.as_str(), 1)]);
    let api = Api::new(&sim).await;

    let (status, body) = api.query(&ORDER_QUERY.replace("{id}", &order)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["done"], true);
    let record = &body["records"][0];
    assert_eq!(
        record["attributes"],
        json!({"type": "Order", "url": format!("/services/data/v62.0/sobjects/Order/{order}")})
    );
    assert_eq!(record["Id"], order);
    assert_eq!(record["AccountId"], account);
    assert_eq!(record["Status"], "Draft");
    assert_eq!(record["Activation_Status__c"], Value::Null);
    assert_eq!(record["WHMCS_Order_ID__c"], Value::Null);
    assert_eq!(record["Account"]["attributes"]["type"], "Account");
    assert_eq!(record["Account"]["WH_Account__c"], "42");
    let items = &record["OrderItems"];
    assert_eq!(items["totalSize"], 2);
    assert_eq!(items["done"], true);
    let first = &items["records"][0];
    assert_eq!(first["attributes"]["type"], "OrderItem");
    assert_eq!(first["Quantity"], 2.0);
    assert_eq!(first["Product2"]["attributes"]["type"], "Product2");
    assert_eq!(first["Product2"]["Name"], "Hosting");
    assert_eq!(first["Product2"]["WH_Product_ID__c"], "7");
    assert_eq!(first["Product2"]["Billing_Cycle__c"], "Monthly");
    assert_eq!(
        items["records"][1]["Product2"]["WH_Product_ID__c"],
        Value::Null
    );
    assert_eq!(
        record.as_object().unwrap().len(),
        8,
        "only selected fields: {record}"
    );

    // The 15-character id finds the same order; keywords and names ignore case.
    let (_, short) = api
        .query(&format!(
            "select id, account.wh_account__c from ORDER where ID = '{}'",
            &order[..15]
        ))
        .await;
    assert_eq!(short["records"][0]["Id"], order);
    assert_eq!(short["records"][0]["Account"]["WH_Account__c"], "42");
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_relations_and_children_are_null() {
    let sim = start().await;
    let s = sim.state();
    let no_client = s.seed_account("No client", None);
    let empty = s.seed_order::<&str, f64>(&no_client, &[]);
    let dangling = s.seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let api = Api::new(&sim).await;

    let (_, body) = api.query(&ORDER_QUERY.replace("{id}", &empty)).await;
    let record = &body["records"][0];
    assert_eq!(record["Account"]["WH_Account__c"], Value::Null);
    assert_eq!(record["OrderItems"], Value::Null);
    let (_, body) = api.query(&ORDER_QUERY.replace("{id}", &dangling)).await;
    assert_eq!(body["records"][0]["Account"], Value::Null);
    let (_, none) = api
        .query(&ORDER_QUERY.replace("{id}", "801Sm0000000zzz"))
        .await;
    assert_eq!(none, json!({"totalSize": 0, "done": true, "records": []}));
    sim.shutdown().await;
}

#[tokio::test]
async fn order_items_query_by_order() {
    let sim = start().await;
    let s = sim.state();
    let account = s.seed_account("Acme", Some("1"));
    let p = s.seed_product("VPS", Some("2"), Some("Quarterly"));
    let order = s.seed_order(&account, &[(p.as_str(), 3)]);
    let _other = s.seed_order(&account, &[(p.as_str(), 1)]);
    let api = Api::new(&sim).await;
    let (status, body) = api
        .query(&format!(
            "SELECT Id, Quantity, Product2.Name, Product2.WH_Product_ID__c, Product2.Billing_Cycle__c \
             FROM OrderItem WHERE OrderId = '{order}' LIMIT 200"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalSize"], 1);
    assert_eq!(body["records"][0]["Quantity"], 3.0);
    assert_eq!(
        body["records"][0]["Product2"]["Billing_Cycle__c"],
        "Quarterly"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn query_errors_and_injection_attempts() {
    let sim = start().await;
    let order = sim.state().seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let api = Api::new(&sim).await;
    let cases = [
        ("SELECT Id, Nope__c FROM Order", "INVALID_FIELD"),
        ("SELECT Id, Account.Nope__c FROM Order", "INVALID_FIELD"),
        ("SELECT Id FROM Nope__c", "INVALID_TYPE"),
        ("SELEC Id FROM Order", "MALFORMED_QUERY"),
        (
            "SELECT Id FROM Order WHERE Id = '801' OR Id != ''",
            "MALFORMED_QUERY",
        ),
        (
            "SELECT Id FROM Order WHERE Status = 'Draft' OR Status = 'Activated'",
            "MALFORMED_QUERY",
        ),
        (
            "SELECT Id FROM Order WHERE Status = 'x'; DELETE FROM Order",
            "MALFORMED_QUERY",
        ),
        (
            "SELECT Id FROM Order WHERE Status = 'unterminated",
            "MALFORMED_QUERY",
        ),
        (
            "SELECT Id FROM Order WHERE Id = '' OR ''=''",
            "MALFORMED_QUERY",
        ),
        (
            "SELECT Id FROM Order WHERE Id = 'not-an-id!'",
            "INVALID_QUERY_FILTER_OPERATOR",
        ),
        (
            r"SELECT Id FROM Order WHERE Id = '801\' OR Id != \''",
            "INVALID_QUERY_FILTER_OPERATOR",
        ),
        ("", "MALFORMED_QUERY"),
    ];
    for (soql, code) in cases {
        let (status, body) = api.query(soql).await;
        assert_eq!(status, 400, "{soql}: {body}");
        assert_eq!(body[0]["errorCode"], code, "{soql}: {body}");
        assert!(body[0]["message"].is_string());
    }
    // An escaped quote inside a text literal is data, not syntax: it simply matches nothing.
    let (status, body) = api
        .query(r"SELECT Id FROM Order WHERE Status = 'Draft\' OR Status != \''")
        .await;
    assert_eq!((status, body["totalSize"].clone()), (200, json!(0)));
    let (_, body) = api
        .query("SELECT Id FROM Order WHERE Status = 'Draft'")
        .await;
    assert_eq!(body["records"][0]["Id"], order);
    sim.shutdown().await;
}

#[tokio::test]
async fn every_response_carries_the_usage_header_and_auth_is_required() {
    let sim = start().await;
    let api = Api::new(&sim).await;
    let url = format!("{}/query?q=SELECT+Id+FROM+Order", api.base);
    let usage = |r: &reqwest::Response| {
        let value = r.headers()["sforce-limit-info"]
            .to_str()
            .unwrap()
            .to_owned();
        value
            .strip_prefix("api-usage=")
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let first = api
        .http
        .get(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let second = api
        .http
        .get(&url)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(usage(&second), usage(&first) + 1);
    assert!(first.headers()["sforce-limit-info"]
        .to_str()
        .unwrap()
        .ends_with("/15000"));

    let anonymous = api.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("sforce-limit-info"));
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "INVALID_SESSION_ID");
    let forged = api
        .http
        .get(&url)
        .bearer_auth("00D!nope")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let stats = sim.state().stats();
    assert_eq!(stats.rest_requests, 4);
    assert_eq!(stats.rest_requests_by_route["GET /query"], 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn patch_single_order() {
    let sim = start().await;
    let order = sim.state().seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    sim.state().approve_order(&order).unwrap();
    let api = Api::new(&sim).await;
    let path = format!("/sobjects/Order/{order}");

    let (status, body) = api
        .patch(
            &path,
            &json!({"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "1001",
                    "Activation_Error_Code__c": null, "Activation_Error_Message__c": null}),
        )
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let stored = sim.state().order(&order).unwrap();
    assert_eq!(stored["Activation_Status__c"], "Activated");
    assert_eq!(stored["WHMCS_Order_ID__c"], "1001");

    let cases = [
        (json!({"Nope__c": 1}), 400, "INVALID_FIELD"),
        (
            json!({"Activation_Status__c": "Done"}),
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ),
        (
            json!({"Activation_Error_Message__c": "x".repeat(256)}),
            400,
            "STRING_TOO_LONG",
        ),
        (
            json!({"AccountId": "001Sm0000000zzz"}),
            400,
            "INVALID_FIELD_FOR_INSERT_UPDATE",
        ),
        (json!([1, 2]), 400, "JSON_PARSER_ERROR"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = api.patch(&path, &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer[0]["errorCode"], code, "{body}: {answer}");
    }
    // A refused update changes nothing, not even the fields that were valid.
    let (status, _) = api
        .patch(&path, &json!({"Activation_Status__c": "Failed", "Activation_Error_Message__c": "y".repeat(300)}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        sim.state().order(&order).unwrap()["Activation_Status__c"],
        "Activated"
    );

    let (status, body) = api
        .patch(
            "/sobjects/Order/801Sm0000000zzz",
            &json!({"Status": "Draft"}),
        )
        .await;
    assert_eq!(
        (status, body[0]["errorCode"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let (status, body) = api
        .patch("/sobjects/Order/not-an-id", &json!({"Status": "Draft"}))
        .await;
    assert_eq!(status, 404);
    assert!(body[0]["message"]
        .as_str()
        .unwrap()
        .contains("Provided external ID field does not exist"));
    assert!(sim.state().delete_order(&order));
    let (status, body) = api.patch(&path, &json!({"Status": "Draft"})).await;
    assert_eq!(
        (status, body[0]["errorCode"].clone()),
        (404, json!("ENTITY_IS_DELETED"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn composite_update_reports_per_record_results_in_order() {
    let sim = start().await;
    let s = sim.state();
    let ok = s.seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let deleted = s.seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let bad_field = s.seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    s.delete_order(&deleted);
    let api = Api::new(&sim).await;
    let record = |id: &str, fields: Value| {
        let mut r = json!({"attributes": {"type": "Order"}, "id": id});
        r.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        r
    };
    let records = json!([
        record(
            &ok,
            json!({"Activation_Status__c": "Failed", "Activation_Error_Code__c": "WHMCS_ERROR"})
        ),
        record(&deleted, json!({"Activation_Status__c": "Failed"})),
        record(
            &bad_field,
            json!({"Activation_Error_Message__c": "z".repeat(256)})
        ),
    ]);

    let (status, body) = api
        .patch(
            "/composite/sobjects",
            &json!({"allOrNone": true, "records": records}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body[0]["errors"][0]["statusCode"],
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(s.order(&ok).unwrap()["Activation_Status__c"], Value::Null);

    let (status, body) = api
        .patch(
            "/composite/sobjects",
            &json!({"allOrNone": false, "records": records}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0], json!({"id": ok, "success": true, "errors": []}));
    assert_eq!(body[1]["success"], false);
    assert_eq!(body[1]["errors"][0]["statusCode"], "ENTITY_IS_DELETED");
    assert_eq!(body[2]["success"], false);
    assert_eq!(body[2]["errors"][0]["statusCode"], "STRING_TOO_LONG");
    assert_eq!(
        body[2]["errors"][0]["fields"],
        json!(["Activation_Error_Message__c"])
    );
    let stored = s.order(&ok).unwrap();
    assert_eq!(stored["Activation_Status__c"], "Failed");
    assert_eq!(stored["Activation_Error_Code__c"], "WHMCS_ERROR");

    let too_many: Vec<Value> = (0..201)
        .map(|_| record(&ok, json!({"Status": "Draft"})))
        .collect();
    let (status, body) = api
        .patch("/composite/sobjects", &json!({"records": too_many}))
        .await;
    assert_eq!(
        (status, body[0]["errorCode"].clone()),
        (400, json!("EXCEEDED_ID_LIMIT"))
    );
    let (status, body) = api
        .patch(
            "/composite/sobjects",
            &json!({"records": [record(&ok, json!({"Nope__c": 1}))]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["errors"][0]["statusCode"], "INVALID_FIELD");
    sim.shutdown().await;
}

#[tokio::test]
async fn rest_faults_answer_the_next_calls_with_salesforce_errors() {
    let sim = start().await;
    let api = Api::new(&sim).await;
    sim.state().set_faults(Faults {
        rest_status: Some((503, 2)),
        ..Faults::default()
    });
    for _ in 0..2 {
        let (status, body) = api.query("SELECT Id FROM Order").await;
        assert_eq!(status, 503);
        assert_eq!(body[0]["errorCode"], "SERVER_UNAVAILABLE");
    }
    assert_eq!(api.query("SELECT Id FROM Order").await.0, 200);
    sim.state().set_faults(Faults {
        rest_status: Some((403, 1)),
        ..Faults::default()
    });
    let (status, body) = api.query("SELECT Id FROM Order").await;
    assert_eq!(
        (status, body[0]["errorCode"].clone()),
        (403, json!("REQUEST_LIMIT_EXCEEDED"))
    );
    assert_eq!(sim.state().faults(), Faults::default());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_slow_record_delays_only_its_own_calls() {
    use sf_sim::faults::SlowRecords;
    use std::time::{Duration, Instant};

    let sim = start().await;
    let slow = sim.state().seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let fast = sim.state().seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let api = std::sync::Arc::new(Api::new(&sim).await);
    let latency = Duration::from_secs(3);
    sim.state().set_faults(Faults {
        // The 15-character spelling names the record as well as the 18-character one.
        rest_slow_records: Some(SlowRecords {
            ids: vec![slow[..15].to_owned()],
            latency,
        }),
        ..Faults::default()
    });
    let body = json!({"Activation_Status__c": "Activated"});

    let started = Instant::now();
    let slow_call = tokio::spawn({
        let (api, path, body) = (api.clone(), format!("/sobjects/Order/{slow}"), body.clone());
        async move { api.patch(&path, &body).await.0 }
    });
    // Another record is answered while the slow one still waits.
    let (status, _) = api.patch(&format!("/sobjects/Order/{fast}"), &body).await;
    assert_eq!(status, 204);
    assert!(!slow_call.is_finished());
    assert_eq!(slow_call.await.unwrap(), 204);
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    assert_eq!(
        sim.state().order(&slow).unwrap()["Activation_Status__c"],
        "Activated"
    );
    sim.shutdown().await;
}

impl Api {
    /// A parameterless GET of a `nextRecordsUrl` (a path from the instance root).
    async fn get_url(&self, sim: &SfSim, url: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{url}", sim.instance_url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

/// An order with `n` items (quantities 1..=n, so each page's rows can be told apart).
fn seed_order_with_items(sim: &SfSim, n: u32) -> String {
    let s = sim.state();
    let account = s.seed_account("Acme", Some("42"));
    let product = s.seed_product("Hosting", Some("7"), Some("Monthly"));
    let items: Vec<(&str, u32)> = (1..=n).map(|q| (product.as_str(), q)).collect();
    s.seed_order(&account, &items)
}

fn quantities(records: &Value) -> Vec<f64> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Quantity"].as_f64().unwrap())
        .collect()
}

fn set_child_page_size(sim: &SfSim, size: usize) {
    sim.state().update_faults(|f| {
        f.soql_child_page_size = std::num::NonZeroUsize::new(size);
    });
}

#[tokio::test]
async fn child_results_larger_than_a_page_are_paged_through_next_records_url() {
    let sim = start().await;
    let order = seed_order_with_items(&sim, 5);
    set_child_page_size(&sim, 2);
    let api = Api::new(&sim).await;

    let (status, body) = api.query(&ORDER_QUERY.replace("{id}", &order)).await;
    assert_eq!(status, 200, "{body}");
    // The top-level result is whole; only the nested one is paged.
    assert_eq!(
        (body["totalSize"].clone(), body["done"].clone()),
        (json!(1), json!(true))
    );
    let items = &body["records"][0]["OrderItems"];
    assert_eq!(items["totalSize"], 5, "totalSize counts every row");
    assert_eq!(items["done"], false);
    assert_eq!(quantities(&items["records"]), [1.0, 2.0]);
    assert_eq!(items["records"][0]["attributes"]["type"], "OrderItem");
    let mut next = items["nextRecordsUrl"].as_str().unwrap().to_owned();
    let segment = next.strip_prefix("/services/data/v62.0/query/").unwrap();
    let (locator, offset) = segment.rsplit_once('-').unwrap();
    assert!(locator.starts_with("01g") && locator.len() == 18, "{next}");
    assert_eq!(offset, "2");

    let mut seen = quantities(&items["records"]);
    let mut pages = 1;
    loop {
        let (status, page) = api.get_url(&sim, &next, Some(&api.token)).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        assert_eq!(page["totalSize"], 5);
        assert_eq!(page["records"][0]["attributes"]["type"], "OrderItem");
        assert!(page["records"][0]["Product2"]["WH_Product_ID__c"].is_string());
        seen.extend(quantities(&page["records"]));
        if page["done"] == true {
            assert!(page.get("nextRecordsUrl").is_none(), "{page}");
            break;
        }
        next = page["nextRecordsUrl"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(pages, 3);
    assert_eq!(
        sim.state().stats().rest_requests_by_route["GET /query/{locator}"],
        2
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn child_results_within_the_default_page_are_whole() {
    let sim = start().await;
    let order = seed_order_with_items(&sim, 5);
    let api = Api::new(&sim).await;
    let (_, body) = api.query(&ORDER_QUERY.replace("{id}", &order)).await;
    let items = &body["records"][0]["OrderItems"];
    assert_eq!(items["done"], true);
    assert!(items.get("nextRecordsUrl").is_none());
    assert_eq!(quantities(&items["records"]), [1.0, 2.0, 3.0, 4.0, 5.0]);
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_and_released_locators_answer_invalid_query_locator() {
    let sim = start().await;
    let order = seed_order_with_items(&sim, 3);
    set_child_page_size(&sim, 2);
    let api = Api::new(&sim).await;
    let (_, body) = api.query(&ORDER_QUERY.replace("{id}", &order)).await;
    let next = body["records"][0]["OrderItems"]["nextRecordsUrl"]
        .as_str()
        .unwrap()
        .to_owned();

    // Authenticated like every REST call.
    let (status, error) = api.get_url(&sim, &next, None).await;
    assert_eq!(
        (status, error[0]["errorCode"].clone()),
        (401, json!("INVALID_SESSION_ID"))
    );

    for bad in [
        "/services/data/v62.0/query/01gSm0000009999AAA-2",
        "/services/data/v62.0/query/not-a-locator",
        "/services/data/v62.0/query/01gSm0000000001AAA",
    ] {
        let (status, error) = api.get_url(&sim, bad, Some(&api.token)).await;
        assert_eq!(status, 400, "{bad}: {error}");
        assert_eq!(error[0]["errorCode"], "INVALID_QUERY_LOCATOR", "{bad}");
        assert!(error[0]["message"].is_string());
    }
    // An offset past the cursor's rows is no page of it.
    let past = format!("{}-9", next.rsplit_once('-').unwrap().0);
    let (status, error) = api.get_url(&sim, &past, Some(&api.token)).await;
    assert_eq!(
        (status, error[0]["errorCode"].clone()),
        (400, json!("INVALID_QUERY_LOCATOR"))
    );

    // The cursor is still good, until it expires.
    assert_eq!(api.get_url(&sim, &next, Some(&api.token)).await.0, 200);
    sim.state().expire_query_locators();
    let (status, error) = api.get_url(&sim, &next, Some(&api.token)).await;
    assert_eq!(
        (status, error[0]["errorCode"].clone()),
        (400, json!("INVALID_QUERY_LOCATOR"))
    );

    // With no idle time at all, a cursor is gone before its first page is asked for.
    sim.state()
        .update_faults(|f| f.soql_locator_idle_ms = Some(0));
    let (_, body) = api.query(&ORDER_QUERY.replace("{id}", &order)).await;
    let next = body["records"][0]["OrderItems"]["nextRecordsUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, error) = api.get_url(&sim, &next, Some(&api.token)).await;
    assert_eq!(
        (status, error[0]["errorCode"].clone()),
        (400, json!("INVALID_QUERY_LOCATOR"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn child_page_size_is_a_fault_of_the_admin_api() {
    let sim = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/admin/faults", sim.login_url());
    let response = http
        .put(&url)
        .json(&json!({"soql_child_page_size": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        sim.state().faults().soql_child_page_size,
        std::num::NonZeroUsize::new(3)
    );
    // A zero page would never make progress.
    let response = http
        .put(&url)
        .json(&json!({"soql_child_page_size": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let order = seed_order_with_items(&sim, 4);
    let api = Api::new(&sim).await;
    let (_, body) = api.query(&ORDER_QUERY.replace("{id}", &order)).await;
    let items = &body["records"][0]["OrderItems"];
    assert_eq!(quantities(&items["records"]), [1.0, 2.0, 3.0]);
    assert!(items["nextRecordsUrl"].as_str().unwrap().ends_with("-3"));
    sim.shutdown().await;
}

#[tokio::test]
async fn status_writes_are_announced_to_observers_once_stored() {
    let sim = start().await;
    let s = sim.state();
    let single = s.seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let in_collection = s.seed_order::<&str, f64>("001Sm0000000zzz", &[]);
    let mut writes = s.watch_order_writes();
    let api = Api::new(&sim).await;
    let before = std::time::Instant::now();

    // A write without the status, and a refused one, announce nothing.
    let path = format!("/sobjects/Order/{single}");
    assert_eq!(api.patch(&path, &json!({"Status": "Draft"})).await.0, 204);
    let refused =
        json!({"Activation_Status__c": "Failed", "Activation_Error_Message__c": "y".repeat(300)});
    assert_eq!(api.patch(&path, &refused).await.0, 400);
    assert_eq!(
        api.patch(&path, &json!({"Activation_Status__c": "Activated"}))
            .await
            .0,
        204
    );
    let record = json!({"attributes": {"type": "Order"}, "id": in_collection, "Activation_Status__c": "Failed"});
    let (status, _) = api
        .patch("/composite/sobjects", &json!({"records": [record]}))
        .await;
    assert_eq!(status, 200);

    let first = writes.recv().await.unwrap();
    assert_eq!(
        (first.order_id.as_str(), first.status.as_str()),
        (single.as_str(), "Activated")
    );
    let second = writes.recv().await.unwrap();
    assert_eq!(
        (second.order_id.as_str(), second.status.as_str()),
        (in_collection.as_str(), "Failed")
    );
    assert!(before <= first.at && first.at <= second.at);
    assert!(writes.try_recv().is_err(), "nothing else was announced");
    sim.shutdown().await;
}
