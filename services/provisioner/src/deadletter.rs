//! Messages the provisioner cannot process go to `provisioning.deadletter.provisioner` with the
//! original bytes and where they came from (stream and sequence).

use async_nats::jetstream::{self, message::PublishMessage};
use base64::Engine;
use messages::{DeadLetterOrigin, DeadLetterV1};

use crate::job::SERVICE;

#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    pub async fn message(&self, message: &jetstream::Message, reason_code: &str, reason: &str) {
        let info = message.info().ok();
        let (stream, sequence) = info
            .map(|i| (i.stream.to_owned(), i.stream_sequence))
            .unzip();
        self.publish(
            &message.payload,
            stream,
            sequence,
            message.subject.as_str(),
            reason_code,
            reason,
        )
        .await;
    }

    pub async fn publish(
        &self,
        payload: &[u8],
        stream: Option<String>,
        sequence: Option<u64>,
        subject: &str,
        reason_code: &str,
        reason: &str,
    ) {
        tracing::error!(reason_code, reason, %subject, stream_sequence = ?sequence, "Message cannot be processed; setting it aside.");
        let body = DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: SERVICE.to_owned(),
            reason: reason.to_owned(),
            reason_code: reason_code.to_owned(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
            origin: DeadLetterOrigin {
                stream: stream.clone(),
                stream_sequence: sequence,
                subject: Some(subject.to_owned()),
                ..Default::default()
            },
            dead_lettered_at: messages::bodies::rfc3339(time::OffsetDateTime::now_utc()),
        };
        let Ok(bytes) = serde_json::to_vec(&body) else {
            return;
        };
        let correlation = uuid::Uuid::new_v4().to_string();
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
        let msg_id = format!(
            "{SERVICE}:{}:{}",
            stream.unwrap_or_default(),
            sequence.unwrap_or_default()
        );
        let publish = PublishMessage::build()
            .payload(bytes.into())
            .headers(headers)
            .message_id(msg_id.as_str());
        let result = match self
            .js
            .send_publish(messages::subjects::deadletter(SERVICE), publish)
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "Could not publish the dead letter.");
        }
    }
}
