//! The publish path against a real nats-server (testkit): a contract body and a dead letter
//! arrive with the contract's headers, and a repeated message id is stored once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream};
use messages::{ContractMessage, DeadLetterV1, ProvisioningRequestedV1};
use platform::publish::Outgoing;
use testkit::nats::NatsServer;

fn request() -> ProvisioningRequestedV1 {
    ProvisioningRequestedV1 {
        schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
        event_id: "e-1".to_owned(),
        replay_id: "AAAAAAAAAAE=".to_owned(),
        channel: "/event/OrderProvisionRequested__e".to_owned(),
        schema_id: "s".to_owned(),
        order_id: "801000000000001AAA".to_owned(),
        idem_key: None,
        correlation_id: "c-1".to_owned(),
        requested_by: None,
        version: None,
        created_at: None,
        created_by_id: None,
        received_at: "2026-11-25T00:00:00Z".to_owned(),
    }
}

fn header(message: &StreamMessage, name: &str) -> Option<String> {
    message.headers.get(name).map(|v| v.as_str().to_owned())
}

#[tokio::test]
async fn a_contract_body_is_stored_once_with_its_headers() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let mut stream = js
        .create_stream(stream::Config {
            name: "REQUESTS".to_owned(),
            subjects: vec![messages::subjects::PROVISIONING_REQUESTED_ALL.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let body = request();
    for _ in 0..2 {
        let message = Outgoing::contract(&body).unwrap();
        platform::publish::send(&js, message, &tracing::Span::none())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(stored.subject.as_str(), body.subject());
    assert_eq!(
        serde_json::from_slice::<ProvisioningRequestedV1>(&stored.payload).unwrap(),
        body
    );
    assert_eq!(header(&stored, "Correlation-Id").as_deref(), Some("c-1"));
    assert_eq!(
        header(&stored, "Schema").as_deref(),
        Some("provisioning.requested.v1")
    );
    assert_eq!(header(&stored, "Nats-Msg-Id").as_deref(), Some("e-1"));
    let traceparent = header(&stored, "traceparent").unwrap_or_default();
    assert!(
        messages::headers::trace_id_of(&traceparent).is_some(),
        "{traceparent:?}"
    );
}

#[tokio::test]
async fn a_dead_letter_is_stored_with_its_headers() {
    let server = NatsServer::start().await;
    let js = jetstream::new(server.client().await);
    let mut stream = js
        .create_stream(stream::Config {
            name: "DL".to_owned(),
            subjects: vec![messages::subjects::DEADLETTER_ALL.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let dead_letters = platform::deadletter::DeadLetters::new(js.clone(), "provisioner");
    dead_letters
        .stored(
            b"not json",
            Some("REQUESTS".to_owned()),
            Some(7),
            "provisioning.requested.x",
            Some("c-7"),
            "invalid_request",
            "not JSON",
        )
        .await
        .unwrap();
    let stored = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        stored.subject.as_str(),
        "provisioning.deadletter.provisioner"
    );
    assert_eq!(header(&stored, "Correlation-Id").as_deref(), Some("c-7"));
    assert_eq!(
        header(&stored, "Schema").as_deref(),
        Some(DeadLetterV1::SCHEMA)
    );
    assert_eq!(
        header(&stored, "Nats-Msg-Id").as_deref(),
        Some("provisioner:REQUESTS:7")
    );
    let body: DeadLetterV1 = serde_json::from_slice(&stored.payload).unwrap();
    assert_eq!(body.reason_code, "invalid_request");
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}
