//! One active subscriber per channel, and a standby that takes over.

use std::time::{Duration, Instant};

use crate::harness::{get_json, wait_for_child_state, Harness, STREAM};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn standby_takes_over_when_the_leader_is_killed() {
    let h = Harness::start().await;
    let orders = h.seed_orders(2);
    let (mut first, first_addr) = h.spawn_bridge("bridge-1", &[]);
    wait_for_child_state(first_addr, "subscribed", WAIT).await;
    let (mut second, second_addr) = h.spawn_bridge("bridge-2", &[]);
    wait_for_child_state(second_addr, "standby", WAIT).await;
    // A standby is healthy: it is doing its job.
    assert_eq!(get_json(second_addr, "/health").await.0, 200);

    h.sim.state().approve_order(&orders[0]).unwrap();
    h.wait_for_stored(STREAM, 1, WAIT).await;
    assert_eq!(
        h.sim.state().stats().subscribe_calls,
        1,
        "only the leader subscribes"
    );

    first.kill();
    let killed_at = Instant::now();
    h.sim.state().approve_order(&orders[1]).unwrap();
    wait_for_child_state(second_addr, "subscribed", WAIT).await;
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_secs(30),
        "takeover took {takeover:?}"
    );
    h.wait_for_stored(STREAM, 2, WAIT).await;
    let status = second.terminate().expect("exit");
    assert!(status.success(), "{}", second.log());
}

#[tokio::test]
async fn graceful_shutdown_hands_the_lease_over_at_once() {
    let h = Harness::start().await;
    // A long TTL: only an explicit release explains a quick takeover.
    let ttl = [("SF_BRIDGE_LEASE_TTL_SECS", "60")];
    let (mut first, first_addr) = h.spawn_bridge("bridge-1", &ttl);
    wait_for_child_state(first_addr, "subscribed", WAIT).await;
    let (_second, second_addr) = h.spawn_bridge("bridge-2", &ttl);
    wait_for_child_state(second_addr, "standby", WAIT).await;
    let stopped_at = Instant::now();
    assert!(
        first.terminate().expect("exit").success(),
        "{}",
        first.log()
    );
    wait_for_child_state(second_addr, "subscribed", WAIT).await;
    assert!(stopped_at.elapsed() < Duration::from_secs(30));
}
