//! The one way a service publishes on JetStream: the contract's headers (`Correlation-Id`,
//! `Schema`, W3C `traceparent`, `Nats-Msg-Id`), the producer span's messaging attributes
//! ([`producer_span!`](crate::producer_span)), and the publish itself, which hands back the ack
//! future unawaited: sf-bridge keeps a window of them in flight in order, the provisioner and
//! dead letters await theirs at once.

use std::borrow::Cow;

use async_nats::jetstream::{self, context::PublishAckFuture, context::PublishError};
use async_nats::HeaderMap;
use bytes::Bytes;
use messages::ContractMessage;
use tracing::Instrument;

// For `producer_span!`, so that a crate using it needs no `tracing` of its own.
#[doc(hidden)]
pub use tracing as __tracing;

/// A message ready to publish: where it goes, what its headers say, and its bytes. Cheap to
/// clone (the payload is shared), for a caller that retries.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub subject: String,
    /// `Nats-Msg-Id`: the stream stores one message per id within its duplicate window.
    pub message_id: Cow<'a, str>,
    pub correlation_id: &'a str,
    /// The body's schema name (`Schema` header).
    pub schema: &'a str,
    pub payload: Bytes,
}

impl<'a> Outgoing<'a> {
    /// A contract body, serialised, with the subject, message id, correlation id and schema it
    /// names itself. A message that is not a contract body (a dead letter, with the original
    /// bytes and a correlation id of its own) is built field by field instead.
    pub fn contract<B: ContractMessage>(body: &'a B) -> Result<Self, serde_json::Error> {
        // A contract body is a few hundred bytes: one allocation instead of a doubling series.
        let mut payload = Vec::with_capacity(768);
        serde_json::to_writer(&mut payload, body)?;
        Ok(Self {
            subject: body.subject(),
            message_id: body.message_id(),
            correlation_id: body.correlation_id(),
            schema: B::SCHEMA,
            payload: payload.into(),
        })
    }
}

/// The contract's headers of a message sent within `span`: the correlation id, the schema, the
/// message id, and the span's trace context (a new root when it has none, so that every message
/// carries a `traceparent`).
pub fn headers(
    correlation_id: &str,
    schema: &str,
    message_id: &str,
    span: &tracing::Span,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    crate::nats::insert_header(
        &mut headers,
        messages::headers::CORRELATION_ID,
        correlation_id,
    );
    crate::nats::insert_header(&mut headers, messages::headers::SCHEMA, schema);
    crate::telemetry::inject_trace_context(span, &mut headers);
    // Ids can come from outside (sf-bridge's is Salesforce's event id): one that would break
    // the header block is left out, as every other value is.
    crate::nats::insert_header(&mut headers, messages::headers::NATS_MSG_ID, message_id);
    headers
}

/// The headers of a stored message published again (an operator's replay): the original's
/// correlation id and trace context, so that it joins the order's trace, its schema when known,
/// and a message id of its own. Values that would break the header block are left out.
pub fn headers_for_resend(
    original: &HeaderMap,
    schema: Option<&str>,
    message_id: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in [
        messages::headers::CORRELATION_ID,
        messages::headers::TRACEPARENT,
        messages::headers::TRACESTATE,
    ] {
        if let Some(value) = original.get(name) {
            crate::nats::insert_header(&mut headers, name, value.as_str());
        }
    }
    if let Some(schema) = schema {
        crate::nats::insert_header(&mut headers, messages::headers::SCHEMA, schema);
    }
    crate::nats::insert_header(&mut headers, messages::headers::NATS_MSG_ID, message_id);
    headers
}

/// Publishes `message` within its producer span `span` (whose trace context the headers
/// carry) and hands back JetStream's ack, not awaited.
pub async fn send(
    js: &jetstream::Context,
    message: Outgoing<'_>,
    span: &tracing::Span,
) -> Result<PublishAckFuture, PublishError> {
    let Outgoing {
        subject,
        message_id,
        correlation_id,
        schema,
        payload,
    } = message;
    let headers = headers(correlation_id, schema, &message_id, span);
    let publish = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers);
    js.send_publish(subject, publish)
        .instrument(span.clone())
        .await
}

