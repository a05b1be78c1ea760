//! sf-bridge binary: `--help`/`--version`, then the service runtime ([`platform::service::main`])
//! with sf-bridge's settings; the work is in the library.
//!
//! Exit codes: 0 after a requested stop (and `--help`, `--version`), 2 for a configuration error
//! or any other argument (one line naming it), 1 for any other failure (a permanent JetStream
//! error at start, a task that died: the orchestrator restarts it).

use std::process::ExitCode;

// One worker, the service spawned on it: its tasks wake each other without a futex (benchmarks.md).
#[tokio::main(worker_threads = 1)]
async fn main() -> ExitCode {
    platform::answer_help_or_version!();
    platform::service::main::<sf_bridge::BridgeSettings>().await
}
