//! The Pub/Sub gRPC API over a real tonic client: replay presets, flow control, keepalives,
//! idle close, errors with their trailers, schemas and Avro payloads, Publish, faults.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use apache_avro::types::Value as AvroValue;
use common::*;
use pubsub_proto::{
    error_codes, FetchRequest, ProducerEvent, PublishRequest, ReplayPreset, SchemaRequest,
    TopicRequest,
};
use sf_sim::{EventSpec, Faults, PoisonKind, SchemaVersion};
use tonic::Code;

fn spec(order: &str) -> EventSpec {
    EventSpec {
        order_id: Some(order.to_owned()),
        ..EventSpec::default()
    }
}

#[tokio::test]
async fn latest_delivers_only_events_published_after_subscribing() {
    let sim = start().await;
    let before = sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 10).await;
    fetches_seen(&sim, 1).await;
    let after = sim.state().publish_event(spec("801Sm0000000002")).unwrap();

    let response = sub.response().await;
    assert_eq!(event_ids(&response), vec![after.event_id.clone()]);
    assert_eq!(response.events[0].replay_id, after.replay_id);
    assert_eq!(response.latest_replay_id, after.replay_id);
    assert_eq!(response.pending_num_requested, 9);
    assert!(!response.rpc_id.is_empty());
    assert_eq!(
        response.events[0].event.as_ref().unwrap().schema_id,
        sim.state().schema_id(SchemaVersion::V1)
    );
    assert!(replay_u64(&after.replay_id) > replay_u64(&before.replay_id));
    assert!(replay_u64(&before.replay_id) > 1_000_000);
    sim.shutdown().await;
}

