//! Publishing requests into the pipeline as a test's stand-in for sf-bridge.

use async_nats::jetstream;
use messages::ProvisioningRequestedV1;

/// Publishes `request` as sf-bridge does (`Correlation-Id`, a `traceparent` of a trace started
/// upstream, `Nats-Msg-Id` = `msg_id`); returns the stream's ack.
#[allow(clippy::unwrap_used)]
pub async fn provisioning_request(
    js: &jetstream::Context,
    request: &ProvisioningRequestedV1,
    msg_id: &str,
) -> jetstream::publish::PublishAck {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Correlation-Id", request.correlation_id.as_str());
    // A trace started upstream, as sf-bridge's span would start it.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    headers.insert(
        "traceparent",
        format!("00-{trace_id}-{}-01", &trace_id[..16]).as_str(),
    );
    let message = jetstream::message::PublishMessage::build()
        .payload(serde_json::to_vec(request).unwrap().into())
        .headers(headers)
        .message_id(msg_id);
    js.send_publish(
        messages::subjects::provisioning_requested(&request.order_id),
        message,
    )
    .await
    .unwrap()
    .await
    .unwrap()
}
