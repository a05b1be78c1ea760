//! The admin HTTP API, and raw `includes/api.php` behaviour a typed client never shows
//! (status split, response formats, PHP parameter parsing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{json, Value};
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

async fn start() -> WhmcsSim {
    WhmcsSim::start(WhmcsSimConfig::for_tests()).await.unwrap()
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

/// A raw api.php POST with credentials prepended; returns status, content type and body.
async fn api(sim: &WhmcsSim, body: &str) -> (u16, String, String) {
    let form = format!(
        "identifier={}&secret={}&{body}",
        sim.identifier(),
        sim.secret()
    );
    api_raw(sim, form).await
}

async fn api_raw(sim: &WhmcsSim, form: String) -> (u16, String, String) {
    let response = reqwest::Client::new()
        .post(sim.api_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test]
async fn seeding_and_inspecting_over_http() {
    use reqwest::Method;
    let sim = start().await;
    let admin = sim.admin_url();

    let (status, created) = call(
        Method::POST,
        format!("{admin}/clients"),
        Some(json!({"name": "Acme Hosting", "with_pay_method": true})),
    )
    .await;
    assert_eq!(status, 201);
    let acme = created["id"].as_u64().unwrap();
    let (_, bare) = call(
        Method::POST,
        format!("{admin}/clients"),
        Some(json!({"name": "Bare", "status": "Inactive"})),
    )
    .await;
    let bare = bare["id"].as_u64().unwrap();
    let (_, client) = call(Method::GET, format!("{admin}/clients/{bare}"), None).await;
    assert_eq!(client["status"], "Inactive");
    assert_eq!(client["pay_methods"].as_array().unwrap().len(), 0);
    let (status, pm) = call(
        Method::POST,
        format!("{admin}/clients/{bare}/paymethods"),
        Some(json!({"bank": true})),
    )
    .await;
    assert_eq!(status, 201);
    assert!(pm["id"].as_u64().is_some());
    let (_, removed) = call(
        Method::DELETE,
        format!("{admin}/clients/{bare}/paymethods"),
        None,
    )
    .await;
    assert_eq!(removed["removed"], 1);
    let (_, patched) = call(
        Method::PATCH,
        format!("{admin}/clients/{bare}"),
        Some(json!({"status": "Closed"})),
    )
    .await;
    assert_eq!(patched["status"], "Closed");

    let (status, product) = call(
        Method::POST,
        format!("{admin}/products"),
        Some(json!({"name": "Web", "cycles": ["monthly", "annually"], "allowqty": true})),
    )
    .await;
    assert_eq!(status, 201);
    let pid = product["id"].as_u64().unwrap();
    let (_, products) = call(Method::GET, format!("{admin}/products"), None).await;
    assert_eq!(products[0]["prices"]["annually"], 120.0);

    // Two orders through api.php, then inspected through the admin API.
    for marker in ["prov:a", "prov:b"] {
        let (status, _, body) = api(
            &sim,
            &format!(
                "action=AddOrder&responsetype=json&clientid={acme}&paymentmethod=stripe\
                 &pid[0]={pid}&billingcycle[0]=monthly&notes={marker}"
            ),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, listed) = call(
        Method::GET,
        format!("{admin}/orders?client_id={acme}"),
        None,
    )
    .await;
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["orders"][0]["notes"], "prov:b", "newest first");
    assert_eq!(listed["orders"][1]["status"], "Pending");
    let order_id = listed["orders"][1]["id"].as_u64().unwrap();
    let (_, order) = call(Method::GET, format!("{admin}/orders/{order_id}"), None).await;
    assert_eq!(order["notes"], "prov:a");
    assert_eq!(order["services"][0]["billingcycle"], "monthly");
    let (_, order) = call(
        Method::PATCH,
        format!("{admin}/orders/{order_id}"),
        Some(json!({"status": "Fraud"})),
    )
    .await;
    assert_eq!(order["status"], "Fraud");
    let (_, none) = call(
        Method::GET,
        format!("{admin}/orders?client_id={bare}"),
        None,
    )
    .await;
    assert_eq!(none["count"], 0);

    let (_, stats) = call(Method::GET, format!("{admin}/stats"), None).await;
    assert_eq!(stats["calls"]["AddOrder"], 2);
    let (status, _) = call(Method::POST, format!("{admin}/stats/reset"), None).await;
    assert_eq!(status, 204);
    assert!(sim.state().stats().calls.is_empty());
}

#[tokio::test]
async fn admin_rejects_bad_input() {
    use reqwest::Method;
    let sim = start().await;
    let admin = sim.admin_url();
    let cases = [
        (Method::POST, "clients", json!({"nom": "x"}), 400),
        (Method::POST, "clients", json!({"name": " "}), 400),
        (
            Method::POST,
            "products",
            json!({"name": "x", "cycles": ["yearly"]}),
            400,
        ),
        (
            Method::POST,
            "products",
            json!({"name": "x", "cycles": ["onetime", "monthly"]}),
            400,
        ),
        (
            Method::PATCH,
            "clients/77",
            json!({"status": "Closed"}),
            404,
        ),
        (Method::PATCH, "orders/77", json!({"status": "Active"}), 404),
        (Method::POST, "clients/77/paymethods", json!({}), 404),
        (
            Method::PUT,
            "faults/AddOrder",
            json!({"http_status": {"status": 900, "count": 1}}),
            400,
        ),
        (Method::PUT, "faults/AddOrder", json!({"unknown": 1}), 400),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = call(method, format!("{admin}/{path}"), Some(body)).await;
        assert_eq!(status, expected, "{path}: {answer}");
        assert!(answer["error"].is_string());
    }
    let (status, _) = call(Method::GET, format!("{admin}/orders/77"), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(Method::GET, format!("{admin}/orders?client_id=x"), None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn faults_over_http() {
    use reqwest::Method;
    let sim = start().await;
    let admin = sim.admin_url();
    let acme = sim.state().seed_client("Acme", true);
    let pid = sim.state().seed_product("Web", &["monthly"]);
    let add =
        format!("action=AddOrder&responsetype=json&clientid={acme}&paymentmethod=stripe&pid={pid}");

    let (status, _) = call(
        Method::PUT,
        format!("{admin}/faults/addorder"),
        Some(json!({"http_status": {"status": 502, "count": 1},
                    "error": {"message": "Busy", "count": 1},
                    "fail_after_commit": {"status": 500, "count": 1}})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, faults) = call(Method::GET, format!("{admin}/faults"), None).await;
    assert!(faults["actions"]["AddOrder"].is_object(), "{faults}");

    let (status, content_type, body) = api(&sim, &add).await;
    assert_eq!(status, 502);
    assert!(content_type.starts_with("text/html") && body.contains("Bad Gateway"));
    let (status, _, body) = api(&sim, &add).await;
    assert_eq!(
        (status, json_of(&body)["message"].clone()),
        (200, json!("Busy"))
    );
    assert!(sim.state().orders().is_empty());
    let (status, _, _) = api(&sim, &add).await;
    assert_eq!(status, 500);
    assert_eq!(sim.state().orders().len(), 1, "committed before failing");
    let (status, _, _) = api(&sim, &add).await;
    assert_eq!(status, 200);
    let (_, faults) = call(Method::GET, format!("{admin}/faults"), None).await;
    assert!(faults["actions"].as_object().unwrap().is_empty(), "used up");
    assert_eq!(sim.state().stats().faults_fired, 3);

    let (status, _) = call(
        Method::PUT,
        format!("{admin}/latency"),
        Some(json!({"latency_ms": 120})),
    )
    .await;
    assert_eq!(status, 204);
    let started = std::time::Instant::now();
    api(&sim, "action=GetOrders&responsetype=json").await;
    assert!(started.elapsed() >= Duration::from_millis(120));
    let (status, _) = call(Method::DELETE, format!("{admin}/faults"), None).await;
    assert_eq!(status, 204);
    assert_eq!(sim.state().latency_all(), Duration::ZERO);
}

#[tokio::test]
async fn seed_demo_matches_the_documented_ids() {
    let sim = start().await;
    let (status, seeded) = call(
        reqwest::Method::POST,
        format!("{}/seed-demo", sim.admin_url()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(seeded["clients"][0], json!([1, "Acme Hosting GmbH"]));
    assert_eq!(seeded["products"][2], json!([3, "Domain Registration"]));
    assert_eq!(seeded["client_without_pay_method"], 3);
    assert_eq!(seeded["closed_client"], 4);
    let state = sim.state();
    assert_eq!(state.client(1).unwrap().pay_methods.len(), 1);
    assert!(state.client(3).unwrap().pay_methods.is_empty());
    assert!(state.products()[0].prices.contains_key("monthly"));
    assert!(state.products()[1].prices.contains_key("annually"));
    assert_eq!(state.products()[2].paytype, whmcs_sim::PayType::OneTime);
}

#[tokio::test]
async fn status_split_and_error_texts() {
    let sim = start().await;
    // No action at all: 400.
    let (status, _, body) = api(&sim, "responsetype=json").await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["message"], "Empty action request");
    // Credentials: 403 with WHMCS's texts.
    let (status, _, body) = api_raw(&sim, "action=GetOrders&responsetype=json".to_owned()).await;
    assert_eq!(status, 403);
    assert_eq!(json_of(&body)["message"], "Invalid or missing credentials");
    let (status, _, body) = api_raw(
        &sim,
        format!(
            "action=GetOrders&responsetype=json&identifier={}&secret=wrong",
            sim.identifier()
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(json_of(&body)["message"], "Authentication Failed");
    // The legacy field names carry the same pair.
    let (status, _, _) = api_raw(
        &sim,
        format!(
            "action=GetOrders&responsetype=json&username={}&password={}",
            sim.identifier(),
            sim.secret()
        ),
    )
    .await;
    assert_eq!(status, 200);
    // Business errors: 200 + result=error.
    let (status, _, body) = api(&sim, "action=GetClientsDetails&responsetype=json").await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"result": "error", "message": "Either clientid Or email Is Required"})
    );
    let (_, _, body) = api(&sim, "action=GetPayMethods&responsetype=json").await;
    assert_eq!(json_of(&body)["message"], "Client ID Is Required");
    // Action names are case- and punctuation-insensitive.
    let (status, _, body) = api(&sim, "action=get_orders&responsetype=json").await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body)["result"], "success");
}

#[tokio::test]
async fn response_type_defaults_are_not_json() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let pid = sim.state().seed_product("Web", &["monthly"]);
    // A simple action without responsetype answers NVP...
    let (status, content_type, body) = api(
        &sim,
        &format!("action=AddOrder&clientid={acme}&paymentmethod=stripe&pid[0]={pid}"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain"));
    assert!(body.starts_with("result=success;"), "{body}");
    assert!(body.contains("orderid=1"));
    // ... and a list action XML; NVP is refused for it.
    let (_, content_type, body) = api(&sim, "action=GetOrders").await;
    assert!(content_type.starts_with("text/xml"));
    assert!(
        body.contains("<whmcsapi") && body.contains("<order>"),
        "{body}"
    );
    let (_, _, body) = api(&sim, "action=GetOrders&responsetype=nvp").await;
    assert_eq!(
        json_of(&body)["message"],
        "This API action only supports the XML or JSON response type formats"
    );
}

#[tokio::test]
async fn php_parameter_parsing_traps() {
    let sim = start().await;
    let acme = sim.state().seed_client("Acme", true);
    let web = sim.state().seed_product("Web", &["monthly", "annually"]);
    let vps = sim.state().seed_product("VPS", &["monthly"]);
    // Repeated bare keys: PHP keeps the last, so only one product is ordered.
    let (_, _, body) = api(
        &sim,
        &format!(
            "action=AddOrder&responsetype=json&clientid={acme}&paymentmethod=stripe\
             &pid={web}&pid={vps}&noinvoice=false"
        ),
    )
    .await;
    let reply = json_of(&body);
    assert_eq!(reply["serviceids"].as_str().unwrap().split(',').count(), 1);
    // "false" is truthy in PHP: no invoice was made, and invoiceid is absent.
    assert!(reply.get("invoiceid").is_none(), "{reply}");
    let order = sim.state().orders()[0].clone();
    assert_eq!(order.services[0].pid, vps);

    // Bracket arrays, an unknown pid dropped silently, an unknown cycle replaced silently.
    let (_, _, body) = api(
        &sim,
        &format!(
            "action=AddOrder&responsetype=json&clientid={acme}&paymentmethod=stripe\
             &pid%5B0%5D={web}&billingcycle%5B0%5D=yearly&pid%5B1%5D=999&pid%5B2%5D={vps}\
             &billingcycle%5B2%5D=MONTHLY"
        ),
    )
    .await;
    let reply = json_of(&body);
    assert_eq!(reply["result"], "success", "{reply}");
    assert_eq!(reply["serviceids"].as_str().unwrap().split(',').count(), 2);
    let order = sim.state().orders()[0].clone();
    assert_eq!(order.services[0].billingcycle, "monthly");
    assert_eq!(order.services[1].billingcycle, "monthly");

    // AcceptOrder trap: an optional parameter without autosetup means no module create.
    let id = order.id;
    let (_, _, body) = api(
        &sim,
        &format!("action=AcceptOrder&responsetype=json&orderid={id}&sendemail=1"),
    )
    .await;
    assert_eq!(json_of(&body)["result"], "success");
    let accepted = sim.state().order(id).unwrap();
    let record = accepted.accept.unwrap();
    assert_eq!(record.autosetup, None);
    assert!(!record.module_create_ran);
    assert!(accepted
        .services
        .iter()
        .all(|s| s.status == "Active" && !s.provisioned));

    // CancelOrder: Pending only; cancels the invoice.
    let (_, _, body) = api(
        &sim,
        &format!(
            "action=AddOrder&responsetype=json&clientid={acme}&paymentmethod=mailin&pid={web}"
        ),
    )
    .await;
    let reply = json_of(&body);
    let order_id = reply["orderid"].as_str().unwrap().to_owned();
    let invoice: u64 = reply["invoiceid"].as_str().unwrap().parse().unwrap();
    let (_, _, body) = api(
        &sim,
        &format!("action=CancelOrder&responsetype=json&orderid={order_id}"),
    )
    .await;
    assert_eq!(json_of(&body)["result"], "success");
    assert_eq!(sim.state().invoice(invoice).unwrap().status, "Cancelled");
    let (_, _, body) = api(
        &sim,
        &format!("action=CancelOrder&responsetype=json&orderid={order_id}"),
    )
    .await;
    assert_eq!(
        json_of(&body)["message"],
        "Order ID not found or Status not Pending"
    );
}

#[tokio::test]
async fn api_role_limits_actions() {
    let sim = WhmcsSim::start(WhmcsSimConfig {
        allowed_actions: Some(vec!["GetOrders".into()]),
        ..WhmcsSimConfig::for_tests()
    })
    .await
    .unwrap();
    let (status, _, _) = api(&sim, "action=GetOrders&responsetype=json").await;
    assert_eq!(status, 200);
    let (status, _, body) = api(&sim, "action=AddOrder&responsetype=json").await;
    assert_eq!(status, 403);
    assert_eq!(
        json_of(&body)["message"],
        "Invalid Permissions: API action \"addorder\" is not allowed"
    );
}
