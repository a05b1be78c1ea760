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
