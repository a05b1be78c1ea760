//! Nothing lost, nothing twice, nothing stuck (docs/contract.md §5 rules 4–7): regression tests for the
//! paths that lost, duplicated or stranded an order.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use messages::OutcomeResult;
use whmcs_sim::ActionFaults;

use crate::harness::{Harness, WAIT};

const JOURNAL: &str = messages::subjects::buckets::JOBS;

async fn journal(h: &Harness) -> kv::Store {
    jetstream::new(h.nats.client().await)
        .get_key_value(JOURNAL)
        .await
        .expect("journal bucket")
}

/// The journal entry of an order, as JSON, with its revision.
async fn entry(h: &Harness, order_id: &str) -> Option<(serde_json::Value, u64)> {
    let entry = journal(h)
        .await
        .entry(format!("order.{order_id}"))
        .await
        .ok()??;
    Some((serde_json::from_slice(&entry.value).ok()?, entry.revision))
}

/// The value of the sample `series` (name and labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line[series.len()..].trim().parse().ok())
}

#[tokio::test]
async fn the_journal_entry_is_closed_before_the_outcome_so_an_immediate_retry_runs() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    // The first attempt fails fast: WHMCS refuses AddOrder.
    h.whmcs
        .state()
        .set_faults("AddOrder", ActionFaults::error("Invalid Payment Method", 1));
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    let failed = outcomes.next().await;
    assert_eq!(failed.result, OutcomeResult::Failed, "{failed:?}");
    // The instant the outcome is out, the job is finished in the journal.
    let (record, _) = entry(&h, &seeded.order_id).await.expect("entry");
    assert_eq!(record["state"], "failed", "{record}");

    // The operator's retry, at once: it must run, not be skipped as "a job is running".
    h.activate(&seeded.order_id);
    h.publish(&h.request(&seeded.order_id)).await;
    let retried = outcomes.next().await;
    assert_eq!(retried.result, OutcomeResult::Activated, "{retried:?}");
    assert_eq!(h.whmcs_orders(seeded.whmcs_client).len(), 1);
    provisioner.stop().await;
}

#[tokio::test]
async fn a_retry_spelled_with_the_15_character_id_reuses_the_whmcs_order() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    assert_eq!(seeded.order_id.len(), 18);
    let short = seeded.order_id[..15].to_owned();
    // WHMCS creates the order, then answers 500: the outcome is unknown to the first attempt.
    h.whmcs
        .state()
        .set_faults("AddOrder", ActionFaults::fail_after_commit_status(500, 1));
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    assert_eq!(outcomes.next().await.result, OutcomeResult::Failed);

    h.activate(&seeded.order_id);
    let retry = h.request(&short);
    h.publish(&retry).await;
    let retried = outcomes.next().await;
    assert_eq!(retried.result, OutcomeResult::Activated, "{retried:?}");
    assert_eq!(
        retried.order_id, seeded.order_id,
        "outcomes name the 18-character id"
    );
    assert_eq!(
        h.whmcs_calls("AddOrder"),
        1,
        "AddOrder was not called again"
    );
    assert_eq!(h.whmcs_orders(seeded.whmcs_client).len(), 1);
    assert!(
        entry(&h, &short).await.is_none(),
        "one journal key per Order"
    );
    provisioner.stop().await;
}

#[tokio::test]
async fn a_journal_outage_at_claim_time_delays_the_order_but_does_not_interrupt_it() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let js = jetstream::new(h.nats.client().await);
    let bucket_stream = format!("KV_{JOURNAL}");
    let config = js
        .get_stream(&bucket_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    js.delete_stream(&bucket_stream).await.unwrap();

    let seeded = h.seed_order();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    testkit::wait::until("a failed claim", WAIT, || async {
        let text = provisioner.metrics().await;
        (sample(&text, "provisioner_claim_failures_total{reason=\"store\"}")? >= 2.0).then_some(())
    })
    .await;
    js.create_stream(config).await.unwrap();

    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Activated, "{outcome:?}");
    assert_eq!(h.whmcs_calls("AddOrder"), 1);
    provisioner.stop().await;
}

