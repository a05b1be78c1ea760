//! `sf-sim` binary: the simulator configured from `SF_SIM_*` variables, until SIGTERM/SIGINT.

use std::process::ExitCode;

use platform::config::Env;
use platform::telemetry::{self, TelemetrySettings};
use sf_sim::{SfSim, SimConfig};

#[tokio::main]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, so that a misconfigured container says exactly what is wrong.
            eprintln!("sf-sim: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let env = Env::process();
    let config = SimConfig::from_env(&env)?;
    let seed_demo = env.bool_or("SF_SIM_SEED_DEMO", false)?;
    let telemetry = telemetry::init(&TelemetrySettings::from_env(&env, "sf-sim")?)?;
    let shutdown = platform::shutdown::on_signal();

    let sim = SfSim::start(config).await?;
    if seed_demo {
        let seeded = sim.state().seed_demo();
        tracing::info!(orders = ?seeded.orders, "Seeded demo data.");
    }
    tracing::info!(
        login_url = %sim.login_url(),
        instance_url = %sim.instance_url(),
        pubsub_url = %sim.pubsub_url(),
        admin_url = %sim.admin_url(),
        org_id = %sim.state().org_id(),
        channel = %sim.state().channel(),
        "sf-sim is serving."
    );
    shutdown.cancelled().await;
    sim.shutdown().await;
    tracing::info!("sf-sim stopped.");
    telemetry.shutdown();
    Ok(())
}
