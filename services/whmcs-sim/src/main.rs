//! `whmcs-sim` binary: the simulator configured from `WHMCS_SIM_*` variables, until SIGTERM/SIGINT.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    platform::service::stand_in_main::<whmcs_sim::WhmcsSim>().await
}
