//! The simulators for the cross-service tests: [`testkit::sim`], under the names these tests use.

pub use testkit::sim::{seed_client_missing_order, seed_good_order, status_of, Simulators};
