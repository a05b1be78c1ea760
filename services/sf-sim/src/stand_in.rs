//! The `sf-sim` binary's run: its variables, its start and what it logs
//! ([`platform::service::stand_in_main`] adds telemetry, the signal and the exit code).

use platform::config::Env;

use crate::{SfSim, SimConfig};

impl platform::service::StandIn for SfSim {
    const NAME: &'static str = "sf-sim";
    type Error = anyhow::Error;

    async fn start_from_env(env: &Env) -> anyhow::Result<SfSim> {
        let config = SimConfig::from_env(env)?;
        let seed_demo = env.bool_or("SF_SIM_SEED_DEMO", false)?;
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
        Ok(sim)
    }

    async fn shutdown(self) {
        SfSim::shutdown(self).await;
    }
}
