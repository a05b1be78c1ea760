//! The pull loop: a durable consumer with explicit ack and unlimited deliveries (this side
//! retries), shared by every replica.
//!
//! A batch is pulled only when a batch slot is free, and only as many messages as one request
//! takes, so nothing waits in a client-side buffer while its `ack_wait` runs out. Pulling is
//! two-step: wait (long poll) for the first update, linger briefly, then take whatever else is
//! waiting at that moment without waiting (`no_wait` fetch). Under load the batch fills at once;
//! a lone update costs the linger.
//!
//! On shutdown the loop stops pulling; batches in hand finish their current request and give the
//! rest back; after the grace period they are abandoned (JetStream redelivers after `ack_wait`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, PullConsumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::writer::Writer;

/// How long one long-poll for the first message of a batch lasts.
const FIRST_MESSAGE_POLL: Duration = Duration::from_secs(5);
/// Guard for the `no_wait` fetch, which the server answers at once.
const FETCH_GUARD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct PullSettings {
    pub max_batch: usize,
    pub linger: Duration,
    pub concurrency: usize,
    pub shutdown_grace: Duration,
}

pub async fn run(
    consumer: PullConsumer,
    writer: Arc<Writer>,
    settings: PullSettings,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut batches = JoinSet::new();
    let mut failures =
        platform::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !cancel.is_cancelled() {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Once the first message is here the batch is in hand: finish pulling it even when
        // shutdown starts meanwhile, so it is flushed rather than left to ack_wait.
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            first = first_message(&consumer) => first,
        };
        let first = match first {
            Ok(Some(first)) => first,
            Ok(None) => continue,
            Err(err) => {
                let delay = failures.next_delay();
                tracing::warn!(error = %platform::error::Chain(&err), delay_ms = delay.as_millis() as u64, "Pull request failed; retrying.");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures.reset();
        let batch = fill_batch(&consumer, first, settings.max_batch, settings.linger).await;
        let writer = writer.clone();
        let shutdown = cancel.clone();
        writer.metrics.batches_in_flight.inc();
        batches.spawn(async move {
            writer.flush(batch, &shutdown).await;
            writer.metrics.batches_in_flight.dec();
            drop(permit);
        });
        while batches.try_join_next().is_some() {}
    }

    while batches.try_join_next().is_some() {}
    tracing::info!(
        batches = batches.len(),
        grace_secs = settings.shutdown_grace.as_secs(),
        "Stopped pulling; flushing the batches in hand."
    );
    let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    while !batches.is_empty() {
        if tokio::time::timeout_at(deadline, batches.join_next())
            .await
            .is_err()
        {
            tracing::warn!(
                batches = batches.len(),
                "Grace period over; abandoning the rest (redelivered after ack_wait)."
            );
            batches.abort_all();
            while batches.join_next().await.is_some() {}
        }
    }
}

/// Why the long poll for a batch's first message failed (retried with backoff).
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error("cannot send the pull request")]
    Request(#[source] pull::BatchError),
    #[error("the pull request failed")]
    Delivery(#[source] async_nats::Error),
}

/// Long-polls for one message; `None` when the poll expired empty.
async fn first_message(consumer: &PullConsumer) -> Result<Option<jetstream::Message>, PullError> {
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(FIRST_MESSAGE_POLL)
        .messages()
        .await
        .map_err(PullError::Request)?;
    match batch.next().await {
        None => Ok(None),
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(err)) => Err(PullError::Delivery(err)),
    }
}

/// Adds what is waiting now, after the linger, up to `max_batch`.
async fn fill_batch(
    consumer: &PullConsumer,
    first: jetstream::Message,
    max_batch: usize,
    linger: Duration,
) -> Vec<jetstream::Message> {
    let mut batch = vec![first];
    // One immediate look first: under load the batch fills without any linger.
    fetch_waiting(consumer, &mut batch, max_batch).await;
    if batch.len() < max_batch && !linger.is_zero() {
        tokio::time::sleep(linger).await;
        fetch_waiting(consumer, &mut batch, max_batch).await;
    }
    batch
}

async fn fetch_waiting(
    consumer: &PullConsumer,
    batch: &mut Vec<jetstream::Message>,
    max_batch: usize,
) {
    let wanted = max_batch.saturating_sub(batch.len());
    if wanted == 0 {
        return;
    }
    let fetched = consumer.fetch().max_messages(wanted).messages().await;
    let mut fetched = match fetched {
        Ok(fetched) => fetched,
        Err(err) => {
            tracing::debug!(error = %platform::error::Chain(&err), "Fetch failed; writing the batch as it is.");
            return;
        }
    };
    let collect = async {
        while let Some(next) = fetched.next().await {
            match next {
                Ok(message) => batch.push(message),
                Err(err) => {
                    tracing::debug!(error = %platform::error::Chain(&*err), "Fetch ended with an error.");
                    break;
                }
            }
        }
    };
    if tokio::time::timeout(FETCH_GUARD, collect).await.is_err() {
        tracing::debug!("Fetch did not end in time; writing the batch as it is.");
    }
}
