//! sf-writer integration tests: a real nats-server per test, sf-sim as Salesforce, and writer
//! replicas in this process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batching;
mod deadletter;
mod harness;
mod long_rounds;
mod ordering;
mod retries;
mod shutdown;
