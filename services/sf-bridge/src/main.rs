//! sf-bridge binary: configuration, telemetry and shutdown wiring; the work is in the library.

use anyhow::Context;
use platform::config::Env;
use sf_bridge::{App, BridgeSettings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = match BridgeSettings::from_env(&Env::process()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("sf-bridge: {err}");
            std::process::exit(2);
        }
    };
    let telemetry =
        platform::telemetry::init(&settings.common.telemetry).context("initialise telemetry")?;
    tracing::info!(
        channel = %settings.channel,
        pubsub_endpoint = %settings.pubsub_endpoint,
        enabled = settings.events_enabled,
        instance_id = %settings.instance_id,
        "sf-bridge starting."
    );
    let cancel = platform::shutdown::on_signal();
    let result = async {
        let app = App::build(settings, &cancel)
            .await
            .context("start sf-bridge")?;
        app.run_until_stopped(cancel).await.context("run sf-bridge")
    }
    .await;
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "sf-bridge failed.");
    }
    telemetry.shutdown();
    result
}
