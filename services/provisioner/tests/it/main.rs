//! provisioner integration tests: real nats-server per test, sf-sim and whmcs-sim as the
//! Salesforce and WHMCS peers, the provisioner in-process or as a child process where a test
//! must kill it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod coalescing;
mod errors;
mod exactly_once;
mod harness;
mod metrics;
mod orchestration;
mod paging;
mod reliability;
mod shutdown;
mod status;
