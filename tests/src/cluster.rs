//! A three-node JetStream cluster of real `nats-server` processes on loopback, for chaos tests.
//!
//! Each node has its own `server_name`, client, route and monitoring port and its own store
//! directory; all share one cluster name and route to the other two (the single-host layout of
//! the NATS documentation). File storage. [`NatsCluster::kill_node`] is a SIGKILL;
//! [`NatsCluster::restart_node`] starts the node again on the same ports and store, so it rejoins
//! with its data. [`NatsCluster::stream_leader`] names the node that leads a stream (for a KV
//! bucket, the stream `KV_<bucket>`), so a test can take exactly that node away.
//!
//! `NATS_SERVER_BIN` chooses the binary, as for [`crate::nats::NatsServer`] (which is the
//! single-node counterpart: kill -9 and restart on the same port and store).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::{free_port, server_binary};

/// Name shared by the nodes (`cluster.name`).
pub const CLUSTER_NAME: &str = "chaos";

#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
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
                http_port,
                config,
                child: None,
            });
        }
        let mut cluster = Self { nodes, dir };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_accepting(i).await;
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
    /// waits until it accepts clients. It catches up with its peers on its own.
    pub async fn restart_node(&mut self, i: usize) {
        self.kill_node(i);
        self.spawn(i);
        self.wait_accepting(i).await;
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

    #[allow(clippy::expect_used)]
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
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
    }

    async fn wait_accepting(&mut self, i: usize) {
        let url = self.url(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(url.as_str()).await {
                if client.flush().await.is_ok() {
                    return;
                }
            }
            let exited = self.nodes[i]
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))));
            assert!(
                !exited && Instant::now() < deadline,
                "cluster node {} did not accept clients on {url} (exited: {exited}):\n{}",
                self.nodes[i].name,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
