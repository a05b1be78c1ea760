//! Supervision of a service's background tasks (HTTP server, pollers, loops, lease keepers).
//!
//! A task spawned with [`Supervisor::spawn`] is meant to run until the service is asked to stop
//! (its root cancellation token). If it ends any earlier — returns, fails or panics — the
//! process can no longer do its job and must not pretend otherwise: the supervisor logs an error
//! naming the task, marks the task down on `/health` and dead on `/livez`, and cancels the root
//! token so the service shuts down in its usual order; the service's run then returns the
//! [`TaskFailure`] and the binary exits non-zero, for the orchestrator to restart it.
//!
//! A task that may finish on its own (one leadership term's lease keeper, a start-up warm-up) is
//! spawned with [`Supervisor::spawn_finite`]: only an error or a panic counts as a failure.
//! A panic or an error is a failure at any time, also during shutdown: it is a bug to report.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::Health;

/// How a supervised task ended when it should not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// Returned while the service was running.
    Returned,
    /// Returned an error (its text with causes).
    Failed(String),
    /// Panicked (the panic message).
    Panicked(String),
}

impl std::fmt::Display for TaskEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Returned => write!(f, "ended while the service was running"),
            Self::Failed(err) => write!(f, "failed: {err}"),
            Self::Panicked(msg) => write!(f, "panicked: {msg}"),
        }
    }
}

/// The first supervised task that ended unexpectedly; what the service's run returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("background task {task} {end}")]
pub struct TaskFailure {
    pub task: String,
    pub end: TaskEnd,
}

/// What a supervised future may return: nothing, `Infallible` (a loop that never ends), or a
/// `Result` whose error is a failure (`JoinHandle` outputs included, so a spawned task's handle
/// can be supervised as it is).
pub trait TaskOutcome {
    /// `Err` with the error's text (and causes) when the task failed.
    fn into_outcome(self) -> Result<(), String>;
}

impl TaskOutcome for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl TaskOutcome for Infallible {
    fn into_outcome(self) -> Result<(), String> {
        match self {}
    }
}

impl<T: TaskOutcome, E: std::error::Error + 'static> TaskOutcome for Result<T, E> {
    fn into_outcome(self) -> Result<(), String> {
        match self {
            Ok(inner) => inner.into_outcome(),
            Err(err) => Err(crate::error::Chain(&err).to_string()),
        }
    }
}

struct Inner {
    health: Arc<Health>,
    root: CancellationToken,
    tracker: TaskTracker,
    tasks: Mutex<Vec<(String, AbortHandle)>>,
    failure: Mutex<Option<TaskFailure>>,
}

/// Spawns and watches a service's background tasks. Cheap to clone; clones share the tasks.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("stopping", &self.inner.root.is_cancelled())
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// `health` is the service's `/health` and `/livez` state; `root` the token whose
    /// cancellation asks the whole service to stop (the one the signal handler cancels).
    pub fn new(health: Arc<Health>, root: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                health,
                root,
                tracker: TaskTracker::new(),
                tasks: Mutex::default(),
                failure: Mutex::default(),
            }),
        }
    }

    /// Spawns a task that must run until the service is asked to stop. The returned handle may
    /// be awaited or dropped; it never reports a panic (the supervisor has handled it).
    pub fn spawn<F>(&self, name: &str, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutcome,
    {
        self.spawn_inner(name, task, true)
    }

    /// Spawns a task that may finish on its own; only an error or a panic is a failure.
    pub fn spawn_finite<F>(&self, name: &str, task: F) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutcome,
    {
        self.spawn_inner(name, task, false)
    }

    fn spawn_inner<F>(&self, name: &str, task: F, until_stop: bool) -> JoinHandle<()>
    where
        F: Future + Send + 'static,
        F::Output: TaskOutcome,
    {
        let inner = self.inner.clone();
        let task_name = name.to_owned();
        let handle = self.inner.tracker.spawn(async move {
            let end = AssertUnwindSafe(task).catch_unwind().await;
            inner.ended(&task_name, until_stop, end);
        });
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            // Finite tasks come and go (one lease keeper per leadership term): forget the
            // finished ones so the list stays as long as what runs.
            tasks.retain(|(_, abort)| !abort.is_finished());
            tasks.push((name.to_owned(), handle.abort_handle()));
        }
        handle
    }

    /// The first task that ended unexpectedly, if any.
    pub fn failure(&self) -> Option<TaskFailure> {
        self.inner.failure.lock().ok().and_then(|f| f.clone())
    }

    /// `Err` with the first failure: what a service's run returns after its ordered shutdown.
    pub fn result(&self) -> Result<(), TaskFailure> {
        self.failure().map_or(Ok(()), Err)
    }

    /// The service's root token (cancelled on a signal, or by the supervisor on a failure).
    pub fn root(&self) -> &CancellationToken {
        &self.inner.root
    }

    /// Waits up to `deadline` for every supervised task to end (call it after cancelling what
    /// the tasks wait on); aborts those still running then and returns their names.
    pub async fn wait_all(&self, deadline: Duration) -> Vec<String> {
        self.inner.tracker.close();
        if tokio::time::timeout(deadline, self.inner.tracker.wait())
            .await
            .is_ok()
        {
            return Vec::new();
        }
        let overdue: Vec<String> = self
            .inner
            .tasks
            .lock()
            .map(|tasks| {
                tasks
                    .iter()
                    .filter(|(_, abort)| !abort.is_finished())
                    .map(|(name, abort)| {
                        abort.abort();
                        name.clone()
                    })
                    .collect()
            })
            .unwrap_or_default();
        tracing::warn!(tasks = ?overdue, deadline_ms = deadline.as_millis() as u64, "Background tasks did not stop in time; aborted.");
        // Aborted tasks end at their next await point.
        self.inner.tracker.wait().await;
        overdue
    }
}

