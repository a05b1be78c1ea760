//! Hostile input end to end: sf-bridge, the provisioner and sf-writer run as processes (the
//! binaries) against a real nats-server and the simulators in this process, and are fed what an
//! outsider can send: Platform Events through sf-sim's Pub/Sub API (SOQL injection in
//! `OrderId__c`, ids of the wrong length, checksum or object, undecodable Avro, an unknown
//! schema, an event close to Salesforce's 1 MB), and messages published by hand on
//! `provisioning.requested.<id>` and `sf.order.update.<id>` (garbage, non-UTF-8 bytes, valid JSON
//! of the wrong schema, wrong types, missing fields, a subject naming another Order than the body,
//! fields the pipeline never writes, bogus headers, payloads near NATS's max_payload).
//!
//! Each case must end in a dead letter on `provisioning.deadletter.<service>` (the original bytes
//! in base64, the reason, where it came from) or, where the message is a well-formed request the
//! services cannot tell from a real one, in the guard's `skipped`; the pipeline must go on (a
//! valid order sent after the bad input completes); and nothing may be written to WHMCS
//! (AddOrder/AcceptOrder) or to a Salesforce Order on the strength of a bad message, which the
//! simulators' state shows. docs/reliability.md, "Hostile input", lists the cases.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use messages::{DeadLetterV1, OrderUpdateV1, ProvisioningRequestedV1};
use serde_json::{json, Value};
use sf_sim::{EventSpec, PoisonKind, SfSim};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use tokio_stream::StreamExt as _;
use whmcs_sim::WhmcsSim;

mod support;

const WAIT: Duration = Duration::from_secs(90);
/// NATS's default max_payload, which the test server keeps.
const MAX_PAYLOAD: usize = 1024 * 1024;

/// What the services published that the tests look at, collected from the start.
#[derive(Default)]
struct Seen {
    dead_letters: Vec<(String, DeadLetterV1)>,
    outcomes: Vec<(String, Value)>,
}

struct Stack {
    _nats: NatsServer,
    sf: SfSim,
    whmcs: WhmcsSim,
    js: jetstream::Context,
    seen: Arc<Mutex<Seen>>,
    services: Vec<ChildProcess>,
}

