//! The OAuth 2.0 JWT bearer flow: good assertions get Salesforce's token response, each kind of
//! bad assertion gets Salesforce's error, and tokens stop working when expired.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sf_sim::Faults;

async fn refused(sim: &sf_sim::SfSim, assertion: &str) -> (u16, Value) {
    let response = request_token(sim, assertion).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn good_assertion_gets_a_token_response() {
    let sim = start().await;
    let assertion = assertion_with(&testkit::keys::test_keys().private_pem, &good_claims(&sim));
    let response = request_token(&sim, &assertion).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert!(
        token.starts_with(&format!("{}!", &sim.state().org_id()[..15])),
        "{token}"
    );
    assert_eq!(body["instance_url"], sim.instance_url());
    assert_ne!(sim.instance_url(), sim.login_url());
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "api");
    assert_eq!(
        body["id"],
        format!(
            "{}/id/{}/{}",
            sim.login_url(),
            sim.state().org_id(),
            sim.state().user_id()
        )
    );
    assert!(body["issued_at"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(body["signature"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body.get("refresh_token").is_none());

    // The token works on the REST API and userinfo.
    let userinfo: Value = reqwest::Client::new()
        .get(format!("{}/services/oauth2/userinfo", sim.login_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(userinfo["organization_id"], sim.state().org_id());
    assert_eq!(userinfo["preferred_username"], sim.config().username);
    let stats = sim.state().stats();
    assert_eq!((stats.token_requests, stats.token_failures), (1, 0));
    // What was exchanged is on record, for tests that search for leaked credentials.
    assert_eq!(sim.state().issued_tokens(), vec![token.to_owned()]);
    assert_eq!(sim.state().received_assertions(), vec![assertion]);
    sim.shutdown().await;
}

#[tokio::test]
async fn audience_with_trailing_slash_and_array_form_are_accepted() {
    let sim = start().await;
    let pem = &testkit::keys::test_keys().private_pem;
    for aud in [
        json!(format!("{}/", sim.login_url())),
        json!([sim.login_url()]),
    ] {
        let mut claims = good_claims(&sim);
        claims["aud"] = aud;
        assert_eq!(
            request_token(&sim, &assertion_with(pem, &claims))
                .await
                .status(),
            200
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_assertions_get_salesforce_errors() {
    let sim = start().await;
    let pem = &testkit::keys::test_keys().private_pem;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good_claims(&sim);
        change(&mut claims);
        assertion_with(pem, &claims)
    };

    let foreign = testkit::keys::generate("foreign");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "foreign key",
            assertion_with(&foreign.private_pem, &good_claims(&sim)),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            "not a jwt",
            "not.a.jwt".to_owned(),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            "garbage",
            "garbage".to_owned(),
            "invalid_grant",
            "invalid assertion",
        ),
        (
            "wrong aud",
            with(&|c| c["aud"] = json!("https://login.salesforce.com")),
            "invalid_grant",
            "audience is invalid",
        ),
        (
            "expired",
            with(&|c| c["exp"] = json!(now() - 10)),
            "invalid_grant",
            "expired authorization code",
        ),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "invalid_grant",
            "expired authorization code",
        ),
        (
            "unknown iss",
            with(&|c| c["iss"] = json!("someone-else")),
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            "wrong sub",
            with(&|c| c["sub"] = json!("other@example.com")),
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
    ];
    for (case, assertion, error, description) in &cases {
        let (status, body) = refused(&sim, assertion).await;
        assert_eq!(status, 400, "{case}");
        assert_eq!(body["error"], *error, "{case}: {body}");
        assert_eq!(body["error_description"], *description, "{case}: {body}");
    }

    let response = reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", sim.login_url()))
        .form(&[
            ("grant_type", "password"),
            ("username", "u"),
            ("password", "p"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");

    let stats = sim.state().stats();
    assert_eq!(stats.token_requests, cases.len() as u64 + 1);
    assert_eq!(stats.token_failures, stats.token_requests);
    sim.shutdown().await;
}

#[tokio::test]
async fn token_fault_answers_the_next_requests_then_recovers() {
    let sim = start().await;
    sim.state().set_faults(Faults {
        token_status: Some((503, 2)),
        ..Faults::default()
    });
    let assertion = assertion_with(&testkit::keys::test_keys().private_pem, &good_claims(&sim));
    for _ in 0..2 {
        let (status, body) = refused(&sim, &assertion).await;
        assert_eq!(status, 503);
        assert_eq!(body["error"], "unknown_error");
    }
    assert_eq!(request_token(&sim, &assertion).await.status(), 200);
    // Refused requests carried the assertion too; one token was issued.
    assert_eq!(sim.state().received_assertions().len(), 3);
    assert_eq!(sim.state().issued_tokens().len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn tokens_expire_on_demand_and_after_inactivity() {
    let mut config = config();
    config.token_lifetime = Duration::from_millis(300);
    let sim = start_with(config).await;
    let http = reqwest::Client::new();
    let query_url = format!(
        "{}/services/data/v62.0/query?q=SELECT+Id+FROM+Account",
        sim.instance_url()
    );

    let token = token(&sim).await;
    assert_eq!(
        http.get(&query_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    sim.state().expire_tokens();
    let response = http
        .get(&query_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );

    // Inactivity: the session times out once unused for the lifetime.
    let token = sim.state().issue_token();
    assert_eq!(
        http.get(&query_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The session timeout is the thing under test, so time has to pass without use.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        http.get(&query_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    sim.shutdown().await;
}
