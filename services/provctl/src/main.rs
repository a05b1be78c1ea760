//! `provctl`: operator CLI for the provisioning pipeline (docs/runbook.md, "provctl").
//! Connects with the services' NATS variables (`NATS_URL`, `NATS_CREDS_FILE`, ...).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use platform::config::Env;
use provctl::{Ctl, CtlSettings, CursorTarget};

#[derive(Debug, Parser)]
#[command(
    name = "provctl",
    version,
    about = "Operator CLI for the Salesforce → NATS → WHMCS provisioning pipeline",
    long_about = "Operator CLI for the provisioning pipeline. Connects with the services' variables: \
                  NATS_URL (default nats://127.0.0.1:4222), NATS_CREDS_FILE, NATS_USER/NATS_PASSWORD, \
                  NATS_TOKEN, NATS_TLS_CA_FILE; resource names follow the services' variables \
                  (SF_BRIDGE_STREAM, DEADLETTER_STREAM, ...); JAEGER_UI_URL for trace links."
)]
struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds (NATS unreachable, slow cluster).
    #[arg(long, global = true, default_value_t = 15)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// sf-bridge leader and cursor age, stream and consumer lag, dead letters per service.
    Status,
    /// An order's journal entry, last outcome, trace id and Jaeger link.
    Order {
        /// The Salesforce Order id (15 or 18 characters).
        order_id: String,
    },
    /// The sf-bridge replay cursor.
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Messages the services set aside (PROVISIONING_DEADLETTER).
    #[command(subcommand)]
    Deadletter(DeadletterCommand),
}

#[derive(Debug, Subcommand)]
enum CursorCommand {
    /// Move the cursor for a deliberate backfill or skip. Refused while a bridge holds the lease.
    Set(CursorSetArgs),
}

// The group names its members: a struct-level `#[group]` would take in every field, `--force`
// included, and refuse `--latest --force`.
#[derive(Debug, Args)]
#[group(skip)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .multiple(false)
        .args(["earliest", "latest", "replay_id"])
))]
struct CursorSetArgs {
    /// Delete the cursor; the bridge then starts with SF_EVENTS_REPLAY=ALL (earliest retained).
    #[arg(long)]
    earliest: bool,
    /// Delete the cursor; the bridge then starts with SF_EVENTS_REPLAY=LATEST (skip the backlog).
    #[arg(long)]
    latest: bool,
    /// Base64 replay id to resume after.
    #[arg()]
    replay_id: Option<String>,
    /// Proceed even though an sf-bridge replica holds the lease.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Subcommand)]
enum DeadletterCommand {
    /// The newest dead letters, newest first.
    List {
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only those of one service (sf-bridge, provisioner, sf-writer).
        #[arg(long)]
        service: Option<String>,
    },
    /// One dead letter with its decoded body and original payload.
    Show { seq: u64 },
    /// Republish the original payload to its original subject, with a new Nats-Msg-Id.
    Replay { seq: u64 },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("provctl: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn emit<T: serde::Serialize>(json: bool, report: &T, text: impl FnOnce(&T) -> String) {
    if json {
        match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("provctl: cannot encode the report: {e}"),
        }
    } else {
        print!("{}", text(report));
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = CtlSettings::from_env(&Env::process())?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let work = async {
        let client = platform::nats::connect(&settings.nats, "provctl").await?;
        // The client retries the first connection in the background; wait for it here.
        client
            .flush()
            .await
            .with_context(|| format!("cannot reach NATS at {}", settings.nats.urls.join(",")))?;
        let ctl = Ctl::new(client, settings.names.clone(), &settings.jaeger_ui_url)
            .with_wanted_replicas(settings.nats.jetstream_replicas);
        let json = cli.json;
        match cli.command {
            Command::Status => emit(json, &ctl.status().await?, |r| r.render()),
            Command::Order { order_id } => emit(json, &ctl.order(&order_id).await?, |r| r.render()),
            Command::Cursor(CursorCommand::Set(args)) => {
                let target = match (args.earliest, args.latest, args.replay_id) {
                    (true, _, _) => CursorTarget::Earliest,
                    (_, true, _) => CursorTarget::Latest,
                    (_, _, Some(id)) => CursorTarget::ReplayId(id),
                    (false, false, None) => {
                        anyhow::bail!("give --earliest, --latest or a replay id")
                    }
                };
                emit(json, &ctl.cursor_set(target, args.force).await?, |r| {
                    r.render()
                })
            }
            Command::Deadletter(DeadletterCommand::List { limit, service }) => emit(
                json,
                &ctl.deadletter_list(limit, service.as_deref()).await?,
                |r| r.render(),
            ),
            Command::Deadletter(DeadletterCommand::Show { seq }) => {
                emit(json, &ctl.deadletter_show(seq).await?, |r| r.render())
            }
            Command::Deadletter(DeadletterCommand::Replay { seq }) => {
                emit(json, &ctl.deadletter_replay(seq).await?, |r| r.render())
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        anyhow::anyhow!(
            "timed out after {}s (is NATS reachable at {}?)",
            timeout.as_secs(),
            settings.nats.urls.join(",")
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["provctl", "cursor", "set", "--earliest", "--json"]).unwrap();
        assert!(cli.json);
        assert!(Cli::try_parse_from(["provctl", "cursor", "set"]).is_err());
        assert!(Cli::try_parse_from(["provctl", "cursor", "set", "--earliest", "AAA="]).is_err());
        assert!(Cli::try_parse_from(["provctl", "deadletter", "show", "x"]).is_err());
        // --force is not one of the targets: it goes with any of them.
        for target in ["--latest", "--earliest", "AAA="] {
            let cli = Cli::try_parse_from(["provctl", "cursor", "set", target, "--force"])
                .unwrap_or_else(|e| panic!("{target} --force: {e}"));
            let Command::Cursor(CursorCommand::Set(args)) = cli.command else {
                panic!("not cursor set: {cli:?}");
            };
            assert!(args.force, "{target}");
        }
    }
}
