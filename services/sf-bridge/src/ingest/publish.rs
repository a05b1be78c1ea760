//! The messages handed to JetStream: the request of a decoded event, the dead letter of a
//! poison one, and which refusals by JetStream make an event poison.

use async_nats::jetstream;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use base64::Engine;
use messages::{ContractMessage, DeadLetterOrigin, DeadLetterV1, ProvisioningRequestedV1};
use platform::publish::Outgoing;

use super::ack_window::{AckFuture, Acked, InFlight, InFlightKind};
use super::Ingest;
use crate::event::PoisonReason;

const SERVICE: &str = "sf-bridge";

/// Why a message did not reach JetStream.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    #[error("JetStream did not store the message")]
    Nats(#[source] PublishError),
    #[error("cannot encode the message body")]
    Encode(#[source] serde_json::Error),
}

/// JetStream error codes that refuse a message for what it *is*, so that publishing it again
/// can never succeed: it must be dead-lettered. Everything else (no responders or a timeout
/// while a stream elects its leader, a full stream or account, a sealed stream, NATS down) is a
/// state of the system that passes or that an operator fixes, and the event waits for it.
/// The bridge sets no expectations (last sequence, last msg id, TTL, counters, batches), so the
/// codes those produce cannot occur.
const PERMANENT_REFUSALS: [jetstream::ErrorCode; 2] = [
    // "message size exceeds maximum allowed": larger than the stream's max_msg_size.
    jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
    // "header size exceeds maximum allowed of 64k".
    jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
];

/// The server's description when `err` refuses the message for good, `None` when a later
/// attempt may succeed.
fn permanent_refusal(err: &PublishError) -> Option<String> {
    match err.kind() {
        // Larger than the server's max_payload: checked by the client before sending.
        PublishErrorKind::MaxPayloadExceeded => Some(err.to_string()),
        PublishErrorKind::Other => std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .filter(|api| PERMANENT_REFUSALS.contains(&api.error_code()))
            .map(ToString::to_string),
        _ => None,
    }
}

/// What a dead letter is made of, besides the reason.
pub(super) struct Original {
    pub(super) event: pubsub_proto::ProducerEvent,
    pub(super) received_at: String,
}

/// Publishes dead letters. Cheap to clone, so that an ack future can set its event aside itself:
/// the dead letter's ack then takes the event's place in the ordered queue, and the cursor moves
/// past the event only once its dead letter is stored.
#[derive(Clone)]
pub(super) struct DeadLetters {
    pub(super) js: jetstream::Context,
    pub(super) channel: String,
}

impl Ingest {
    pub(super) async fn publish_requested(
        &self,
        body: ProvisioningRequestedV1,
        replay_id: Vec<u8>,
        created_ms: Option<i64>,
        original: Box<Original>,
    ) -> Result<AckFuture, PublishFailure> {
        let message = Outgoing::contract(&body).map_err(PublishFailure::Encode)?;
        // Trace-only: without an exporter it would be made, filled and dropped for nothing
        // (the log lines carry their own fields).
        let span = if !platform::telemetry::traces_exported() {
            tracing::Span::none()
        } else {
            platform::producer_span!(
                level: tracing::Level::INFO,
                target: platform::telemetry::TRACE_ONLY,
                parent: None,
                name: "provisioning.requested send",
                destination: message.subject,
                template: ProvisioningRequestedV1::SUBJECT_PREFIX,
                messaging.message.id = %body.event_id,
                order_id = %body.order_id,
                correlation_id = %body.correlation_id,
                event.id = %body.event_id,
                salesforce.replay_id = %body.replay_id,
            )
        };
        // The order's trace starts here; the span and everything beneath it carry `order.id`
        // and `correlation.id`.
        platform::telemetry::join_order(
            &span,
            None,
            Some(&body.order_id),
            Some(&body.correlation_id),
        );
        let sent = platform::publish::send(&self.js, message, &span).await;
        // The body is serialised: its ids move to the log line at ack time, not copied.
        let ProvisioningRequestedV1 {
            event_id,
            order_id,
            correlation_id,
            ..
        } = body;
        let entry = InFlight {
            replay_id,
            event_id: Some(event_id),
            order_id: Some(order_id),
            correlation_id,
            kind: InFlightKind::Requested {
                created_ms,
                original,
            },
            span,
        };
        let ack = queued(sent, entry)?;
        let dead_letters = self.dead_letters.clone();
        Ok(Box::pin(async move {
            let acked = ack.await;
            let detail = match &acked.result {
                Err(PublishFailure::Nats(err)) => permanent_refusal(err),
                _ => None,
            };
            match (detail, acked.entry.kind) {
                (Some(detail), InFlightKind::Requested { original, .. }) => {
                    // Publishing it again can never succeed: set it aside, so that it is
                    // accounted for and the stream moves on (docs/contract.md §5 rule 5).
                    let reason = PoisonReason::PublishRefused { detail };
                    // Boxed: this rare path's state would otherwise be part of every
                    // in-flight event's future (a thousand of them in the window).
                    match Box::pin(dead_letters.send(&original, acked.entry.replay_id, &reason))
                        .await
                    {
                        Ok(dead_letter_ack) => dead_letter_ack.await,
                        Err(err) => Acked {
                            entry: dead_letters.entry(&original, Vec::new(), &reason),
                            result: Err(err),
                        },
                    }
                }
                (_, kind) => Acked {
                    entry: InFlight {
                        kind,
                        ..acked.entry
                    },
                    result: acked.result,
                },
            }
        }))
    }
}

impl DeadLetters {
    /// The in-flight record of a dead letter (replay id, ids for logs, span).
    fn entry(&self, original: &Original, replay_id: Vec<u8>, reason: &PoisonReason) -> InFlight {
        let event = &original.event;
        let b64 = base64::engine::general_purpose::STANDARD;
        let replay_b64 = b64.encode(&replay_id);
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let span = platform::producer_span!(
            level: tracing::Level::WARN,
            target: platform::telemetry::TRACE_ONLY,
            parent: None,
            name: "provisioning.deadletter send",
            destination: messages::subjects::deadletter(SERVICE),
            template: messages::subjects::DEADLETTER_PREFIX,
            correlation_id = %correlation_id,
            event.id = %event.id,
            salesforce.replay_id = %replay_b64,
            reason = reason.code(),
        );
        platform::telemetry::join_order(&span, None, None, Some(&correlation_id));
        platform::telemetry::record_error(&span, reason.code(), &reason.to_string());
        InFlight {
            replay_id,
            event_id: (!event.id.is_empty()).then(|| event.id.clone()),
            order_id: None,
            correlation_id,
            kind: InFlightKind::DeadLetter {
                reason: reason.code(),
            },
            span,
        }
    }

    /// Publishes the dead letter of `original` (its bytes in base64, the reason, where it came
    /// from) on `provisioning.deadletter.sf-bridge`.
    pub(super) async fn send(
        &self,
        original: &Original,
        replay_id: Vec<u8>,
        reason: &PoisonReason,
    ) -> Result<AckFuture, PublishFailure> {
        let event = &original.event;
        let b64 = base64::engine::general_purpose::STANDARD;
        let replay_b64 = b64.encode(&replay_id);
        let entry = self.entry(original, replay_id, reason);
        let span = entry.span.clone();
        span.in_scope(|| {
            tracing::error!(
                reason = reason.code(),
                detail = %reason,
                channel = %self.channel,
                event_id = %event.id,
                replay_id = %replay_b64,
                correlation_id = %entry.correlation_id,
                "Platform Event cannot be provisioned; setting it aside."
            );
        });
        let mut body = DeadLetterV1 {
            schema: DeadLetterV1::SCHEMA.to_owned(),
            service: SERVICE.to_owned(),
            reason: reason.to_string(),
            reason_code: reason.code().to_owned(),
            payload_base64: String::new(),
            origin: DeadLetterOrigin {
                channel: Some(self.channel.clone()),
                replay_id: Some(replay_b64.clone()),
                event_id: (!event.id.is_empty()).then(|| event.id.clone()),
                schema_id: (!event.schema_id.is_empty()).then(|| event.schema_id.clone()),
                ..Default::default()
            },
            dead_lettered_at: original.received_at.clone(),
        };
        // An event close to Salesforce's 1 MB does not fit whole once in base64: a dead letter
        // that cannot be published would hold the cursor on this event for good.
        body.set_payload(&event.payload, platform::deadletter::max_payload(&self.js));
        let payload = serde_json::to_vec(&body).map_err(PublishFailure::Encode)?;
        let message = Outgoing {
            subject: messages::subjects::deadletter(SERVICE),
            // The replay id identifies the delivery even when the event id is unusable; it
            // also makes a replayed dead letter a duplicate the stream recognises.
            message_id: format!("{SERVICE}:{replay_b64}").into(),
            correlation_id: &entry.correlation_id,
            schema: DeadLetterV1::SCHEMA,
            payload: payload.into(),
        };
        let sent = platform::publish::send(&self.js, message, &span).await;
        queued(sent, entry)
    }
}

/// The ack future of a message handed to JetStream, which resolves with the message's
/// in-flight record. A message refused for good before it is even sent (larger than the
/// server's max_payload) resolves at once to that refusal, so it is handled in order like a
/// refusal by the stream; a transient failure to send ends the session here.
fn queued(
    sent: Result<PublishAckFuture, PublishError>,
    entry: InFlight,
) -> Result<AckFuture, PublishFailure> {
    match sent {
        Ok(ack) => Ok(Box::pin(async move {
            let result = ack.await.map_err(PublishFailure::Nats);
            Acked { entry, result }
        })),
        Err(err) if permanent_refusal(&err).is_some() => {
            let result = Err(PublishFailure::Nats(err));
            Ok(Box::pin(std::future::ready(Acked { entry, result })))
        }
        Err(err) => Err(PublishFailure::Nats(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(err_code: u64, description: &str) -> PublishError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400, "err_code": err_code, "description": description
        }))
        .unwrap();
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    #[test]
    fn refusals_for_what_the_message_is_are_permanent() {
        let too_big = api_error(10054, "message size exceeds maximum allowed");
        let detail = permanent_refusal(&too_big).unwrap();
        assert!(
            detail.contains("message size exceeds maximum allowed") && detail.contains("10054"),
            "{detail}"
        );
        assert!(permanent_refusal(&api_error(10097, "header size exceeds maximum")).is_some());
        assert!(
            permanent_refusal(&PublishError::new(PublishErrorKind::MaxPayloadExceeded)).is_some()
        );
    }

    #[test]
    fn states_of_the_system_are_transient() {
        for kind in [
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert_eq!(permanent_refusal(&PublishError::new(kind)), None);
        }
        // Resources exhausted, store failed (maximum messages/bytes), sealed stream.
        for code in [10047, 10077, 10109, 10158] {
            assert_eq!(permanent_refusal(&api_error(code, "x")), None, "{code}");
        }
    }
}
