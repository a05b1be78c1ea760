//! Real messages against the published JSON Schemas (docs/schemas): sf-bridge, the provisioner
//! and sf-writer run as processes (the binaries) against a real nats-server and the simulators
//! in this process; an order is activated, one fails (`CLIENT_MISSING`), one is skipped by the
//! guard, a Salesforce event without `OrderId__c` is dead-lettered by sf-bridge, and a request
//! that is not JSON is dead-lettered by the provisioner. Then every message the pipeline stored
//! in the requests, outcomes, updates and dead-letter streams is read back and validated with
//! `testkit::schemas` against the schema its `Schema` header and its body's `schema` field name
//! (which must agree). The number of messages per schema is asserted, so the test cannot pass
//! by validating nothing. Status replies are validated by the provisioner's status API tests.
//!
//! The messages in `libs/messages/tests/schemas.rs` check that the schemas are the types'; this
//! test checks that the services' real output is what the published documents promise.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use messages::subjects::streams;
use messages::{headers, DeadLetterV1, OrderUpdateV1, ProvisioningOutcomeV1};
use messages::{ProvisioningRequestedV1, ProvisioningStatusV1};
use serde_json::Value;
use sf_sim::{EventSpec, PoisonKind};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;

mod support;

const WAIT: Duration = Duration::from_secs(90);