impl Stack {
    async fn start() -> Stack {
        let binaries =
            testkit::process::workspace_binaries(&["sf-bridge", "provisioner", "sf-writer"]);
        let nats = NatsServer::start().await;
        let sims = support::Simulators::start().await;
        let (sf, whmcs) = (sims.sf, sims.whmcs);
        let client = nats.client().await;
        let seen = Arc::new(Mutex::new(Seen::default()));
        collect_outcomes(&client, &seen).await;
        let js = jetstream::new(client);

        let common = |service: &'static str, extra: Vec<(&'static str, String)>| {
            let mut env = testkit::service::process_env(nats.url(), &sf);
            env.push(("OTEL_SERVICE_NAME", service.to_owned()));
            env.extend(extra);
            testkit::service::with_overrides(env, &[])
        };
        let bridge = common("sf-bridge", testkit::sim::pubsub_env(&sf));
        let mut provisioner_extra = testkit::sim::whmcs_env(&whmcs);
        provisioner_extra.extend([
            ("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()),
            // The reconciler meets every invalid message again and dead-letters it again
            // under the same message id: the stream must still hold one per message.
            ("PROVISIONER_RECOVERY_INTERVAL_SECS", "1".to_owned()),
        ]);
        let provisioner = common("provisioner", provisioner_extra);
        let writer = common(
            "sf-writer",
            vec![("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned())],
        );
        let services = vec![
            ChildProcess::spawn(binaries[0].to_str().unwrap(), &bridge),
            ChildProcess::spawn(binaries[1].to_str().unwrap(), &provisioner),
            ChildProcess::spawn(binaries[2].to_str().unwrap(), &writer),
        ];
        let mut stack = Stack {
            _nats: nats,
            sf,
            whmcs,
            js,
            seen,
            services,
        };
        stack.wait_ready().await;
        collect_dead_letters(&stack.js, &stack.seen).await;
        stack
    }

    /// The services are ready when the streams and durable consumers they create exist.
    async fn wait_ready(&mut self) {
        let js = self.js.clone();
        let ready = async {
            loop {
                let mut all = true;
                for (stream, consumer) in [
                    (messages::subjects::streams::REQUESTS, Some("provisioner")),
                    (
                        messages::subjects::streams::ORDER_UPDATES,
                        Some("sf-writer"),
                    ),
                    (messages::subjects::streams::DEADLETTER, None),
                ] {
                    let found = match js.get_stream(stream).await {
                        Ok(s) => match consumer {
                            Some(name) => s
                                .get_consumer::<jetstream::consumer::pull::Config>(name)
                                .await
                                .is_ok(),
                            None => true,
                        },
                        Err(_) => false,
                    };
                    all &= found;
                }
                if all {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(WAIT, ready).await.is_err() {
            self.fail("the services did not create their streams and consumers");
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let exited: Vec<bool> = self
            .services
            .iter_mut()
            .map(ChildProcess::has_exited)
            .collect();
        let logs: Vec<String> = self.services.iter().map(ChildProcess::log).collect();
        panic!("{what} (exited: {exited:?}):\n{}", logs.join("\n-----\n"));
    }

    /// Waits for `check`, failing with the services' logs when it does not come.
    async fn until<T>(&mut self, what: &str, mut check: impl FnMut(&Stack) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(found) = check(self) {
                return found;
            }
            if std::time::Instant::now() > deadline
                || self.services.iter_mut().any(ChildProcess::has_exited)
            {
                self.fail(&format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The one dead letter of `service` that `matches`, once it is there.
    async fn dead_letter(
        &mut self,
        service: &str,
        what: &str,
        matches: impl Fn(&DeadLetterV1) -> bool,
    ) -> DeadLetterV1 {
        let subject = messages::subjects::deadletter(service);
        let found = self
            .until(&format!("the dead letter of {what}"), |stack| {
                let seen = stack.seen.lock().unwrap();
                let found: Vec<DeadLetterV1> = seen
                    .dead_letters
                    .iter()
                    .filter(|(s, d)| *s == subject && matches(d))
                    .map(|(_, d)| d.clone())
                    .collect();
                (!found.is_empty()).then_some(found)
            })
            .await;
        assert_eq!(found.len(), 1, "one dead letter of {what}: {found:?}");
        let dead = found.into_iter().next().unwrap();
        assert_eq!(dead.schema, DeadLetterV1::SCHEMA);
        assert_eq!(dead.service, service);
        assert!(!dead.reason.is_empty() && !dead.reason_code.is_empty());
        dead
    }

    /// The dead letter of the message stored at `sequence` of `stream`.
    async fn dead_letter_of(
        &mut self,
        service: &str,
        stream: &str,
        sequence: u64,
        what: &str,
    ) -> DeadLetterV1 {
        let dead = self
            .dead_letter(service, what, |d| {
                d.origin.stream.as_deref() == Some(stream)
                    && d.origin.stream_sequence == Some(sequence)
            })
            .await;
        eprintln!("{what}: {} ({})", dead.reason, dead.reason_code);
        dead
    }

    /// The outcome `result` of `order_id`, once published.
    async fn outcome(&mut self, order_id: &str, result: &str) -> Value {
        let subject = messages::subjects::provisioning_outcome(order_id, result);
        self.until(&format!("outcome {subject}"), |stack| {
            let seen = stack.seen.lock().unwrap();
            seen.outcomes
                .iter()
                .find(|(s, _)| *s == subject)
                .map(|(_, o)| o.clone())
        })
        .await
    }

    async fn activation_status(&mut self, order_id: &str, expected: &str) {
        self.until(&format!("{order_id} {expected}"), |stack| {
            (status_of(stack, order_id).as_deref() == Some(expected)).then_some(())
        })
        .await;
    }

    /// Publishes bytes by hand and returns their stream sequence.
    async fn publish(
        &self,
        subject: &str,
        headers: async_nats::HeaderMap,
        payload: Vec<u8>,
    ) -> u64 {
        self.js
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored")
            .sequence
    }

    /// WHMCS orders carrying the AddOrder marker of `order_id`.
    fn whmcs_orders_of(&self, order_id: &str) -> usize {
        let marker = format!("[sf-order:{order_id}]");
        self.whmcs
            .state()
            .orders()
            .iter()
            .filter(|o| o.notes.contains(&marker))
            .count()
    }

    /// Whether a status update for `order_id` was ever published (on the updates stream).
    async fn update_queued_for(&self, order_id: &str) -> bool {
        self.js
            .get_stream(messages::subjects::streams::ORDER_UPDATES)
            .await
            .unwrap()
            .get_last_raw_message_by_subject(&messages::subjects::order_update(order_id))
            .await
            .is_ok()
    }

    /// WHMCS saw AddOrder and AcceptOrder exactly `n` times each.
    fn assert_whmcs_calls(&self, n: u64) {
        let stats = self.whmcs.state().stats();
        assert_eq!(stats.calls("AddOrder"), n, "{stats:?}");
        assert_eq!(stats.calls("AcceptOrder"), n, "{stats:?}");
    }

    fn stop(mut self) {
        for service in &mut self.services {
            service.terminate();
        }
    }
}

/// Subscribes (before anything is published) to outcomes.
async fn collect_outcomes(client: &async_nats::Client, seen: &Arc<Mutex<Seen>>) {
    let mut outcomes = client
        .subscribe(messages::subjects::PROVISIONING_OUTCOME_ALL)
        .await
        .unwrap();
    client.flush().await.unwrap();
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(message) = outcomes.next().await {
            let body: Value = serde_json::from_slice(&message.payload).unwrap();
            into.lock()
                .unwrap()
                .outcomes
                .push((message.subject.to_string(), body));
        }
    });
}

/// Reads the dead-letter stream from its start: what JetStream stored, so that a dead letter
/// published again (the reconciler meets every invalid message once more, under the same
/// message id) counts once, as it is stored.
async fn collect_dead_letters(js: &jetstream::Context, seen: &Arc<Mutex<Seen>>) {
    let consumer = js
        .get_stream(messages::subjects::streams::DEADLETTER)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let into = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            let body: DeadLetterV1 = serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
                panic!("a dead letter that is not provisioning.deadletter.v1: {e}")
            });
            into.lock()
                .unwrap()
                .dead_letters
                .push((message.subject.to_string(), body));
        }
    });
}

fn status_of(stack: &Stack, order_id: &str) -> Option<String> {
    support::status_of(&stack.sf, order_id)
}

/// A Draft order that provisions once approved (WHMCS client with a pay method, mapped product).
fn seed_good_order(stack: &Stack) -> String {
    support::seed_good_order(&stack.sf, &stack.whmcs, "Acme Ltd")
}

/// A good order marked `Activating` without an event (as if its event were the hostile one).
fn activating_order(stack: &Stack) -> String {
    let order = seed_good_order(stack);
    stack
        .sf
        .state()
        .set_order_field(&order, "Activation_Status__c", json!("Activating"))
        .unwrap();
    order
}

/// A body as sf-bridge writes it.
fn request_body(order_id: &str) -> ProvisioningRequestedV1 {
    ProvisioningRequestedV1 {
        schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
        event_id: uuid_like(),
        replay_id: "AAAAAAAAAAE=".to_owned(),
        channel: "/event/OrderProvisionRequested__e".to_owned(),
        schema_id: "hand-made".to_owned(),
        order_id: order_id.to_owned(),
        idem_key: Some(uuid_like()),
        correlation_id: uuid_like(),
        requested_by: Some("hostile-test".to_owned()),
        version: Some(1.0),
        created_at: None,
        created_by_id: None,
        received_at: "2026-11-30T00:00:00Z".to_owned(),
    }
}

/// A unique id without a uuid dependency: nanoseconds since the epoch and a counter.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "hostile-{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn update_body(order_id: &str, fields: Value) -> OrderUpdateV1 {
    OrderUpdateV1 {
        schema: OrderUpdateV1::SCHEMA.to_owned(),
        order_id: order_id.to_owned(),
        sequence: 1,
        fields: fields.as_object().cloned().unwrap(),
        correlation_id: uuid_like(),
        event_id: uuid_like(),
        created_at: "2026-11-30T00:00:00Z".to_owned(),
    }
}

/// The headers every legitimate message carries.
fn headers(schema: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(messages::headers::CORRELATION_ID, uuid_like().as_str());
    headers.insert(messages::headers::SCHEMA, schema);
    headers
}

/// Standard base64 with padding, to compare with `payload_base64` (the tests crate has no
/// base64 dependency).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A 18-character id with a valid checksum for a 15-character stem.
fn id18(stem15: &str) -> String {
    messages::salesforce_id::to_18(stem15)
}

/// The same id with its checksum suffix changed (still 18 alphanumeric characters).
fn bad_checksum(id: &str) -> String {
    let suffix = &id[15..];
    let other = if suffix == "ZZZ" { "AAA" } else { "ZZZ" };
    format!("{}{other}", &id[..15])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_events_that_cannot_be_orders_are_dead_lettered_by_the_bridge() {
    let mut stack = Stack::start().await;

    // OrderId__c values that are not Salesforce ids: SOQL injection attempts (quotes,
    // backslashes, URL-encoded quotes), wrong lengths, a wrong checksum suffix.
    let target = activating_order(&stack);
    let hostile_ids = [
        "801' OR Id != '".to_owned(),
        format!("{target}' OR Id != '"),
        "801\\' OR Id != \\'".to_owned(),
        "801%27%20OR%20Id%20!%3D%20%27".to_owned(),
        format!("{}'", &target[..14]),
        target[..17].to_owned(),
        target[..14].to_owned(),
        format!("{target}A"),
        bad_checksum(&target),
    ];
    let mut invalid = Vec::new();
    for id in &hostile_ids {
        let event = stack
            .sf
            .state()
            .publish_event(EventSpec {
                order_id: Some(id.clone()),
                idem_key: Some(uuid_like()),
                correlation_id: Some(uuid_like()),
                ..Default::default()
            })
            .unwrap();
        invalid.push((id.clone(), event));
    }
    let missing = stack
        .sf
        .state()
        .publish_poison(PoisonKind::MissingOrderId)
        .unwrap();
    let undecodable = stack
        .sf
        .state()
        .publish_poison(PoisonKind::UndecodableAvro)
        .unwrap();
    let unknown_schema = stack
        .sf
        .state()
        .publish_poison(PoisonKind::UnknownSchema)
        .unwrap();

    // An event close to Salesforce's 1 MB whose body, once JSON-escaped, is far larger than
    // NATS's max_payload: JetStream can never take it, and its dead letter must still fit.
    let oversized_order = activating_order(&stack);
    let oversized = stack
        .sf
        .state()
        .publish_event(EventSpec {
            order_id: Some(oversized_order.clone()),
            requested_by: Some("\u{1}".repeat(800_000)),
            ..Default::default()
        })
        .unwrap();

    // A well-formed id of another object (an Account): the bridge cannot know, the provisioner
    // finds no such Order and skips it without writing anything.
    let account = stack.sf.state().seed_account("Not an order", None);
    let wrong_object = stack
        .sf
        .state()
        .publish_event(EventSpec {
            order_id: Some(account.clone()),
            ..Default::default()
        })
        .unwrap();

    // A large but valid event (near max_payload once in JSON) still provisions.
    let large_order = activating_order(&stack);
    stack
        .sf
        .state()
        .publish_event(EventSpec {
            order_id: Some(large_order.clone()),
            idem_key: Some(uuid_like()),
            correlation_id: Some(uuid_like()),
            requested_by: Some("a".repeat(700_000)),
            version: Some(1.0),
            ..Default::default()
        })
        .unwrap();

    // The pipeline goes on: an order approved after all of it completes.
    let good = seed_good_order(&stack);
    stack.sf.state().approve_order(&good).unwrap();

    for (id, event) in &invalid {
        let dead = stack
            .dead_letter("sf-bridge", &format!("OrderId__c {id:?}"), |d| {
                d.origin.event_id.as_deref() == Some(event.event_id.as_str())
            })
            .await;
        assert_eq!(dead.reason_code, "order_id_invalid", "{id:?}: {dead:?}");
        assert!(
            dead.reason.contains("not a Salesforce id"),
            "{}",
            dead.reason
        );
        assert_eq!(
            dead.origin.channel.as_deref(),
            Some("/event/OrderProvisionRequested__e")
        );
        assert_eq!(
            dead.origin.replay_id.as_deref(),
            Some(base64(&event.replay_id).as_str())
        );
        assert_eq!(dead.origin.payload_size, None);
        // The original Avro bytes: the injected text is in them, whole.
        assert!(!dead.payload_base64.is_empty());
    }
    for (event, code) in [
        (&missing, "order_id_missing"),
        (&undecodable, "avro_decode"),
        (&unknown_schema, "schema_unavailable"),
    ] {
        let dead = stack
            .dead_letter("sf-bridge", code, |d| {
                d.origin.event_id.as_deref() == Some(event.event_id.as_str())
            })
            .await;
        assert_eq!(dead.reason_code, code, "{dead:?}");
    }
    let dead = stack
        .dead_letter("sf-bridge", "the oversized event", |d| {
            d.origin.event_id.as_deref() == Some(oversized.event_id.as_str())
        })
        .await;
    assert_eq!(dead.reason_code, "publish_refused", "{}", dead.reason);
    let size = dead
        .origin
        .payload_size
        .expect("an oversized original is kept as a prefix, its size recorded");
    assert!(size > 800_000, "{size}");
    assert!(dead.payload_base64.len() > MAX_PAYLOAD / 2);

    let skipped = stack.outcome(&account, "skipped").await;
    assert_eq!(skipped["step"], "order_details", "{skipped}");
    assert!(skipped["error_message"]
        .as_str()
        .is_some_and(|m| m.contains("not found")));
    let _ = wrong_object;

    stack.activation_status(&large_order, "Activated").await;
    stack.activation_status(&good, "Activated").await;

    // Nothing was written for the bad events: the targeted orders are as they were, WHMCS saw
    // exactly the two good orders, and no update was ever queued for the Account id.
    assert_eq!(status_of(&stack, &target).as_deref(), Some("Activating"));
    assert_eq!(
        status_of(&stack, &oversized_order).as_deref(),
        Some("Activating")
    );
    assert_eq!(stack.whmcs_orders_of(&target), 0);
    assert_eq!(stack.whmcs_orders_of(&oversized_order), 0);
    assert_eq!(stack.whmcs_orders_of(&account), 0);
    stack.assert_whmcs_calls(2);
    assert!(
        !stack.update_queued_for(&account).await,
        "an update for an id that is no Order"
    );
    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_requests_are_dead_lettered_or_guarded_and_never_provision() {
    let mut stack = Stack::start().await;
    let stream = messages::subjects::streams::REQUESTS;
    let a = activating_order(&stack);
    let b = activating_order(&stack);
    let before_a = stack.sf.state().order(&a).unwrap();
    let before_b = stack.sf.state().order(&b).unwrap();
    let on_a = messages::subjects::provisioning_requested(&a);
    let schema = ProvisioningRequestedV1::SCHEMA;
    let valid = |order: &str| serde_json::to_value(request_body(order)).unwrap();

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("garbage", b"garbage {{{ not json".to_vec()));
    cases.push((
        "non-UTF-8 bytes",
        vec![0xff, 0xfe, 0x00, 0xc3, 0x28, b'{', 0x80],
    ));
    let mut non_utf8_string = serde_json::to_vec(&valid(&a)).unwrap();
    // The correlation id's text with a byte that is not UTF-8 (JSON requires UTF-8).
    let at = non_utf8_string
        .windows(b"hostile-".len())
        .position(|w| w == b"hostile-")
        .unwrap();
    non_utf8_string[at] = 0xff;
    cases.push(("a non-UTF-8 byte in a string field", non_utf8_string));
    cases.push((
        "valid JSON of another schema",
        serde_json::to_vec(&json!({
            "schema": "provisioning.outcome.v1", "order_id": a, "result": "activated",
            "step": "whmcs_accept"
        }))
        .unwrap(),
    ));
    let mut v2 = valid(&a);
    v2["schema"] = json!("provisioning.requested.v2");
    cases.push(("a schema other than v1", serde_json::to_vec(&v2).unwrap()));
    cases.push(("a JSON array", b"[1,2,3]".to_vec()));
    let mut wrong_type = valid(&a);
    wrong_type["order_id"] = json!(801);
    cases.push((
        "order_id as a number",
        serde_json::to_vec(&wrong_type).unwrap(),
    ));
    let mut wrong_version = valid(&a);
    wrong_version["version"] = json!("one");
    cases.push((
        "version as text",
        serde_json::to_vec(&wrong_version).unwrap(),
    ));
    let mut missing = valid(&a);
    missing.as_object_mut().unwrap().remove("event_id");
    cases.push(("no event_id", serde_json::to_vec(&missing).unwrap()));
    let mut missing_order = valid(&a);
    missing_order.as_object_mut().unwrap().remove("order_id");
    cases.push(("no order_id", serde_json::to_vec(&missing_order).unwrap()));
    let mut empty_event = valid(&a);
    empty_event["event_id"] = json!("  ");
    cases.push((
        "a blank event_id",
        serde_json::to_vec(&empty_event).unwrap(),
    ));
    for injected in [
        format!("{a}' OR Id != '"),
        "801' OR Id != '".to_owned(),
        "801\\' OR Id != \\'".to_owned(),
        format!("{}%27", &a[..15]),
    ] {
        let mut body = valid(&a);
        body["order_id"] = json!(injected);
        cases.push((
            "SOQL injection in order_id",
            serde_json::to_vec(&body).unwrap(),
        ));
    }
    let mut checksum = valid(&a);
    checksum["order_id"] = json!(bad_checksum(&a));
    cases.push((
        "a wrong checksum suffix",
        serde_json::to_vec(&checksum).unwrap(),
    ));
    // The subject names A, the body B: both are real Activating orders, neither may be touched.
    cases.push((
        "a body about another order",
        serde_json::to_vec(&valid(&b)).unwrap(),
    ));
    // Garbage close to max_payload: its dead letter cannot hold it whole in base64.
    let mut near_max = vec![b'#'; MAX_PAYLOAD - 4096];
    near_max[0] = 0xff;
    cases.push(("garbage near max_payload", near_max));

    let mut sequences = Vec::new();
    for (what, payload) in &cases {
        let sequence = stack.publish(&on_a, headers(schema), payload.clone()).await;
        sequences.push((*what, sequence, payload.clone()));
    }
    // A subject with more tokens than the contract's (the consumer's filter takes it).
    let long_subject = format!("{on_a}.extra");
    let long_sequence = stack
        .publish(
            &long_subject,
            headers(schema),
            serde_json::to_vec(&valid(&a)).unwrap(),
        )
        .await;
    // Larger than max_payload: the client refuses it before it is sent, nothing reaches a
    // consumer.
    let too_big = stack
        .js
        .publish(on_a.clone(), vec![b'x'; MAX_PAYLOAD + 1].into())
        .await;
    assert!(too_big.is_err(), "a message over max_payload was sent");

    // Well-formed requests the provisioner cannot tell from sf-bridge's: the guard decides.
    // A Draft order (not approved): skipped, nothing written.
    let draft = seed_good_order(&stack);
    let before_draft = stack.sf.state().order(&draft).unwrap();
    stack
        .publish(
            &messages::subjects::provisioning_requested(&draft),
            headers(schema),
            serde_json::to_vec(&request_body(&draft)).unwrap(),
        )
        .await;
    // An Order id that does not exist: skipped, nothing written.
    let ghost = id18("801Sm0000ZZZZZZ");
    stack
        .publish(
            &messages::subjects::provisioning_requested(&ghost),
            headers(schema),
            serde_json::to_vec(&request_body(&ghost)).unwrap(),
        )
        .await;

    // Unknown fields are tolerated within v1 (docs/contract.md, versioning), and headers only
    // carry context: no Correlation-Id, no Nats-Msg-Id, a bogus traceparent. This one provisions.
    let tolerant = activating_order(&stack);
    let mut body = serde_json::to_value(request_body(&tolerant)).unwrap();
    body["priority"] = json!("High");
    body["nested"] = json!({"a": [1, 2, {"b": null}]});
    let mut bogus = async_nats::HeaderMap::new();
    bogus.insert(messages::headers::TRACEPARENT, "00-zz-not-a-trace-01");
    bogus.insert(messages::headers::TRACESTATE, "=,=,=");
    bogus.insert(messages::headers::SCHEMA, "provisioning.requested.v9");
    stack
        .publish(
            &messages::subjects::provisioning_requested(&tolerant),
            bogus,
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    // And the pipeline goes on: an order approved in Salesforce after all of it completes.
    let good = seed_good_order(&stack);
    stack.sf.state().approve_order(&good).unwrap();

    for (what, sequence, payload) in &sequences {
        let dead = stack
            .dead_letter_of("provisioner", stream, *sequence, what)
            .await;
        assert_eq!(dead.reason_code, "invalid_request", "{what}");
        assert_eq!(
            dead.origin.subject.as_deref(),
            Some(on_a.as_str()),
            "{what}"
        );
        match dead.origin.payload_size {
            None => assert_eq!(dead.payload_base64, base64(payload), "{what}"),
            Some(size) => {
                assert_eq!(size, payload.len() as u64, "{what}");
                let whole = base64(payload);
                let kept = dead.payload_base64.trim_end_matches('=');
                assert!(
                    kept.len() > MAX_PAYLOAD / 2 && whole.starts_with(&kept[..kept.len() - 4]),
                    "{what}: a prefix of the original"
                );
            }
        }
    }
    let mismatch = sequences
        .iter()
        .find(|(w, ..)| *w == "a body about another order")
        .unwrap()
        .1;
    let dead = stack
        .dead_letter_of(
            "provisioner",
            stream,
            mismatch,
            "a body about another order",
        )
        .await;
    assert!(dead.reason.contains("does not name"), "{}", dead.reason);
    let near = sequences.last().unwrap().1;
    let dead = stack
        .dead_letter_of("provisioner", stream, near, "garbage near max_payload")
        .await;
    assert!(dead.origin.payload_size.is_some(), "{dead:?}");
    stack
        .dead_letter_of(
            "provisioner",
            stream,
            long_sequence,
            "a subject with extra tokens",
        )
        .await;

    let skipped = stack.outcome(&draft, "skipped").await;
    assert_eq!(skipped["step"], "guard", "{skipped}");
    let skipped = stack.outcome(&ghost, "skipped").await;
    assert_eq!(skipped["step"], "order_details", "{skipped}");
    stack.activation_status(&tolerant, "Activated").await;
    stack.activation_status(&good, "Activated").await;

    // The reconciler meets every one of these messages again and publishes its dead letter
    // again: the stream still holds exactly one per message (its Nats-Msg-Id is fixed).
    let last = sequences
        .iter()
        .map(|(_, s, _)| *s)
        .chain([long_sequence])
        .max()
        .unwrap();
    let journal = stack
        .js
        .get_key_value(messages::subjects::buckets::JOBS)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mark = journal
            .get("reconciled.provisioner")
            .await
            .unwrap()
            .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
            .and_then(|v| v["stream_sequence"].as_u64())
            .unwrap_or(0);
        if mark >= last {
            break;
        }
        if std::time::Instant::now() > deadline {
            stack.fail(&format!("the reconciler stayed at {mark}, before {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut stored = stack
        .js
        .get_stream(messages::subjects::streams::DEADLETTER)
        .await
        .unwrap()
        .info_with_subjects(messages::subjects::deadletter("provisioner"))
        .await
        .unwrap();
    let mut count = 0;
    while let Some(subject) = stored.next().await {
        count += subject.unwrap().1;
    }
    assert_eq!(count, sequences.len() + 1, "one dead letter per message");

    // Nothing was written for the bad messages.
    assert_eq!(stack.sf.state().order(&a).unwrap(), before_a);
    assert_eq!(stack.sf.state().order(&b).unwrap(), before_b);
    assert_eq!(stack.sf.state().order(&draft).unwrap(), before_draft);
    for order in [&a, &b, &draft, &ghost] {
        assert_eq!(stack.whmcs_orders_of(order), 0, "a WHMCS order for {order}");
    }
    for order in [&a, &b, &draft, &ghost] {
        assert!(
            !stack.update_queued_for(order).await,
            "an update was queued for {order}"
        );
    }
    stack.assert_whmcs_calls(2);
    stack.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_order_updates_are_dead_lettered_and_never_written() {
    let mut stack = Stack::start().await;
    let stream = messages::subjects::streams::ORDER_UPDATES;
    let t = seed_good_order(&stack);
    let u = seed_good_order(&stack);
    let before_t = stack.sf.state().order(&t).unwrap();
    let before_u = stack.sf.state().order(&u).unwrap();
    let on_t = messages::subjects::order_update(&t);
    let schema = OrderUpdateV1::SCHEMA;
    let failed = json!({
        "Activation_Status__c": "Failed",
        "Activation_Error_Code__c": "409",
        "Activation_Error_Message__c": "Payment method missing",
    });
    let valid = |order: &str, fields: &Value| {
        serde_json::to_value(update_body(order, fields.clone())).unwrap()
    };

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("garbage", b"\x00\x01garbage".to_vec()));
    cases.push(("non-UTF-8 bytes", vec![0xc3, 0x28, 0xa0, 0xa1, 0xff]));
    cases.push((
        "valid JSON of another schema",
        serde_json::to_vec(&request_body(&t)).unwrap(),
    ));
    let mut wrong_type = valid(&t, &failed);
    wrong_type["sequence"] = json!("1");
    cases.push(("sequence as text", serde_json::to_vec(&wrong_type).unwrap()));
    let mut fields_list = valid(&t, &failed);
    fields_list["fields"] = json!(["Activation_Status__c", "Activated"]);
    cases.push((
        "fields as a list",
        serde_json::to_vec(&fields_list).unwrap(),
    ));
    let mut missing = valid(&t, &failed);
    missing.as_object_mut().unwrap().remove("fields");
    cases.push(("no fields", serde_json::to_vec(&missing).unwrap()));
    let mut injected = valid(&t, &failed);
    injected["order_id"] = json!(format!("{t}' OR Id != '"));
    cases.push((
        "SOQL injection in order_id",
        serde_json::to_vec(&injected).unwrap(),
    ));
    let mut checksum = valid(&t, &failed);
    checksum["order_id"] = json!(bad_checksum(&t));
    cases.push((
        "a wrong checksum suffix",
        serde_json::to_vec(&checksum).unwrap(),
    ));
    cases.push((
        "a body about another order",
        serde_json::to_vec(&valid(&u, &failed)).unwrap(),
    ));
    cases.push((
        "a field the pipeline never writes",
        serde_json::to_vec(&valid(&t, &json!({"Status": "Activated"}))).unwrap(),
    ));
    cases.push((
        "the record's owner",
        serde_json::to_vec(&valid(
            &t,
            &json!({"Activation_Status__c": "Activated", "AccountId": "001Sm0000000001AAA"}),
        ))
        .unwrap(),
    ));
    cases.push((
        "the record's id",
        serde_json::to_vec(&valid(
            &t,
            &json!({"id": u, "Activation_Status__c": "Failed"}),
        ))
        .unwrap(),
    ));
    let mut near_max = vec![b'!'; MAX_PAYLOAD - 4096];
    near_max[0] = 0xfe;
    cases.push(("garbage near max_payload", near_max));

    let mut sequences = Vec::new();
    for (what, payload) in &cases {
        let sequence = stack.publish(&on_t, headers(schema), payload.clone()).await;
        sequences.push((*what, sequence, payload.clone()));
    }
    // Well-formed, but Salesforce refuses it (the message is limited to 255 characters): a dead
    // letter whose original, near max_payload, is kept as a prefix.
    let long_message = valid(
        &t,
        &json!({
            "Activation_Status__c": "Failed",
            "Activation_Error_Code__c": "X",
            "Activation_Error_Message__c": "m".repeat(MAX_PAYLOAD - 8192),
        }),
    );
    let refused = stack
        .publish(
            &on_t,
            headers(schema),
            serde_json::to_vec(&long_message).unwrap(),
        )
        .await;

    // The writer goes on: a legitimate update for another Order is applied.
    let v = seed_good_order(&stack);
    stack
        .publish(
            &messages::subjects::order_update(&v),
            headers(schema),
            serde_json::to_vec(&valid(&v, &failed)).unwrap(),
        )
        .await;

    for (what, sequence, payload) in &sequences {
        let dead = stack
            .dead_letter_of("sf-writer", stream, *sequence, what)
            .await;
        assert_eq!(
            dead.reason_code, "invalid_update",
            "{what}: {}",
            dead.reason
        );
        assert_eq!(
            dead.origin.subject.as_deref(),
            Some(on_t.as_str()),
            "{what}"
        );
        match dead.origin.payload_size {
            None => assert_eq!(dead.payload_base64, base64(payload), "{what}"),
            Some(size) => assert_eq!(size, payload.len() as u64, "{what}"),
        }
    }
    for (what, fragment) in [
        ("a body about another order", "does not name"),
        ("a field the pipeline never writes", "must not set"),
        ("the record's owner", "must not set"),
        ("the record's id", "must not set"),
    ] {
        let sequence = sequences.iter().find(|(w, ..)| *w == what).unwrap().1;
        let dead = stack
            .dead_letter_of("sf-writer", stream, sequence, what)
            .await;
        assert!(dead.reason.contains(fragment), "{what}: {}", dead.reason);
    }
    let dead = stack
        .dead_letter_of("sf-writer", stream, refused, "an update Salesforce refuses")
        .await;
    assert_eq!(dead.reason_code, "STRING_TOO_LONG", "{}", dead.reason);
    assert!(dead.origin.payload_size.is_some(), "{dead:?}");

    stack.activation_status(&v, "Failed").await;
    let written = stack.sf.state().order(&v).unwrap();
    assert_eq!(written["Activation_Error_Code__c"], "409");

    // Nothing was written to the targeted Orders.
    assert_eq!(stack.sf.state().order(&t).unwrap(), before_t);
    assert_eq!(stack.sf.state().order(&u).unwrap(), before_u);
    stack.stop();
}
