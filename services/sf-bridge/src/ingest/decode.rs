//! Decoding: a Platform Event becomes its `provisioning.requested.v1` body or the reason it is
//! poison, and goes to JetStream either way.

use pubsub_proto::ConsumerEvent;
use salesforce::pubsub::PubSubError;

use super::ack_window::AckFuture;
use super::publish::Original;
use super::{Ingest, SessionError};
use crate::event::{self, EventEnvelope, PoisonReason};

impl Ingest {
    /// Decodes one event and hands it (or its dead letter) to JetStream; returns the ack future.
    /// Errors only when the session must end (Salesforce or NATS unavailable).
    pub(super) async fn dispatch(
        &self,
        consumer_event: ConsumerEvent,
        received_at: &str,
    ) -> Result<AckFuture, SessionError> {
        self.metrics.events_received.inc();
        self.status.count_received();
        let replay_id = consumer_event.replay_id;
        let event = consumer_event.event.unwrap_or_default();
        let envelope = EventEnvelope {
            event_id: &event.id,
            replay_id: &replay_id,
            schema_id: &event.schema_id,
            channel: &self.settings.channel,
            received_at,
        };
        let decoded = self.decode(&event).await?;
        let outcome = decoded.and_then(|record| {
            if event.id.trim().is_empty() || event.id.parse::<async_nats::HeaderValue>().is_err() {
                return Err(PoisonReason::EventIdMissing);
            }
            let created_ms = event::created_epoch_ms(&record);
            event::to_requested(&envelope, record).map(|body| (body, created_ms))
        });
        let original = Box::new(Original {
            event,
            received_at: received_at.to_owned(),
        });
        let sent = match outcome {
            Ok((body, created_ms)) => {
                self.publish_requested(body, replay_id, created_ms, original)
                    .await
            }
            Err(reason) => self.dead_letters.send(&original, replay_id, &reason).await,
        };
        sent.map_err(SessionError::Publish)
    }

    async fn decode(
        &self,
        event: &pubsub_proto::ProducerEvent,
    ) -> Result<Result<serde_json::Map<String, serde_json::Value>, PoisonReason>, SessionError>
    {
        let schema = match self.client.schema(&event.schema_id).await {
            Ok(schema) => schema,
            Err(err @ PubSubError::Schema { .. }) => {
                return Ok(Err(PoisonReason::SchemaUnavailable {
                    schema_id: event.schema_id.clone(),
                    detail: err.to_string(),
                }))
            }
            Err(PubSubError::Status {
                code: tonic::Code::NotFound | tonic::Code::InvalidArgument,
                message,
                ..
            }) => {
                return Ok(Err(PoisonReason::SchemaUnavailable {
                    schema_id: event.schema_id.clone(),
                    detail: message,
                }))
            }
            Err(err) => return Err(err.into()),
        };
        Ok(
            salesforce::avro::decode_record(&schema, &event.payload).map_err(|e| {
                PoisonReason::AvroDecode {
                    schema_id: event.schema_id.clone(),
                    detail: e.to_string(),
                }
            }),
        )
    }
}
