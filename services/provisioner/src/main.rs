//! provisioner binary: configuration, telemetry and shutdown wiring; the work is in the library.

use anyhow::Context;
use platform::config::Env;
use provisioner::{App, ProvisionerSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = match ProvisionerSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("provisioner: {err}");
            std::process::exit(2);
        }
    };
    let telemetry =
        platform::telemetry::init(&settings.common.telemetry).context("initialise telemetry")?;
    tracing::info!(worker_id = %settings.worker_id, concurrency = settings.concurrency, "provisioner starting.");
    let cancel = platform::shutdown::on_signal();
    let result = async {
        let app = App::build(settings, &cancel)
            .await
            .context("start provisioner")?;
        app.run_until_stopped(cancel)
            .await
            .context("run provisioner")
    }
    .await;
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "provisioner failed.");
    }
    telemetry.shutdown();
    result
}