#[tokio::test]
async fn a_message_delivered_and_dropped_while_no_replica_listened_is_still_run() {
    let h = Harness::start().await;
    h.start_provisioner(&[]).await.stop().await;
    let seeded = h.seed_order();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    // A worker takes the message and dies before claiming it.
    let client = h.nats.client().await;
    let mut advisories = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.PROVISIONING_REQUESTS.provisioner")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let js = jetstream::new(client.clone());
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("PROVISIONING_REQUESTS")
        .await
        .unwrap()
        .get_consumer("provisioner")
        .await
        .unwrap();
    {
        use futures::StreamExt;
        let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
        let taken = batch.next().await.unwrap().unwrap();
        assert!(taken.subject.ends_with(&seeded.order_id));
    }
    // Every replica is down past the ack wait: the max-deliveries advisory reaches nobody.
    // (nats-server 2.9 sends it only when a pull request makes the consumer look at its
    // expired deliveries, so the test keeps one open, as an idle replica would.)
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        use futures::StreamExt;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no max-deliveries advisory"
        );
        let mut probe = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        assert!(
            probe.next().await.is_none(),
            "max_deliver = 1: never redelivered"
        );
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(100), advisories.next()).await
        {
            break;
        }
    }

    let provisioner = h.start_provisioner(&[]).await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Activated, "{outcome:?}");
    assert_eq!(
        h.whmcs_calls("AddOrder"),
        1,
        "a real attempt, not INTERRUPTED"
    );
    assert_eq!(h.outcomes_for(&seeded.order_id).await.len(), 1);
    provisioner.stop().await;
}

#[tokio::test]
async fn a_job_whose_entry_was_taken_over_never_calls_add_order() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    h.whmcs.state().set_faults(
        "GetPayMethods",
        ActionFaults::latency(Duration::from_secs(2)),
    );
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    let request = h.request(&seeded.order_id);
    h.publish(&request).await;
    let (mut record, revision) = testkit::wait::until("the job's claim", WAIT, || async {
        let (record, revision) = entry(&h, &seeded.order_id).await?;
        (record["state"] == "running").then_some((record, revision))
    })
    .await;
    // Another replica takes the entry over (as recovery does), while the job is still reading.
    record["state"] = "interrupted".into();
    record["worker"] = serde_json::Value::Null;
    record["finished_at"] = messages::bodies::rfc3339(time::OffsetDateTime::now_utc()).into();
    journal(&h)
        .await
        .update(
            format!("order.{}", seeded.order_id),
            serde_json::to_vec(&record).unwrap().into(),
            revision,
        )
        .await
        .unwrap();

    testkit::wait::until("the job to notice", WAIT, || async {
        let text = provisioner.metrics().await;
        (sample(&text, "provisioner_jobs_lost_total{reason=\"taken_over\"}")? >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        h.whmcs_calls("AddOrder"),
        0,
        "no side effect after losing the entry"
    );
    // Whoever took the entry over reports it; the job that lost it never reports Activated.
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Failed, "{outcome:?}");
    assert_eq!(outcome.error_code.as_deref(), Some("INTERRUPTED"));
    assert_eq!(h.outcomes_for(&seeded.order_id).await.len(), 1);
    provisioner.stop().await;
}

#[tokio::test]
async fn an_abandoned_job_for_an_order_already_activated_is_skipped_not_failed() {
    let h = Harness::start().await;
    let first = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    assert_eq!(outcomes.next().await.result, OutcomeResult::Activated);
    first.stop().await;
    // sf-writer's work, done here: the Order is Activated in Salesforce.
    h.sf.state()
        .set_order_field(
            &seeded.order_id,
            "Activation_Status__c",
            serde_json::json!("Activated"),
        )
        .unwrap();

    // A duplicate event (new event id and idempotency key) whose worker dies mid-job.
    let mut faults = h.sf.state().faults();
    faults.rest_latency = Duration::from_secs(30);
    h.sf.state().set_faults(faults);
    let mut child = h.spawn_provisioner("doomed-worker", &[]);
    let duplicate = h.request(&seeded.order_id);
    h.publish(&duplicate).await;
    testkit::wait::until("the duplicate's claim", WAIT, || async {
        let (record, _) = entry(&h, &seeded.order_id).await?;
        (record["event_id"] == duplicate.event_id.as_str() && record["state"] == "running")
            .then_some(())
    })
    .await;
    child.kill();
    h.sf.state().set_faults(sf_sim::faults::Faults::default());

    let survivor = h.start_provisioner(&[]).await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.event_id, duplicate.event_id);
    assert_eq!(outcome.result, OutcomeResult::Skipped, "{outcome:?}");
    let updates = h.updates_for(&seeded.order_id).await;
    assert_eq!(
        updates.len(),
        1,
        "no Failed update over Activated: {updates:?}"
    );
    assert_eq!(updates[0].fields["Activation_Status__c"], "Activated");
    survivor.stop().await;
}

