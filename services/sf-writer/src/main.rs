//! sf-writer binary: `--help`/`--version`, then the service runtime ([`platform::service::main`])
//! with sf-writer's settings; the work is in the library.
//!
//! Exit codes: 0 after a requested stop (and for `--help`, `--version`), 2 for a configuration
//! error or any other argument (one line naming it), 1 for any other failure: a permanent
//! JetStream error at start, or a background task that died (the orchestrator restarts it).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    platform::service::main::<sf_writer::WriterSettings>().await
}
