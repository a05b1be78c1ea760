//! provisioner binary: configuration, telemetry and shutdown wiring; the work is in the library.
//!
//! Exit codes: 0 after a requested stop (and for `--help`, `--version`), 2 for a configuration
//! error or any other argument (one line naming it), 1 for any other failure: a permanent
//! JetStream error at start, or a background task that died (the orchestrator restarts it).

use std::process::ExitCode;

use anyhow::Context;
use platform::config::Env;
use provisioner::{App, ProvisionerSettings};

#[tokio::main]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    let settings = match ProvisionerSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("provisioner: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match platform::telemetry::init(&settings.common.telemetry) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("provisioner: cannot initialise telemetry: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        worker_id = %settings.worker_id,
        concurrency = settings.concurrency,
        jetstream_replicas = settings.common.nats.jetstream_replicas,
        "provisioner starting."
    );
    let cancel = platform::shutdown::on_signal();
    // Boxed: the whole service's state machine is large for the main thread's stack.
    let result = Box::pin(async {
        let app = Box::pin(App::build(settings, &cancel))
            .await
            .context("start provisioner")?;
        app.run_until_stopped(cancel)
            .await
            .context("run provisioner")
    })
    .await;
    let code = match &result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "provisioner failed.");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}