#[tokio::test]
async fn earliest_with_flow_control_delivers_exactly_what_was_requested() {
    let sim = start().await;
    let published: Vec<_> = (0..5)
        .map(|i| {
            sim.state()
                .publish_event(spec(&format!("801Sm000000000{i}")))
                .unwrap()
        })
        .collect();
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 3).await;

    let mut received = Vec::new();
    let mut last_pending = -1;
    while received.len() < 3 {
        let response = sub.response().await;
        assert!(
            !response.events.is_empty(),
            "no keepalive while events are available"
        );
        received.extend(event_ids(&response));
        last_pending = response.pending_num_requested;
    }
    assert_eq!(
        received,
        published[..3]
            .iter()
            .map(|p| p.event_id.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(last_pending, 0);

    // Nothing more went out before the next request: the next response starts at event 4.
    sub.fetch(10).await;
    let response = sub.response().await;
    assert_eq!(
        event_ids(&response),
        vec![published[3].event_id.clone(), published[4].event_id.clone()]
    );
    assert_eq!(response.pending_num_requested, 8);
    assert_eq!(sim.state().stats().events_delivered, 5);
    sim.shutdown().await;
}

#[tokio::test]
async fn custom_replay_starts_strictly_after_the_given_id() {
    let sim = start().await;
    let published: Vec<_> = (0..4)
        .map(|i| {
            sim.state()
                .publish_event(spec(&format!("801Sm000000000{i}")))
                .unwrap()
        })
        .collect();
    let token = token(&sim).await;
    let mut sub = subscribe(
        &sim,
        &token,
        ReplayPreset::Custom,
        published[1].replay_id.clone(),
        10,
    )
    .await;
    let response = sub.response().await;
    assert_eq!(
        event_ids(&response),
        vec![published[2].event_id.clone(), published[3].event_id.clone()]
    );

    // The tip itself is a valid position: nothing is replayed, new events arrive.
    let mut at_tip = subscribe(
        &sim,
        &token,
        ReplayPreset::Custom,
        published[3].replay_id.clone(),
        10,
    )
    .await;
    fetches_seen(&sim, 2).await;
    let next = sim.state().publish_event(spec("801Sm0000000009")).unwrap();
    assert_eq!(event_ids(&at_tip.response().await), vec![next.event_id]);
    sim.shutdown().await;
}

#[tokio::test]
async fn corrupted_or_unknown_replay_ids_are_refused_with_the_trailer() {
    let sim = start().await;
    let event = sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    let token = token(&sim).await;
    let unknown = (replay_u64(&event.replay_id) + 1).to_be_bytes().to_vec();
    for bad in [vec![1, 2, 3, 4], vec![], unknown] {
        let mut sub = subscribe(&sim, &token, ReplayPreset::Custom, bad.clone(), 10).await;
        let status = sub.error().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
        assert!(
            status
                .message()
                .starts_with("The Replay ID validation failed."),
            "{}",
            status.message()
        );
        assert!(status.message().contains("rpcId: "));
        assert_eq!(
            error_code(&status).as_deref(),
            Some(error_codes::REPLAY_ID_CORRUPTED)
        );
        assert!(status.metadata().get("rpc-id").is_some());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn keepalive_reports_the_tip_while_events_are_owed() {
    let mut config = config();
    config.keepalive_interval = Duration::from_millis(200);
    let sim = start_with(config).await;
    let event = sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 5).await;
    let keepalive = sub.response().await;
    assert!(keepalive.events.is_empty());
    assert_eq!(keepalive.latest_replay_id, event.replay_id);
    assert_eq!(keepalive.pending_num_requested, 5);
    let second = sub.response().await;
    assert!(second.events.is_empty());
    assert!(sim.state().stats().keepalives_sent >= 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn outstanding_requests_are_capped_at_100() {
    let mut config = config();
    config.keepalive_interval = Duration::from_millis(100);
    let sim = start_with(config).await;
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 80).await;
    sub.fetch(80).await;
    fetches_seen(&sim, 2).await;
    // The first keepalive after both requests reports the capped amount.
    let capped = loop {
        let response = sub.response().await;
        if response.pending_num_requested == 100 {
            break response;
        }
        assert_eq!(response.pending_num_requested, 80);
    };
    assert!(capped.events.is_empty());
    assert_eq!(sim.state().stats().max_outstanding_seen, 100);
    sim.shutdown().await;
}

#[tokio::test]
async fn idle_stream_closes_when_nothing_is_requested() {
    let mut config = config();
    config.idle_close = Duration::from_millis(300);
    let sim = start_with(config).await;
    sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 1).await;
    let response = sub.response().await;
    assert_eq!(response.events.len(), 1);
    assert_eq!(response.pending_num_requested, 0);
    // No further FetchRequest: the server ends the call with OK.
    assert!(sub.next().await.unwrap().is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_end_the_stream() {
    let sim = start().await;
    let token = token(&sim).await;

    let mut zero = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 0).await;
    let status = zero.error().await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("must be greater than zero"));

    let unknown = FetchRequest {
        topic_name: "/event/Nope__e".into(),
        num_requested: 1,
        ..Default::default()
    };
    let status = subscribe_with(&sim, &token, unknown)
        .await
        .unwrap()
        .error()
        .await;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        error_code(&status).as_deref(),
        Some(error_codes::TOPIC_NOT_FOUND)
    );

    let sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 1).await;
    let mut sub = sub;
    sub.requests
        .send(FetchRequest {
            topic_name: "/event/Other__e".into(),
            num_requested: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sub.error().await.code(), Code::InvalidArgument);
    sim.shutdown().await;
}

#[tokio::test]
async fn authentication_is_checked_on_every_rpc() {
    let sim = start().await;
    let token = token(&sim).await;
    let mut client = client(&sim).await;

    let check = |status: tonic::Status| {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(
            status
                .message()
                .starts_with("An authentication exception occurred."),
            "{}",
            status.message()
        );
        assert_eq!(
            error_code(&status).as_deref(),
            Some(error_codes::AUTH_ERROR)
        );
        assert!(status.metadata().get("rpc-id").is_some());
    };

    let topic = || TopicRequest {
        topic_name: CHANNEL.into(),
    };
    check(
        client
            .get_topic(tonic::Request::new(topic()))
            .await
            .unwrap_err(),
    );
    check(
        client
            .get_topic(authed(&sim, "00D!forged", topic()))
            .await
            .unwrap_err(),
    );
    let mut wrong_instance = authed(&sim, &token, topic());
    wrong_instance.metadata_mut().insert(
        "instanceurl",
        "https://elsewhere.my.salesforce.com".parse().unwrap(),
    );
    check(client.get_topic(wrong_instance).await.unwrap_err());
    let mut wrong_tenant = authed(&sim, &token, topic());
    wrong_tenant
        .metadata_mut()
        .insert("tenantid", "00D000000000099".parse().unwrap());
    check(client.get_topic(wrong_tenant).await.unwrap_err());

    // The 15-character org id is accepted as well.
    let mut short_tenant = authed(&sim, &token, topic());
    short_tenant
        .metadata_mut()
        .insert("tenantid", sim.state().org_id()[..15].parse().unwrap());
    client.get_topic(short_tenant).await.unwrap();

    let first = FetchRequest {
        topic_name: CHANNEL.into(),
        num_requested: 1,
        ..Default::default()
    };
    check(
        subscribe_with(&sim, "bogus", first.clone())
            .await
            .err()
            .unwrap(),
    );

    sim.state().expire_tokens();
    check(
        client
            .get_schema(authed(
                &sim,
                &token,
                SchemaRequest {
                    schema_id: "x".into(),
                },
            ))
            .await
            .unwrap_err(),
    );
    check(subscribe_with(&sim, &token, first).await.err().unwrap());
    sim.shutdown().await;
}

#[tokio::test]
async fn open_stream_survives_token_expiry() {
    let sim = start().await;
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 5).await;
    fetches_seen(&sim, 1).await;
    sim.state().expire_tokens();
    let event = sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    assert_eq!(event_ids(&sub.response().await), vec![event.event_id]);
    sim.shutdown().await;
}

