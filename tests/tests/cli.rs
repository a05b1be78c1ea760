//! The service binaries answer `--help` and `--version` instead of starting, and refuse any other
//! argument (platform::cli). Run with an empty environment: a binary that started instead would
//! fail its configuration or wait for NATS, never print these answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

const SERVICES: [&str; 5] = [
    "sf-bridge",
    "provisioner",
    "sf-writer",
    "sf-sim",
    "whmcs-sim",
];

fn run(binary: &Path, arg: &str) -> Output {
    Command::new(binary)
        .arg(arg)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn services_answer_help_and_version_and_refuse_other_arguments() {
    let binaries = testkit::process::workspace_binaries(&SERVICES);
    // Every service shares the workspace version.
    let version = env!("CARGO_PKG_VERSION");
    for (name, binary) in SERVICES.iter().zip(&binaries) {
        let out = run(binary, "--version");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} --version: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("{name} {version}\n"));

        let out = run(binary, "--help");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} --help: {}",
            text(&out.stderr)
        );
        let help = text(&out.stdout);
        assert!(help.starts_with(&format!("{name} {version}\n")), "{help}");
        assert!(help.contains("environment variables"), "{help}");
        assert!(help.contains("docs/configuration.md"), "{help}");
        assert!(out.stderr.is_empty(), "{name}: {}", text(&out.stderr));

        let out = run(binary, "--port=8080");
        assert_eq!(out.status.code(), Some(2), "{name} --port=8080");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(
            err.starts_with(&format!("{name}: unexpected argument \"--port=8080\"")),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
    }
}
