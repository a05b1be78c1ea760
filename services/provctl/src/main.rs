//! `provctl`: operator CLI for the provisioning pipeline (docs/runbook.md, "provctl").
//! Connects with the services' NATS variables (`NATS_URL`, `NATS_CREDS_FILE`, ...).

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};
use provctl::cli::{Cli, Command};
use provctl::Exit;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version 0, from clap itself (Exit::Usage).
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        // Before any variable is read or NATS is dialled: completions need neither.
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "provctl",
            &mut std::io::stdout(),
        );
        return Exit::Ok.into();
    }
    match provctl::cli::run(cli).await {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("provctl: {}", platform::error::Chain(&err));
            Exit::Failed.into()
        }
    }
}