impl Inner {
    fn ended(
        &self,
        task: &str,
        until_stop: bool,
        end: Result<impl TaskOutcome, Box<dyn std::any::Any + Send>>,
    ) {
        let end = match end {
            Err(panic) => TaskEnd::Panicked(panic_message(panic.as_ref())),
            Ok(outcome) => match outcome.into_outcome() {
                Err(err) => TaskEnd::Failed(err),
                Ok(()) if until_stop && !self.root.is_cancelled() => TaskEnd::Returned,
                Ok(()) => {
                    tracing::debug!(task, "Background task ended.");
                    return;
                }
            },
        };
        let reason = end.to_string();
        tracing::error!(task, reason = %reason, "Background task {task} {reason}; shutting the service down.");
        self.health.set_down(task, reason.clone());
        self.health.set_dead(task, reason);
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(TaskFailure {
                task: task.to_owned(),
                end,
            });
        }
        self.root.cancel();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> (Supervisor, Arc<Health>, CancellationToken) {
        let health = Health::new("svc", "1.0");
        let root = CancellationToken::new();
        (Supervisor::new(health.clone(), root.clone()), health, root)
    }

    #[tokio::test]
    async fn a_task_returning_early_fails_the_service() {
        let (supervisor, health, root) = supervisor();
        supervisor.spawn("metrics-poller", async {}).await.unwrap();
        assert!(root.is_cancelled(), "the service is asked to stop");
        let failure = supervisor.failure().unwrap();
        assert_eq!(failure.task, "metrics-poller");
        assert_eq!(failure.end, TaskEnd::Returned);
        let (healthy, body) = health.report();
        assert!(!healthy);
        assert_eq!(body["integrations"]["metrics-poller"]["status"], "down");
        assert!(!health.liveness().0);
        assert!(supervisor.result().is_err());
    }

    #[tokio::test]
    async fn panics_and_errors_are_failures_with_their_message() {
        let (supervisor, _, _) = supervisor();
        supervisor
            .spawn_finite("lease-keeper", async {
                let fail = true;
                if fail {
                    panic!("boom");
                }
            })
            .await
            .unwrap();
        assert_eq!(
            supervisor.failure().unwrap().end,
            TaskEnd::Panicked("boom".to_owned())
        );
        let (supervisor, _, _) = self::supervisor();
        supervisor
            .spawn("http", async {
                Err::<(), _>(std::io::Error::other("listener closed"))
            })
            .await
            .unwrap();
        assert_eq!(
            supervisor.failure().unwrap().to_string(),
            "background task http failed: listener closed"
        );
    }

    #[tokio::test]
    async fn ending_after_stop_or_a_finite_task_finishing_is_no_failure() {
        let (supervisor, health, root) = supervisor();
        supervisor.spawn_finite("warm-up", async {}).await.unwrap();
        assert!(!root.is_cancelled());
        let waits = root.clone();
        let poller = supervisor.spawn("poller", async move { waits.cancelled().await });
        root.cancel();
        poller.await.unwrap();
        assert_eq!(supervisor.failure(), None);
        assert!(health.liveness().0);
        assert!(supervisor.wait_all(Duration::from_secs(5)).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_all_aborts_tasks_past_the_deadline() {
        let (supervisor, _, root) = supervisor();
        supervisor.spawn("stuck", std::future::pending::<()>());
        let waits = root.clone();
        supervisor.spawn("obedient", async move { waits.cancelled().await });
        root.cancel();
        let overdue = supervisor.wait_all(Duration::from_secs(1)).await;
        assert_eq!(overdue, vec!["stuck".to_owned()]);
        assert_eq!(
            supervisor.failure(),
            None,
            "an aborted task is not a failure"
        );
    }

    #[tokio::test]
    async fn a_dead_task_shows_on_health_and_livez() {
        let (supervisor, health, root) = supervisor();
        let http_cancel = CancellationToken::new();
        let server = crate::http::serve(
            "127.0.0.1:0".parse().unwrap(),
            health,
            Arc::new(prometheus_client::registry::Registry::default()),
            axum::Router::new(),
            http_cancel.clone(),
        )
        .await
        .unwrap();
        supervisor.spawn("http", server.task);
        let base = format!("http://{}", server.local_addr);
        assert_eq!(
            reqwest::get(format!("{base}/livez"))
                .await
                .unwrap()
                .status(),
            200
        );

        supervisor.spawn("recovery", async {}).await.unwrap();
        let livez = reqwest::get(format!("{base}/livez")).await.unwrap();
        assert_eq!(livez.status(), 503);
        let body: serde_json::Value = livez.json().await.unwrap();
        assert!(body["failed_tasks"]["recovery"]
            .as_str()
            .unwrap()
            .contains("ended while the service was running"));
        let health = reqwest::get(format!("{base}/health")).await.unwrap();
        assert_eq!(health.status(), 503);
        let body: serde_json::Value = health.json().await.unwrap();
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["integrations"]["recovery"]["status"], "down");
        assert!(root.is_cancelled());

        // The listener stopping after the root token is the ordered shutdown, not a failure.
        http_cancel.cancel();
        assert!(supervisor.wait_all(Duration::from_secs(5)).await.is_empty());
        assert_eq!(supervisor.failure().unwrap().task, "recovery");
    }
}
