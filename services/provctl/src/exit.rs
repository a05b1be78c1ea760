//! provctl's exit codes, in one place: `provctl --help` prints [`EXIT_CODES_HELP`] and
//! docs/runbook.md lists the same table. Scripts and alerts branch on them, so a code never
//! changes meaning.

/// How provctl ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; with `status --check`, nothing needs attention.
    Ok,
    /// 1: provctl could not do what was asked: NATS unreachable or the `--timeout` passed, a
    /// variable it cannot use, a change or replay it refused, a JetStream error.
    Failed,
    /// 2: the command line is wrong (unknown command, argument or value). clap prints the usage
    /// and exits with this code itself; it is listed so that no other meaning takes it.
    Usage,
    /// 3: `status --check` found something that needs attention (one line per problem).
    NeedsAttention,
    /// 4: `order <OrderId>`: neither a journal entry nor an outcome exists for the order.
    NotFound,
}

impl Exit {
    pub const ALL: [Exit; 5] = [
        Exit::Ok,
        Exit::Failed,
        Exit::Usage,
        Exit::NeedsAttention,
        Exit::NotFound,
    ];

    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::NeedsAttention => 3,
            Exit::NotFound => 4,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

/// The exit-code table of `provctl --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  done; with `status --check`: nothing needs attention
  1  provctl failed: NATS unreachable or --timeout passed, an unusable variable, a refused change
     or replay (also `deadletter replay --dry-run` of a dead letter replay would refuse)
  2  usage error: unknown command, argument or value (printed by the argument parser)
  3  `status --check`: something needs attention, one line per problem
  4  `order <OrderId>`: no journal entry and no outcome exist for the order";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_distinct_and_documented() {
        let codes: std::collections::BTreeSet<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), Exit::ALL.len());
        for exit in Exit::ALL {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {}  ", exit.code())),
                "{exit:?} is missing from the help"
            );
        }
    }
}
