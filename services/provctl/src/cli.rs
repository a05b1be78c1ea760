//! provctl's command line: the commands and their arguments (clap), and running one against the
//! pipeline's NATS. The binary (`main.rs`) parses, answers `completions` and prints the error.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use messages::journal::JobState;
use platform::config::Env;

use crate::check::DEFAULT_MAX_LAG;
use crate::duration::parse_duration;
use crate::exit::EXIT_CODES_HELP;
use crate::{CheckSettings, Ctl, CtlError, CtlSettings, CursorTarget, Exit, OrdersQuery};

/// Why a command could not run; printed with its causes, exit 1.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] platform::config::ConfigError),
    #[error(transparent)]
    Connect(#[from] platform::nats::NatsError),
    #[error("cannot reach NATS at {urls}")]
    Unreachable {
        urls: String,
        #[source]
        source: async_nats::client::FlushError,
    },
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error("give --earliest, --latest or a replay id")]
    NoCursorTarget,
    #[error("timed out after {secs}s (is NATS reachable at {urls}?)")]
    TimedOut { secs: u64, urls: String },
}

#[derive(Debug, Parser)]
#[command(
    name = "provctl",
    version,
    about = "Operator CLI for the Salesforce → NATS → WHMCS provisioning pipeline",
    long_about = "Operator CLI for the provisioning pipeline. Connects with the services' variables: \
                  NATS_URL (default nats://127.0.0.1:4222), NATS_CREDS_FILE, NATS_USER/NATS_PASSWORD, \
                  NATS_TOKEN, NATS_TLS_CA_FILE; resource names follow the services' variables \
                  (SF_BRIDGE_STREAM, DEADLETTER_STREAM, ...); JAEGER_UI_URL for trace links. \
                  docs/runbook.md, section \"provctl\", explains every command.",
    after_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this many seconds (NATS unreachable, slow cluster).
    #[arg(long, global = true, default_value_t = 15)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// sf-bridge leader and cursor age, stream and consumer lag, dead letters per service.
    Status(StatusArgs),
    /// An order's journal entry, last outcome, trace id and Jaeger link (exit 4: unknown order).
    Order {
        /// The Salesforce Order id (15 or 18 characters).
        order_id: String,
    },
    /// The journal's orders in one state, newest first (error code, step, attempts, message).
    Orders(OrdersArgs),
    /// The sf-bridge replay cursor.
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Messages the services set aside (PROVISIONING_DEADLETTER).
    #[command(subcommand)]
    Deadletter(DeadletterCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell); needs no NATS.
    ///
    /// bash: `provctl completions bash > /etc/bash_completion.d/provctl`;
    /// zsh: `provctl completions zsh > "${fpath[1]}/_provctl"`;
    /// fish: `provctl completions fish > ~/.config/fish/completions/provctl.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Judge the report: print one line per problem and exit 3 when something needs attention
    /// (no bridge leader, cursor not following events, lag, recent dead letters, missing or
    /// under-replicated streams and buckets), 0 when nothing does.
    #[arg(long)]
    pub check: bool,
    /// With --check: most messages a consumer may have pending.
    #[arg(long, requires = "check", default_value_t = DEFAULT_MAX_LAG)]
    pub max_lag: u64,
    /// With --check: dead letters younger than this need attention (30m, 24h, 7d; 0s: ignore).
    #[arg(long, requires = "check", value_parser = parse_duration,
          default_value = "24h")]
    pub deadletter_window: Duration,
    /// With --check: how long an event received by the bridge may stay newer than the cursor.
    #[arg(long, requires = "check", value_parser = parse_duration,
          default_value = "2m")]
    pub cursor_grace: Duration,
}

