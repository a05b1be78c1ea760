//! The jobs' Order reads, coalesced under load ("natural batching").
//!
//! A read whose slot is free goes out at once, alone, as [`salesforce_order::read_order`]: at low
//! load nothing waits, so no latency is added. Reads asked for while all [`OrderReader`]'s slots
//! are in flight wait; when a slot frees, up to [`MAX_BATCH`] of them go out together as one
//! `... WHERE Id IN (...)` query, so under a backlog an order costs a fraction of a SOQL query.
//! Each waiter gets its own Order (or `None` when there is none), its nested items paged to the
//! end as a lone read pages them. A failed batched query is every waiter's error.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use salesforce::rest::{RestClient, RestError};
use tokio::sync::oneshot;

use crate::salesforce_order::{self, SfOrder};

/// Queries in flight at once before reads start to wait for a batch.
pub const DEFAULT_SLOTS: usize = 4;

/// The most Orders one batched query asks for: bounds the query's URL (about 21 characters an
/// id, 2 KiB of ids before encoding).
pub const MAX_BATCH: usize = 100;

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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    waiting: VecDeque<Waiter>,
}

struct Waiter {
    order_id: String,
    reply: oneshot::Sender<OrderRead>,
}

impl OrderReader {
    /// `slots` queries in flight at once (at least one).
    pub fn new(rest: RestClient, slots: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                rest,
                slots: slots.max(1),
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
        let batch: Vec<Waiter> = {
            let mut state = self.0.lock();
            state.waiting.retain(|waiter| !waiter.reply.is_closed());
            if state.waiting.is_empty() {
                state.in_flight = state.in_flight.saturating_sub(1);
                return;
            }
            let take = state.waiting.len().min(MAX_BATCH);
            state.waiting.drain(..take).collect()
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The slot passes to the batch's task, which hands it on in turn.
                let slot = Slot(self.0.clone());
                runtime.spawn(async move {
                    let slot = slot;
                    slot.0.read_batch(batch).await;
                });
            }
            Err(_) => {
                // No runtime to query from (shutting down): the waiters are answered with an
                // error by their dropped senders, and so are the rest.
                drop(batch);
                let mut state = self.0.lock();
                state.waiting.clear();
                state.in_flight = state.in_flight.saturating_sub(1);
            }
        }
    }
}
