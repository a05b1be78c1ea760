//! From pulled messages to Salesforce records: validation of `sf.order.update.v1` bodies,
//! grouping by Order, and merging an Order's updates into one record.
//!
//! Merging overlays the updates oldest first, so the record equals applying them one after the
//! other: a field set by several updates takes the newest value, and a field only an older update
//! sets is still written. The pure functions here are generic over what travels with an update
//! (the JetStream message in the service, nothing in unit tests).

use std::collections::BTreeMap;

use messages::OrderUpdateV1;
use serde_json::{Map, Value};

/// Why a message can never be applied (it is dead-lettered as `invalid_update`).
pub type Invalid = String;

/// The Order fields the pipeline writes (docs/contract.md §4, "Written (by sf-writer only)"). An update
/// that sets any other field did not come from the provisioner and is refused: whoever can
/// publish on `sf.order.update.*` must not be able to write arbitrary Order fields through the
/// integration user.
pub const WRITABLE_FIELDS: [&str; 4] = [
    "Activation_Status__c",
    "WHMCS_Order_ID__c",
    "Activation_Error_Code__c",
    "Activation_Error_Message__c",
];

/// Parses and checks a body. Returns the update with `order_id` in its canonical 18-character
/// form (docs/contract.md §4), so that every spelling of one Order (15 characters, or 18 with the suffix
/// in either case) shares one ordering key, one claim and one Salesforce write. The subject must
/// name the same Order (either spelling), and the fields must be ones the pipeline writes.
pub fn parse(subject: &str, payload: &[u8]) -> Result<OrderUpdateV1, Invalid> {
    let mut update: OrderUpdateV1 = serde_json::from_slice(payload)
        .map_err(|e| format!("body is not sf.order.update.v1 JSON: {e}"))?;
    if update.schema != OrderUpdateV1::SCHEMA {
        return Err(format!(
            "schema is {:?}, expected {}",
            update.schema,
            OrderUpdateV1::SCHEMA
        ));
    }
    update.order_id = messages::salesforce_id::canonical(&update.order_id)
        .map_err(|e| format!("order_id {:?} is not a Salesforce id: {e}", update.order_id))?;
    // These keys belong to the record envelope; a body that sets them would retarget the write.
    if let Some(bad) = update
        .fields
        .keys()
        .find(|k| k.eq_ignore_ascii_case("id") || k.eq_ignore_ascii_case("attributes"))
    {
        return Err(format!("fields must not set {bad:?}"));
    }
    // Salesforce API names are case-insensitive.
    if let Some(bad) = update
        .fields
        .keys()
        .find(|k| !WRITABLE_FIELDS.iter().any(|w| w.eq_ignore_ascii_case(k)))
    {
        return Err(format!(
            "fields must not set {bad:?}: only {} are written",
            WRITABLE_FIELDS.join(", ")
        ));
    }
    let named = messages::subjects::order_named(subject, messages::subjects::ORDER_UPDATE_PREFIX);
    if named.as_deref() != Some(update.order_id.as_str()) {
        return Err(format!(
            "subject {subject:?} does not name the body's order {}",
            update.order_id
        ));
    }
    Ok(update)
}

/// One Order's updates from a batch, oldest first.
#[derive(Debug)]
pub struct Group<T> {
    pub order_id: String,
    pub members: Vec<(OrderUpdateV1, T)>,
}

impl<T> Group<T> {
    /// The newest sequence in the group: what the merged record stands for.
    pub fn sequence(&self) -> u64 {
        self.members
            .iter()
            .map(|(u, _)| u.sequence)
            .max()
            .unwrap_or(0)
    }

    /// The newest member's update (for its correlation id and trace context).
    pub fn newest(&self) -> Option<&(OrderUpdateV1, T)> {
        self.members.last()
    }

    /// The fields of every member overlaid oldest first.
    pub fn merged_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        for (update, _) in &self.members {
            for (name, value) in &update.fields {
                fields.insert(name.clone(), value.clone());
            }
        }
        fields
    }

    /// The sObject Collections record for this group.
    pub fn record(&self) -> Value {
        record(&self.order_id, self.merged_fields())
    }
}

/// Groups updates by Order (groups in order of first appearance, members by sequence; equal
/// sequences keep their delivery order).
pub fn group_by_order<T>(items: Vec<(OrderUpdateV1, T)>) -> Vec<Group<T>> {
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<Group<T>> = Vec::new();
    for (update, extra) in items {
        match index.get(&update.order_id) {
            Some(&i) => groups[i].members.push((update, extra)),
            None => {
                index.insert(update.order_id.clone(), groups.len());
                groups.push(Group {
                    order_id: update.order_id.clone(),
                    members: vec![(update, extra)],
                });
            }
        }
    }
    for group in &mut groups {
        // Stable: duplicates of one sequence stay in delivery order.
        group.members.sort_by_key(|(u, _)| u.sequence);
    }
    groups
}

