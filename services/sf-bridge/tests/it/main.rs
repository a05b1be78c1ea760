//! sf-bridge integration tests: real nats-server (started per test), sf-sim as the Salesforce
//! peer (real gRPC Pub/Sub, real OAuth JWT bearer), and the bridge in-process or as a child
//! process where a test must kill it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod failover;
mod flow;
mod harness;
mod publish_failures;
mod recovery;
