//! Test harness shared by every crate's integration tests, and home of the cross-service tests
//! (`tests/tests/*.rs`).
//!
//! - [`nats`]: a real `nats-server` per test group: free port, temporary JetStream store, and
//!   kill/restart on demand. `NATS_SERVER_BIN` picks the binary (default: `nats-server` on PATH,
//!   then `/usr/sbin/nats-server`).
//! - [`cluster`]: a three-node JetStream cluster on loopback, node kill/restart, stream leaders.
//! - [`telemetry`]: the services' telemetry set-up, once per test process.
//! - [`process`]: child processes of the workspace's binaries, killed on drop.
//! - [`otlp`]: an in-process OTLP/gRPC trace collector, for tests of what services export.
//! - [`keys`]: RSA key pairs for the OAuth JWT bearer flow.
//! - [`secure_nats`]: a private CA and certificates, operator-mode JWTs and `.creds` files,
//!   nats-server configuration files for authentication and TLS.
//! - [`schemas`]: the published JSON Schemas (docs/schemas) as validators: `assert_valid`.
//! - [`sim`]: sf-sim (trusting the test keys) and whmcs-sim started for a test, the `SF_*` and
//!   `WHMCS_*` variables that point a service at them, seeding orders and reading their status.
//! - [`service`]: a service's environment, its `App` run on a task with the token that stops it
//!   and its `/health` and `/metrics` read, the pipeline's binaries started as processes.
//! - [`stream`]: what a service stored in a stream, a consumer's backlog, a subscription awaited.
//! - [`publish`]: requests published into the pipeline as sf-bridge publishes them.
//! - [`stack`]: what the cross-service tests share when they run the services as processes:
//!   the Salesforce login environment, environment maps, an HTTP GET for the services' endpoints.
//! - [`salesforce_client`]: our Salesforce clients logged in to sf-sim (token provider, a bare
//!   Subscribe reader).
//! - [`wait`]: polling with a deadline, for conditions no event announces.

pub mod cluster;
pub mod keys;
pub mod nats;
pub mod otlp;
pub mod process;
pub mod publish;
pub mod salesforce_client;
pub mod schemas;
pub mod secure_nats;
pub mod service;
pub mod sim;
pub mod stack;
pub mod stream;
pub mod telemetry;
pub mod wait;
