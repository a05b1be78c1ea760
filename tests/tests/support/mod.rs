//! The simulators for the cross-service tests: [`testkit::sim`], under the names these tests use.

// Each test binary includes this module and uses a part of it.
#![allow(unused_imports)]

pub use testkit::sim::{seed_client_missing_order, seed_good_order, status_of, Simulators};