#[tokio::test]
async fn an_unreadable_journal_entry_is_set_aside_and_the_order_still_runs_once() {
    let h = Harness::start().await;
    let provisioner = h.start_provisioner(&[]).await;
    let seeded = h.seed_order();
    journal(&h)
        .await
        .put(format!("order.{}", seeded.order_id), "{not json".into())
        .await
        .unwrap();
    let mut outcomes = h.outcomes(&seeded.order_id).await;
    h.publish(&h.request(&seeded.order_id)).await;
    let outcome = outcomes.next().await;
    assert_eq!(outcome.result, OutcomeResult::Activated, "{outcome:?}");
    assert_eq!(h.whmcs_calls("AddOrder"), 1);
    let dead: Vec<messages::DeadLetterV1> = h
        .stored(
            "PROVISIONING_DEADLETTER",
            "provisioning.deadletter.provisioner",
        )
        .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason_code, "journal_entry_unreadable");
    provisioner.stop().await;
}

/// The lease keeper is dropped when its job ends, possibly while a renewal is on the wire: the
/// renewal still lands, and the job must know its new revision, or its closing write looks like
/// a takeover (seen in the chaos suite as INTERRUPTED jobs whose worker was alive).
#[tokio::test]
async fn a_checkpoint_whose_caller_stopped_waiting_does_not_fence_out_its_own_job() {
    use futures::FutureExt;
    use provisioner::journal::{claimed_record, Journal};
    use provisioner::orchestrator::JobJournal;

    let nats = testkit::nats::NatsServer::start().await;
    let js = jetstream::new(nats.client().await);
    let store = platform::nats::ensure_bucket(
        &js,
        kv::Config {
            bucket: "journal_test".to_owned(),
            history: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let journal = Journal::new(store, Duration::from_secs(30), Default::default());
    let request = {
        let mut request = messages::ProvisioningRequestedV1 {
            schema: messages::ProvisioningRequestedV1::SCHEMA.to_owned(),
            event_id: "event-1".to_owned(),
            replay_id: String::new(),
            channel: String::new(),
            schema_id: String::new(),
            order_id: "801000000000001AAA".to_owned(),
            idem_key: None,
            correlation_id: "c".to_owned(),
            requested_by: None,
            version: None,
            created_at: None,
            created_by_id: None,
            received_at: String::new(),
        };
        request.order_id = messages::salesforce_id::canonical(&request.order_id).unwrap();
        request
    };
    let mut record = claimed_record(None, &request, "w1", journal.lease(), None);
    let revision = journal.write(&mut record, None).await.unwrap();
    let job = JobJournal::new(journal.clone(), record, revision);

    for round in 0..20 {
        // Polled once, then dropped: the write is already on its way.
        let _ = job
            .checkpoint(|r| r.lease_until_ms = Some(round))
            .now_or_never();
        job.checkpoint(|r| r.step = format!("step-{round}"))
            .await
            .unwrap_or_else(|lost| panic!("round {round}: {lost}"));
    }
    let stored = journal.read(&request.order_id).await.unwrap();
    let provisioner::journal::Stored::Record(stored, _) = stored else {
        panic!("entry readable");
    };
    assert_eq!(stored.step, "step-19");
}

/// As a worker does up to its close: takes the order's message from the durable consumer,
/// acknowledges it (after its claim), and closes the order's entry as failed at AddOrder. Its
/// report is not published. Returns the closed entry and its revision.
async fn take_and_close(
    h: &Harness,
    request: &messages::ProvisioningRequestedV1,
) -> (provisioner::journal::JobRecord, u64) {
    use futures::StreamExt;
    use provisioner::journal::{claimed_record, Close, Journal};
    use provisioner::steps::JobResult;

    let js = jetstream::new(h.nats.client().await);
    let consumer: jetstream::consumer::PullConsumer = js
        .get_stream("PROVISIONING_REQUESTS")
        .await
        .unwrap()
        .get_consumer("provisioner")
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let taken = batch.next().await.unwrap().unwrap();
    assert!(taken.subject.ends_with(&request.order_id));
    taken.ack().await.unwrap();

    let journal = Journal::new(journal(h).await, Duration::from_secs(3), Default::default());
    let mut record = claimed_record(None, request, "slow-worker", journal.lease(), None);
    record.close(&JobResult::failed(
        "500",
        "WHMCS AddOrder answered HTTP 500",
    ));
    record.step = "whmcs_create".to_owned();
    let revision = journal.write(&mut record, None).await.unwrap();
    (record, revision)
}

/// The reconciler's watermark (every message up to it has its outcome).
async fn watermark(h: &Harness) -> Option<u64> {
    let entry = journal(h)
        .await
        .entry("reconciled.provisioner")
        .await
        .ok()??;
    serde_json::from_slice::<serde_json::Value>(&entry.value)
        .ok()?
        .get("stream_sequence")?
        .as_u64()
}

/// Every outcome a core subscriber of the order got so far: a round trip on its connection
/// first, so whatever the server sent it before now has arrived.
async fn received(
    client: &async_nats::Client,
    subscriber: &mut async_nats::Subscriber,
) -> Vec<messages::ProvisioningOutcomeV1> {
    use futures::StreamExt;
    client.flush().await.unwrap();
    let mut out = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(50), subscriber.next()).await
    {
        out.push(serde_json::from_slice(&message.payload).unwrap());
    }
    out
}

/// A worker between closing its entry and publishing its report (slow, not dead): the reconciler
/// must leave the report to it. The streams store a second publish once (message ids), but core
/// subscribers of the outcome subjects get it twice — that was the intermittent failure of
/// `retry_after_add_order_timeout_reuses_the_whmcs_order`, which read the reconciler's copy of
/// the first attempt's `failed` outcome as the retry's.
#[tokio::test]
async fn a_report_on_its_way_is_not_published_again_by_the_reconciler() {
    let h = Harness::start().await;
    h.start_provisioner(&[]).await.stop().await;
    let seeded = h.seed_order();
    let request = h.request(&seeded.order_id);
    let sequence = h.publish(&request).await.sequence;
    let (record, revision) = take_and_close(&h, &request).await;
    let client = h.nats.client().await;
    let mut subscriber = client
        .subscribe(format!("provisioning.outcome.{}.>", seeded.order_id))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let provisioner = h.start_provisioner(&[]).await;
    // The reconciler has seen the closed entry without its report (or, wrongly, published it).
    let mut seen = Vec::new();
    testkit::wait::until("the reconciler to look at the message", WAIT, || async {
        let text = provisioner.metrics().await;
        let open = sample(&text, "provisioner_reconciler_open").unwrap_or(0.0);
        (open >= 1.0 || !h.outcomes_for(&seeded.order_id).await.is_empty()).then_some(())
    })
    .await;
    seen.extend(received(&client, &mut subscriber).await);
    // The worker publishes its report now, as it would have a moment after its close.
    let js = jetstream::new(h.nats.client().await);
    let report = provisioner::publisher::Report::of(&record, revision).unwrap();
    provisioner::publisher::Publisher::new(js)
        .report(&report, &tracing::Span::none())
        .await
        .unwrap();
    // The reconciler then counts the message done: its watermark passes it.
    testkit::wait::until("the watermark to pass the message", WAIT, || async {
        (watermark(&h).await? >= sequence).then_some(())
    })
    .await;
    seen.extend(received(&client, &mut subscriber).await);
    assert_eq!(seen.len(), 1, "one outcome per message: {seen:?}");
    assert_eq!(seen[0].event_id, request.event_id);
    assert_eq!(h.outcomes_for(&seeded.order_id).await.len(), 1);
    provisioner.stop().await;
}

/// A worker that died between its close and its report: the next event for the Order waits for
/// the report, which is published once (by that claim or by the reconciler, whichever takes it
/// over first), and then runs.
#[tokio::test]
async fn a_report_its_worker_never_published_goes_out_once_before_the_next_job_runs() {
    let h = Harness::start().await;
    h.start_provisioner(&[]).await.stop().await;
    let seeded = h.seed_order();
    let first = h.request(&seeded.order_id);
    h.publish(&first).await;
    take_and_close(&h, &first).await;
    let client = h.nats.client().await;
    let mut subscriber = client
        .subscribe(format!("provisioning.outcome.{}.>", seeded.order_id))
        .await
        .unwrap();
    client.flush().await.unwrap();

    let provisioner = h.start_provisioner(&[]).await;
    let retry = h.request(&seeded.order_id);
    let retry_sequence = h.publish(&retry).await.sequence;
    let mut seen: Vec<messages::ProvisioningOutcomeV1> = Vec::new();
    while !seen.iter().any(|o| o.event_id == retry.event_id) {
        use futures::StreamExt;
        let message = tokio::time::timeout(WAIT, subscriber.next())
            .await
            .unwrap_or_else(|_| panic!("the retry's outcome; so far {seen:?}"))
            .expect("subscription open");
        seen.push(serde_json::from_slice(&message.payload).unwrap());
    }
    testkit::wait::until("the watermark to pass the retry", WAIT, || async {
        (watermark(&h).await? >= retry_sequence).then_some(())
    })
    .await;
    seen.extend(received(&client, &mut subscriber).await);
    let events: Vec<&str> = seen.iter().map(|o| o.event_id.as_str()).collect();
    assert_eq!(
        events,
        [first.event_id.as_str(), retry.event_id.as_str()],
        "the first job's report once, before the retry's: {seen:?}"
    );
    assert_eq!(seen[0].result, OutcomeResult::Failed);
    assert_eq!(seen[1].result, OutcomeResult::Activated, "{seen:?}");
    assert_eq!(h.whmcs_calls("AddOrder"), 1);
    provisioner.stop().await;
}
