//! `--help` and `--version` for the service binaries.
//!
//! The services take no arguments: everything they need comes from environment variables, so a
//! container or a unit file sets variables and never a command line. Without this, `sf-bridge
//! --help` would start the service (and try to reach NATS and Salesforce). Each `main.rs` calls
//! [`answer_help_or_version!`](crate::answer_help_or_version) first: it answers `--help`/`-h` and
//! `--version`/`-V`, refuses any other argument with one line on stderr and exit code 2 (the
//! services' code for a configuration error), and returns when there is none. No argument parser
//! is needed for two flags.

use std::ffi::OsString;
use std::io::Write as _;

/// What `--help` and `--version` say about a binary: its package's name, version and description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    pub name: &'static str,
    pub version: &'static str,
    pub about: &'static str,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// No arguments: start the service.
    Run,
    /// Print this on stdout and exit 0.
    Print(String),
    /// Print this one line on stderr and exit 2.
    Refuse(String),
}

/// The exit code of a refused command line (the same as a configuration error's).
pub const USAGE_EXIT_CODE: i32 = 2;

/// The answer to `args` (the arguments after the program name).
pub fn answer<I>(binary: &Binary, args: I) -> Answer
where
    I: IntoIterator<Item = OsString>,
{
    let args: Vec<OsString> = args.into_iter().collect();
    if let Some(other) = args
        .iter()
        .find(|a| !is_help(a.as_os_str()) && !is_version(a.as_os_str()))
    {
        return Answer::Refuse(format!(
            "{name}: unexpected argument {other:?}: {name} takes no arguments, it is configured by \
             environment variables (see `{name} --help`)",
            name = binary.name,
            other = other.to_string_lossy(),
        ));
    }
    if args.iter().any(|a| is_help(a)) {
        Answer::Print(help(binary))
    } else if args.iter().any(|a| is_version(a)) {
        Answer::Print(format!("{} {}\n", binary.name, binary.version))
    } else {
        Answer::Run
    }
}

fn is_help(arg: &std::ffi::OsStr) -> bool {
    arg == "--help" || arg == "-h"
}

fn is_version(arg: &std::ffi::OsStr) -> bool {
    arg == "--version" || arg == "-V"
}

/// The `--help` text: what the binary is, and where its variables are documented.
pub fn help(binary: &Binary) -> String {
    let Binary {
        name,
        version,
        about,
    } = binary;
    format!(
        "{name} {version}\n\
         {about}\n\
         \n\
         Usage: {name} [--help | --version]\n\
         \n\
         {name} takes no arguments: it is configured by environment variables, read once at start.\n\
         Every variable, its default and the resource names it controls are documented in\n\
         docs/configuration.md in the repository (sections \"All services\" and \"{name}\").\n\
         It stops cleanly on SIGTERM or SIGINT.\n\
         \n\
         Options:\n  \
           -h, --help     Print this help and exit\n  \
           -V, --version  Print \"{name} <version>\" and exit\n"
    )
}

/// Answers `--help` and `--version` from the process's arguments and exits; refuses any other
/// argument (exit 2); returns only when there are no arguments. Use the macro
/// [`answer_help_or_version!`](crate::answer_help_or_version), which fills `binary` from the
/// calling package's `Cargo.toml`.
#[allow(clippy::print_stdout)]
pub fn answer_help_or_version(binary: &Binary) {
    match answer(binary, std::env::args_os().skip(1)) {
        Answer::Run => {}
        Answer::Print(text) => {
            print!("{text}");
            // process::exit skips destructors: flush what was printed first.
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        Answer::Refuse(line) => {
            eprintln!("{line}");
            std::process::exit(USAGE_EXIT_CODE);
        }
    }
}

/// `platform::answer_help_or_version!();` first thing in a service's `main`: answers `--help` and
/// `--version` with the calling package's name, version and description, refuses other
/// arguments, and returns when there are none ([`cli::answer_help_or_version`](crate::cli::answer_help_or_version)).
#[macro_export]
macro_rules! answer_help_or_version {
    () => {
        // env! expands in the calling crate, so these are the service's own package fields.
        $crate::cli::answer_help_or_version(&$crate::cli::Binary {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            about: env!("CARGO_PKG_DESCRIPTION"),
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: Binary = Binary {
        name: "sf-bridge",
        version: "1.2.3",
        about: "Salesforce to JetStream.",
    };

    fn answer_to(args: &[&str]) -> Answer {
        answer(&BRIDGE, args.iter().map(OsString::from))
    }

    #[test]
    fn no_arguments_start_the_service() {
        assert_eq!(answer_to(&[]), Answer::Run);
    }

    #[test]
    fn version_is_name_and_version() {
        for flag in ["--version", "-V"] {
            assert_eq!(
                answer_to(&[flag]),
                Answer::Print("sf-bridge 1.2.3\n".to_owned())
            );
        }
    }

    #[test]
    fn help_says_what_it_is_and_where_the_variables_are_documented() {
        for flag in ["--help", "-h"] {
            let Answer::Print(text) = answer_to(&[flag]) else {
                panic!("{flag} was not answered");
            };
            assert!(text.starts_with("sf-bridge 1.2.3\nSalesforce to JetStream.\n"));
            assert!(text.contains("environment variables"), "{text}");
            assert!(text.contains("docs/configuration.md"), "{text}");
            assert!(text.contains("\"sf-bridge\""), "{text}");
        }
        // Help wins over version, as with most tools.
        assert!(
            matches!(answer_to(&["--version", "--help"]), Answer::Print(t) if t.contains("Usage"))
        );
    }

    #[test]
    fn anything_else_is_refused_in_one_line() {
        for args in [
            &["--verbose"][..],
            &["run"],
            &["--help", "extra"],
            &["-hV"],
            &[""],
        ] {
            let Answer::Refuse(line) = answer_to(args) else {
                panic!("{args:?} was not refused");
            };
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with("sf-bridge: unexpected argument"), "{line}");
            assert!(line.contains("environment variables"), "{line}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_non_utf8_argument_is_refused_not_a_panic() {
        use std::os::unix::ffi::OsStringExt;
        let answer = answer(&BRIDGE, [OsString::from_vec(vec![0xff, b'x'])]);
        assert!(
            matches!(answer, Answer::Refuse(line) if line.contains("\\u{fffd}x") || line.contains("�x"))
        );
    }
}
