//! The pipeline's JetStream streams, defined once for every service that creates them at start
//! (whichever service starts first creates; the others find them). Names are configurable; the
//! subjects are the contract's. Replicas are not set here: [`crate::nats::JetStreamResources`]
//! applies `JETSTREAM_REPLICAS` to every stream and bucket it creates.

use std::time::Duration;

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
