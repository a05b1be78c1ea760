//! provisioner: one job per Salesforce provisioning event, WHMCS side effects exactly once.
//!
//! - [`config`]: settings (docs/contract.md §2).
//! - [`app`]: wiring and ordered shutdown.
//! - [`worker`]: the durable pull consumer (explicit ack, max_deliver = 1) and job slots.
//! - [`job`]: one message: validate, claim, ack, orchestrate, report.
//! - [`journal`]: the KV job journal (claims by compare-and-swap, leases, WHMCS ids).
//! - [`orchestrator`]: the steps, from the Salesforce read to AcceptOrder.
//! - [`order_reader`]: the jobs' Order reads, coalesced into one query under load.
//! - [`publisher`]: outcome and Salesforce-update messages.
//! - [`recovery`]: abandoned jobs (expired leases, max-deliveries advisories) → INTERRUPTED.
//! - [`status`]: the order status API (`GET /orders/{id}`, `provisioning.status.<id>`).
//! - [`catalog`]: WHMCS products, checked before AddOrder.
//! - [`salesforce_order`], [`steps`], [`metrics`].

pub mod app;
pub mod catalog;
pub mod config;
pub mod job;
pub mod journal;
pub mod metrics;
pub mod orchestrator;
pub mod order_reader;
pub mod publisher;
pub mod recovery;
pub mod salesforce_order;
pub mod status;
pub mod steps;
pub mod worker;

pub use app::App;
pub use config::ProvisionerSettings;
