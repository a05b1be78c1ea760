//! sf-sim with TLS (`SimConfig::with_generated_tls`): the token endpoint, REST and Pub/Sub answer
//! over TLS to clients that trust the generated CA, hand out `https://` URLs, refuse clients
//! that do not, and one silent client does not hold up the handshakes of the others.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pubsub_proto::TopicRequest;
use serde_json::Value;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

async fn tls_sim() -> sf_sim::SfSim {
    start_with(config().with_generated_tls()).await
}

fn trusting_client(sim: &sf_sim::SfSim) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().unwrap().as_bytes()).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

async fn token_over(client: &reqwest::Client, sim: &sf_sim::SfSim) -> reqwest::Response {
    let assertion = assertion_with(&testkit::keys::test_keys().private_pem, &good_claims(sim));
    client
        .post(format!("{}/services/oauth2/token", sim.login_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn token_rest_and_pubsub_over_tls_with_the_generated_ca() {
    let sim = tls_sim().await;
    for url in [sim.login_url(), sim.instance_url(), sim.pubsub_url()] {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }
    let client = trusting_client(&sim);
    let response = token_over(&client, &sim).await;
    assert_eq!(response.status(), 200);
    // ALPN offers h2, which reqwest takes when it can.
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["instance_url"], sim.instance_url());
    assert!(body["id"].as_str().unwrap().starts_with(&sim.login_url()));
    let token = body["access_token"].as_str().unwrap().to_owned();

    let query = client
        .get(format!(
            "{}/services/data/v62.0/query?q=SELECT+Id+FROM+Order",
            sim.instance_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);

    let channel = Endpoint::from_shared(sim.pubsub_url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(sim.ca_pem().unwrap())),
        )
        .unwrap()
        .connect()
        .await
        .expect("a TLS connection to the Pub/Sub listener");
    let mut pubsub = pubsub_proto::pub_sub_client::PubSubClient::new(channel);
    let topic = pubsub
        .get_topic(authed(
            &sim,
            &token,
            TopicRequest {
                topic_name: CHANNEL.to_owned(),
            },
        ))
        .await
        .expect("GetTopic over TLS")
        .into_inner();
    assert_eq!(topic.topic_name, CHANNEL);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_without_the_ca_is_refused_at_the_handshake() {
    let sim = tls_sim().await;
    let err = reqwest::Client::new()
        .get(format!("{}/health", sim.login_url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let shown = format!("{:?}", err);
    assert!(shown.contains("UnknownIssuer"), "{shown}");

    // The roots production's Pub/Sub client uses by default: the system's, without sf-sim's CA.
    let refused = Endpoint::from_shared(sim.pubsub_url())
        .unwrap()
        .tls_config(ClientTlsConfig::new().with_native_roots())
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    let shown = format!("{refused:?}");
    assert!(shown.contains("UnknownIssuer"), "{shown}");
    assert!(sim.state().issued_tokens().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_does_not_hold_up_other_handshakes() {
    let sim = tls_sim().await;
    let (login, _, _) = sim.local_addrs();
    // Connected, never sends a ClientHello.
    let _silent = tokio::net::TcpStream::connect(login).await.unwrap();
    let client = trusting_client(&sim);
    // Under sf-sim's 10 s handshake timeout, so a handshake served in line with the silent one
    // fails here rather than waiting it out; 5 s is ample for a loopback handshake.
    let health = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get(format!("{}/health", sim.login_url())).send(),
    )
    .await
    .expect("answered while another handshake is pending")
    .unwrap();
    assert_eq!(health.status(), 200);
    sim.shutdown().await;
}
