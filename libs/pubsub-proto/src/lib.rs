//! The Salesforce Pub/Sub API (`eventbus.v1.PubSub`), generated at build time from
//! `proto/eventbus/v1/pubsub_api.proto`. The client side is used by `salesforce::pubsub`, the
//! server side by `sf-sim`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("eventbus.v1");

/// gRPC metadata keys of the Pub/Sub API, sent lowercase on every call.
pub mod metadata {
    pub const ACCESS_TOKEN: &str = "accesstoken";
    pub const INSTANCE_URL: &str = "instanceurl";
    pub const TENANT_ID: &str = "tenantid";
    /// Trailer with Salesforce's own error code on a failed stream.
    pub const ERROR_CODE: &str = "error-code";
    pub const RPC_ID: &str = "rpc-id";
}

/// Values of the `error-code` trailer that clients act on.
pub mod error_codes {
    pub const REPLAY_ID_CORRUPTED: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
    pub const REPLAY_ID_VALIDATION_FAILED: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed";
    pub const AUTH_ERROR: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
    pub const AUTH_REFRESH_INVALID: &str =
        "sfdc.platform.eventbus.grpc.service.auth.refresh.invalid";
    pub const SERVICE_UNAVAILABLE: &str = "sfdc.platform.eventbus.grpc.service.unavailable";
    pub const TOPIC_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.topic.not.found";
    pub const FETCH_NUM_REQUESTED_INVALID: &str =
        "sfdc.platform.eventbus.grpc.subscription.fetch.num.requested.invalid";
}
