//! The pull loop: a durable consumer with explicit ack and max_deliver = 1, shared by every
//! replica. The loop only asks for as many messages as it has free job slots, so nothing waits
//! in a client-side buffer (a buffered message is "delivered" and would be lost with the
//! process). On shutdown it stops pulling, lets running jobs finish within the grace period,
//! then stops the rest, which record themselves as INTERRUPTED.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::job::JobRunner;

/// Pulls until `cancel`, then waits up to `shutdown_grace` for running jobs before cancelling
/// `hard_stop`, which makes the rest record themselves interrupted.
pub async fn run(
    consumer: PullConsumer,
    runner: Arc<JobRunner>,
    concurrency: usize,
    shutdown_grace: Duration,
    cancel: CancellationToken,
    hard_stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut jobs = JoinSet::new();
    let mut failures =
        platform::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    'pull: while !cancel.is_cancelled() {
        // Wait for at least one free slot before asking for anything.
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let wanted = slots.available_permits() + 1;
        let batch = consumer
            .batch()
            .max_messages(wanted)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                drop(first);
                let delay = failures.next_delay();
                tracing::warn!(error = %platform::error::Chain(&err), delay_ms = delay.as_millis() as u64, "Pull request failed; retrying.");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let mut permit = Some(first);
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => break 'pull,
                next = batch.next() => next,
            };
            let message = match next {
                None => break,
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::debug!(error = %platform::error::Chain(&*err), "Pull batch ended with an error.");
                    break;
                }
            };
            failures.reset();
            let slot = match permit.take() {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break 'pull,
                },
            };
            let runner = runner.clone();
            let stop = hard_stop.clone();
            jobs.spawn(async move {
                Box::pin(runner.handle(crate::job::Delivery::delivered(message), stop)).await;
                drop(slot);
            });
            while jobs.try_join_next().is_some() {}
        }
        while jobs.try_join_next().is_some() {}
    }

    tracing::info!(
        running = jobs.len(),
        grace_secs = shutdown_grace.as_secs(),
        "Stopped pulling; letting running jobs finish."
    );
    let deadline = tokio::time::Instant::now() + shutdown_grace;
    while !jobs.is_empty() {
        match tokio::time::timeout_at(deadline, jobs.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    running = jobs.len(),
                    "Grace period over; recording the remaining jobs as interrupted."
                );
                hard_stop.cancel();
                while jobs.join_next().await.is_some() {}
            }
        }
    }
}
