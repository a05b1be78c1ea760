//! The service runtime (`platform::service`) against a real nats-server: a supervised task that
//! dies stops the service with its failure, a permanent JetStream error stops the start at once,
//! and a stop asked for while NATS is unreachable ends the start cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use platform::nats::NatsSettings;
use platform::service::{Service, StartError, Starting};
use testkit::nats::NatsServer;
use tokio_util::sync::CancellationToken;

async fn serving(nats_url: &str, root: &CancellationToken) -> Service {
    let starting = Starting::connect(
        "service-test",
        "1.0",
        &NatsSettings::for_url(nats_url),
        root,
    )
    .await
    .unwrap();
    starting
        .serve("127.0.0.1:0".parse().unwrap(), axum::Router::new())
        .await
        .unwrap()
}

/// A supervised task that ends while the service runs: the root token is cancelled, /health
/// names the task, /livez fails, and the shutdown tail returns the failure (exit non-zero).
#[tokio::test]
async fn a_dead_background_task_stops_the_service_with_its_failure() {
    let nats = NatsServer::start().await;
    let root = CancellationToken::new();
    let service = serving(&nats.url(), &root).await;
    let livez = format!("http://{}/livez", service.http_addr());
    assert_eq!(reqwest::get(&livez).await.unwrap().status(), 200);
    let health = service.health().clone();

    service.supervisor().spawn("test-poller", async {});
    tokio::time::timeout(Duration::from_secs(30), root.cancelled())
        .await
        .expect("the dead task cancels the root token");
    let (healthy, body) = health.report();
    assert!(!healthy);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["integrations"]["test-poller"]["status"], "down");
    assert!(!health.liveness().0, "/livez fails");

    let failure = tokio::time::timeout(Duration::from_secs(30), service.shut_down())
        .await
        .expect("the shutdown tail keeps its deadlines")
        .unwrap_err();
    assert_eq!(failure.task, "test-poller");
    assert!(
        reqwest::get(&livez).await.is_err(),
        "the listener is closed after the shutdown"
    );
}

/// A stream already capturing our subjects under another name is a permanent error: the start
/// stops at once with the server's code instead of retrying forever.
#[tokio::test]
async fn an_overlapping_stream_stops_the_start_with_a_permanent_error() {
    let nats = NatsServer::start().await;
    jetstream::new(nats.client().await)
        .create_stream(stream::Config {
            name: "SOMEONE_ELSES".to_owned(),
            subjects: vec!["provisioning.requested.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let root = CancellationToken::new();
    let service = serving(&nats.url(), &root).await;
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        service.ensure_resources(|resources| async move {
            resources
                .stream(platform::streams::requests(
                    "PROVISIONING_REQUESTS",
                    Duration::from_secs(60),
                    Duration::from_secs(3600),
                ))
                .await
        }),
    )
    .await
    .expect("a permanent error is not retried");
    match result {
        Err(StartError::Nats(err)) => {
            assert!(!err.is_transient());
            assert_eq!(err.jetstream_code(), Some(10065));
        }
        Err(other) => panic!("expected a JetStream error, got {other:?}"),
        Ok(_) => panic!("the stream must not be created"),
    }
}

/// NATS unreachable: the start waits (the resources are retried), and a stop asked for
/// meanwhile ends it with `Cancelled`, which the binaries treat as a clean stop.
#[tokio::test]
async fn a_stop_while_nats_is_unreachable_ends_the_start_cleanly() {
    let mut nats = NatsServer::start().await;
    let url = nats.url();
    nats.kill();
    let root = CancellationToken::new();
    let service = serving(&url, &root).await;
    let (attempted, mut attempts) = tokio::sync::watch::channel(0_usize);
    let ensure = service.ensure_resources(|resources| {
        attempted.send_modify(|n| *n += 1);
        async move {
            resources
                .stream(platform::streams::deadletter("PROVISIONING_DEADLETTER"))
                .await
        }
    });
    // Asked to stop once the start has failed and retried.
    let stop = async {
        attempts.wait_for(|n| *n >= 2).await.unwrap();
        root.cancel();
    };
    let (result, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(ensure, stop)
    })
    .await
    .expect("the start ends once asked to stop");
    assert!(
        matches!(result, Err(StartError::Cancelled)),
        "got {result:?}"
    );
    assert!(service.shut_down().await.is_ok());
}
