//! The chaos suite: docs/contract.md §5's promises (rules 1–7) under crashes, broker restarts, cluster
//! node loss and sick Salesforce / WHMCS stand-ins.
//!
//! Every scenario runs sf-sim and whmcs-sim in this process and two replicas of sf-bridge, the
//! provisioner and sf-writer as child processes, on one nats-server (file storage) or a
//! three-node cluster with `JETSTREAM_REPLICAS=3`. It seeds `CHAOS_ORDERS` Salesforce Orders
//! (default 200) over the happy path and the contract's failure codes, approves them at
//! `CHAOS_RATE` per second (default 10) while it injects faults, waits up to
//! `CHAOS_RECOVERY_SECS` (180) after the last fault, and checks:
//! - every Order ends `Activated`, or `Failed` with a contract code; none stays `Activating`;
//!   orders that must fail (no payment method, no client, no items, mapping) never activate;
//! - WHMCS holds at most one order per Salesforce Order (the `[sf-order:<id>]` marker);
//! - each approved event is one requests-stream message (or a dead letter);
//! - every requests-stream message has exactly one outcome;
//! - a final state does not change afterwards.
//!
//! It prints a result row (and appends it to `$CHAOS_RESULTS` when set). The seed is printed;
//! `CHAOS_SEED` replays a run's order mix and fault schedule. Scenarios run one at a time.
//! `scripts/chaos.sh` is the long run (≥ 1000 orders, both nats-server versions).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chaos {
    pub mod driver;
    pub mod rng;
}

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use chaos::driver::{
    Broker, Chaos, ChaosOptions, Kind, CLUSTER_STREAMS, JOURNAL_BUCKET, PROVISIONER_ACK_WAIT,
    REQUESTS,
};
use sf_sim::Faults;
use whmcs_sim::faults::ActionFaults;

/// Every WHMCS call takes this long (a realistic install), so kills land mid-job.
const WHMCS_LATENCY_MS: u64 = 150;

/// Bound on a restarted cluster node catching up (every replica current) before the next fault.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Scenarios start a dozen processes each; one at a time on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn run<F: Future<Output = ()>>(scenario: F) {
    let _guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(scenario);
}

/// How many faults of a kind: `base`, and one more per 250 orders above 200.
fn scaled(chaos: &Chaos, base: usize) -> usize {
    base + chaos.orders.len().saturating_sub(200) / 250
}

/// (a) kill -9 of every service at random points, restarted after a random pause; once with
/// every provisioner replica down for longer than the consumer's ack wait.
#[test]
fn a_service_kills() {
    run(async {
        let mut chaos = Chaos::start(ChaosOptions {
            scenario: "a-service-kills",
            cluster: false,
            extra_env: Vec::new(),
            min_flow: Duration::from_secs(45),
            whmcs_latency: Duration::from_millis(WHMCS_LATENCY_MS),
        })
        .await;
        chaos.start_approvals();
        let kills = scaled(&chaos, 6);
        let gap = chaos.flow.as_millis() as u64 / (kills as u64 + 2);
        for k in 0..kills {
            chaos.pause(gap / 2, gap * 3 / 2).await;
            if k == kills / 2 {
                // Every provisioner down longer than ack_wait: deliveries made just before
                // the crash reach max_deliver while nobody listens for the advisory.
                let replicas = chaos.replicas_of(Kind::Provisioner);
                for &i in &replicas {
                    chaos.kill_service(i);
                }
                let down = PROVISIONER_ACK_WAIT + chaos.rng.millis(2000, 5000);
                chaos.fault(format!(
                    "kill -9 every provisioner replica, down {:.1} s (ack wait {} s)",
                    down.as_secs_f64(),
                    PROVISIONER_ACK_WAIT.as_secs()
                ));
                tokio::time::sleep(down).await;
                for &i in &replicas {
                    chaos.restart_service(i);
                }
                chaos.fault_over();
                continue;
            }
            let kind = Kind::ALL[chaos.rng.index(3)];
            let target = match kind {
                // The bridge that holds the subscription (the standby's death changes nothing).
                Kind::Bridge => match chaos.active_bridge().await {
                    Some(i) => i,
                    None => chaos.replicas_of(kind)[chaos.rng.index(2)],
                },
                _ => chaos.replicas_of(kind)[chaos.rng.index(2)],
            };
            chaos.kill_service(target);
            let down = chaos.pause(200, 3000).await;
            chaos.fault(format!(
                "kill -9 {} at t≈{:.1} s, restarted after {:.1} s",
                chaos.service_label(target),
                chaos.elapsed().as_secs_f64() - down.as_secs_f64(),
                down.as_secs_f64()
            ));
            chaos.restart_service(target);
            chaos.fault_over();
        }
        chaos.finish().await.assert_ok();
    });
}

