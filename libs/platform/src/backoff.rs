//! Exponential backoff with full jitter (delay drawn from `[0, min(cap, base * 2^n)]`), so that a
//! fleet of replicas reconnecting after an outage does not arrive in lockstep.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; grows with each call until [`Backoff::reset`].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Never zero: a floor of a tenth of the ceiling keeps a tight failure loop from spinning.
        let floor = ceiling / 10;
        let span = ceiling.saturating_sub(floor).as_millis() as u64;
        floor + Duration::from_millis(rand::rng().random_range(0..=span))
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Runs `attempt` until it succeeds, fails with an error `is_transient` rejects, or `cancel`
/// fires, waiting with backoff (250 ms to 10 s) between transient failures and logging each one.
/// `Ok(None)` means cancelled. Used for start-up work that needs NATS (streams, buckets,
/// consumers) while the server may still be coming up.
///
/// A permanent error (JetStream refusing the request itself: overlapping subjects, invalid
/// settings) is logged at error level with its causes (the server's description) and returned at
/// once, so the service stops with the reason instead of waiting forever for a "not ready" that
/// will never pass.
pub async fn retry_while_transient<T, E, F, Fut>(
    cancel: &tokio_util::sync::CancellationToken,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<Option<T>, E>
where
    E: std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        let outcome = tokio::select! {
            // A start-up request may wait for its own timeout; a shutdown need not.
            () = cancel.cancelled() => return Ok(None),
            outcome = attempt() => outcome,
        };
        match outcome {
            Ok(value) => return Ok(Some(value)),
            Err(err) if is_transient(&err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %crate::error::Chain(&err), delay_ms = delay.as_millis() as u64, "{what} not ready; retrying.");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(err) => {
                tracing::error!(error = %crate::error::Chain(&err), permanent = true, "{what} set-up failed with a permanent error; not retrying.");
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("attempt failed (transient: {0})")]
    struct Failure(bool);

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_and_a_permanent_one_is_returned_at_once() {
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut calls = 0;
        let result: Result<Option<()>, Failure> = retry_while_transient(
            &cancel,
            "test",
            |e: &Failure| e.0,
            || {
                calls += 1;
                let transient = calls < 3;
                async move { Err(Failure(transient)) }
            },
        )
        .await;
        assert!(matches!(result, Err(Failure(false))));
        assert_eq!(
            calls, 3,
            "two transient failures retried, the permanent one returned"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_ends_the_retries() {
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let result: Result<Option<()>, Failure> = retry_while_transient(
            &cancel,
            "test",
            |_: &Failure| true,
            || async { Err(Failure(true)) },
        )
        .await;
        assert!(matches!(result, Ok(None)));
    }

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<_> = (0..8)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(
                    delay <= ceiling && delay >= ceiling / 10,
                    "{delay:?} vs {ceiling:?}"
                );
                ceiling
            })
            .collect();
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[3], Duration::from_millis(800));
        assert_eq!(ceilings[7], Duration::from_secs(2));
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }
}