/// What the scenario below stores in each stream, by schema.
const EXPECTED: [(&str, usize); 4] = [
    // The approved, the failing and the skipped order's events (the hand-made request that is
    // not JSON is counted apart: it is the input of a dead letter, not the pipeline's output).
    (ProvisioningRequestedV1::SCHEMA, 3),
    // One per request: activated, failed, skipped.
    (ProvisioningOutcomeV1::SCHEMA, 3),
    // Activated and failed change the Order; skipped changes nothing.
    (OrderUpdateV1::SCHEMA, 2),
    // sf-bridge's (an event without OrderId__c) and the provisioner's (a request not JSON).
    (DeadLetterV1::SCHEMA, 2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_pipeline_run_is_valid_against_its_published_schema() {
    let binaries = testkit::process::workspace_binaries(&["sf-bridge", "provisioner", "sf-writer"]);
    let nats = NatsServer::start().await;
    let sims = support::Simulators::start().await;
    let login = sims.salesforce_login();
    let (sf, whmcs) = (&sims.sf, &sims.whmcs);

    let env = |service: &str, extra: Vec<(&str, String)>| -> HashMap<String, String> {
        let base = [
            ("NATS_URL", nats.url()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        testkit::stack::env(base.into_iter().chain(login.iter().cloned()).chain(extra))
    };
    let bridge = env(
        "sf-bridge",
        vec![
            ("SF_PUBSUB_ENDPOINT", sf.pubsub_url()),
            ("SF_EVENTS_REPLAY", "ALL".to_owned()),
        ],
    );
    let provisioner = env(
        "provisioner",
        vec![
            ("WHMCS_API_URL", whmcs.api_url()),
            ("WHMCS_API_IDENTIFIER", whmcs.identifier().to_owned()),
            ("WHMCS_API_SECRET", whmcs.secret().to_owned()),
            ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
        ],
    );
    let writer = env(
        "sf-writer",
        vec![("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned())],
    );
    let mut services = vec![
        ChildProcess::spawn(binaries[0].to_str().unwrap(), &bridge),
        ChildProcess::spawn(binaries[1].to_str().unwrap(), &provisioner),
        ChildProcess::spawn(binaries[2].to_str().unwrap(), &writer),
    ];
    let js = jetstream::new(nats.client().await);

    // The scenario: an activation, a failure, a skip, and two dead letters.
    let activated = support::seed_good_order(sf, whmcs, "Acme Ltd");
    let failed = support::seed_client_missing_order(sf);
    // Never approved, so not `Activating`: the guard skips its event.
    let skipped = support::seed_good_order(sf, whmcs, "Draft Ltd");
    sf.state().approve_order(&activated).unwrap();
    sf.state().approve_order(&failed).unwrap();
    sf.state()
        .publish_event(EventSpec {
            order_id: Some(skipped.clone()),
            ..Default::default()
        })
        .unwrap();
    sf.state()
        .publish_poison(PoisonKind::MissingOrderId)
        .unwrap();
    // The requests stream exists once the bridge has stored the first event.
    until(&mut services, "the requests stream", || async {
        js.get_stream(streams::REQUESTS).await.ok()
    })
    .await;
    let not_json = js
        .publish_with_headers(
            messages::subjects::provisioning_requested(&skipped),
            schema_header(ProvisioningRequestedV1::SCHEMA),
            "{not json".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;

    until(
        &mut services,
        "the orders' final Salesforce status",
        || async {
            let done = support::status_of(sf, &activated).as_deref() == Some("Activated")
                && support::status_of(sf, &failed).as_deref() == Some("Failed");
            done.then_some(())
        },
    )
    .await;
    for (stream, expected) in [
        (streams::REQUESTS, 4),
        (streams::OUTCOMES, 3),
        (streams::ORDER_UPDATES, 2),
        (streams::DEADLETTER, 2),
    ] {
        until(
            &mut services,
            &format!("{expected} messages in {stream}"),
            || async {
                let mut s = js.get_stream(stream).await.ok()?;
                (s.info().await.ok()?.state.messages >= expected).then_some(())
            },
        )
        .await;
    }

    // Every stored message, validated against the schema it names.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut outcomes = Vec::new();
    for stream in [
        streams::REQUESTS,
        streams::OUTCOMES,
        streams::ORDER_UPDATES,
        streams::DEADLETTER,
    ] {
        let mut handle = js.get_stream(stream).await.unwrap();
        let state = handle.info().await.unwrap().state.clone();
        for sequence in state.first_sequence..=state.last_sequence {
            if stream == streams::REQUESTS && sequence == not_json {
                continue;
            }
            let message = handle.get_raw_message(sequence).await.unwrap();
            let body: Value = serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
                panic!(
                    "{stream} #{sequence} ({}) is not JSON: {e}",
                    message.subject
                )
            });
            let in_body = body["schema"]
                .as_str()
                .unwrap_or_else(|| panic!("{stream} #{sequence} has no schema field: {body}"));
            let in_header = message
                .headers
                .get(headers::SCHEMA)
                .map(|v| v.as_str().to_owned());
            assert_eq!(
                in_header.as_deref(),
                Some(in_body),
                "{stream} #{sequence} ({}): the Schema header and the body's schema differ",
                message.subject
            );
            for header in [headers::CORRELATION_ID, headers::TRACEPARENT] {
                assert!(
                    message.headers.get(header).is_some(),
                    "{stream} #{sequence} ({}) has no {header} header",
                    message.subject
                );
            }
            testkit::schemas::assert_valid(in_body, &body);
            *seen.entry(in_body.to_owned()).or_default() += 1;
            if in_body == ProvisioningOutcomeV1::SCHEMA {
                outcomes.push(body);
            }
        }
    }
    let expected: BTreeMap<String, usize> = EXPECTED
        .iter()
        .map(|(schema, n)| ((*schema).to_owned(), *n))
        .collect();
    assert_eq!(seen, expected, "messages per schema");

    // The scenario produced what it was meant to, so each schema saw the cases it covers.
    let result_of = |order: &str| {
        outcomes
            .iter()
            .find(|o| o["order_id"] == order)
            .map(|o| (o["result"].clone(), o["error_code"].clone()))
    };
    assert_eq!(
        result_of(&activated),
        Some(("activated".into(), Value::Null))
    );
    assert_eq!(
        result_of(&failed),
        Some(("failed".into(), "CLIENT_MISSING".into()))
    );
    assert_eq!(result_of(&skipped), Some(("skipped".into(), Value::Null)));
    // provisioning.status.v1 has no stream; its schema is at least known to the validators.
    assert!(testkit::schemas::names().contains(&ProvisioningStatusV1::SCHEMA));

    for service in &mut services {
        service.terminate();
    }
}

fn schema_header(schema: &str) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    map.insert(headers::CORRELATION_ID, "schemas-test");
    map.insert(headers::SCHEMA, schema);
    map
}

/// Polls `check` until it gives `Some`; fails with the services' logs when a service exits or
/// the deadline passes (the state polled here is written by other processes: no event
/// announces it to this one).
async fn until<T, F, Fut>(services: &mut [ChildProcess], what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        let exited = services.iter_mut().any(ChildProcess::has_exited);
        if exited || Instant::now() > deadline {
            let logs: Vec<String> = services.iter().map(ChildProcess::log).collect();
            panic!(
                "{} waiting for {what}:\n{}",
                if exited {
                    "a service exited"
                } else {
                    "timed out"
                },
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