/// (b) kill -9 of the (single, file storage) nats-server mid-flow, restarted on its store.
#[test]
fn b_nats_server_restart() {
    run(async {
        let mut chaos = Chaos::start(ChaosOptions {
            scenario: "b-nats-kill-restart",
            cluster: false,
            extra_env: Vec::new(),
            min_flow: Duration::from_secs(20),
            whmcs_latency: Duration::from_millis(WHMCS_LATENCY_MS),
        })
        .await;
        chaos.start_approvals();
        let restarts = scaled(&chaos, 2);
        let gap = chaos.flow.as_millis() as u64 / (restarts as u64 + 1);
        for _ in 0..restarts {
            chaos.pause(gap / 2, gap).await;
            let down = chaos.rng.millis(500, 5000);
            let Broker::Single(server) = &mut chaos.broker else {
                unreachable!()
            };
            server.kill();
            tokio::time::sleep(down).await;
            server.restart().await;
            chaos.fault(format!(
                "kill -9 nats-server, restarted on its store after {:.1} s",
                down.as_secs_f64()
            ));
            chaos.fault_over();
        }
        chaos.finish().await.assert_ok();
    });
}

/// Kills the cluster node leading `stream` mid-flow and brings it back later, `times` times.
async fn kill_leader_of(chaos: &mut Chaos, stream: &str, times: usize) {
    let gap = chaos.flow.as_millis() as u64 / (times as u64 + 1);
    for _ in 0..times {
        chaos.pause(gap / 2, gap).await;
        let Broker::Cluster(cluster) = &mut chaos.broker else {
            unreachable!()
        };
        let leader = testkit::wait::until(
            &format!("a leader of {stream}"),
            Duration::from_secs(30),
            || cluster.stream_leader_index(stream),
        )
        .await;
        let name = cluster.server_name(leader).to_owned();
        cluster.kill_node(leader);
        let down = chaos.rng.millis(3000, 8000);
        tokio::time::sleep(down).await;
        let Broker::Cluster(cluster) = &mut chaos.broker else {
            unreachable!()
        };
        cluster.restart_node(leader).await;
        let back = std::time::Instant::now();
        // The next loss must not find a stream with a single current replica: wait until the
        // node is back in every stream the pipeline uses, with a leader for each.
        let caught_up = cluster
            .wait_replicas_current(&CLUSTER_STREAMS, CATCH_UP)
            .await
            .unwrap_or_else(|why| panic!("node {name} back, but {why}"));
        let new_leader = cluster.stream_leader(stream).await;
        chaos.fault(format!(
            "kill -9 node {name} (leader of {stream}), back after {:.1} s, replicas current \
             {:.1} s later; leader now {new_leader:?}",
            down.as_secs_f64(),
            caught_up.as_secs_f64()
        ));
        chaos.fault_over_at(back);
    }
}

/// (c1) three-node cluster: the node leading the requests stream dies mid-flow.
#[test]
fn c1_cluster_requests_leader_loss() {
    run(async {
        let mut chaos = Chaos::start(ChaosOptions {
            scenario: "c1-cluster-requests-leader",
            cluster: true,
            extra_env: Vec::new(),
            min_flow: Duration::from_secs(30),
            whmcs_latency: Duration::from_millis(WHMCS_LATENCY_MS),
        })
        .await;
        chaos.start_approvals();
        let times = scaled(&chaos, 2);
        kill_leader_of(&mut chaos, REQUESTS, times).await;
        chaos.finish().await.assert_ok();
    });
}

/// (c2) three-node cluster: the node leading the job journal's stream dies mid-flow.
#[test]
fn c2_cluster_journal_leader_loss() {
    run(async {
        let mut chaos = Chaos::start(ChaosOptions {
            scenario: "c2-cluster-journal-leader",
            cluster: true,
            extra_env: Vec::new(),
            min_flow: Duration::from_secs(30),
            whmcs_latency: Duration::from_millis(WHMCS_LATENCY_MS),
        })
        .await;
        chaos.start_approvals();
        let times = scaled(&chaos, 2);
        kill_leader_of(&mut chaos, &format!("KV_{JOURNAL_BUCKET}"), times).await;
        chaos.finish().await.assert_ok();
    });
}

