//! The jobs' Order reads, coalesced under load ("natural batching").
//!
//! A read whose slot is free goes out at once, alone, as [`salesforce_order::read_order`]: at low
//! load nothing waits, so no latency is added. Reads asked for while all [`OrderReader`]'s slots
//! are in flight wait; when a slot frees, up to [`MAX_BATCH`] of them go out together as one
//! `... WHERE Id IN (...)` query, so under a backlog an order costs a fraction of a SOQL query.
//! Each waiter gets its own Order (or `None` when there is none), its nested items paged to the
//! end as a lone read pages them. A failed batched query is every waiter's error.
//!
//! A waiter waits at most [`DEFAULT_MAX_WAIT`]: when jobs start in step (a wave of orders at
//! Salesforce's 80 ms), waiting for a slot would put most of the wave one query behind the rest,
//! and every later wave again; after the bound the waiters go out as a batch of their own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use salesforce::rest::{RestClient, RestError};
use tokio::sync::oneshot;

use crate::salesforce_order::{self, SfOrder};

/// Queries in flight at once before reads start to wait for a batch.
pub const DEFAULT_SLOTS: usize = 4;

/// The most Orders one batched query asks for: bounds the query's URL (about 21 characters an
/// id, 2 KiB of ids before encoding).
pub const MAX_BATCH: usize = 100;

/// The longest a read waits for a slot before its batch goes out anyway: long enough to gather
/// the reads of jobs that start together, short against a Salesforce call.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(5);

/// One read's answer. The error is shared: a batched query's failure is the error of each of
/// its waiters, and each maps it to the same contract code.
pub type OrderRead = Result<Option<SfOrder>, Arc<RestError>>;

#[derive(Clone)]
pub struct OrderReader {
    inner: Arc<Inner>,
}

struct Inner {
    rest: RestClient,
    slots: usize,
    max_wait: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    waiting: VecDeque<Waiter>,
    /// Counts the batches taken from `waiting`: a wait-bound timer acts only if no batch was
    /// taken since it was armed (the waiters it was armed for are then still the first).
    batches_taken: u64,
}

struct Waiter {
    order_id: String,
    reply: oneshot::Sender<OrderRead>,
}

impl OrderReader {
    /// `slots` queries in flight at once (at least one) before reads wait, each at most
    /// `max_wait`.
    pub fn new(rest: RestClient, slots: usize, max_wait: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                rest,
                slots: slots.max(1),
                max_wait,
                state: Mutex::default(),
            }),
        }
    }

    /// The Order `order_id` (already validated as a Salesforce id) with every one of its items;
    /// `None` when there is no such Order. Dropping the future (a job cancelled) leaves any
    /// batch it waits for to the others.
    pub async fn read(&self, order_id: &str) -> OrderRead {
        let waiting = {
            let mut state = self.inner.lock();
            if state.in_flight < self.inner.slots {
                state.in_flight += 1;
                None
            } else {
                let (reply, answer) = oneshot::channel();
                state.waiting.push_back(Waiter {
                    order_id: order_id.to_owned(),
                    reply,
                });
                if state.waiting.len() == 1 {
                    arm_timer(&self.inner, state.batches_taken);
                }
                Some(answer)
            }
        };
        match waiting {
            None => {
                // Held across the query: released (and handed to the waiters) however the
                // read ends, also when the job is cancelled.
                let _slot = Slot(self.inner.clone());
                salesforce_order::read_order(&self.inner.rest, order_id)
                    .await
                    .map_err(Arc::new)
            }
            Some(answer) => answer.await.unwrap_or_else(|_| {
                // The batch ended without answering: only when the runtime shuts down.
                Err(Arc::new(RestError::Transport(
                    "the batched Order read ended without an answer".to_owned(),
                )))
            }),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code holding the lock can panic; a poisoned state is still consistent.
        platform::sync::lock(&self.state)
    }

    /// Takes the next batch of live waiters, and arms the wait bound for those left behind.
    fn take_batch(self: &Arc<Self>, state: &mut State) -> Vec<Waiter> {
        state.waiting.retain(|waiter| !waiter.reply.is_closed());
        let take = state.waiting.len().min(MAX_BATCH);
        let batch: Vec<Waiter> = state.waiting.drain(..take).collect();
        if !batch.is_empty() {
            state.batches_taken += 1;
            if !state.waiting.is_empty() {
                arm_timer(self, state.batches_taken);
            }
        }
        batch
    }

    /// One query for the waiters' Orders, then each Order's remaining item pages; every waiter
    /// gets its answer. A waiter that has gone (its job cancelled) is skipped.
    async fn read_batch(&self, batch: Vec<Waiter>) {
        let mut ids: Vec<&str> = Vec::with_capacity(batch.len());
        for waiter in &batch {
            if !ids.contains(&waiter.order_id.as_str()) {
                ids.push(&waiter.order_id);
            }
        }
        let orders = match self
            .rest
            .query::<SfOrder>(&salesforce_order::soql_in(ids))
            .await
        {
            Ok(orders) => orders,
            Err(err) => {
                let err = Arc::new(err);
                for waiter in batch {
                    let _gone = waiter.reply.send(Err(err.clone()));
                }
                return;
            }
        };
        // Each Order's items are paged on their own: a failure on one Order's later page is
        // that Order's error only, as it would be for a lone read.
        let orders: Vec<(String, Result<SfOrder, Arc<RestError>>)> =
            futures::future::join_all(orders.into_iter().map(|mut order| async move {
                let paged = salesforce_order::read_remaining_items(&self.rest, &mut order).await;
                (order.id.clone(), paged.map(|()| order).map_err(Arc::new))
            }))
            .await;
        for waiter in batch {
            let answer = match orders.iter().find(|(id, _)| *id == waiter.order_id) {
                Some((_, Ok(order))) => Ok(Some(order.clone())),
                Some((_, Err(err))) => Err(err.clone()),
                None => Ok(None),
            };
            let _gone = waiter.reply.send(answer);
        }
    }
}

/// A query slot in use. Dropping it hands it to the next batch of waiters, or frees it.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        let batch = {
            let mut state = self.0.lock();
            let batch = self.0.take_batch(&mut state);
            if batch.is_empty() {
                state.in_flight = state.in_flight.saturating_sub(1);
                return;
            }
            batch
        };
        // The slot passes to the batch, which hands it on in turn.
        spawn_batch(Slot(self.0.clone()), batch);
    }
}

/// Runs a batch's query in a task of its own holding `slot`. Without a runtime (shutting down)
/// the batch is dropped: each waiter's dropped sender is its answer (an error).
fn spawn_batch(slot: Slot, batch: Vec<Waiter>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let slot = slot;
            slot.0.read_batch(batch).await;
        });
    }
}

/// After the wait bound, the waiters at the head of the queue go out as a batch with a query of
/// their own (over the slots: the bound is what keeps jobs started together in step), unless a
/// freed slot took them first (`armed_at` is then behind).
fn arm_timer(inner: &Arc<Inner>, armed_at: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let max_wait = inner.max_wait;
    // Weak: a timer does not keep a dropped reader alive.
    let inner = Arc::downgrade(inner);
    runtime.spawn(async move {
        tokio::time::sleep(max_wait).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let batch = {
            let mut state = inner.lock();
            if state.batches_taken != armed_at {
                return;
            }
            let batch = inner.take_batch(&mut state);
            if batch.is_empty() {
                return;
            }
            state.in_flight += 1;
            batch
        };
        spawn_batch(Slot(inner), batch);
    });
}
