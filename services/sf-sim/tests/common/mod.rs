//! Helpers shared by the integration tests: a running simulator, JWT assertions, tokens and an
//! authenticated Pub/Sub client.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pubsub_proto::pub_sub_client::PubSubClient;
use pubsub_proto::{FetchRequest, FetchResponse, ReplayPreset};
use serde_json::{json, Value};
use sf_sim::SfSim;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub const CHANNEL: &str = "/event/OrderProvisionRequested__e";

pub use testkit::sim::{sf_config as config, start_sf as start, start_sf_with as start_with};

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An RS256 assertion signed with `private_pem`.
pub fn assertion_with(private_pem: &str, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &key,
    )
    .unwrap()
}

/// A valid assertion for the simulator's configured identities.
pub fn good_claims(sim: &SfSim) -> Value {
    json!({
        "iss": sim.config().client_id,
        "sub": sim.config().username,
        "aud": sim.login_url(),
        "exp": now() + 180,
    })
}

pub async fn request_token(sim: &SfSim, assertion: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/services/oauth2/token", sim.login_url()))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion),
        ])
        .send()
        .await
        .unwrap()
}

/// A token through the real OAuth flow.
pub async fn token(sim: &SfSim) -> String {
    let assertion = assertion_with(&testkit::keys::test_keys().private_pem, &good_claims(sim));
    let response = request_token(sim, &assertion).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

pub async fn client(sim: &SfSim) -> PubSubClient<Channel> {
    PubSubClient::connect(sim.pubsub_url())
        .await
        .expect("connect to pubsub")
}

/// A request with the three auth metadata entries.
pub fn authed<T>(sim: &SfSim, token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let md = request.metadata_mut();
    md.insert("accesstoken", token.parse().unwrap());
    md.insert("instanceurl", sim.instance_url().parse().unwrap());
    md.insert("tenantid", sim.state().org_id().parse().unwrap());
    request
}

/// An open Subscribe call: send FetchRequests through `requests`, read `responses`.
pub struct Subscription {
    pub requests: mpsc::Sender<FetchRequest>,
    pub responses: Streaming<FetchResponse>,
}

impl Subscription {
    pub async fn fetch(&self, num_requested: i32) {
        self.requests
            .send(FetchRequest {
                num_requested,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    pub async fn next(&mut self) -> Result<Option<FetchResponse>, Status> {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10 s")
    }

    /// The next response; panics on end of stream or error.
    pub async fn response(&mut self) -> FetchResponse {
        self.next()
            .await
            .expect("no error")
            .expect("stream still open")
    }

    /// The next error status (skipping nothing: the next item must be the error).
    pub async fn error(&mut self) -> Status {
        match self.next().await {
            Err(status) => status,
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }
}

pub async fn subscribe_with(
    sim: &SfSim,
    token: &str,
    first: FetchRequest,
) -> Result<Subscription, Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let response = client(sim)
        .await
        .subscribe(authed(sim, token, ReceiverStream::new(rx)))
        .await?;
    Ok(Subscription {
        requests: tx,
        responses: response.into_inner(),
    })
}

pub async fn subscribe(
    sim: &SfSim,
    token: &str,
    preset: ReplayPreset,
    replay_id: Vec<u8>,
    num_requested: i32,
) -> Subscription {
    let first = FetchRequest {
        topic_name: CHANNEL.to_owned(),
        replay_preset: preset as i32,
        replay_id,
        num_requested,
        auth_refresh: String::new(),
    };
    subscribe_with(sim, token, first).await.expect("subscribe")
}

/// Waits until the simulator has read `n` FetchRequests in total (a LATEST subscription only
/// sees events published after its first request was processed).
pub async fn fetches_seen(sim: &SfSim, n: u64) {
    let state = sim.state().clone();
    testkit::wait::until(
        "fetch requests to reach the simulator",
        Duration::from_secs(5),
        || {
            let state = state.clone();
            async move { (state.stats().fetch_requests >= n).then_some(()) }
        },
    )
    .await;
}

pub fn error_code(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn replay_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8-byte replay id"))
}

pub fn event_ids(response: &FetchResponse) -> Vec<String> {
    response
        .events
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.clone())
        .collect()
}