/// (d) Salesforce and WHMCS stand-ins slow, failing (5xx, 429), hanging past the client
/// timeout (3 s in these tests), and committing then failing.
#[test]
fn d_sick_salesforce_and_whmcs() {
    run(async {
        let mut chaos = Chaos::start(ChaosOptions {
            scenario: "d-sick-sf-and-whmcs",
            cluster: false,
            extra_env: Vec::new(),
            min_flow: Duration::from_secs(25),
            whmcs_latency: Duration::from_millis(WHMCS_LATENCY_MS),
        })
        .await;
        chaos.start_approvals();
        type Inject = fn(&Chaos);
        let catalogue: Vec<(&str, Inject)> = vec![
            ("Salesforce REST slow (800 ms per call)", |c| {
                c.sf.state()
                    .update_faults(|f| f.rest_latency = Duration::from_millis(800));
            }),
            ("Salesforce REST 503 × 15", |c| {
                c.sf.state()
                    .update_faults(|f| f.rest_status = Some((503, 15)));
            }),
            ("Salesforce REST 429 × 15", |c| {
                c.sf.state()
                    .update_faults(|f| f.rest_status = Some((429, 15)));
            }),
            ("Salesforce REST hangs 4 s (> 3 s client timeout)", |c| {
                c.sf.state()
                    .update_faults(|f| f.rest_latency = Duration::from_secs(4));
            }),
            ("Salesforce token endpoint 500 × 3", |c| {
                c.sf.state()
                    .update_faults(|f| f.token_status = Some((500, 3)));
            }),
            ("WHMCS slow (600 ms per call)", |c| {
                c.whmcs.state().set_latency_all(Duration::from_millis(600));
            }),
            ("WHMCS AddOrder 500 × 5", |c| {
                c.whmcs
                    .state()
                    .set_faults("AddOrder", ActionFaults::http_status(500, 5));
            }),
            ("WHMCS AcceptOrder 429 × 5", |c| {
                c.whmcs
                    .state()
                    .set_faults("AcceptOrder", ActionFaults::http_status(429, 5));
            }),
            ("WHMCS GetPayMethods 503 × 5", |c| {
                c.whmcs
                    .state()
                    .set_faults("GetPayMethods", ActionFaults::http_status(503, 5));
            }),
            (
                "WHMCS AddOrder hangs 5 s (> 3 s client timeout) × 3",
                |c| {
                    c.whmcs
                        .state()
                        .set_faults("AddOrder", ActionFaults::hang(Duration::from_secs(5), 3));
                },
            ),
            ("WHMCS AddOrder commits then answers 500 × 3", |c| {
                c.whmcs
                    .state()
                    .set_faults("AddOrder", ActionFaults::fail_after_commit_status(500, 3));
            }),
            ("WHMCS AcceptOrder commits then hangs 5 s × 3", |c| {
                c.whmcs.state().set_faults(
                    "AcceptOrder",
                    ActionFaults::fail_after_commit_hang(Duration::from_secs(5), 3),
                );
            }),
            ("WHMCS AddOrder result=error × 3", |c| {
                c.whmcs
                    .state()
                    .set_faults("AddOrder", ActionFaults::error("Server busy", 3));
            }),
        ];
        // Every fault once, in a seeded order, each held for a random while.
        let mut order: Vec<usize> = (0..catalogue.len()).collect();
        for i in (1..order.len()).rev() {
            let j = chaos.rng.index(i + 1);
            order.swap(i, j);
        }
        let slot = chaos.flow.as_millis() as u64 / (order.len() as u64 + 1);
        for i in order {
            chaos.pause(slot / 4, slot / 2).await;
            let (name, inject) = catalogue[i];
            inject(&chaos);
            let held = chaos.pause(slot / 2, slot).await;
            chaos.sf.state().set_faults(Faults::default());
            chaos.whmcs.state().clear_faults();
            chaos
                .whmcs
                .state()
                .set_latency_all(Duration::from_millis(WHMCS_LATENCY_MS));
            chaos.fault(format!("{name}, held {:.1} s", held.as_secs_f64()));
            chaos.fault_over();
        }
        let result = chaos.finish().await;
        result.assert_ok();
        // No process dies in this scenario: INTERRUPTED would mean a live job was reported as
        // abandoned (it happened when a lease renewal cut short made a job's close look like a
        // takeover).
        assert_eq!(
            result.failed.get("INTERRUPTED"),
            None,
            "no worker stopped, yet jobs were reported INTERRUPTED\n{}",
            result.row()
        );
    });
}
