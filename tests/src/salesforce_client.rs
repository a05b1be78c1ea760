//! Our own Salesforce clients, logged in to sf-sim with the test keys: for benches and tests that
//! talk to the simulator as a service would (the simulators' ceilings, say).

use std::sync::Arc;
use std::time::Instant;

use salesforce::pubsub::{PubSubClient, ReplayStart};
use salesforce::{SalesforceSettings, TokenProvider};

/// A token provider for sf-sim's connected app ([`crate::stack::salesforce_login`]).
#[allow(clippy::expect_used)]
pub fn sf_sim_tokens(login_url: String, client_id: &str, username: &str) -> Arc<TokenProvider> {
    let env = platform::config::Env::from_pairs(crate::stack::salesforce_login(
        login_url, client_id, username,
    ));
    let settings = SalesforceSettings::from_env(&env).expect("sf-sim's login settings");
    TokenProvider::new(settings, reqwest::Client::new())
}

/// Events/s at which a bare Subscribe client, decoding and publishing nothing, reads the first
/// `events` retained events of `channel` in batches of 100: the simulator's own delivery ceiling.
#[allow(clippy::expect_used)]
pub async fn subscribe_rate(
    pubsub_url: &str,
    tokens: Arc<TokenProvider>,
    channel: &str,
    events: u64,
) -> f64 {
    const BATCH: i32 = 100;
    let client = PubSubClient::new(pubsub_url, tokens).expect("a Pub/Sub client");
    let started = Instant::now();
    let mut subscription = client
        .subscribe(channel, &ReplayStart::Earliest, BATCH)
        .await
        .expect("subscribe");
    let (mut received, mut outstanding) = (0u64, BATCH);
    while received < events {
        let response = subscription
            .next()
            .await
            .expect("the stream")
            .expect("the stream stays open");
        received += response.events.len() as u64;
        outstanding -= response.events.len() as i32;
        // Topped up at half, as sf-bridge does, so the stream never runs dry.
        if outstanding <= BATCH / 2 {
            subscription
                .request(BATCH - outstanding)
                .await
                .expect("a FetchRequest");
            outstanding = BATCH;
        }
    }
    received as f64 / started.elapsed().as_secs_f64()
}
