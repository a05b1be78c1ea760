//! An example downstream service: follows the provisioning outcomes with its own durable
//! JetStream consumer and prints one line per outcome. Copy it as the start of your own
//! subscriber; docs/contract.md §6 (subjects, headers, bodies) and §9 (how to consume) are the
//! rules it follows.
//!
//! What it shows:
//! - a durable pull consumer of your own on the outcomes stream, filtered to
//!   `provisioning.outcome.>`: its position survives restarts, and replicas of your service
//!   share it (each outcome goes to one of them);
//! - explicit acks, sent after the outcome is handled, so a crash means a redelivery, never a
//!   loss (which is why your handling must be idempotent: dedupe by `event_id`);
//! - tolerant reading: unknown fields are ignored (new fields may appear within `v1`), and a
//!   body that cannot be read is reported in one line, acked and skipped, never a crash;
//! - a clean stop on Ctrl-C or SIGTERM.

// Printing the outcomes is this program's whole job.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt as _;
use messages::{OutcomeResult, ProvisioningOutcomeV1};

pub const HELP: &str = "\
outcome-subscriber: prints every provisioning outcome (docs/contract.md §9)

Follows provisioning.outcome.> with its own durable JetStream consumer, so it resumes where it
stopped, and prints one line per outcome:

  <OrderId> activated whmcs_order_id=<id> correlation_id=<id> event_id=<id>
  <OrderId> failed error_code=<code> correlation_id=<id> event_id=<id>
  <OrderId> skipped correlation_id=<id> event_id=<id>

Usage: outcome-subscriber [--consumer NAME] [--stream NAME]

Options (each also read from the environment variable in brackets):
  --consumer NAME   durable consumer name [OUTCOME_CONSUMER]; default example-outcome-subscriber
  --stream NAME     the outcomes stream [OUTCOMES_STREAM]; default PROVISIONING_OUTCOMES
  -h, --help        this text

Environment:
  NATS_URL          comma-separated server URLs; default nats://127.0.0.1:4222
  NATS_CREDS_FILE   a NATS .creds file (user JWT and seed), when the server requires one

Stops on Ctrl-C or SIGTERM.";

/// Why the subscriber stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} (see --help)")]
    Usage(String),
    #[error("invalid NATS_URL entry {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read NATS_CREDS_FILE {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot find the outcomes stream {stream}: {source}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create or bind the consumer {consumer}: {source}")]
    Consumer {
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("the consumer's message stream ended")]
    Ended,
}

/// Settings from the command line and the environment (the command line wins).
#[derive(Debug)]
pub struct Settings {
    servers: Vec<async_nats::ServerAddr>,
    creds_file: Option<String>,
    consumer: String,
    stream: String,
}

impl Settings {
    /// `None` when `--help` was asked for.
    pub fn from_args_and_env(args: impl Iterator<Item = String>) -> Result<Option<Self>, Error> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut consumer = env("OUTCOME_CONSUMER");
        let mut stream = env("OUTCOMES_STREAM");
        let mut args = args;
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(None),
                "--consumer" => consumer = Some(value("--consumer")?),
                "--stream" => stream = Some(value("--stream")?),
                other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
            }
        }
        let urls = env("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
        let servers = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|url| {
                url.parse().map_err(|source| Error::Url {
                    url: url.to_owned(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            servers,
            creds_file: env("NATS_CREDS_FILE"),
            consumer: consumer.unwrap_or_else(|| "example-outcome-subscriber".to_owned()),
            stream: stream.unwrap_or_else(|| messages::subjects::streams::OUTCOMES.to_owned()),
        }))
    }
}

