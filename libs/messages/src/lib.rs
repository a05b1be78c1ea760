//! The pipeline's public contract on NATS (`docs/contract.md` §6): subjects, header names,
//! default stream and bucket names, and the JSON bodies, so every service and tool spells them
//! the same way. No runtime dependencies: schema changes never rebuild the plumbing.
//!
//! - [`subjects`]: subject builders and wildcard filters.
//! - [`headers`]: header names carried by every message.
//! - [`bodies`]: `provisioning.requested.v1`, `provisioning.outcome.v1`, `sf.order.update.v1`,
//!   `provisioning.deadletter.v1`, `provisioning.status.v1`.
//! - [`contract`]: what a published body says about its message (subject, message id,
//!   correlation id, schema).
//! - [`journal`]: the provisioner's job journal entry, which the status answer is made from,
//!   and the journal bucket's keys.
//! - [`kv`]: every KV bucket's keys and stored values (cursor, lease, sf-writer's ordering
//!   state), shared by the services and `provctl`.
//! - [`salesforce_id`]: validation of 15/18-character Salesforce ids.
//! - [`schemas`]: the bodies' JSON Schemas, published under `docs/schemas/`.

pub mod bodies;
pub mod contract;
pub mod headers;
pub mod journal;
pub mod kv;
pub mod salesforce_id;
pub mod schemas;
pub mod subjects;

pub use bodies::{
    DeadLetterOrigin, DeadLetterV1, OrderUpdateV1, OutcomeResult, ProvisioningOutcomeV1,
    ProvisioningRequestedV1, ProvisioningStatusV1,
};
pub use contract::ContractMessage;
