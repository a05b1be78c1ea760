//! sf-writer's reading of a `sf.order.update.v1` message: the body through
//! `sf_writer::batch::parse` (with the subject it arrived on), the headers through the trace
//! context extraction its consumer does. Invariants: an accepted update has the canonical
//! 18-character Order id the subject names, its JSON validates again to the same update, and
//! the record written for it targets that Order.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = provisioning_fuzz::nats_message(data);
    provisioning_fuzz::read_trace_headers(&message.headers);
    let Ok(update) = sf_writer::batch::parse(&message.subject, &message.payload) else {
        return;
    };
    provisioning_fuzz::assert_named_by_subject(&message.subject, &update.order_id);
    let json = serde_json::to_vec(&update).expect("an update serialises");
    let again = sf_writer::batch::parse(&message.subject, &json)
        .unwrap_or_else(|e| panic!("an accepted update no longer validates: {e}"));
    assert_eq!(again, update);
    // The record sf-writer sends: the update can set fields, never retarget the write.
    let record = sf_writer::batch::record(&update.order_id, update.fields.clone());
    assert_eq!(record["id"], update.order_id.as_str());
    assert_eq!(record["attributes"]["type"], "Order");
});