/// Follows the outcomes until Ctrl-C or SIGTERM.
pub async fn run(settings: Settings) -> Result<(), Error> {
    let mut options = match &settings.creds_file {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| Error::Credentials {
                path: path.clone(),
                source,
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    options = options.name("outcome-subscriber");
    let client = options.connect(settings.servers).await?;
    let js = jetstream::new(client.clone());

    // The pipeline creates the outcomes stream; a subscriber only reads it.
    let stream = js
        .get_stream(&settings.stream)
        .await
        .map_err(|source| Error::Stream {
            stream: settings.stream.clone(),
            source,
        })?;
    // Created the first time, bound to afterwards: the server keeps its position (which
    // outcomes were acked) across our restarts. An existing consumer keeps the settings it was
    // created with.
    let consumer = stream
        .get_or_create_consumer(
            &settings.consumer,
            consumer::pull::Config {
                durable_name: Some(settings.consumer.clone()),
                description: Some("example outcome subscriber".to_owned()),
                filter_subject: messages::subjects::PROVISIONING_OUTCOME_ALL.to_owned(),
                // Everything the stream still holds on first start; `DeliverPolicy::New` would
                // start with the next outcome instead.
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                // An outcome not acked within this time (we crashed mid-way) is delivered again.
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|source| Error::Consumer {
            consumer: settings.consumer.clone(),
            source: source.into(),
        })?;
    let mut outcomes = consumer
        .messages()
        .await
        .map_err(|source| Error::Consumer {
            consumer: settings.consumer.clone(),
            source: source.into(),
        })?;
    eprintln!(
        "outcome-subscriber: following {} on stream {} with consumer {}",
        messages::subjects::PROVISIONING_OUTCOME_ALL,
        settings.stream,
        settings.consumer
    );

    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let message = tokio::select! {
            () = &mut stop => break,
            next = outcomes.next() => next,
        };
        let message = match message {
            Some(Ok(message)) => message,
            // A missed heartbeat or a reconnect: the consumer goes on by itself.
            Some(Err(err)) => {
                eprintln!("outcome-subscriber: while pulling: {err}");
                continue;
            }
            None => return Err(Error::Ended),
        };
        handle(&message);
        // After handling, so a crash in between means a redelivery, not a loss. A failed ack
        // (connection lost) also means a redelivery later: handling is idempotent.
        if let Err(err) = message.ack_with(AckKind::Ack).await {
            eprintln!("outcome-subscriber: ack failed (it will come again): {err}");
        }
    }
    // Sends what is still buffered (acks) before the process ends.
    if let Err(err) = client.flush().await {
        eprintln!("outcome-subscriber: flush on exit failed: {err}");
    }
    eprintln!("outcome-subscriber: stopped");
    Ok(())
}

/// Prints the outcome in one line, or one line saying why it cannot be read. This is where your
/// service would act on the outcome, idempotently: the same `event_id` can come twice.
fn handle(message: &jetstream::Message) {
    // serde ignores fields it does not know, so fields added within v1 do not break this.
    let outcome: ProvisioningOutcomeV1 = match serde_json::from_slice(&message.payload) {
        Ok(outcome) => outcome,
        Err(err) => {
            println!(
                "unreadable outcome on {} ({} bytes): {err}; acked and skipped",
                message.subject,
                message.payload.len()
            );
            return;
        }
    };
    if outcome.schema != ProvisioningOutcomeV1::SCHEMA {
        // Another major version (contract §8): set it aside rather than guess what it means.
        println!(
            "outcome of schema {:?} on {} is not {}; acked and skipped",
            outcome.schema,
            message.subject,
            ProvisioningOutcomeV1::SCHEMA
        );
        return;
    }
    println!("{}", line(&outcome));
}

/// `<OrderId> <result> [whmcs_order_id=… | error_code=…] correlation_id=… event_id=…`.
fn line(outcome: &ProvisioningOutcomeV1) -> String {
    let detail = match outcome.result {
        OutcomeResult::Activated => outcome
            .whmcs_order_id
            .map(|id| format!(" whmcs_order_id={id}")),
        OutcomeResult::Failed => Some(format!(
            " error_code={}",
            outcome.error_code.as_deref().unwrap_or("unknown")
        )),
        OutcomeResult::Skipped => None,
    };
    format!(
        "{} {}{} correlation_id={} event_id={}",
        outcome.order_id,
        outcome.result.as_str(),
        detail.unwrap_or_default(),
        outcome.correlation_id,
        outcome.event_id
    )
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what a container runtime sends).
async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn outcome(result: OutcomeResult) -> ProvisioningOutcomeV1 {
        ProvisioningOutcomeV1 {
            schema: ProvisioningOutcomeV1::SCHEMA.to_owned(),
            order_id: "801000000000001AAA".to_owned(),
            result,
            whmcs_order_id: Some(42),
            whmcs_service_ids: vec![7],
            whmcs_invoice_id: None,
            error_code: None,
            error_message: None,
            step: "whmcs_accept".to_owned(),
            correlation_id: "c-1".to_owned(),
            event_id: "e-1".to_owned(),
            idem_key: None,
            started_at: "2026-01-01T00:00:00Z".to_owned(),
            finished_at: "2026-01-01T00:00:01Z".to_owned(),
            duration_ms: 1000,
        }
    }

    #[test]
    fn one_line_per_result() {
        assert_eq!(
            line(&outcome(OutcomeResult::Activated)),
            "801000000000001AAA activated whmcs_order_id=42 correlation_id=c-1 event_id=e-1"
        );
        let mut failed = outcome(OutcomeResult::Failed);
        failed.error_code = Some("CLIENT_MISSING".to_owned());
        assert_eq!(
            line(&failed),
            "801000000000001AAA failed error_code=CLIENT_MISSING correlation_id=c-1 event_id=e-1"
        );
        assert_eq!(
            line(&outcome(OutcomeResult::Skipped)),
            "801000000000001AAA skipped correlation_id=c-1 event_id=e-1"
        );
    }

    #[test]
    fn arguments_override_the_defaults() {
        let args = ["--consumer", "billing", "--stream", "OUT"].map(str::to_owned);
        let settings = Settings::from_args_and_env(args.into_iter())
            .unwrap()
            .unwrap();
        assert_eq!(settings.consumer, "billing");
        assert_eq!(settings.stream, "OUT");
        assert!(
            Settings::from_args_and_env(["--help".to_owned()].into_iter())
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            Settings::from_args_and_env(["--consumer".to_owned()].into_iter()),
            Err(Error::Usage(_))
        ));
    }
}