/// Opens a producer span with the OpenTelemetry messaging attributes every publish carries
/// (`otel.name` = `send <template>`, `otel.kind`, `messaging.*`, the destination subject),
/// followed by the caller's own fields. Level, target, parent and name stay the caller's: they
/// decide whether the span is logged (the `trace_only` target is not) and where it hangs in
/// the trace.
///
/// ```ignore
/// let span = platform::producer_span!(
///     level: tracing::Level::INFO,
///     target: module_path!(),
///     parent: job_span,
///     name: "send",
///     destination: message.subject,
///     template: ProvisioningOutcomeV1::SUBJECT_PREFIX,
///     messaging.message.id = %message.message_id,
/// );
/// ```
#[macro_export]
macro_rules! producer_span {
    (
        level: $level:expr,
        target: $target:expr,
        parent: $parent:expr,
        name: $name:expr,
        destination: $destination:expr,
        template: $template:expr
        $(, $($fields:tt)*)?
    ) => {
        $crate::publish::__tracing::span!(
            target: $target,
            parent: $parent,
            $level,
            $name,
            otel.name = %::std::format!("send {}", $template),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = %$destination,
            $($($fields)*)?
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_the_contract_headers() {
        let headers = headers(
            "c-1",
            "provisioning.requested.v1",
            "e-1",
            &tracing::Span::none(),
        );
        let value = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(value("Correlation-Id").as_deref(), Some("c-1"));
        assert_eq!(
            value("Schema").as_deref(),
            Some("provisioning.requested.v1")
        );
        assert_eq!(value("Nats-Msg-Id").as_deref(), Some("e-1"));
    }

    #[test]
    fn an_id_that_would_break_the_header_block_is_left_out() {
        let forged = "e-1\r\nCorrelation-Id: forged";
        let headers = headers("c-1", "s", forged, &tracing::Span::none());
        assert!(headers.get("Nats-Msg-Id").is_none());
        let correlation: Vec<_> = headers
            .get_all("Correlation-Id")
            .map(|v| v.as_str().to_owned())
            .collect();
        assert_eq!(correlation, ["c-1"]);
    }

    #[test]
    fn a_resent_message_keeps_the_order_identity_and_drops_broken_values() {
        let mut original = HeaderMap::new();
        original.insert("Correlation-Id", "c-1");
        original.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        original.insert("Nats-Msg-Id", "e-1");
        original.insert("Other", "x");
        let headers = headers_for_resend(&original, Some("bad\r\nInjected: 1"), "replay:1");
        let value = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(value("Correlation-Id").as_deref(), Some("c-1"));
        assert_eq!(
            value("traceparent").as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(value("Nats-Msg-Id").as_deref(), Some("replay:1"));
        assert_eq!(value("Schema"), None);
        assert_eq!(value("Other"), None);
    }

    /// The name, level, target and fields (in order, with values) of every span opened.
    #[derive(Clone, Default)]
    struct SpansOpened(std::sync::Arc<std::sync::Mutex<Vec<SpanOpened>>>);

    #[derive(Debug, PartialEq)]
    struct SpanOpened {
        name: &'static str,
        level: tracing::Level,
        target: &'static str,
        fields: Vec<(String, String)>,
    }

    struct FieldValues<'a>(&'a mut Vec<(String, String)>);

    impl tracing::field::Visit for FieldValues<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }

        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpansOpened {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Vec::new();
            attrs.record(&mut FieldValues(&mut fields));
            let meta = attrs.metadata();
            self.0.lock().unwrap().push(SpanOpened {
                name: meta.name(),
                level: *meta.level(),
                target: meta.target(),
                fields,
            });
        }
    }

    #[test]
    fn the_producer_span_has_the_messaging_attributes_then_the_callers_fields() {
        use tracing_subscriber::layer::SubscriberExt;
        let opened = SpansOpened::default();
        let subscriber = tracing_subscriber::registry().with(opened.clone());
        tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!("job");
            let subject = "provisioning.outcome.801000000000001AAA.failed".to_owned();
            let _span = crate::producer_span!(
                level: tracing::Level::WARN,
                target: module_path!(),
                parent: &job,
                name: "send",
                destination: subject,
                template: messages::subjects::PROVISIONING_OUTCOME_PREFIX,
                messaging.message.id = %"outcome:e-1",
                reason = "r",
            );
        });
        let opened = opened.0.lock().unwrap();
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            opened.last(),
            Some(&SpanOpened {
                name: "send",
                level: tracing::Level::WARN,
                target: module_path!(),
                fields: pairs(&[
                    ("otel.name", "send provisioning.outcome"),
                    ("otel.kind", "producer"),
                    ("messaging.system", "nats"),
                    ("messaging.operation.type", "send"),
                    ("messaging.operation.name", "send"),
                    (
                        "messaging.destination.name",
                        "provisioning.outcome.801000000000001AAA.failed"
                    ),
                    ("messaging.message.id", "outcome:e-1"),
                    ("reason", "r"),
                ]),
            })
        );
    }
}
