//! What a body published on JetStream says about its own message: the subject it goes to, its
//! `Nats-Msg-Id`, its correlation id and its schema. The publisher (`platform::publish`) builds
//! the headers from these, so the producers cannot spell a message id or a subject differently.

use std::borrow::Cow;

use crate::bodies::{OrderUpdateV1, ProvisioningOutcomeV1, ProvisioningRequestedV1};
use crate::subjects;

/// A contract body published as one JetStream message.
pub trait ContractMessage: serde::Serialize {
    /// The body's `schema` field, also sent as the `Schema` header.
    const SCHEMA: &'static str;
    /// The subject without its per-order tokens: low-cardinality span names
    /// (`send provisioning.outcome`).
    const SUBJECT_PREFIX: &'static str;

    fn subject(&self) -> String;
    /// `Nats-Msg-Id`: the stream stores a repeated publish of the same message once.
    fn message_id(&self) -> Cow<'_, str>;
    fn correlation_id(&self) -> &str;
}

impl ContractMessage for ProvisioningRequestedV1 {
    const SCHEMA: &'static str = ProvisioningRequestedV1::SCHEMA;
    const SUBJECT_PREFIX: &'static str = subjects::PROVISIONING_REQUESTED_PREFIX;

    fn subject(&self) -> String {
        subjects::provisioning_requested(&self.order_id)
    }

    /// The Salesforce event id, stable across replays of the event (docs/contract.md §6).
    fn message_id(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.event_id)
    }

    fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
}

impl ContractMessage for ProvisioningOutcomeV1 {
    const SCHEMA: &'static str = ProvisioningOutcomeV1::SCHEMA;
    const SUBJECT_PREFIX: &'static str = subjects::PROVISIONING_OUTCOME_PREFIX;

    fn subject(&self) -> String {
        subjects::provisioning_outcome(&self.order_id, self.result.as_str())
    }

    /// One outcome per request event, however often its job's report is published (a retry, or
    /// recovery racing a slow worker).
    fn message_id(&self) -> Cow<'_, str> {
        Cow::Owned(format!("outcome:{}", self.event_id))
    }

    fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
}

impl ContractMessage for OrderUpdateV1 {
    const SCHEMA: &'static str = OrderUpdateV1::SCHEMA;
    const SUBJECT_PREFIX: &'static str = subjects::ORDER_UPDATE_PREFIX;

    fn subject(&self) -> String {
        subjects::order_update(&self.order_id)
    }

    /// One update per request event, as for the outcome.
    fn message_id(&self) -> Cow<'_, str> {
        Cow::Owned(format!("update:{}", self.event_id))
    }

    fn correlation_id(&self) -> &str {
        &self.correlation_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutcomeResult;

    #[test]
    fn each_body_names_its_subject_and_message_id() {
        let request: ProvisioningRequestedV1 = serde_json::from_value(serde_json::json!({
            "schema": "provisioning.requested.v1", "event_id": "e-1", "replay_id": "AA==",
            "channel": "/event/X__e", "schema_id": "s", "order_id": "801000000000001AAA",
            "idem_key": null, "correlation_id": "c-1", "requested_by": null, "version": null,
            "created_at": null, "created_by_id": null, "received_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        assert_eq!(
            request.subject(),
            "provisioning.requested.801000000000001AAA"
        );
        assert_eq!(request.message_id(), "e-1");
        assert_eq!(request.correlation_id(), "c-1");
        assert_eq!(
            <ProvisioningRequestedV1 as ContractMessage>::SCHEMA,
            "provisioning.requested.v1"
        );

        let outcome = ProvisioningOutcomeV1 {
            schema: ProvisioningOutcomeV1::SCHEMA.to_owned(),
            order_id: "801000000000001AAA".to_owned(),
            result: OutcomeResult::Failed,
            whmcs_order_id: None,
            whmcs_service_ids: Vec::new(),
            whmcs_invoice_id: None,
            error_code: None,
            error_message: None,
            step: "validate".to_owned(),
            correlation_id: "c-1".to_owned(),
            event_id: "e-1".to_owned(),
            idem_key: None,
            started_at: String::new(),
            finished_at: String::new(),
            duration_ms: 0,
        };
        assert_eq!(
            outcome.subject(),
            "provisioning.outcome.801000000000001AAA.failed"
        );
        assert_eq!(outcome.message_id(), "outcome:e-1");

        let update = OrderUpdateV1 {
            schema: OrderUpdateV1::SCHEMA.to_owned(),
            order_id: "801000000000001AAA".to_owned(),
            sequence: 1,
            fields: serde_json::Map::new(),
            correlation_id: "c-1".to_owned(),
            event_id: "e-1".to_owned(),
            created_at: String::new(),
        };
        assert_eq!(update.subject(), "sf.order.update.801000000000001AAA");
        assert_eq!(update.message_id(), "update:e-1");
        assert_eq!(update.correlation_id(), "c-1");
    }
}
