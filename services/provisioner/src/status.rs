//! The order status API (docs/contract.md §3): where an order's job is, answered from the job
//! journal, over HTTP (`GET /orders/{OrderId}[?wait=N]`) and over NATS request/reply
//! (`provisioning.status.<OrderId>`, the NATS service `provisioning-status`).
//!
//! A long poll (`?wait=N`) watches the journal instead of reading it in a loop. One KV watch per
//! replica serves every waiting request: it runs while someone waits (and half a minute after),
//! and hands each write of a watched order's entry to that order's waiters through a
//! `tokio::sync::watch` channel, so a thousand waiting requests cost a thousand small channel
//! receivers and no work until their order's entry moves. The watch is subscribed *before* a waiter's first read, so a write that
//! lands between the read and the wait is never missed; when the watch has to be made again
//! (NATS reconnect, consumer lost), every waiter reads its entry again for the same reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt as _;
use messages::journal::{JobRecord, KEY_PREFIX};
use messages::ProvisioningStatusV1;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest `?wait=N` a request may ask for (contract §3).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Status requests over NATS answered at once by one replica; more wait in the subscription.
const NATS_CONCURRENCY: usize = 64;

/// How long the journal watch stays after the last long poll has its answer (the server
/// keeps an abandoned watch's consumer about as long, 30 s, so churn would cost the same).
const WATCH_LINGER: Duration = Duration::from_secs(30);

/// Pause before making the journal watch again after it failed.
const REWATCH_AFTER: Duration = Duration::from_millis(500);

/// Why a status question has no `provisioning.status.v1` answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Not a 15- or 18-character Salesforce id (a client error: 400).
    #[error("malformed Order id {id:?}: {source}")]
    MalformedId {
        id: String,
        #[source]
        source: messages::salesforce_id::InvalidId,
    },
    /// No job is known for the order (404).
    #[error("no provisioning job is known for order {0}")]
    NotFound(String),
    /// The journal could not be read (503: try again).
    #[error("the job journal cannot be read")]
    Journal(#[source] kv::EntryError),
    /// The entry does not parse (500: an operator must look, see `provctl order`).
    #[error("the journal entry of order {order_id} is unreadable")]
    Unreadable {
        order_id: String,
        #[source]
        source: serde_json::Error,
    },
    /// The provisioner has not opened the journal yet (503: try again).
    #[error("the provisioner is starting; the job journal is not open yet")]
    Starting,
}

impl StatusError {
    /// The HTTP status, which is also the NATS service error code.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedId { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Journal(_) | Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unreadable { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether asking again later may give an answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Journal(_) | Self::Starting)
    }

    fn label(&self) -> &'static str {
        match self {
            Self::MalformedId { .. } => "malformed_id",
            Self::NotFound(_) => "not_found",
            Self::Journal(_) | Self::Starting => "unavailable",
            Self::Unreadable { .. } => "unreadable",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    transport: &'static str,
    result: &'static str,
}

/// `provisioner_status_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct StatusMetrics {
    requests: Family<RequestLabels, Counter>,
    waiting: Gauge,
}

impl StatusMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "provisioner_status_requests",
            "Order status requests answered, by transport (http, nats) and result (found, \
             not_found, malformed_id, malformed_wait, unauthorized, unavailable, unreadable)",
            metrics.requests.clone(),
        );
        registry.register(
            "provisioner_status_waiting",
            "Long polls (GET /orders/{id}?wait=N) waiting for their order's job to finish",
            metrics.waiting.clone(),
        );
        metrics
    }

    fn count(&self, transport: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { transport, result })
            .inc();
    }

    fn count_answer(
        &self,
        transport: &'static str,
        answer: &Result<ProvisioningStatusV1, StatusError>,
    ) {
        self.count(
            transport,
            answer.as_ref().map_or_else(StatusError::label, |_| "found"),
        );
    }
}

/// Answers status questions from the journal bucket.
#[derive(Debug)]
pub struct StatusApi {
    journal: kv::Store,
    waiters: Arc<Waiters>,
    metrics: StatusMetrics,
    /// Cancelled on shutdown: waiting long polls answer at once with the status as it is, so
    /// the listener's graceful close is not held up to a minute by them.
    release: CancellationToken,
}