#[derive(Debug, Args)]
pub struct OrdersArgs {
    /// running, activated, failed, skipped or interrupted; every state when absent.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<JobState>,
    /// Only orders whose entry was updated at most this long ago (30m, 1h, 2d).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

fn parse_state(s: &str) -> Result<JobState, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum CursorCommand {
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
pub struct CursorSetArgs {
    /// Delete the cursor; the bridge then starts with SF_EVENTS_REPLAY=ALL (earliest retained).
    #[arg(long)]
    pub earliest: bool,
    /// Delete the cursor; the bridge then starts with SF_EVENTS_REPLAY=LATEST (skip the backlog).
    #[arg(long)]
    pub latest: bool,
    /// Base64 replay id to resume after.
    #[arg()]
    pub replay_id: Option<String>,
    /// Proceed even though an sf-bridge replica holds the lease.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeadletterCommand {
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
    Replay {
        seq: u64,
        /// Show the subject, headers and payload size replay would publish (or why it would
        /// refuse), and publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
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

/// Runs `cli`'s command (not `completions`, which needs no NATS: the binary answers it) within
/// `--timeout`.
pub async fn run(cli: Cli) -> Result<Exit, RunError> {
    let settings = CtlSettings::from_env(&Env::process())?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let work = async {
        let client = platform::nats::connect(&settings.nats, "provctl").await?;
        // The client retries the first connection in the background; wait for it here.
        client
            .flush()
            .await
            .map_err(|source| RunError::Unreachable {
                urls: settings.nats.urls.join(","),
                source,
            })?;
        let ctl = Ctl::new(client, settings.names.clone(), &settings.jaeger_ui_url)
            .with_wanted_replicas(settings.nats.jetstream_replicas);
        let json = cli.json;
        match cli.command {
            Command::Status(args) if args.check => {
                let settings = CheckSettings {
                    max_lag: args.max_lag,
                    deadletter_window: args.deadletter_window,
                    cursor_grace: args.cursor_grace,
                };
                let report = ctl.check(&settings).await?;
                emit(json, &report, |r| r.render());
                if report.needs_attention() {
                    return Ok(Exit::NeedsAttention);
                }
            }
            Command::Status(_) => emit(json, &ctl.status().await?, |r| r.render()),
            Command::Order { order_id } => {
                let report = ctl.order(&order_id).await?;
                emit(json, &report, |r| r.render());
                if !report.found() {
                    eprintln!(
                        "provctl: order {} not found: no journal entry and no outcome",
                        report.order_id
                    );
                    return Ok(Exit::NotFound);
                }
            }
            Command::Orders(args) => {
                let query = OrdersQuery {
                    state: args.state,
                    since: args.since,
                    limit: args.limit,
                };
                emit(json, &ctl.orders(&query).await?, |r| r.render());
            }
            Command::Cursor(CursorCommand::Set(args)) => {
                let target = match (args.earliest, args.latest, args.replay_id) {
                    (true, _, _) => CursorTarget::Earliest,
                    (_, true, _) => CursorTarget::Latest,
                    (_, _, Some(id)) => CursorTarget::ReplayId(id),
                    (false, false, None) => return Err(RunError::NoCursorTarget),
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
            Command::Deadletter(DeadletterCommand::Replay { seq, dry_run: true }) => {
                let plan = ctl.deadletter_replay_plan(seq).await?;
                emit(json, &plan, |r| r.render());
                // The same verdict as the real replay: a refusal is exit 1.
                if let Some(reason) = &plan.refused {
                    eprintln!("provctl: dead letter {seq} cannot be replayed: {reason}");
                    return Ok(Exit::Failed);
                }
            }
            Command::Deadletter(DeadletterCommand::Replay {
                seq,
                dry_run: false,
            }) => emit(json, &ctl.deadletter_replay(seq).await?, |r| r.render()),
            // Answered in main, before connecting.
            Command::Completions { .. } => {}
        }
        Ok::<_, RunError>(Exit::Ok)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| RunError::TimedOut {
            secs: timeout.as_secs(),
            urls: settings.nats.urls.join(","),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{DEFAULT_CURSOR_GRACE, DEFAULT_DEADLETTER_WINDOW};
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["provctl", "cursor", "set", "--earliest", "--json"]).unwrap();
        assert!(cli.json);
        assert!(Cli::try_parse_from(["provctl", "cursor", "set"]).is_err());
        assert!(Cli::try_parse_from(["provctl", "cursor", "set", "--earliest", "AAA="]).is_err());
        assert!(Cli::try_parse_from(["provctl", "deadletter", "show", "x"]).is_err());
        // Thresholds go with --check only; durations need a unit.
        assert!(Cli::try_parse_from(["provctl", "status", "--max-lag", "5"]).is_err());
        let cli = Cli::try_parse_from([
            "provctl",
            "status",
            "--check",
            "--max-lag",
            "5",
            "--deadletter-window",
            "1h",
        ])
        .unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status: {cli:?}");
        };
        assert!(args.check && args.max_lag == 5);
        assert_eq!(args.deadletter_window, Duration::from_secs(3_600));
        assert_eq!(args.cursor_grace, DEFAULT_CURSOR_GRACE);
        let cli = Cli::try_parse_from(["provctl", "status", "--check"]).unwrap();
        let Command::Status(args) = cli.command else {
            panic!("not status: {cli:?}");
        };
        assert_eq!(args.deadletter_window, DEFAULT_DEADLETTER_WINDOW);
        assert!(Cli::try_parse_from(["provctl", "orders", "--since", "30"]).is_err());
        assert!(Cli::try_parse_from(["provctl", "orders", "--state", "done"]).is_err());
        let cli = Cli::try_parse_from(["provctl", "orders", "--state", "failed", "--since", "2d"])
            .unwrap();
        let Command::Orders(args) = cli.command else {
            panic!("not orders: {cli:?}");
        };
        assert_eq!(args.state, Some(JobState::Failed));
        assert_eq!(args.since, Some(Duration::from_secs(172_800)));
        assert!(Cli::try_parse_from(["provctl", "completions", "tcsh"]).is_err());
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
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
