//! The admin HTTP API (same powers as the in-process handle) and the binary's start-up checks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
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

#[tokio::test]
async fn seeding_approving_and_inspecting_over_http() {
    use reqwest::Method;
    let sim = start().await;
    let admin = sim.admin_url();

    let (status, account) = call(
        Method::POST,
        format!("{admin}/accounts"),
        Some(json!({"name": "Acme", "wh_account": "9"})),
    )
    .await;
    assert_eq!(status, 201);
    let account = account["id"].as_str().unwrap().to_owned();
    assert!(account.starts_with("001") && account.len() == 18);
    let (_, product) = call(
        Method::POST,
        format!("{admin}/products"),
        Some(json!({"name": "Hosting", "wh_product_id": "3", "billing_cycle": "Monthly"})),
    )
    .await;
    let product = product["id"].as_str().unwrap().to_owned();
    assert!(product.starts_with("01t"));
    let (_, order) = call(
        Method::POST,
        format!("{admin}/orders"),
        Some(json!({"account_id": account, "items": [{"product_id": product, "quantity": 2}]})),
    )
    .await;
    let order = order["id"].as_str().unwrap().to_owned();
    assert!(order.starts_with("801"));

    let (status, event) = call(
        Method::POST,
        format!("{admin}/orders/{order}/approve"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let replay = base64::engine::general_purpose::STANDARD
        .decode(event["replay_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(replay.len(), 8);
    assert_eq!(
        event["schema_id"],
        sim.state().schema_id(sf_sim::SchemaVersion::V1)
    );

    let (_, fetched) = call(Method::GET, format!("{admin}/orders/{order}"), None).await;
    assert_eq!(fetched["Activation_Status__c"], "Activating");
    assert_eq!(fetched["Status"], "Draft");
    assert_eq!(fetched["OrderItems"][0]["Quantity"], 2.0);
    assert!(fetched["OrderItems"][0]["Id"]
        .as_str()
        .unwrap()
        .starts_with("802"));

    let (_, events) = call(Method::GET, format!("{admin}/events"), None).await;
    assert_eq!(events[0]["order_id"], order);
    assert_eq!(events[0]["event_id"], event["event_id"]);
    assert!(events[0]["idem_key"].is_string() && events[0]["correlation_id"].is_string());

    let (status, _) = call(
        Method::PATCH,
        format!("{admin}/orders/{order}"),
        Some(json!({"Activation_Status__c": null})),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        sim.state().order(&order).unwrap()["Activation_Status__c"],
        Value::Null
    );
    let (status, _) = call(
        Method::PATCH,
        format!("{admin}/orders/{order}"),
        Some(json!({"Status": "Activated", "Nope__c": 1})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(sim.state().order(&order).unwrap()["Status"], "Draft");

    let (status, custom) = call(
        Method::POST,
        format!("{admin}/events"),
        Some(json!({"order_id": order, "idem_key": "k-1", "version": 2.0, "schema": "V2"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        custom["schema_id"],
        sim.state().schema_id(sf_sim::SchemaVersion::V2)
    );
    let (status, poison) = call(
        Method::POST,
        format!("{admin}/events/poison"),
        Some(json!({"kind": "unknown_schema"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(poison["schema_id"], custom["schema_id"]);
    let (status, _) = call(
        Method::POST,
        format!("{admin}/events/poison"),
        Some(json!({"kind": "nope"})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(sim.state().events().len(), 3);

    let (status, _) = call(Method::DELETE, format!("{admin}/orders/{order}"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(Method::GET, format!("{admin}/orders/{order}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        Method::POST,
        format!("{admin}/orders/{order}/approve"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert!(matches!(
        sim.state().approve_order(&order),
        Err(sf_sim::SimError::NotFound(_))
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_stats_tokens_and_demo_over_http() {
    use reqwest::Method;
    let sim = start().await;
    let admin = sim.admin_url();

    let faults = json!({"pubsub_abort_after_events": 3, "keepalive_interval_ms": 250,
                        "rest_status": {"status": 500, "count": 2}, "rest_latency_ms": 5});
    let (status, stored) = call(Method::PUT, format!("{admin}/faults"), Some(faults)).await;
    assert_eq!(status, 200);
    assert_eq!(stored["rest_status"], json!({"status": 500, "count": 2}));
    assert_eq!(sim.state().faults().pubsub_abort_after_events, Some(3));
    assert_eq!(
        sim.state().faults().keepalive_interval,
        Some(std::time::Duration::from_millis(250))
    );
    let (_, read) = call(Method::GET, format!("{admin}/faults"), None).await;
    assert_eq!(read, stored);
    let (status, _) = call(
        Method::PUT,
        format!("{admin}/faults"),
        Some(json!({"pubsub_stal": true})),
    )
    .await;
    assert_eq!(status, 400);
    call(Method::PUT, format!("{admin}/faults"), Some(json!({}))).await;
    assert_eq!(sim.state().faults(), sf_sim::Faults::default());

    let token = token(&sim).await;
    let (status, _) = call(Method::POST, format!("{admin}/tokens/expire"), None).await;
    assert_eq!(status, 204);
    let rest = reqwest::Client::new()
        .get(format!(
            "{}/services/data/v62.0/query?q=SELECT+Id+FROM+Order",
            sim.instance_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 401);

    let (_, stats) = call(Method::GET, format!("{admin}/stats"), None).await;
    assert_eq!(stats["token_requests"], 1);
    assert_eq!(stats["rest_requests"], 1);
    assert_eq!(stats["rest_requests_by_route"]["GET /query"], 1);
    for key in [
        "subscribe_calls",
        "fetch_requests",
        "max_outstanding_seen",
        "events_delivered",
        "keepalives_sent",
        "token_failures",
        "get_schema_calls",
        "publish_calls",
    ] {
        assert_eq!(stats[key], 0, "{key}");
    }
    call(Method::POST, format!("{admin}/stats/reset"), None).await;
    assert_eq!(sim.state().stats(), sf_sim::SimStats::default());

    let (status, demo) = call(Method::POST, format!("{admin}/seed-demo"), None).await;
    assert_eq!(status, 201);
    assert_eq!(demo["orders"].as_array().unwrap().len(), 6);
    let without = demo["account_without_client"].as_str().unwrap();
    assert!(demo["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == without));
    let (status, health) = call(Method::GET, format!("{}/health", sim.login_url()), None).await;
    assert_eq!((status, health["status"].clone()), (200, json!("ok")));
    sim.shutdown().await;
}

#[test]
fn binary_names_a_missing_variable_and_exits_non_zero() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sf-sim"))
        .env_clear()
        .env("SF_SIM_CLIENT_ID", "cid")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("SF_SIM_PUBLIC_KEY_PATH"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sf-sim"))
        .env_clear()
        .env(
            "SF_SIM_PUBLIC_KEY_PATH",
            &testkit::keys::test_keys().public_key_path,
        )
        .env("SF_SIM_CLIENT_ID", "cid")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("SF_SIM_USERNAME"), "{stderr}");
}

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sf-sim"))
        .env_clear()
        .env(
            "SF_SIM_PUBLIC_KEY_PATH",
            &testkit::keys::test_keys().public_key_path,
        )
        .env("SF_SIM_CLIENT_ID", "cid")
        .env("SF_SIM_USERNAME", "user@example.com")
        .env("SF_SIM_LOGIN_ADDR", format!("127.0.0.1:{}", ports[0]))
        .env("SF_SIM_INSTANCE_ADDR", format!("127.0.0.1:{}", ports[1]))
        .env("SF_SIM_PUBSUB_ADDR", format!("127.0.0.1:{}", ports[2]))
        .env("SF_SIM_SEED_DEMO", "true")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stats_url = format!("http://127.0.0.1:{}/admin/events", ports[0]);
    let http = reqwest::Client::new();
    let orders = testkit::wait::until(
        "sf-sim to serve",
        std::time::Duration::from_secs(20),
        || {
            let (http, url) = (http.clone(), stats_url.clone());
            async move { http.get(&url).send().await.ok()?.json::<Value>().await.ok() }
        },
    )
    .await;
    assert_eq!(orders, json!([]));
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
