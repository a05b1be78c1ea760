//! Reading what a service stored or published: the messages of a JetStream stream, a consumer's
//! backlog, and a core subscription awaited message by message.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;

/// Every message stored in `stream`, in order (none when the stream does not exist).
#[allow(clippy::expect_used)]
pub async fn messages(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<jetstream::message::StreamMessage> {
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut messages = Vec::new();
    for seq in 1..=last {
        if let Ok(message) = stream.get_raw_message(seq).await {
            messages.push(message);
        }
    }
    messages
}

/// The bodies of the messages stored in `stream` whose subject starts with `subject_prefix`,
/// decoded.
#[allow(clippy::expect_used)]
pub async fn decoded<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    stream: &str,
    subject_prefix: &str,
) -> Vec<T> {
    messages(js, stream)
        .await
        .into_iter()
        .filter(|m| m.subject.starts_with(subject_prefix))
        .map(|m| serde_json::from_slice(&m.payload).expect("a body of the contract"))
        .collect()
}

/// How many messages `stream` holds (0 when it does not exist).
pub async fn count(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits until `stream` holds `expected` messages, and fails if it ever holds more.
pub async fn wait_for_count(
    js: &jetstream::Context,
    stream: &str,
    expected: u64,
    timeout: Duration,
) {
    crate::wait::until(
        &format!("{expected} messages in {stream}"),
        timeout,
        || async {
            let stored = count(js, stream).await;
            assert!(
                stored <= expected,
                "{stream} holds {stored} messages, more than the {expected} expected"
            );
            (stored == expected).then_some(())
        },
    )
    .await;
}

/// Waits until the durable `consumer` of `stream` holds nothing: every message acked or
/// terminated.
pub async fn wait_until_drained(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    timeout: Duration,
) {
    crate::wait::until(
        &format!("the {consumer} consumer to drain"),
        timeout,
        || {
            let js = js.clone();
            async move {
                let mut consumer: jetstream::consumer::PullConsumer = js
                    .get_stream(stream)
                    .await
                    .ok()?
                    .get_consumer(consumer)
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        },
    )
    .await;
}

/// A core subscription, made (and flushed to the server) before what it waits for is published.
#[derive(Debug)]
pub struct Subscription {
    subscriber: async_nats::Subscriber,
    // The connection the subscription lives on.
    _client: async_nats::Client,
}

impl Subscription {
    #[allow(clippy::expect_used)]
    pub async fn new(client: async_nats::Client, subject: String) -> Self {
        let subscriber = client.subscribe(subject).await.expect("subscribe");
        client.flush().await.expect("flush the subscription");
        Self {
            subscriber,
            _client: client,
        }
    }

    /// The next message, within `timeout`.
    #[allow(clippy::expect_used)]
    pub async fn next(&mut self, timeout: Duration) -> async_nats::Message {
        tokio::time::timeout(timeout, self.subscriber.next())
            .await
            .expect("a message within the deadline")
            .expect("subscription open")
    }
}
