//! The Pub/Sub API's gRPC error trailers, the way the client reads them: the status-details guard
//! (`salesforce::trailers::strip_status_details`, which every response passes), then tonic reads
//! `grpc-status`, `grpc-message` and the metadata (`tonic::Status::from_header_map`), and
//! `salesforce::pubsub::PubSubError::from_status` takes Salesforce's `error-code` from them; then
//! the classifications sf-bridge acts on. Invariant: an `error-code` is reported exactly when the
//! trailer is there and readable as text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use salesforce::pubsub::PubSubError;

fuzz_target!(|data: &[u8]| {
    let mut trailers = provisioning_fuzz::header_map(data);
    salesforce::trailers::strip_status_details(&mut trailers);
    let Some(status) = tonic::Status::from_header_map(&trailers) else {
        return;
    };
    let expected_code = trailers
        .get("error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let err = PubSubError::from_status(status);
    assert_eq!(err.error_code(), expected_code.as_deref());
    let _ = (
        err.is_auth_rejected(),
        err.is_invalid_replay_id(),
        err.is_transient(),
        err.to_string(),
    );
});
