//! A real `nats-server` child process with JetStream on, a free port and a temporary store.
//!
//! The port stays the same across [`NatsServer::kill`] / [`NatsServer::restart`], and so does the
//! store, so a test can take the server away under a running service and bring it back with its
//! streams intact.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary the tests run: `NATS_SERVER_BIN`, else `nats-server` on PATH, else Debian's.
pub fn server_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        if !bin.is_empty() {
            return bin.into();
        }
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into())
}

#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Extra command-line arguments (a config file, `--user`/`--pass`, `--auth`), kept for
    /// restarts.
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        Self::start_with_args(Vec::new()).await
    }

    /// Starts a server with extra command-line arguments (for example `-c <file>` for a
    /// configuration with authentication or TLS, or `--user`/`--pass`), kept for restarts.
    /// Readiness is read from the server's own log, so a server that refuses plain clients
    /// starts as well.
    #[allow(clippy::expect_used)]
    pub async fn start_with_args(extra_args: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nats-test-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            dir,
            extra_args,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A plain client, for assertions.
    #[allow(clippy::expect_used)]
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test nats-server")
    }

    /// SIGKILL: no flush, no goodbye, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store. If the port is taken meanwhile (by
    /// another process), it tries again for a few seconds, then fails naming the port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// `server_name` given to the process (stable across restarts), so that a client can tell
    /// this server from whatever else might answer on its port.
    fn name(&self) -> String {
        format!("test-{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    async fn spawn(&mut self) {
        let deadline = Instant::now() + PORT_RETRY;
        loop {
            match self.spawn_once().await {
                Ok(()) => return,
                Err(log) => {
                    assert!(
                        Instant::now() < deadline,
                        "nats-server cannot listen on 127.0.0.1:{} (address already in use: the \
                         port was taken by another process) for {} s:\n{log}",
                        self.port,
                        PORT_RETRY.as_secs()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// One start: `Ok` once the server accepts clients, `Err(its log)` when it exited because
    /// its port is taken; any other failure panics with the log.
    async fn spawn_once(&mut self) -> Result<(), String> {
        let store = self.dir.path().join("jetstream");
        let log = self.log_path();
        let offset = log_len(&log);
        let child = Command::new(server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-n")
            .arg(self.name())
            .arg("-sd")
            .arg(&store)
            .arg("-l")
            .arg(&log)
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The server accepts clients once JetStream is up ("Server is ready"); the name
            // tells it from another process that took the port.
            if let Ok(client) = async_nats::connect(self.url()).await {
                if client.server_info().server_name == self.name() && client.flush().await.is_ok() {
                    return Ok(());
                }
            }
            // A server that requires credentials or TLS refuses the plain client above; its
            // own log (this incarnation's lines) says when it is ready.
            if !self.extra_args.is_empty() && log_since(&log, offset).contains("Server is ready") {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited {
                self.child = None;
                let text = log_since(&log, offset);
                if is_bind_failure(&text) {
                    return Err(text);
                }
                panic!(
                    "nats-server on port {} exited before it became ready:\n{text}",
                    self.port
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "nats-server did not become ready on port {}:\n{}",
                    self.port,
                    log_since(&log, offset)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long a (re)start keeps trying while a port of the server is taken.
pub(crate) const PORT_RETRY: Duration = Duration::from_secs(10);

/// Length of a log file so far (0 when it does not exist yet).
pub(crate) fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What a log file gained after `offset` (one incarnation's lines: `-l` appends).
pub(crate) fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Whether a nats-server log says it could not bind one of its ports (client, route, monitor).
pub(crate) fn is_bind_failure(log: &str) -> bool {
    log.contains("address already in use")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago (bind to 0, read it, release it).
#[allow(clippy::expect_used)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}
