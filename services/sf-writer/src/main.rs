//! sf-writer binary: configuration, telemetry and shutdown wiring; the work is in the library.
//!
//! Exit codes: 0 after a requested stop (and for `--help`, `--version`), 2 for a configuration
//! error or any other argument (one line naming it), 1 for any other failure: a permanent
//! JetStream error at start, or a background task that died (the orchestrator restarts it).

use std::process::ExitCode;

use anyhow::Context;
use platform::config::Env;
use sf_writer::app::AppError;
use sf_writer::{App, WriterSettings};

#[tokio::main]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    let settings = match WriterSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sf-writer: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match platform::telemetry::init(&settings.common.telemetry) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("sf-writer: cannot initialise telemetry: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        instance_id = %settings.instance_id,
        consumer = %settings.consumer,
        jetstream_replicas = settings.common.nats.jetstream_replicas,
        "sf-writer starting."
    );
    let cancel = platform::shutdown::on_signal();
    // Boxed: the whole service's state machine is large for the main thread's stack.
    let result = Box::pin(async {
        let app = match App::build(settings, &cancel).await {
            Ok(app) => app,
            // Asked to stop while still waiting for NATS: a clean stop, not a failure.
            Err(AppError::Cancelled) => return Ok(()),
            Err(err) => return Err(err).context("start sf-writer"),
        };
        app.run_until_stopped(cancel).await.context("run sf-writer")
    })
    .await;
    let code = match &result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "sf-writer failed.");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
