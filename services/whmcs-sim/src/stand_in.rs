//! The `whmcs-sim` binary's run: its variables, its start and what it logs
//! ([`platform::service::stand_in_main`] adds telemetry, the signal and the exit code).

use platform::config::Env;

use crate::{WhmcsSim, WhmcsSimConfig};

impl platform::service::StandIn for WhmcsSim {
    const NAME: &'static str = "whmcs-sim";
    type Error = anyhow::Error;

    async fn start_from_env(env: &Env) -> anyhow::Result<WhmcsSim> {
        let config = WhmcsSimConfig::from_env(env)?;
        let seed_demo = env.bool_or("WHMCS_SIM_SEED_DEMO", false)?;
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
        Ok(sim)
    }

    async fn shutdown(self) {
        WhmcsSim::shutdown(self).await;
    }
}
