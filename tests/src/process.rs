//! Child processes of the workspace's binaries, for tests that must `kill -9` a service.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running binary, killed (SIGKILL) on drop. Its output goes to a log file that is printed
/// when a test asks for it.
#[derive(Debug)]
pub struct ChildProcess {
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl ChildProcess {
    /// Spawns `binary` with exactly `env` (plus PATH and HOME), logging to a temporary file.
    #[allow(clippy::expect_used)]
    pub fn spawn(binary: &str, env: &HashMap<String, String>) -> Self {
        let log_path = tempfile::Builder::new()
            .prefix("child-")
            .suffix(".log")
            .tempfile()
            .expect("log file")
            .into_temp_path()
            .keep()
            .expect("keep log file");
        let log = std::fs::File::create(&log_path).expect("open log");
        let err_log = log.try_clone().expect("clone log handle");
        let mut command = Command::new(binary);
        command.env_clear();
        for key in ["PATH", "HOME"] {
            if let Ok(value) = std::env::var(key) {
                command.env(key, value);
            }
        }
        command
            .envs(env)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err_log));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        Self {
            child: Some(child),
            log_path,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().ok()
    }

    /// Whether the process has exited on its own.
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `/proc/<pid>/status` memory field (`"VmRSS:"`, `"VmHWM:"`, ...) in KiB; 0 when the process
/// or the field is gone (benchmarks read their child services' memory with it).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Paths of workspace binaries (the package and binary names are the same), for tests that run
/// services of several crates as processes: a crate's integration tests only get
/// `CARGO_BIN_EXE_*` for that crate's own binaries.
///
/// The binaries are built (once per test process) with the cargo running the tests (`CARGO`),
/// into the test's own target directory and profile, so they are never stale; they are then
/// found next to the test executable. Panics with what to do when that fails.
#[allow(clippy::expect_used)]
pub fn workspace_binaries(names: &[&str]) -> Vec<PathBuf> {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps")
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target_dir = profile_dir.parent().map(PathBuf::from);
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let mut failure = None;
    match std::env::var_os("CARGO") {
        Some(cargo) => {
            let mut command = Command::new(cargo);
            command.current_dir(&workspace).arg("build").arg("--bins");
            // The variables cargo sets for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...)
            // would reach build scripts that watch them (ring does) and force rebuilds.
            for (key, _) in std::env::vars_os() {
                let Some(key) = key.to_str() else { continue };
                let keep = [
                    "CARGO_HOME",
                    "CARGO_TARGET_DIR",
                    "CARGO_BUILD_",
                    "CARGO_NET_",
                    "CARGO_HTTP_",
                    "CARGO_REGISTRIES_",
                    "CARGO_TERM_",
                    "CARGO_PROFILE_",
                    "CARGO_INCREMENTAL",
                ]
                .iter()
                .any(|prefix| key.starts_with(prefix));
                if (key.starts_with("CARGO_") && !keep)
                    || matches!(key, "OUT_DIR" | "RUST_TEST_THREADS")
                {
                    command.env_remove(key);
                }
            }
            for name in names {
                command.args(["-p", name]);
            }
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    command.arg("--release");
                }
                other => {
                    command.args(["--profile", other]);
                }
            }
            if let Some(dir) = &target_dir {
                command.arg("--target-dir").arg(dir);
            }
            match command.status() {
                Ok(status) if status.success() => {}
                Ok(status) => failure = Some(format!("cargo build exited with {status}")),
                Err(err) => failure = Some(format!("cannot run cargo: {err}")),
            }
        }
        None => failure = Some("CARGO is not set (not run by cargo test)".to_owned()),
    }
    names
        .iter()
        .map(|name| {
            let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
            assert!(
                path.is_file(),
                "{} not found ({}); build it first: cargo build -p {}",
                path.display(),
                failure.as_deref().unwrap_or("no build problem reported"),
                names.join(" -p ")
            );
            if let Some(problem) = &failure {
                eprintln!(
                    "warning: could not rebuild {name} ({problem}); using {}",
                    path.display()
                );
            }
            path
        })
        .collect()
}

/// The port a service bound for `HTTP_ADDR=127.0.0.1:0`, from its start-up line in a JSON log
/// (`LOG_FORMAT=json`): only the process knows it, and asking for port 0 leaves no window in
/// which another process could take a port picked beforehand.
pub fn http_port(log: &str) -> Option<u16> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "Serving /health, /livez and /metrics.")
        .and_then(|line| {
            line["local_addr"]
                .as_str()?
                .rsplit_once(':')?
                .1
                .parse()
                .ok()
        })
}

/// Waits (up to `wait`) for `service` to report its HTTP port ([`http_port`]); panics with its
/// log when it exits first or never does.
pub async fn wait_http_port(
    name: &str,
    service: &mut ChildProcess,
    wait: std::time::Duration,
) -> u16 {
    crate::wait::until(&format!("{name}'s listener"), wait, || {
        let exited = service.has_exited();
        let log = service.log();
        async move {
            assert!(!exited, "{name} exited:\n{log}");
            http_port(&log)
        }
    })
    .await
}
