//! sf-bridge binary: configuration, telemetry and shutdown wiring; the work is in the library.
//!
//! Exit codes: 0 after a requested stop (and `--help`, `--version`), 2 for a configuration error
//! or any other argument (one line naming it), 1 for any other failure (a permanent JetStream
//! error at start, a task that died: the orchestrator restarts it).

use std::process::ExitCode;

use anyhow::Context;
use platform::config::Env;
use sf_bridge::{app::AppError, App, BridgeSettings};

// One worker, the service spawned on it: its tasks wake each other without a futex (benchmarks.md).
#[tokio::main(worker_threads = 1)]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    let settings = match BridgeSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sf-bridge: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match platform::telemetry::init(&settings.common.telemetry) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("sf-bridge: cannot initialise telemetry: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        channel = %settings.channel,
        pubsub_endpoint = %settings.pubsub_endpoint,
        enabled = settings.events_enabled,
        instance_id = %settings.instance_id,
        jetstream_replicas = settings.common.nats.jetstream_replicas,
        "sf-bridge starting."
    );
    let cancel = platform::shutdown::on_signal();
    let service = tokio::spawn(async move {
        let app = match App::build(settings, &cancel).await {
            Ok(app) => app,
            // Asked to stop while still waiting for NATS: a clean stop, not a failure.
            Err(AppError::Cancelled) => return Ok(()),
            Err(err) => return Err(err).context("start sf-bridge"),
        };
        app.run_until_stopped(cancel).await.context("run sf-bridge")
    });
    let result = service.await.unwrap_or_else(|died| Err(died.into()));
    let code = match &result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "sf-bridge failed.");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