impl StatusApi {
    pub fn new(journal: kv::Store, metrics: StatusMetrics) -> Arc<Self> {
        Arc::new(Self {
            waiters: Arc::new(Waiters::new(journal.clone())),
            journal,
            metrics,
            release: CancellationToken::new(),
        })
    }

    /// Answers every waiting long poll now, and every later one without waiting (shutdown).
    pub fn release_waiters(&self) {
        self.release.cancel();
        self.waiters.stop_watch();
    }

    /// The order's status now. Either spelling of the id finds the order.
    pub async fn status(&self, order_id: &str) -> Result<ProvisioningStatusV1, StatusError> {
        let order_id = canonical(order_id)?;
        self.read(&order_id).await
    }

    /// The order's status once its job is final, or after `wait` (at most [`MAX_WAIT`]),
    /// whichever comes first. An unknown order is answered at once.
    pub async fn status_when_final(
        &self,
        order_id: &str,
        wait: Duration,
    ) -> Result<ProvisioningStatusV1, StatusError> {
        let order_id = canonical(order_id)?;
        let wait = wait.min(MAX_WAIT);
        if wait.is_zero() || self.release.is_cancelled() {
            return self.read(&order_id).await;
        }
        let deadline = Instant::now() + wait;
        let mut waiter = self.waiters.register(&order_id);
        self.metrics.waiting.inc();
        let _waiting = scopeguard(|| {
            self.metrics.waiting.dec();
        });
        // Only once the watch is subscribed can no write after the first read be missed.
        if !waiter.until_watching(deadline, &self.release).await {
            return self.read(&order_id).await;
        }
        loop {
            let status = self.read(&order_id).await?;
            if status.r#final {
                return Ok(status);
            }
            match waiter.next_write(deadline, &self.release).await {
                Woken::Written(bytes) => match serde_json::from_slice::<JobRecord>(&bytes) {
                    Ok(record) if record.state.is_final() => return Ok(record.status()),
                    // Still running (a checkpoint); the next read is of this same revision or
                    // newer, so reading again loses nothing.
                    Ok(_) | Err(_) => {}
                },
                Woken::Rewatched => {}
                Woken::TimedOut => return self.read(&order_id).await,
            }
        }
    }

    async fn read(&self, order_id: &str) -> Result<ProvisioningStatusV1, StatusError> {
        // Boxed: a long poll's future holds the largest of its states for the whole wait, and
        // the KV read is by far the largest; boxed, it is allocated only while it runs.
        let entry = Box::pin(self.journal.entry(messages::journal::key(order_id)))
            .await
            .map_err(StatusError::Journal)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                serde_json::from_slice::<JobRecord>(&entry.value)
                    .map(|record| record.status())
                    .map_err(|source| StatusError::Unreadable {
                        order_id: order_id.to_owned(),
                        source,
                    })
            }
            _ => Err(StatusError::NotFound(order_id.to_owned())),
        }
    }
}

fn canonical(order_id: &str) -> Result<String, StatusError> {
    messages::salesforce_id::canonical(order_id.trim()).map_err(|source| StatusError::MalformedId {
        id: order_id.chars().take(40).collect(),
        source,
    })
}

/// Runs `f` when dropped (a waiting request may be cancelled at any await).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The waiting requests of this replica, by order, and the one journal watch that serves them.
#[derive(Debug)]
struct Waiters {
    journal: kv::Store,
    state: Mutex<WaitersState>,
}

#[derive(Debug, Default)]
struct WaitersState {
    orders: HashMap<String, OrderWaiters>,
    /// Waiting requests in all; the watch runs while this is above zero, and
    /// [`WATCH_LINGER`] longer.
    waiting: usize,
    /// Counts the times `waiting` fell to zero, so that a stop planned for one idle period
    /// does not end a watch that found waiters again since.
    idle_periods: u64,
    watch: Option<RunningWatch>,
    /// Set at shutdown: no watch is started again.
    closed: bool,
}

#[derive(Debug)]
struct OrderWaiters {
    /// The latest entry value written for the order since the first of its waiters came.
    written: watch::Sender<Option<Bytes>>,
    waiting: usize,
}

