//! The Salesforce gate: one circuit shared by every batch of a replica, so that the whole writer
//! slows down while Salesforce is unhealthy instead of each batch hammering it on its own.
//!
//! Healthy: requests pass freely (bounded by the number of batches in flight). The first failure
//! that says "Salesforce, not this record" (429, 5xx, `REQUEST_LIMIT_EXCEEDED`, timeouts,
//! connection and authentication failures) opens the gate for a backoff delay (exponential with
//! jitter, capped). When it has passed, exactly one request probes; everyone else keeps waiting.
//! A successful probe closes the gate and releases all waiters; a failed one doubles the delay.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use platform::backoff::Backoff;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct State {
    healthy: bool,
    probing: bool,
    retry_at: Instant,
    backoff: Backoff,
}

#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

/// Permission to send one request. Report its result with [`Ticket::success`] or
/// [`Ticket::failure`]; a ticket dropped unreported (shutdown, nothing to send) changes nothing,
/// except that a probe slot is handed on.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    probe: bool,
    reported: bool,
}

/// What a reported result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// The gate opened (or stays open after a failed probe) until this delay has passed.
    Opened(Duration),
    /// A success closed the gate.
    Closed,
}

impl Gate {
    pub fn new(base: Duration, cap: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                healthy: true,
                probing: false,
                retry_at: Instant::now(),
                backoff: Backoff::new(base, cap),
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (plain fields), so
        // a poisoned lock is used as is.
        platform::sync::lock(&self.state)
    }

    pub fn is_healthy(&self) -> bool {
        self.lock().healthy
    }

    /// Waits until a request may be sent. Cancel-safe.
    pub async fn admit(self: &Arc<Self>) -> Ticket {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read, so a change in between still wakes us.
            notified.as_mut().enable();
            let wait = {
                let mut state = self.lock();
                if state.healthy {
                    return self.ticket(false);
                }
                let now = Instant::now();
                if !state.probing && now >= state.retry_at {
                    state.probing = true;
                    return self.ticket(true);
                }
                (!state.probing).then(|| state.retry_at - now)
            };
            match wait {
                Some(delay) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn ticket(self: &Arc<Self>, probe: bool) -> Ticket {
        Ticket {
            gate: self.clone(),
            probe,
            reported: false,
        }
    }
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Salesforce answered (whatever the per-record results).
    pub fn success(mut self) -> Transition {
        self.reported = true;
        let mut state = self.gate.lock();
        if self.probe {
            state.probing = false;
        }
        let transition = if state.healthy {
            Transition::None
        } else {
            state.healthy = true;
            state.backoff.reset();
            Transition::Closed
        };
        drop(state);
        self.gate.changed.notify_waiters();
        transition
    }

    /// Salesforce could not take the request. Only the first failure while healthy, or a failed
    /// probe, moves the deadline: requests that were already in flight when the gate opened must
    /// not compound the delay.
    pub fn failure(mut self) -> Transition {
        self.reported = true;
        self.gate.fail(self.probe)
    }
}

impl Gate {
    /// A failure of a request sent without a ticket of its own (a later request of a round whose
    /// ticket was spent).
    pub fn record_failure(&self) -> Transition {
        self.fail(false)
    }

    fn fail(&self, probe: bool) -> Transition {
        let mut state = self.lock();
        let transition = if state.healthy || probe {
            state.healthy = false;
            let delay = state.backoff.next_delay();
            state.retry_at = Instant::now() + delay;
            Transition::Opened(delay)
        } else {
            Transition::None
        };
        if probe {
            state.probing = false;
        }
        drop(state);
        self.changed.notify_waiters();
        transition
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.gate.lock().probing = false;
            self.gate.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_while_open_and_all_pass_once_closed() {
        let gate = Gate::new(Duration::from_secs(1), Duration::from_secs(8));
        let first = gate.admit().await;
        assert!(!first.is_probe());
        let second = gate.admit().await;
        assert!(matches!(first.failure(), Transition::Opened(_)));
        // A request already in flight failing too does not push the deadline further.
        assert_eq!(second.failure(), Transition::None);
        assert!(!gate.is_healthy());

        let started = Instant::now();
        let probe = gate.admit().await;
        assert!(probe.is_probe());
        assert!(started.elapsed() >= Duration::from_millis(100));
        // While the probe is out, nobody else gets through.
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit().await.is_probe() }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished());
        assert_eq!(probe.success(), Transition::Closed);
        assert!(!waiter.await.unwrap());
        assert!(gate.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_hands_the_slot_on() {
        let gate = Gate::new(Duration::from_millis(10), Duration::from_millis(10));
        gate.admit().await.failure();
        let probe = gate.admit().await;
        assert!(probe.is_probe());
        drop(probe);
        let next = gate.admit().await;
        assert!(next.is_probe());
        assert!(matches!(next.failure(), Transition::Opened(_)));
    }
}
