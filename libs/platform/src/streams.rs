//! The pipeline's JetStream resources, defined once: the streams (created at start by every
//! service that uses them; whichever starts first creates, the others find them), the KV buckets
//! and the durable consumers. Names are configurable (defaults in `messages::subjects`); the
//! subjects are the contract's. Replicas are not set here: [`crate::nats::JetStreamResources`]
//! applies `JETSTREAM_REPLICAS` to every stream and bucket it creates.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};

const DAY: u64 = 24 * 3600;

/// Default duplicate window of the requests stream (`SF_BRIDGE_DUPLICATE_WINDOW_SECS`):
/// Salesforce's 72 h event retention, so any replay is recognised (docs/decisions.md D2).
pub const REQUESTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(72 * 3600);

/// Default retention of the requests stream (`SF_BRIDGE_STREAM_MAX_AGE_SECS`).
pub const REQUESTS_MAX_AGE: Duration = Duration::from_secs(7 * DAY);

/// `provisioning.requested.>`: one message per Salesforce event id. The long duplicate window
/// lets any replay (crash, EARLIEST fallback, up to Salesforce's 72 h retention) be stored once.
///
/// sf-bridge and the provisioner both create it when absent (whoever starts first), each from
/// the same variables and defaults ([`REQUESTS_DUPLICATE_WINDOW`], [`REQUESTS_MAX_AGE`]), so the
/// stream is the same whichever service made it.
pub fn requests(name: &str, duplicate_window: Duration, max_age: Duration) -> Config {
    Config {
        name: name.to_owned(),
        description: Some(
            "Salesforce OrderProvisionRequested__e events, one message per event id".to_owned(),
        ),
        subjects: vec![messages::subjects::PROVISIONING_REQUESTED_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age,
        duplicate_window,
        ..Default::default()
    }
}

/// `provisioning.outcome.>`: results for other services; also the record recovery consults to
/// know whether a job already reported.
pub fn outcomes(name: &str) -> Config {
    Config {
        name: name.to_owned(),
        description: Some(
            "Provisioning outcomes, one per job (Nats-Msg-Id outcome:<event id>)".to_owned(),
        ),
        subjects: vec![messages::subjects::PROVISIONING_OUTCOME_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * DAY),
        duplicate_window: Duration::from_secs(DAY),
        ..Default::default()
    }
}

/// `sf.order.update.>`: sf-writer's work queue.
pub fn order_updates(name: &str) -> Config {
    Config {
        name: name.to_owned(),
        description: Some("Salesforce Order field updates for sf-writer".to_owned()),
        subjects: vec![messages::subjects::ORDER_UPDATE_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(7 * DAY),
        duplicate_window: Duration::from_secs(DAY),
        ..Default::default()
    }
}

/// `provisioning.deadletter.>`: what any service set aside, kept for operators.
pub fn deadletter(name: &str) -> Config {
    Config {
        name: name.to_owned(),
        description: Some("Messages the pipeline could not process, with the reason".to_owned()),
        subjects: vec![messages::subjects::DEADLETTER_ALL.to_owned()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * DAY),
        duplicate_window: Duration::from_secs(DAY),
        ..Default::default()
    }
}

/// sf-bridge's replay cursor, one key per Salesforce channel. A short history lets an operator
/// see where the cursor was before a bad write.
pub fn cursor_bucket(name: &str) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: "sf-bridge replay cursor per Salesforce channel".to_owned(),
        history: 10,
        storage: StorageType::File,
        ..Default::default()
    }
}

/// sf-bridge's subscription lease, one key per channel; an entry older than `ttl` expires, so a
/// leader that died without releasing is replaced.
pub fn lease_bucket(name: &str, ttl: Duration) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: "sf-bridge subscription lease per Salesforce channel".to_owned(),
        history: 1,
        max_age: ttl,
        storage: StorageType::File,
        ..Default::default()
    }
}

/// The provisioner's job journal, one entry per Salesforce Order, kept 90 days (the status API
/// answers from it).
pub fn journal_bucket(name: &str) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: "provisioner job journal, one entry per Salesforce Order".to_owned(),
        history: 5,
        max_age: Duration::from_secs(90 * DAY),
        storage: StorageType::File,
        ..Default::default()
    }
}

/// sf-writer's last applied update sequence and write claim per Order, kept `max_age`.
pub fn applied_bucket(name: &str, max_age: Duration) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: "sf-writer: last applied update sequence and write claim per Order".to_owned(),
        history: 1,
        max_age,
        storage: StorageType::File,
        ..Default::default()
    }
}

/// The provisioner's durable consumer on the requests stream (docs/contract.md §1: explicit
/// ack, max_deliver = 1: a job is never run twice by redelivery; the journal and the reconciler
/// handle what a crash left).
pub fn provisioner_consumer(name: &str, ack_wait: Duration, max_ack_pending: i64) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(
            "provisioner: one delivery per event, jobs tracked in the journal".to_owned(),
        ),
        filter_subject: messages::subjects::PROVISIONING_REQUESTED_ALL.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        max_deliver: 1,
        ack_wait,
        max_ack_pending,
        ..Default::default()
    }
}

/// sf-writer's durable consumer on the updates stream: explicit ack, unlimited deliveries,
/// `ack_wait` long enough for a held message between in-progress acks.
pub fn writer_consumer(name: &str, ack_wait: Duration, max_ack_pending: i64) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(
            "sf-writer: Salesforce Order updates, retried until applied or dead-lettered"
                .to_owned(),
        ),
        filter_subject: messages::subjects::ORDER_UPDATE_ALL.to_owned(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        max_deliver: -1,
        ack_wait,
        max_ack_pending,
        ..Default::default()
    }
}