#[derive(Debug)]
struct RunningWatch {
    stop: CancellationToken,
    /// How many times the watch has been subscribed (0 until the first time).
    subscribed: watch::Receiver<u64>,
}

enum Woken {
    Written(Bytes),
    /// The watch was made again: writes may have been missed, read the entry again.
    Rewatched,
    TimedOut,
}

impl Waiters {
    fn new(journal: kv::Store) -> Self {
        Self {
            journal,
            state: Mutex::default(),
        }
    }

    fn register(self: &Arc<Self>, order_id: &str) -> Waiter {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting += 1;
        let order = state
            .orders
            .entry(order_id.to_owned())
            .or_insert_with(|| OrderWaiters {
                written: watch::Sender::new(None),
                waiting: 0,
            });
        order.waiting += 1;
        let written = order.written.subscribe();
        let subscribed = match &state.watch {
            Some(running) => running.subscribed.clone(),
            // Shut down: no new watch. A receiver whose sender is gone ends the wait at once.
            None if state.closed => watch::channel(0).1,
            None => {
                let (subscribed_tx, subscribed) = watch::channel(0);
                let stop = CancellationToken::new();
                tokio::spawn(watch_journal(
                    self.journal.clone(),
                    Arc::downgrade(self),
                    subscribed_tx,
                    stop.clone(),
                ));
                state.watch = Some(RunningWatch {
                    stop,
                    subscribed: subscribed.clone(),
                });
                subscribed
            }
        };
        Waiter {
            waiters: self.clone(),
            order_id: order_id.to_owned(),
            written,
            subscribed,
        }
    }

    fn unregister(self: &Arc<Self>, order_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.waiting = state.waiting.saturating_sub(1);
        if let Some(order) = state.orders.get_mut(order_id) {
            order.waiting = order.waiting.saturating_sub(1);
            if order.waiting == 0 {
                state.orders.remove(order_id);
            }
        }
        if state.waiting > 0 || state.watch.is_none() {
            return;
        }
        // The watch outlives the last waiter a little: a portal's long polls come one after
        // another, and each new watch is a consumer made on the server.
        state.idle_periods += 1;
        let period = state.idle_periods;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let waiters = Arc::downgrade(self);
                runtime.spawn(async move {
                    tokio::time::sleep(WATCH_LINGER).await;
                    if let Some(waiters) = waiters.upgrade() {
                        waiters.stop_watch_if_idle(period);
                    }
                });
            }
            // The runtime is going away: nothing will wait again.
            Err(_) => stop(&mut state),
        }
    }

    /// Stops the watch if nobody has waited since idle period `period` began.
    fn stop_watch_if_idle(&self, period: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.waiting == 0 && state.idle_periods == period {
            stop(&mut state);
        }
    }

    /// Stops the watch now and for good (shutdown: no request waits any more).
    fn stop_watch(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        stop(&mut state);
    }

    /// Hands a write of `key` to the order's waiters, if any.
    fn written(&self, key: &str, value: Bytes) {
        let Some(order_id) = key.strip_prefix(KEY_PREFIX) else {
            return;
        };
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(order) = state.orders.get(order_id) {
            order.written.send_replace(Some(value));
        }
    }
}

fn stop(state: &mut WaitersState) {
    if let Some(running) = state.watch.take() {
        running.stop.cancel();
    }
}

/// One waiting request's registration; dropping it unregisters.
struct Waiter {
    waiters: Arc<Waiters>,
    order_id: String,
    written: watch::Receiver<Option<Bytes>>,
    subscribed: watch::Receiver<u64>,
}

impl Waiter {
    /// Waits until the journal watch is subscribed; false if `deadline` came first.
    async fn until_watching(&mut self, deadline: Instant, release: &CancellationToken) -> bool {
        let subscribed = &mut self.subscribed;
        tokio::select! {
            watching = subscribed.wait_for(|times| *times > 0) => watching.is_ok(),
            () = tokio::time::sleep_until(deadline) => false,
            () = release.cancelled() => false,
        }
    }

