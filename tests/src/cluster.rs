//! A three-node JetStream cluster of real `nats-server` processes on loopback, for chaos tests.
//!
//! Each node has its own `server_name`, client, route and monitoring port and its own store
//! directory; all share one cluster name and route to the other two (the single-host layout of
//! the NATS documentation). File storage. [`NatsCluster::kill_node`] is a SIGKILL;
//! [`NatsCluster::restart_node`] starts the node again on the same ports and store, so it rejoins
//! with its data; [`NatsCluster::wait_replicas_current`] waits until it has caught up (every
//! replica of the named streams current), so that the next node loss does not leave a stream
//! with a single current replica. [`NatsCluster::stream_leader`] names the node that leads a
//! stream (for a KV bucket, the stream `KV_<bucket>`), so a test can take exactly that node away.
//!
//! `NATS_SERVER_BIN` chooses the binary, as for [`crate::nats::NatsServer`] (which is the
//! single-node counterpart: kill -9 and restart on the same port and store).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::{free_port, is_bind_failure, log_len, log_since, server_binary, PORT_RETRY};

/// Name shared by the nodes (`cluster.name`).
pub const CLUSTER_NAME: &str = "chaos";

#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    http_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Three nodes, started and ready: every node accepts clients and the cluster can place a
    /// stream with three replicas.
    pub async fn start() -> Self {
        Self::start_with(3).await
    }

    /// `size` nodes (at least 1), ready as for [`NatsCluster::start`].
    #[allow(clippy::expect_used)]
    pub async fn start_with(size: usize) -> Self {
        let size = size.max(1);
        let dir = tempfile::Builder::new()
            .prefix("nats-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut taken = HashSet::new();
        let mut port = || loop {
            let p = free_port();
            if taken.insert(p) {
                return p;
            }
        };
        let ports: Vec<(u16, u16, u16)> = (0..size).map(|_| (port(), port(), port())).collect();
        let mut nodes = Vec::with_capacity(size);
        for (i, (client_port, route_port, http_port)) in ports.iter().copied().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("node store dir");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r, _))| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            let config = dir.path().join(format!("{name}.conf"));
            let text = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{client_port}\n\
                 http: 127.0.0.1:{http_port}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                 cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route_port}\n  \
                 routes: [{routes}]\n}}\n",
                store = store.display(),
                routes = routes.join(", "),
            );
            std::fs::write(&config, text).expect("write node config");
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                route_port,
                http_port,
                config,
                child: None,
            });
        }
        let mut cluster = Self { nodes, dir };
        let offsets: Vec<u64> = (0..size).map(|i| cluster.spawn(i)).collect();
        for (i, offset) in offsets.into_iter().enumerate() {
            if let Err(log) = cluster.wait_accepting(i, offset).await {
                panic!("{}", cluster.port_taken(i, &log));
            }
        }
        cluster.wait_ready(size).await;
        cluster
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's URL, comma-separated: the value of `NATS_URL` for the services.
    pub fn client_urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `server_name` of node `i` (`n1`, `n2`, ...).
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node called `server_name`.
    pub fn node_index(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// Monitoring port of node `i` (`/varz`, `/jsz`, `/healthz`).
    pub fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// The directory holding every node's config, store and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// A client connected to the cluster (every node's URL), for assertions.
    #[allow(clippy::expect_used)]
    pub async fn client(&self) -> async_nats::Client {
        let addrs: Vec<async_nats::ServerAddr> = (0..self.nodes.len())
            .filter_map(|i| self.url(i).parse().ok())
            .collect();
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(addrs)
            .await
            .expect("connect to the test cluster")
    }

    /// SIGKILL of node `i`: no flush, no leadership transfer, as a crash.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on the same ports and store (killing it first if it runs), and
    /// waits until it accepts clients. If one of its ports was taken meanwhile by another
    /// process, it tries again for a few seconds, then fails naming the ports.
    ///
    /// The node then catches up with its peers on its own: a caller about to take another node
    /// away waits for that with [`NatsCluster::wait_replicas_current`].
    pub async fn restart_node(&mut self, i: usize) {
        self.kill_node(i);
        let deadline = Instant::now() + PORT_RETRY;
        loop {
            let offset = self.spawn(i);
            match self.wait_accepting(i, offset).await {
                Ok(()) => return,
                Err(log) => {
                    assert!(Instant::now() < deadline, "{}", self.port_taken(i, &log));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Waits (bounded by `timeout`) until every stream in `streams` has a leader and every one
    /// of its replicas is `current` (caught up with the leader) and not offline, as
    /// `$JS.API.STREAM.INFO.<stream>` reports it. Returns how long that took, or the last
    /// replies when the bound passed.
    pub async fn wait_replicas_current(
        &self,
        streams: &[&str],
        timeout: Duration,
    ) -> Result<Duration, String> {
        let started = Instant::now();
        let client = self.client().await;
        loop {
            let mut lagging = Vec::new();
            for stream in streams {
                if let Err(why) = replicas_current(&client, stream).await {
                    lagging.push(format!("{stream}: {why}"));
                }
            }
            if lagging.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "replicas not caught up after {:.1} s:\n  {}",
                    timeout.as_secs_f64(),
                    lagging.join("\n  ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `server_name` of the node leading `stream`, from `$JS.API.STREAM.INFO.<stream>`;
    /// `None` while the stream has no leader or does not exist.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let client = self.client().await;
        stream_leader(&client, stream).await
    }

    /// The node leading a KV bucket's stream (`KV_<bucket>`).
    pub async fn kv_leader(&self, bucket: &str) -> Option<String> {
        self.stream_leader(&format!("KV_{bucket}")).await
    }

    /// Index of the node leading `stream`.
    pub async fn stream_leader_index(&self, stream: &str) -> Option<usize> {
        let leader = self.stream_leader(stream).await?;
        self.node_index(&leader)
    }

    /// Starts node `i`'s process; returns the length of its log before (the new incarnation's
    /// lines follow it).
    fn spawn(&mut self, i: usize) -> u64 {
        let node = &mut self.nodes[i];
        let offset = log_len(&node.log);
        let child = Command::new(server_binary())
            .arg("-c")
            .arg(&node.config)
            .arg("-l")
            .arg(&node.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", server_binary().display()));
        node.child = Some(child);
        offset
    }

    /// Waits until node `i` accepts clients (and it is this node answering on the port: its
    /// `server_name`). `Err(the incarnation's log)` when it exited because a port is taken;
    /// any other exit, or no answer within 30 s, panics with the log.
    async fn wait_accepting(&mut self, i: usize, log_offset: u64) -> Result<(), String> {
        let url = self.url(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(url.as_str()).await {
                if client.server_info().server_name == self.nodes[i].name
                    && client.flush().await.is_ok()
                {
                    return Ok(());
                }
            }
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            let log = log_since(&self.nodes[i].log, log_offset);
            if exited {
                self.nodes[i].child = None;
                if is_bind_failure(&log) {
                    return Err(log);
                }
            }
            assert!(
                !exited && Instant::now() < deadline,
                "cluster node {} did not accept clients on {url} (exited: {exited}):\n{log}",
                self.nodes[i].name,
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The message for a node that cannot bind its ports.
    fn port_taken(&self, i: usize, log: &str) -> String {
        let n = &self.nodes[i];
        format!(
            "cluster node {} cannot listen: a port is taken by another process (client {}, \
             route {}, monitoring {}; address already in use):\n{log}",
            n.name, n.client_port, n.route_port, n.http_port
        )
    }

    /// Ready = a stream with one replica per node can be created (meta leader elected, every
    /// peer known), then it is deleted again.
    async fn wait_ready(&self, replicas: usize) {
        let client = self.client().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let config = serde_json::json!({
            "name": "CLUSTER_READY_PROBE",
            "subjects": ["cluster.ready.probe"],
            "num_replicas": replicas,
            "storage": "file",
        });
        loop {
            let reply = client
                .request(
                    "$JS.API.STREAM.CREATE.CLUSTER_READY_PROBE",
                    config.to_string().into(),
                )
                .await;
            let last = match reply {
                Ok(msg) => {
                    let body: serde_json::Value =
                        serde_json::from_slice(&msg.payload).unwrap_or_default();
                    if body.get("error").is_none() {
                        let _ = client
                            .request("$JS.API.STREAM.DELETE.CLUSTER_READY_PROBE", "".into())
                            .await;
                        return;
                    }
                    body.to_string()
                }
                Err(err) => err.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready: {last}\n{}",
                (0..self.nodes.len())
                    .map(|i| self.log(i))
                    .collect::<Vec<_>>()
                    .join("\n-----\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}

/// `Ok` when `stream` has a leader and all its replicas (as many as its `num_replicas` says)
/// are current and online; otherwise why not.
pub async fn replicas_current(client: &async_nats::Client, stream: &str) -> Result<(), String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into()),
    )
    .await
    .map_err(|_| "no answer to STREAM.INFO within 2 s".to_owned())?
    .map_err(|e| format!("STREAM.INFO: {e}"))?;
    let body: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(|e| format!("STREAM.INFO reply: {e}"))?;
    if let Some(error) = body.get("error") {
        return Err(format!("STREAM.INFO error {error}"));
    }
    let cluster = body.get("cluster").cloned().unwrap_or_default();
    let leader = cluster["leader"].as_str().unwrap_or_default();
    if leader.is_empty() {
        return Err(format!("no leader; cluster {cluster}"));
    }
    let wanted = body
        .pointer("/config/num_replicas")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(1)
        .max(1);
    let replicas = cluster["replicas"].as_array().cloned().unwrap_or_default();
    let good = replicas
        .iter()
        .filter(|r| r["current"].as_bool() == Some(true) && r["offline"].as_bool() != Some(true))
        .count() as u64;
    if good + 1 < wanted {
        return Err(format!(
            "{good} of {} followers current (leader {leader}); cluster {cluster}",
            wanted - 1
        ));
    }
    Ok(())
}

/// `server_name` of the leader of `stream` (`cluster.leader` of `$JS.API.STREAM.INFO`), through
/// any client of the cluster. `None` while there is no leader, no such stream, or no answer.
pub async fn stream_leader(client: &async_nats::Client, stream: &str) -> Option<String> {
    // A request during an election is not answered; do not wait the client's full timeout.
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        client.request(format!("$JS.API.STREAM.INFO.{stream}"), "".into()),
    )
    .await
    .ok()?
    .ok()?;
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    body.pointer("/cluster/leader")
        .and_then(serde_json::Value::as_str)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}
