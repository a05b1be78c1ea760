//! Updates that can never be applied go to `provisioning.deadletter.sf-writer` with the original
//! bytes, Salesforce's reason and where they came from (stream, sequence, subject). The message is
//! terminated only once the dead letter is stored, so nothing is lost if the publish fails.

use async_nats::jetstream::{self, message::PublishMessage};
use base64::Engine;
use messages::{DeadLetterOrigin, DeadLetterV1};

pub const SERVICE: &str = "sf-writer";

#[derive(Debug, thiserror::Error)]
#[error("cannot publish the dead letter: {0}")]
pub struct DeadLetterError(String);

#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// Publishes the dead letter of `message` and waits for JetStream's ack.
    pub async fn publish(
        &self,
        message: &jetstream::Message,
        correlation_id: Option<&str>,
        reason_code: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let info = message.info().ok();
        let stream = info.as_ref().map(|i| i.stream.to_owned());
        let sequence = info.as_ref().map(|i| i.stream_sequence);
        tracing::error!(
            reason_code,
            reason,
            subject = %message.subject,
            stream_sequence = ?sequence,
            "Update cannot be applied; setting it aside."
        );
        let body = DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: SERVICE.to_owned(),
            reason: reason.to_owned(),
            reason_code: reason_code.to_owned(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&message.payload),
            origin: DeadLetterOrigin {
                stream: stream.clone(),
                stream_sequence: sequence,
                subject: Some(message.subject.to_string()),
                ..Default::default()
            },
            dead_lettered_at: messages::bodies::rfc3339(time::OffsetDateTime::now_utc()),
        };
        let bytes = serde_json::to_vec(&body).map_err(|e| DeadLetterError(e.to_string()))?;
        let correlation = correlation_id
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut headers = async_nats::HeaderMap::new();
        platform::nats::insert_header(
            &mut headers,
            messages::headers::CORRELATION_ID,
            &correlation,
        );
        platform::nats::insert_header(
            &mut headers,
            messages::headers::SCHEMA,
            DeadLetterV1::SCHEMA,
        );
        platform::telemetry::inject_trace_context(&tracing::Span::current(), &mut headers);
        // One dead letter per stream message, however often it is retried.
        let msg_id = format!(
            "{SERVICE}:{}:{}",
            stream.unwrap_or_default(),
            sequence.unwrap_or_default()
        );
        let publish = PublishMessage::build()
            .payload(bytes.into())
            .headers(headers)
            .message_id(msg_id.as_str());
        let ack = self
            .js
            .send_publish(messages::subjects::deadletter(SERVICE), publish)
            .await
            .map_err(|e| DeadLetterError(e.to_string()))?;
        ack.await
            .map(drop)
            .map_err(|e| DeadLetterError(e.to_string()))
    }
}
