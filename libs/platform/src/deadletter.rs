//! Dead letters: what a service cannot process goes to `provisioning.deadletter.<service>`
//! (`provisioning.deadletter.v1`) with the original bytes, the reason and where it came from, so
//! nothing is lost and the stream moves on. One dead letter per stream message however often it
//! is retried (`Nats-Msg-Id` = service, stream and sequence). sf-bridge builds its own (its origin
//! is a Salesforce channel and replay id, and its publish joins the ordered ack window); both
//! publish through [`crate::publish`].

use async_nats::jetstream::{self, context::PublishError};
use messages::{DeadLetterOrigin, DeadLetterV1};

use crate::publish::Outgoing;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot encode the dead letter")]
    Encode(#[source] serde_json::Error),
    #[error("cannot publish the dead letter")]
    Publish(#[source] PublishError),
}

#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    service: &'static str,
}

impl DeadLetters {
    pub fn new(js: jetstream::Context, service: &'static str) -> Self {
        Self { js, service }
    }

    /// The dead letter of a JetStream message; waits for JetStream's ack.
    pub async fn message(
        &self,
        message: &jetstream::Message,
        correlation_id: Option<&str>,
        reason_code: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let info = message.info().ok();
        let stream = info.as_ref().map(|i| i.stream.to_owned());
        let sequence = info.as_ref().map(|i| i.stream_sequence);
        self.stored(
            &message.payload,
            stream,
            sequence,
            message.subject.as_str(),
            correlation_id,
            reason_code,
            reason,
        )
        .await
    }

    /// The dead letter of bytes read from a stream (by sequence); waits for JetStream's ack.
    #[allow(clippy::too_many_arguments)]
    pub async fn stored(
        &self,
        payload: &[u8],
        stream: Option<String>,
        sequence: Option<u64>,
        subject: &str,
        correlation_id: Option<&str>,
        reason_code: &str,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        tracing::error!(
            service = self.service,
            reason_code,
            reason,
            %subject,
            stream_sequence = ?sequence,
            "Message cannot be processed; setting it aside on the dead-letter subject."
        );
        let mut body = DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: self.service.to_owned(),
            reason: reason.to_owned(),
            reason_code: reason_code.to_owned(),
            payload_base64: String::new(),
            origin: DeadLetterOrigin {
                stream: stream.clone(),
                stream_sequence: sequence,
                subject: Some(subject.to_owned()),
                ..Default::default()
            },
            dead_lettered_at: messages::bodies::rfc3339(time::OffsetDateTime::now_utc()),
        };
        // A payload near max_payload does not fit whole once in base64: its prefix is kept.
        body.set_payload(payload, max_payload(&self.js));
        let payload = serde_json::to_vec(&body).map_err(DeadLetterError::Encode)?;
        let correlation_id =
            correlation_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let message_id = format!(
            "{}:{}:{}",
            self.service,
            stream.unwrap_or_default(),
            sequence.unwrap_or_default()
        );
        let message = Outgoing {
            subject: messages::subjects::deadletter(self.service),
            message_id: message_id.into(),
            correlation_id: &correlation_id,
            schema: DeadLetterV1::SCHEMA,
            payload: payload.into(),
        };
        // No producer span of its own: the dead letter continues the trace of the work that
        // set the message aside.
        let ack = crate::publish::send(&self.js, message, &tracing::Span::current())
            .await
            .map_err(DeadLetterError::Publish)?;
        ack.await.map(drop).map_err(DeadLetterError::Publish)
    }
}

/// The largest message the server takes (its `max_payload`; NATS's default 1 MiB before the
/// connection has reported it).
pub fn max_payload(js: &jetstream::Context) -> usize {
    match js.client().server_info().max_payload {
        0 => 1024 * 1024,
        n => n,
    }
}
