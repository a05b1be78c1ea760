//! The provisioner's reading of a `provisioning.requested.v1` message: the body through
//! `provisioner::job::validate` (with the subject it arrived on), the headers through the trace
//! context extraction its consumer does. Invariants: an accepted request has the canonical
//! 18-character Order id the subject names, and its JSON validates again to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = provisioning_fuzz::nats_message(data);
    provisioning_fuzz::read_trace_headers(&message.headers);
    let Ok(request) = provisioner::job::validate(&message.subject, &message.payload) else {
        return;
    };
    provisioning_fuzz::assert_named_by_subject(&message.subject, &request.order_id);
    let json = serde_json::to_vec(&request).expect("a request serialises");
    let again = provisioner::job::validate(&message.subject, &json)
        .unwrap_or_else(|e| panic!("an accepted request no longer validates: {e}"));
    assert_eq!(again, request);
});