#[tokio::test]
async fn payloads_decode_with_the_schema_get_schema_returns() {
    let sim = start().await;
    let account = sim.state().seed_account("Acme", Some("7"));
    let order = sim.state().seed_order::<&str, f64>(&account, &[]);
    let approved = sim.state().approve_order(&order).unwrap();
    let v2 = sim
        .state()
        .publish_event(EventSpec {
            order_id: Some(order.clone()),
            version: Some(2.0),
            schema: SchemaVersion::V2,
            ..EventSpec::default()
        })
        .unwrap();
    assert_ne!(approved.schema_id, v2.schema_id);

    let token = token(&sim).await;
    let mut client = client(&sim).await;
    let topic = client
        .get_topic(authed(
            &sim,
            &token,
            TopicRequest {
                topic_name: CHANNEL.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topic.schema_id, approved.schema_id);
    assert!(topic.can_subscribe && topic.can_publish);
    assert_eq!(topic.tenant_guid, sim.state().org_id());

    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 2).await;
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(sub.response().await.events);
    }
    let mut decoded = Vec::new();
    for consumer in &events {
        let event = consumer.event.as_ref().unwrap();
        let info = client
            .get_schema(authed(
                &sim,
                &token,
                SchemaRequest {
                    schema_id: event.schema_id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.schema_id, event.schema_id);
        let schema = apache_avro::Schema::parse_str(&info.schema_json).unwrap();
        let value =
            apache_avro::from_avro_datum(&schema, &mut event.payload.as_slice(), None).unwrap();
        let AvroValue::Record(fields) = value else {
            panic!("not a record")
        };
        decoded.push(fields);
    }
    let field = |fields: &Vec<(String, AvroValue)>, name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let first = &decoded[0];
    assert_eq!(
        field(first, "OrderId__c"),
        AvroValue::Union(1, Box::new(AvroValue::String(order.clone())))
    );
    assert_eq!(
        field(first, "RequestedBy__c"),
        AvroValue::Union(1, Box::new(AvroValue::String("sim-operator".into())))
    );
    assert_eq!(
        field(first, "Version__c"),
        AvroValue::Union(1, Box::new(AvroValue::Double(1.0)))
    );
    assert_eq!(
        field(first, "CreatedById"),
        AvroValue::String(sim.state().user_id().to_owned())
    );
    assert!(matches!(field(first, "CreatedDate"), AvroValue::Long(ms) if ms > 1_600_000_000_000));
    let second = &decoded[1];
    assert_eq!(
        field(second, "Priority__c"),
        AvroValue::Union(1, Box::new(AvroValue::String("Normal".into())))
    );
    assert_eq!(
        field(second, "CorrelationId__c"),
        AvroValue::Union(0, Box::new(AvroValue::Null))
    );

    let status = client
        .get_schema(authed(
            &sim,
            &token,
            SchemaRequest {
                schema_id: "nope".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(sim.state().stats().get_schema_calls, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn poison_events_are_delivered_like_any_other() {
    let sim = start().await;
    let kinds = [
        PoisonKind::UndecodableAvro,
        PoisonKind::MissingOrderId,
        PoisonKind::MalformedOrderId,
        PoisonKind::UnknownSchema,
    ];
    let published: Vec<_> = kinds
        .iter()
        .map(|k| sim.state().publish_poison(*k).unwrap())
        .collect();
    let token = token(&sim).await;
    let mut client = client(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 10).await;
    let response = sub.response().await;
    assert_eq!(response.events.len(), 4);

    let decode = |schema_json: &str, payload: &[u8]| {
        let schema = apache_avro::Schema::parse_str(schema_json).unwrap();
        apache_avro::from_avro_datum(&schema, &mut &payload[..], None)
    };
    let v1 = client
        .get_schema(authed(
            &sim,
            &token,
            SchemaRequest {
                schema_id: published[0].schema_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .schema_json;
    let payload = |i: usize| response.events[i].event.as_ref().unwrap().payload.clone();
    assert!(decode(&v1, &payload(0)).is_err());
    let order_id_of = |value: AvroValue| {
        let AvroValue::Record(fields) = value else {
            panic!()
        };
        fields
            .into_iter()
            .find(|(n, _)| n == "OrderId__c")
            .unwrap()
            .1
    };
    assert_eq!(
        order_id_of(decode(&v1, &payload(1)).unwrap()),
        AvroValue::Union(0, Box::new(AvroValue::Null))
    );
    assert_eq!(
        order_id_of(decode(&v1, &payload(2)).unwrap()),
        AvroValue::Union(1, Box::new(AvroValue::String("not-an-id!".into())))
    );
    let unknown = client
        .get_schema(authed(
            &sim,
            &token,
            SchemaRequest {
                schema_id: published[3].schema_id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    sim.shutdown().await;
}

#[tokio::test]
async fn publish_stores_good_events_and_refuses_bad_ones() {
    let sim = start().await;
    let token = token(&sim).await;
    let mut client = client(&sim).await;
    let schema_id = sim.state().schema_id(SchemaVersion::V1);
    let info = client
        .get_schema(authed(
            &sim,
            &token,
            SchemaRequest {
                schema_id: schema_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let schema = apache_avro::Schema::parse_str(&info.schema_json).unwrap();
    let null = || AvroValue::Union(0, Box::new(AvroValue::Null));
    let record = AvroValue::Record(vec![
        ("CreatedDate".into(), AvroValue::Long(1_700_000_000_000)),
        (
            "CreatedById".into(),
            AvroValue::String("005Sm0000000001AAA".into()),
        ),
        (
            "OrderId__c".into(),
            AvroValue::Union(1, Box::new(AvroValue::String("801Sm0000000001".into()))),
        ),
        ("IdemKey__c".into(), null()),
        ("CorrelationId__c".into(), null()),
        ("RequestedBy__c".into(), null()),
        ("Version__c".into(), null()),
    ]);
    let payload = apache_avro::to_avro_datum(&schema, record).unwrap();
    let request = PublishRequest {
        topic_name: CHANNEL.into(),
        events: vec![
            ProducerEvent {
                id: "evt-good".into(),
                schema_id: schema_id.clone(),
                payload,
                headers: vec![],
            },
            ProducerEvent {
                id: "evt-bad".into(),
                schema_id: schema_id.clone(),
                payload: vec![0x0e, 0x01],
                headers: vec![],
            },
            ProducerEvent {
                id: "evt-unknown".into(),
                schema_id: "nope".into(),
                payload: vec![],
                headers: vec![],
            },
        ],
        auth_refresh: String::new(),
    };
    let response = client
        .publish(authed(&sim, &token, request))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), 3);
    assert_eq!(response.results[0].correlation_key, "evt-good");
    assert!(response.results[0].error.is_none());
    assert_eq!(response.results[0].replay_id.len(), 8);
    for bad in &response.results[1..] {
        assert_eq!(
            bad.error.as_ref().unwrap().code,
            pubsub_proto::ErrorCode::Publish as i32
        );
        assert!(bad.replay_id.is_empty());
    }
    let events = sim.state().events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, "evt-good");
    assert_eq!(events[0].meta.order_id.as_deref(), Some("801Sm0000000001"));

    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 1).await;
    assert_eq!(
        event_ids(&sub.response().await),
        vec!["evt-good".to_owned()]
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn abort_fault_ends_the_stream_after_n_events_once() {
    let sim = start().await;
    let published: Vec<_> = (0..5)
        .map(|i| {
            sim.state()
                .publish_event(spec(&format!("801Sm000000000{i}")))
                .unwrap()
        })
        .collect();
    sim.state().set_faults(Faults {
        pubsub_abort_after_events: Some(2),
        ..Faults::default()
    });
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 5).await;
    let response = sub.response().await;
    assert_eq!(
        event_ids(&response),
        vec![published[0].event_id.clone(), published[1].event_id.clone()]
    );
    let status = sub.error().await;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        error_code(&status).as_deref(),
        Some(error_codes::SERVICE_UNAVAILABLE)
    );
    assert_eq!(sim.state().faults().pubsub_abort_after_events, None);

    // One-shot: resuming after the last delivered event works and gets the rest.
    let mut again = subscribe(
        &sim,
        &token,
        ReplayPreset::Custom,
        published[1].replay_id.clone(),
        5,
    )
    .await;
    assert_eq!(again.response().await.events.len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicate_fault_delivers_each_event_twice() {
    let sim = start().await;
    let a = sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    let b = sim.state().publish_event(spec("801Sm0000000002")).unwrap();
    sim.state()
        .update_faults(|f| f.pubsub_duplicate_deliveries = true);
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Earliest, vec![], 3).await;
    let response = sub.response().await;
    assert_eq!(
        event_ids(&response),
        vec![a.event_id.clone(), a.event_id.clone(), b.event_id.clone()]
    );
    assert_eq!(response.pending_num_requested, 0);
    sub.fetch(5).await;
    assert_eq!(event_ids(&sub.response().await), vec![b.event_id]);
    sim.shutdown().await;
}

#[tokio::test]
async fn stall_fault_sends_nothing_until_cleared() {
    let mut config = config();
    config.keepalive_interval = Duration::from_millis(50);
    let sim = start_with(config).await;
    sim.state().update_faults(|f| f.pubsub_stall = true);
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 5).await;
    fetches_seen(&sim, 1).await;
    let event = sim.state().publish_event(spec("801Sm0000000001")).unwrap();
    // Absence can only be observed over a window: several keepalive periods pass in silence.
    let silent = tokio::time::timeout(Duration::from_millis(400), sub.responses.message()).await;
    assert!(silent.is_err(), "a stalled stream sent {silent:?}");
    assert_eq!(sim.state().stats().keepalives_sent, 0);

    sim.state().update_faults(|f| f.pubsub_stall = false);
    assert_eq!(event_ids(&sub.response().await), vec![event.event_id]);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let sim = start().await;
    let token = token(&sim).await;
    let mut sub = subscribe(&sim, &token, ReplayPreset::Latest, vec![], 5).await;
    fetches_seen(&sim, 1).await;
    assert_eq!(sim.state().stats().active_streams, 1);
    sim.shutdown().await;
    let status = sub.error().await;
    assert_eq!(status.code(), Code::Unavailable);
}
