//! sf-writer binary: configuration, telemetry and shutdown wiring; the work is in the library.

use anyhow::Context;
use platform::config::Env;
use sf_writer::{App, WriterSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = match WriterSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sf-writer: {err}");
            std::process::exit(2);
        }
    };
    let telemetry =
        platform::telemetry::init(&settings.common.telemetry).context("initialise telemetry")?;
    tracing::info!(
        instance_id = %settings.instance_id,
        consumer = %settings.consumer,
        "sf-writer starting."
    );
    let cancel = platform::shutdown::on_signal();
    let result = async {
        let app = App::build(settings, &cancel)
            .await
            .context("start sf-writer")?;
        app.run_until_stopped(cancel).await.context("run sf-writer")
    }
    .await;
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "sf-writer failed.");
    }
    telemetry.shutdown();
    result
}
