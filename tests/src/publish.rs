//! Publishing requests into the pipeline as a test's stand-in for sf-bridge, through the same
//! path sf-bridge publishes with ([`platform::publish`]).

use async_nats::jetstream;
use messages::ProvisioningRequestedV1;
use platform::publish::Outgoing;

/// Publishes `request` as sf-bridge does (`Correlation-Id`, `Schema`, a `traceparent` of a new
/// trace, `Nats-Msg-Id` = `msg_id`); returns the stream's ack. Call
/// [`crate::telemetry::init_once`] first, as the services' harnesses do: without the services'
/// telemetry set-up no `traceparent` is written.
#[allow(clippy::unwrap_used)]
pub async fn provisioning_request(
    js: &jetstream::Context,
    request: &ProvisioningRequestedV1,
    msg_id: &str,
) -> jetstream::publish::PublishAck {
    let message = Outgoing {
        message_id: msg_id.into(),
        ..Outgoing::contract(request).unwrap()
    };
    platform::publish::send(js, message, &tracing::Span::none())
        .await
        .unwrap()
        .await
        .unwrap()
}
