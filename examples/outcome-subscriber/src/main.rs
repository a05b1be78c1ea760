//! `outcome-subscriber`: the example downstream service (its library holds what it does).

// `--help` prints its text.
#![allow(clippy::print_stdout)]

use outcome_subscriber::{run, Settings, HELP};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = match Settings::from_args_and_env(std::env::args().skip(1)) {
        Ok(Some(settings)) => settings,
        Ok(None) => {
            println!("{HELP}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("outcome-subscriber: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outcome-subscriber: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