    async fn next_write(&mut self, deadline: Instant, release: &CancellationToken) -> Woken {
        // Biased, release first: at shutdown the watch ends right after the release, and a
        // waiter woken by both must take the release, not the ended watch.
        tokio::select! {
            biased;
            () = release.cancelled() => Woken::TimedOut,
            changed = self.written.changed() => match changed {
                Ok(()) => match self.written.borrow_and_update().clone() {
                    Some(bytes) => Woken::Written(bytes),
                    None => Woken::Rewatched,
                },
                // The registry dropped the order's channel: not while this waiter is
                // registered; wait out the deadline rather than spin.
                Err(_) => until_deadline_or_release(deadline, release).await,
            },
            rewatched = self.subscribed.changed() => match rewatched {
                Ok(()) => Woken::Rewatched,
                // The watch ended (shut down, or it failed): no write will come.
                Err(_) => until_deadline_or_release(deadline, release).await,
            },
            () = tokio::time::sleep_until(deadline) => Woken::TimedOut,
        }
    }
}

/// Waits out a long poll that nothing can wake any more; a shutdown still answers it at once.
async fn until_deadline_or_release(deadline: Instant, release: &CancellationToken) -> Woken {
    tokio::select! {
        () = release.cancelled() => {}
        () = tokio::time::sleep_until(deadline) => {}
    }
    Woken::TimedOut
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters.unregister(&self.order_id);
    }
}

/// The journal watch: subscribed again after any failure until `stop` (the last waiter left).
async fn watch_journal(
    journal: kv::Store,
    waiters: std::sync::Weak<Waiters>,
    subscribed: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let filter = format!("{KEY_PREFIX}>");
    while !stop.is_cancelled() {
        let watch = tokio::select! {
            () = stop.cancelled() => return,
            watch = journal.watch(&filter) => watch,
        };
        match watch {
            Ok(mut entries) => {
                subscribed.send_modify(|times| *times += 1);
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        next = entries.next() => next,
                    };
                    match next {
                        Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                            let Some(waiters) = waiters.upgrade() else {
                                return;
                            };
                            waiters.written(&entry.key, entry.value);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => {
                            tracing::warn!(error = %platform::error::Chain(&err), "The journal watch of the status API failed; watching again.");
                            break;
                        }
                        None => {
                            tracing::warn!(
                                "The journal watch of the status API ended; watching again."
                            );
                            break;
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %platform::error::Chain(&err), "Cannot watch the journal for the status API; retrying.");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REWATCH_AFTER) => {}
        }
    }
}

/// What the HTTP routes need: the API once the journal is open, and the optional token.
#[derive(Clone)]
struct HttpState {
    api: Arc<OnceLock<Arc<StatusApi>>>,
    token: Option<SecretString>,
    metrics: StatusMetrics,
}

/// The `/orders/{OrderId}` routes. They answer 503 until `api` is set (the journal opens after
/// the listener starts, so that `/health` answers during start-up).
pub fn routes(
    api: Arc<OnceLock<Arc<StatusApi>>>,
    token: Option<SecretString>,
    metrics: StatusMetrics,
) -> Router {
    Router::new()
        .route("/orders/{order_id}", get(get_order))
        .with_state(HttpState {
            api,
            token,
            metrics,
        })
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

async fn get_order(
    State(state): State<HttpState>,
    Path(order_id): Path<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(token) = &state.token {
        if !bearer_matches(&headers, token) {
            state.metrics.count("http", "unauthorized");
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({"error": "a valid bearer token is required"})),
            )
                .into_response();
        }
    }
    let wait = match query.wait.as_deref().map(parse_wait).transpose() {
        Ok(wait) => wait.unwrap_or(Duration::ZERO),
        Err(problem) => {
            state.metrics.count("http", "malformed_wait");
            return error_response(StatusCode::BAD_REQUEST, &problem);
        }
    };
    let answer = match state.api.get() {
        Some(api) => api.status_when_final(&order_id, wait).await,
        None => Err(StatusError::Starting),
    };
    state.metrics.count_answer("http", &answer);
    match answer {
        Ok(status) => Json(status).into_response(),
        Err(err) => {
            let code = err.status_code();
            if code.is_server_error() {
                tracing::warn!(error = %platform::error::Chain(&err), "Status request not answered.");
            }
            let mut response = error_response(code, &format!("{:#}", platform::error::Chain(&err)));
            if err.is_transient() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            response
        }
    }
}

fn error_response(code: StatusCode, message: &str) -> Response {
    platform::http::ErrorAnswer(code, message.to_owned()).into_response()
}

