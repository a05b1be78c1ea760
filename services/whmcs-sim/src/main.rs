//! `whmcs-sim` binary: the simulator configured from `WHMCS_SIM_*` variables, until
//! SIGTERM/SIGINT.

use std::process::ExitCode;

use platform::config::Env;
use platform::telemetry::{self, TelemetrySettings};
use whmcs_sim::{WhmcsSim, WhmcsSimConfig};

#[tokio::main]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, so that a misconfigured container says exactly what is wrong.
            eprintln!("whmcs-sim: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let env = Env::process();
    let config = WhmcsSimConfig::from_env(&env)?;
    let seed_demo = env.bool_or("WHMCS_SIM_SEED_DEMO", false)?;
    let telemetry = telemetry::init(&TelemetrySettings::from_env(&env, "whmcs-sim")?)?;
    let shutdown = platform::shutdown::on_signal();

    let sim = WhmcsSim::start(config).await?;
    if seed_demo {
        let seeded = sim.state().seed_demo();
        tracing::info!(
            clients = ?seeded.clients,
            products = ?seeded.products,
            client_without_pay_method = seeded.client_without_pay_method,
            closed_client = seeded.closed_client,
            "Seeded demo data."
        );
    }
    tracing::info!(
        api_url = %sim.api_url(),
        admin_url = %sim.admin_url(),
        identifier = %sim.identifier(),
        access_key_required = sim.access_key().is_some(),
        "whmcs-sim is serving."
    );
    shutdown.cancelled().await;
    sim.shutdown().await;
    tracing::info!("whmcs-sim stopped.");
    telemetry.shutdown();
    Ok(())
}
