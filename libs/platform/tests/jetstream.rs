//! platform's NATS helpers against a real nats-server (testkit): replicas applied and reported,
//! permanent start-up errors told from transient ones, the shutdown flush's deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};
use platform::nats::{ErrorClass, JetStreamResources, NatsError, ReplicaMetrics};
use testkit::nats::NatsServer;
use tokio_util::sync::CancellationToken;

fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// An existing stream and bucket at R1 while JETSTREAM_REPLICAS=3: both are used (no error), and
/// reported as under-replicated in the metrics.
#[tokio::test]
async fn existing_resources_with_fewer_replicas_are_used_and_reported() {
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    platform::nats::ensure_stream(&js, platform::streams::deadletter("DL"))
        .await
        .unwrap();
    platform::nats::ensure_bucket(
        &js,
        kv::Config {
            bucket: "cursor".to_owned(),
            history: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let mut registry = prometheus_client::registry::Registry::default();
    let resources = JetStreamResources::new(js.clone(), 3)
        .with_metrics(ReplicaMetrics::register(&mut registry));
    resources
        .stream(platform::streams::deadletter("DL"))
        .await
        .expect("an under-replicated stream is still used");
    let store = resources
        .bucket(kv::Config {
            bucket: "cursor".to_owned(),
            history: 10,
            ..Default::default()
        })
        .await
        .expect("an under-replicated bucket is still used");
    store.put("k", "v".into()).await.unwrap();

    let text = encode(&registry);
    for line in [
        r#"jetstream_resource_replicas{kind="stream",resource="DL"} 1"#,
        r#"jetstream_resource_under_replicated{kind="stream",resource="DL"} 1"#,
        r#"jetstream_resource_replicas{kind="kv",resource="cursor"} 1"#,
        r#"jetstream_resource_under_replicated{kind="kv",resource="cursor"} 1"#,
        "jetstream_replicas_configured 3",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

/// With JETSTREAM_REPLICAS=1 the created resources carry num_replicas 1 and are not reported.
#[tokio::test]
async fn created_resources_carry_the_configured_replicas() {
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let mut registry = prometheus_client::registry::Registry::default();
    let resources = JetStreamResources::new(js.clone(), 1)
        .with_metrics(ReplicaMetrics::register(&mut registry));
    let mut created = resources
        .stream(platform::streams::outcomes("OUT"))
        .await
        .unwrap();
    assert_eq!(created.info().await.unwrap().config.num_replicas, 1);
    resources
        .bucket(kv::Config {
            bucket: "jobs".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let text = encode(&registry);
    assert!(
        text.contains(r#"jetstream_resource_under_replicated{kind="kv",resource="jobs"} 0"#),
        "{text}"
    );
}

/// A single server cannot hold R3: the server's refusal is permanent, not "not ready".
#[tokio::test]
async fn replicas_a_single_server_cannot_hold_are_a_permanent_error() {
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let err = JetStreamResources::new(js, 3)
        .stream(platform::streams::outcomes("OUT"))
        .await
        .expect_err("R3 on a single server");
    assert_eq!(err.class(), ErrorClass::Permanent, "{err:?}");
    // "replicas > 1 not supported in non-clustered mode"
    assert_eq!(err.jetstream_code(), Some(10074), "{err:?}");
}

/// A stream whose subjects overlap an existing stream's (10065) is a permanent error that keeps
/// the server's description, and the start-up retry returns it at once instead of retrying.
#[tokio::test]
async fn overlapping_subjects_are_permanent_and_not_retried() {
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    js.create_stream(stream::Config {
        name: "SQUATTER".to_owned(),
        subjects: vec!["provisioning.requested.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();

    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut attempts = 0;
    let result = platform::backoff::retry_while_transient(
        &cancel,
        "JetStream",
        NatsError::is_transient,
        || {
            attempts += 1;
            platform::nats::ensure_stream(
                &js,
                platform::streams::requests(
                    "PROVISIONING_REQUESTS",
                    platform::streams::REQUESTS_DUPLICATE_WINDOW,
                    platform::streams::REQUESTS_MAX_AGE,
                ),
            )
        },
    )
    .await;
    let err = result.expect_err("overlap is an error");
    assert_eq!(attempts, 1, "a permanent error is not retried");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!err.is_transient());
    assert_eq!(err.jetstream_code(), Some(10065), "{err:?}");
    let chain = platform::error::Chain(&err).to_string();
    assert!(
        chain.starts_with("cannot create stream PROVISIONING_REQUESTS: ")
            && chain.contains("overlap"),
        "{chain}"
    );
}

/// Replicas and services start together and create the same stream with settings differing in
/// some detail: whoever loses the race takes the stream the winner made. nats-server 2.10+
/// refuses the loser with "name already in use" (10058), 2.9 also with "subjects overlap"
/// (10065); neither may fail a start.
#[tokio::test]
async fn racing_creates_of_one_stream_all_take_it() {
    let server = NatsServer::start().await;
    // One connection each, as separate processes have: the server handles their requests
    // concurrently.
    let mut contexts = Vec::new();
    for _ in 0..16 {
        contexts.push(jetstream::new(server.client().await));
    }
    let creates = contexts.into_iter().zip(0u64..).map(|(js, i)| {
        async move {
            let mut config = platform::streams::requests(
                "PROVISIONING_REQUESTS",
                platform::streams::REQUESTS_DUPLICATE_WINDOW,
                platform::streams::REQUESTS_MAX_AGE,
            );
            // Each creator's settings differ from the others'.
            config.max_age += Duration::from_secs(i);
            platform::nats::ensure_stream(&js, config).await
        }
    });
    for (i, result) in futures::future::join_all(creates)
        .await
        .into_iter()
        .enumerate()
    {
        let stream =
            result.unwrap_or_else(|err| panic!("creator {i}: {}", platform::error::Chain(&err)));
        assert_eq!(stream.cached_info().config.name, "PROVISIONING_REQUESTS");
    }
}

/// While the server is down, set-up errors are transient (retried), and the retry stops on cancel.
#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let mut server = NatsServer::start().await;
    let client = platform::nats::connect(
        &platform::nats::NatsSettings::for_url(&server.url()),
        "test",
    )
    .await
    .unwrap();
    let js = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(client);
    server.kill();
    let err = platform::nats::ensure_stream(&js, platform::streams::deadletter("DL"))
        .await
        .expect_err("no server");
    assert!(err.is_transient(), "{err:?}");

    let cancel = CancellationToken::new();
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let retry = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            platform::backoff::retry_while_transient(
                &cancel,
                "JetStream",
                NatsError::is_transient,
                || {
                    let _ = seen.send(());
                    platform::nats::ensure_stream(&js, platform::streams::deadletter("DL"))
                },
            )
            .await
        }
    });
    // Two attempts: the first failure was retried.
    seen_rx.recv().await.unwrap();
    seen_rx.recv().await.unwrap();
    cancel.cancel();
    assert!(matches!(retry.await.unwrap(), Ok(None)));
}

/// The final flush against a stopped server gives up within its deadline, with an error.
#[tokio::test]
async fn flush_against_a_stopped_server_returns_within_the_deadline() {
    let mut server = NatsServer::start().await;
    let client = platform::nats::connect(
        &platform::nats::NatsSettings::for_url(&server.url()),
        "test",
    )
    .await
    .unwrap();
    platform::nats::flush_with_deadline(&client, Duration::from_secs(5))
        .await
        .expect("flush while connected");
    server.kill();
    testkit::wait::until(
        "the client to notice the server is gone",
        Duration::from_secs(20),
        || async { (!platform::nats::is_connected(&client)).then_some(()) },
    )
    .await;
    // Something buffered for the flush to wait on.
    let _ = client.publish("some.subject", "x".into()).await;
    let deadline = Duration::from_millis(500);
    let started = Instant::now();
    let result = platform::nats::flush_with_deadline(&client, deadline).await;
    assert!(result.is_err(), "flush cannot succeed without a server");
    assert!(
        started.elapsed() < deadline + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}