/// `wait` in whole seconds, 0 to 60.
fn parse_wait(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<u64>() {
        Ok(secs) if secs <= MAX_WAIT.as_secs() => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "wait must be a whole number of seconds from 0 to {}, not {:?}",
            MAX_WAIT.as_secs(),
            raw.chars().take(20).collect::<String>()
        )),
    }
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time
/// (for tokens of the same length) so the answer's timing does not reveal a prefix.
fn bearer_matches(headers: &HeaderMap, token: &SecretString) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let expected = token.expose_secret().as_bytes();
    let given = given.trim().as_bytes();
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Serves `provisioning.status.<OrderId>` as the NATS service `provisioning-status` until
/// `stop`. Every replica joins the service's queue group, so one of them answers each request.
pub async fn serve_nats(
    client: async_nats::Client,
    api: Arc<StatusApi>,
    stop: CancellationToken,
) -> Result<(), StatusServiceError> {
    use async_nats::service::ServiceExt as _;
    let service = client
        .service_builder()
        .description("Where a provisioning order is: provisioning.status.v1 from the job journal")
        .start(
            messages::subjects::STATUS_SERVICE,
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(StatusServiceError::Start)?;
    let endpoint = service
        .endpoint_builder()
        .name("status")
        .add(messages::subjects::PROVISIONING_STATUS_ENDPOINT)
        .await
        .map_err(StatusServiceError::Start)?;
    tracing::info!(
        service = messages::subjects::STATUS_SERVICE,
        subject = messages::subjects::PROVISIONING_STATUS_ENDPOINT,
        "Answering order status requests over NATS."
    );
    endpoint
        .take_until(stop.clone().cancelled_owned())
        .for_each_concurrent(NATS_CONCURRENCY, |request| {
            let api = api.clone();
            async move { answer_nats(&api, request).await }
        })
        .await;
    if !stop.is_cancelled() {
        return Err(StatusServiceError::Ended);
    }
    service.stop().await.map_err(StatusServiceError::Stop)?;
    Ok(())
}

/// Why the NATS status service stopped answering.
#[derive(Debug, thiserror::Error)]
pub enum StatusServiceError {
    #[error("cannot start the NATS service {}", messages::subjects::STATUS_SERVICE)]
    Start(#[source] async_nats::Error),
    #[error("the NATS service's subscription ended while the provisioner runs")]
    Ended,
    #[error("cannot stop the NATS service cleanly")]
    Stop(#[source] async_nats::Error),
}

async fn answer_nats(api: &StatusApi, request: async_nats::service::Request) {
    let order_id = request
        .message
        .subject
        .as_str()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let answer = api.status(&order_id).await;
    api.metrics.count_answer("nats", &answer);
    let reply = match answer {
        Ok(status) => serde_json::to_vec(&status).map(Bytes::from).map_err(|err| {
            async_nats::service::error::Error {
                status: format!("cannot encode the status: {err}"),
                code: 500,
            }
        }),
        Err(err) => Err(async_nats::service::error::Error {
            status: format!("{:#}", platform::error::Chain(&err)),
            code: usize::from(err.status_code().as_u16()),
        }),
    };
    if let Err(err) = request.respond(reply).await {
        tracing::debug!(error = %platform::error::Chain(&err), "Could not answer a status request.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_whole_seconds_up_to_a_minute() {
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("60"), Ok(MAX_WAIT));
        for bad in ["61", "-1", "1.5", "x", ""] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = SecretString::from("s3cret-token");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(bearer_matches(&with("Bearer s3cret-token"), &token));
        assert!(!bearer_matches(&with("Bearer s3cret-tokem"), &token));
        assert!(!bearer_matches(&with("Bearer s3cret"), &token));
        assert!(!bearer_matches(&with("Basic s3cret-token"), &token));
        assert!(!bearer_matches(&HeaderMap::new(), &token));
    }

    #[test]
    fn errors_map_to_their_http_status() {
        let malformed = canonical("not-an-id").unwrap_err();
        assert_eq!(malformed.status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(
            StatusError::NotFound("x".into()).status_code(),
            StatusCode::NOT_FOUND
        );
        assert!(StatusError::Starting.is_transient());
    }
}