/// `{"attributes":{"type":"Order"},"id":…, …fields}`.
pub fn record(order_id: &str, fields: Map<String, Value>) -> Value {
    let mut record = Map::with_capacity(fields.len() + 2);
    record.insert(
        "attributes".to_owned(),
        serde_json::json!({ "type": "Order" }),
    );
    record.insert("id".to_owned(), Value::String(order_id.to_owned()));
    record.extend(fields);
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDER: &str = "801000000000001AAA";

    fn subject(order: &str) -> String {
        messages::subjects::order_update(order)
    }

    fn update(order: &str, sequence: u64, fields: Value) -> OrderUpdateV1 {
        OrderUpdateV1 {
            schema: OrderUpdateV1::SCHEMA.to_owned(),
            order_id: order.to_owned(),
            sequence,
            fields: fields.as_object().cloned().unwrap_or_default(),
            correlation_id: "c".to_owned(),
            event_id: format!("e{sequence}"),
            created_at: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    #[test]
    fn valid_bodies_parse_and_ids_become_18_characters() {
        let body = serde_json::to_vec(&update(
            "801000000000001",
            1,
            json!({"Activation_Status__c": "Activated"}),
        ))
        .unwrap();
        let parsed = parse(&subject("801000000000001"), &body).unwrap();
        assert_eq!(parsed.order_id, "801000000000001AAA");
    }

    #[test]
    fn every_spelling_of_one_order_is_one_canonical_id() {
        let spellings = [
            "801000000000001",
            "801000000000001AAA",
            "801000000000001aaa",
            "801000000000001aAa",
        ];
        let parsed: Vec<(OrderUpdateV1, ())> = spellings
            .iter()
            .zip(1..)
            .map(|(spelling, seq)| {
                let body = serde_json::to_vec(&update(spelling, seq, json!({}))).unwrap();
                let update = parse(&subject(ORDER), &body).unwrap();
                assert_eq!(update.order_id, ORDER, "{spelling}");
                (update, ())
            })
            .collect();
        // One Order, one group: one claim and one write.
        assert_eq!(group_by_order(parsed).len(), 1);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let on = subject(ORDER);
        assert!(parse(&on, b"{")
            .unwrap_err()
            .contains("not sf.order.update.v1"));
        assert!(parse(&on, b"\xff\xfe\x00")
            .unwrap_err()
            .contains("not sf.order.update.v1"));
        let mut wrong_schema = update(ORDER, 1, json!({}));
        wrong_schema.schema = "other".into();
        let body = serde_json::to_vec(&wrong_schema).unwrap();
        assert!(parse(&on, &body).unwrap_err().contains("schema"));
        let body = serde_json::to_vec(&update("801' OR 1=1", 1, json!({}))).unwrap();
        assert!(parse(&on, &body)
            .unwrap_err()
            .contains("not a Salesforce id"));
        let body = serde_json::to_vec(&update(ORDER, 1, json!({"Id": "x"}))).unwrap();
        assert!(parse(&on, &body).unwrap_err().contains("must not set"));
    }

    #[test]
    fn only_the_pipelines_fields_are_written() {
        let on = subject(ORDER);
        for field in ["Status", "AccountId", "Description", "OwnerId"] {
            let body = serde_json::to_vec(&update(ORDER, 1, json!({ field: "x" }))).unwrap();
            let err = parse(&on, &body).unwrap_err();
            assert!(err.contains("must not set"), "{field}: {err}");
        }
        let all = json!({
            "activation_status__c": "Failed", "WHMCS_Order_ID__c": null,
            "Activation_Error_Code__c": "409", "Activation_Error_Message__c": "m"
        });
        let body = serde_json::to_vec(&update(ORDER, 1, all)).unwrap();
        assert!(parse(&on, &body).is_ok());
    }

    #[test]
    fn the_subject_must_name_the_bodys_order() {
        let body = serde_json::to_vec(&update(ORDER, 1, json!({}))).unwrap();
        assert!(parse("sf.order.update.801000000000001", &body).is_ok());
        for subject in [
            "sf.order.update.801000000000002AAA",
            "sf.order.update",
            "sf.order.update.801000000000001AAA.x",
            "provisioning.requested.801000000000001AAA",
        ] {
            let err = parse(subject, &body).unwrap_err();
            assert!(err.contains("does not name"), "{subject}: {err}");
        }
    }

    #[test]
    fn groups_merge_oldest_first_so_the_newest_value_wins() {
        let other = "801000000000002AAA";
        let groups = group_by_order(vec![
            (
                update(ORDER, 3, json!({"Status": "Activated", "Code": null})),
                (),
            ),
            (update(other, 1, json!({"Status": "Failed"})), ()),
            (
                update(ORDER, 2, json!({"Status": "Failed", "Message": "x"})),
                (),
            ),
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].order_id, ORDER);
        assert_eq!(groups[0].sequence(), 3);
        assert_eq!(
            groups[0]
                .members
                .iter()
                .map(|(u, _)| u.sequence)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(
            groups[0].record(),
            json!({"attributes": {"type": "Order"}, "id": ORDER,
                   "Status": "Activated", "Message": "x", "Code": null})
        );
        assert_eq!(groups[1].record()["Status"], "Failed");
    }
}
