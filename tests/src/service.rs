//! Running a service for a test: its environment against a nats-server and the simulators, its
//! `App` on a task of the test process with the token that stops it, and its HTTP endpoints
//! (`/health`, `/metrics`). The `App` itself is built by each crate's harness: its settings are
//! the crate's own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use platform::error::Chain;
use platform::service::{Running, ServiceError, ServiceMain};
use sf_sim::SfSim;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::ChildProcess;

/// The pipeline's services, as package and binary names, in the order of
/// [`crate::sim::Simulators::pipeline_envs`].
pub const PIPELINE: [&str; 3] = ["sf-bridge", "provisioner", "sf-writer"];

/// What every service reads: the NATS server, an HTTP listener on a port of the service's
/// choosing, and sf-sim's login.
pub fn base_env(nats_url: String, sf: &SfSim) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("NATS_URL", nats_url),
        ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
    ];
    env.extend(crate::sim::sf_env(sf));
    env
}

/// [`base_env`] for a service run as a process: JSON logs at `info`, from which
/// [`crate::process::wait_http_port`] reads the port it bound.
pub fn process_env(nats_url: String, sf: &SfSim) -> Vec<(&'static str, String)> {
    let mut env = base_env(nats_url, sf);
    env.extend([
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]);
    env
}

/// A service's environment from `pairs`, with `extra` (a test's own variables) overriding them.
pub fn with_overrides(
    pairs: impl IntoIterator<Item = (&'static str, String)>,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let extra = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    crate::stack::env(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(extra),
    )
}

/// Starts `binaries` with `envs`, pairwise.
pub fn spawn_all(
    binaries: &[std::path::PathBuf],
    envs: &[HashMap<String, String>],
) -> Vec<ChildProcess> {
    binaries
        .iter()
        .zip(envs)
        .map(|(binary, env)| ChildProcess::spawn(&binary.to_string_lossy(), env))
        .collect()
}

/// The logs of `services`, one after the other, for a failure message.
pub fn logs(services: &[ChildProcess]) -> String {
    services
        .iter()
        .map(ChildProcess::log)
        .collect::<Vec<_>>()
        .join("\n-----\n")
}

/// A service's `App` running on a task of this process. Dropping it cancels the token (the task
/// winds down in the background); [`RunningService::stop`] also waits for a clean end.
#[derive(Debug)]
pub struct RunningService<E> {
    name: &'static str,
    stop_limit: Duration,
    pub cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), E>>>,
    pub http_addr: SocketAddr,
}

impl<E: ServiceError + std::fmt::Debug> RunningService<E> {
    /// Builds the service from `settings` and runs it on a task of this process; `stop`
    /// expects it to end without error within `stop_limit` once its token is cancelled.
    pub async fn start<S>(name: &'static str, stop_limit: Duration, settings: S) -> Self
    where
        S: ServiceMain,
        S::App: Running<Error = E>,
    {
        let cancel = CancellationToken::new();
        let app = build(settings, &cancel).await;
        Self {
            name,
            stop_limit,
            http_addr: app.service().http_addr(),
            task: Some(tokio::spawn(app.run_until_stopped(cancel.clone()))),
            cancel,
        }
    }

    /// SIGTERM-equivalent: cancels and waits for the ordered shutdown, which must end cleanly.
    #[allow(clippy::expect_used)]
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let name = self.name;
            tokio::time::timeout(self.stop_limit, task)
                .await
                .unwrap_or_else(|_| panic!("{name} stops within {:?}", self.stop_limit))
                .unwrap_or_else(|e| panic!("{name}'s task: {e}"))
                .unwrap_or_else(|e| panic!("{name} ran without error: {e:?}"));
        }
    }
}

impl<E> RunningService<E> {
    /// The Prometheus text of `/metrics`.
    #[allow(clippy::expect_used)]
    pub async fn metrics(&self) -> String {
        scrape(self.http_addr).await.expect("GET /metrics")
    }

    /// The sum of every sample of the family `name` on `/metrics` (0 when it has none).
    pub async fn metric(&self, name: &str) -> f64 {
        family_sum(&self.metrics().await, name)
    }

    /// The status and JSON body of `/health`.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        get_json(self.http_addr, "/health").await
    }
}

impl<E> Drop for RunningService<E> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Builds the service from `settings` with its root token `cancel`; a failure fails the test.
async fn build<S: ServiceMain>(settings: S, cancel: &CancellationToken) -> S::App {
    // Boxed: a service's build future is large (JetStream resource set-up).
    Box::pin(settings.build(cancel))
        .await
        .unwrap_or_else(|err| panic!("build {}: {}", S::NAME, Chain(&err)))
}

/// Checks a service's wiring of supervision: a supervised task that ends while the service runs
/// turns `/health` down (naming the task) and `/livez` failing; the service shuts down in order
/// by itself and its run returns the task failure, so that the binary exits non-zero.
#[allow(clippy::expect_used, clippy::unwrap_used)]
pub async fn assert_a_dead_task_stops_the_service<S: ServiceMain>(settings: S) {
    const TASK: &str = "test-task";
    let cancel = CancellationToken::new();
    let app = build(settings, &cancel).await;
    let (livez, _) = get_json(app.service().http_addr(), "/livez").await;
    assert_eq!(livez, 200, "{} is live once built", S::NAME);
    let supervisor = app.service().supervisor().clone();
    let health = app.service().health().clone();
    let run = tokio::spawn(app.run_until_stopped(cancel.clone()));

    supervisor.spawn(TASK, async {});
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("{} stops by itself", S::NAME))
        .expect("the run's task");
    let err = result.expect_err("the run ends with the task's failure");
    assert!(err.start_error().is_none(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("background task {TASK} ended while the service was running")
    );
    assert!(
        cancel.is_cancelled(),
        "the failure cancelled the service's token"
    );
    let (healthy, body) = health.report();
    assert!(!healthy);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["integrations"][TASK]["status"], "down");
    assert!(!health.liveness().0, "/livez fails");
}

/// `GET path` on `addr`: the status and the JSON body (`Null` when the body is not JSON).
#[allow(clippy::expect_used)]
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The Prometheus text of `/metrics` on `addr`, `None` when it does not answer.
pub async fn scrape(addr: SocketAddr) -> Option<String> {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// The value of one sample on `/metrics` (`name` with its labels, as the exposition spells it).
pub async fn sample(addr: SocketAddr, name: &str) -> Option<f64> {
    sample_value(&scrape(addr).await?, name)
}

/// The value of the sample `name` (with its labels, as the exposition spells it) in `text`.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every sample of the family `name` in `text`, whatever their labels (0 when it has
/// none).
pub fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| *n == name || n.starts_with(&format!("{name}{{")))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE x counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\ny 7\n";

    #[test]
    fn a_sample_is_read_by_its_full_name_and_a_family_is_summed() {
        assert_eq!(sample_value(TEXT, "x_total{a=\"2\"}"), Some(3.0));
        assert_eq!(sample_value(TEXT, "x_total"), None);
        assert_eq!(family_sum(TEXT, "x_total"), 5.0);
        assert_eq!(family_sum(TEXT, "y"), 7.0);
        assert_eq!(family_sum(TEXT, "z"), 0.0);
    }
}
