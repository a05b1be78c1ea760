//! Publishing a job's results: the `provisioning.outcome.v1` message for other services and the
//! `sf.order.update.v1` message for sf-writer. Both carry a `Nats-Msg-Id` derived from the event
//! id, so a repeated publish (a retry here, or recovery racing a slow worker) is stored once.

use std::time::Duration;

use async_nats::jetstream;
use messages::{ContractMessage, OrderUpdateV1, OutcomeResult, ProvisioningOutcomeV1};
use platform::backoff::Backoff;
use platform::error::Chain;
use platform::publish::Outgoing;
use serde_json::{json, Map, Value};

use crate::journal::{JobRecord, JobState};
use crate::steps::JobResult;

/// JetStream's answer (or the reason no answer came); kept as the publish error's source.
pub type PublishCause = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
#[error("cannot publish to {subject}")]
pub struct PublishError {
    pub subject: String,
    #[source]
    pub source: PublishCause,
}

#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
}

/// The Salesforce fields a result sets (docs/contract.md §4).
pub fn order_fields(result: &JobResult) -> Option<Map<String, Value>> {
    let value = match result {
        JobResult::Activated { whmcs_order_id, .. } => json!({
            "Activation_Status__c": "Activated",
            "WHMCS_Order_ID__c": whmcs_order_id.to_string(),
            "Activation_Error_Code__c": null,
            "Activation_Error_Message__c": null,
        }),
        JobResult::Failed { code, message } => json!({
            "Activation_Status__c": "Failed",
            "Activation_Error_Code__c": code,
            "Activation_Error_Message__c": message,
        }),
        JobResult::Skipped { .. } => return None,
    };
    value.as_object().cloned()
}

impl Publisher {
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    pub async fn outcome(
        &self,
        outcome: &ProvisioningOutcomeV1,
        span: &tracing::Span,
    ) -> Result<(), PublishError> {
        self.publish(outcome, span).await
    }

    /// Publishes a job's report: the Salesforce update first (so a service reacting to the
    /// outcome finds the update already queued), then the outcome. Both are idempotent.
    pub async fn report(&self, report: &Report, span: &tracing::Span) -> Result<(), PublishError> {
        if let Some(update) = &report.update {
            self.order_update(update, span).await?;
        }
        self.outcome(&report.outcome, span).await
    }

    /// [`Self::report`], giving up after `deadline` (a publish already sent may still land).
    pub async fn report_within(
        &self,
        report: &Report,
        span: &tracing::Span,
        deadline: Duration,
    ) -> Result<(), PublishError> {
        tokio::time::timeout(deadline, self.report(report, span))
            .await
            .unwrap_or_else(|_| {
                Err(PublishError {
                    subject: report.outcome.subject(),
                    source: format!("no acknowledgement within {deadline:?}").into(),
                })
            })
    }

    /// Publishes a job's report unless its outcome is already stored. A duplicate publish would
    /// be dropped by the stream, but core-NATS subscribers of `provisioning.outcome.>` would
    /// still see it twice; so this is only for a report whose closer gave up on it (see
    /// `job::report_deadline`). Returns whether it published.
    pub async fn report_if_missing(
        &self,
        outcomes_stream: &str,
        report: &Report,
        span: &tracing::Span,
    ) -> Result<bool, PublishError> {
        if self
            .outcome_published(outcomes_stream, &report.outcome)
            .await?
        {
            return Ok(false);
        }
        self.report(report, span).await.map(|()| true)
    }

    /// Whether `outcome` is stored: the last outcome on its subject is its event's. Errors when
    /// the stream cannot be read.
    pub async fn outcome_published(
        &self,
        outcomes_stream: &str,
        outcome: &ProvisioningOutcomeV1,
    ) -> Result<bool, PublishError> {
        let subject = outcome.subject();
        self.last_outcome_is(outcomes_stream, &subject, &outcome.event_id)
            .await
    }

    /// Whether an outcome for this event is the last one stored under any of the order's
    /// result subjects: how an event that started no job is known to be reported. A read that
    /// fails counts as "not found".
    pub async fn outcome_stored(
        &self,
        outcomes_stream: &str,
        order_id: &str,
        event_id: &str,
    ) -> bool {
        for result in [
            OutcomeResult::Activated,
            OutcomeResult::Failed,
            OutcomeResult::Skipped,
        ] {
            let subject = messages::subjects::provisioning_outcome(order_id, result.as_str());
            if let Ok(true) = self
                .last_outcome_is(outcomes_stream, &subject, event_id)
                .await
            {
                return true;
            }
        }
        false
    }

    /// Whether the last outcome stored on `subject` is `event_id`'s (`false` when the subject
    /// has none); errors when the stream cannot be read.
    async fn last_outcome_is(
        &self,
        outcomes_stream: &str,
        subject: &str,
        event_id: &str,
    ) -> Result<bool, PublishError> {
        let failed = |source: PublishCause| PublishError {
            subject: subject.to_owned(),
            source,
        };
        let stream = self
            .js
            .get_stream_no_info(outcomes_stream)
            .await
            .map_err(|e| failed(e.into()))?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(
                serde_json::from_slice::<ProvisioningOutcomeV1>(&message.payload)
                    .is_ok_and(|o| o.event_id == event_id),
            ),
            Err(err)
                if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(false)
            }
            Err(err) => Err(failed(err.into())),
        }
    }

    pub async fn order_update(
        &self,
        update: &OrderUpdateV1,
        span: &tracing::Span,
    ) -> Result<(), PublishError> {
        self.publish(update, span).await
    }

    /// Publishes and awaits the ack, retrying a few times over about 15 s: the message id makes
    /// a retry harmless, and giving up leaves the job to recovery.
    async fn publish<B: ContractMessage>(
        &self,
        body: &B,
        span: &tracing::Span,
    ) -> Result<(), PublishError> {
        let message = Outgoing::contract(body).map_err(|e| PublishError {
            subject: body.subject(),
            source: e.into(),
        })?;
        // The producer span (messaging conventions): its context is what the consumer continues.
        let send = platform::producer_span!(
            level: tracing::Level::INFO,
            target: module_path!(),
            parent: span,
            name: "send",
            destination: message.subject,
            template: B::SUBJECT_PREFIX,
            messaging.message.id = %message.message_id,
        );
        let result = self.publish_in(message, &send).await;
        if let Err(err) = &result {
            platform::telemetry::record_error(&send, "PUBLISH_FAILED", &Chain(err).to_string());
        }
        result
    }

    async fn publish_in(
        &self,
        message: Outgoing<'_>,
        span: &tracing::Span,
    ) -> Result<(), PublishError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        let mut last_error: Option<PublishCause> = None;
        for _ in 0..8 {
            let err: PublishCause =
                match platform::publish::send(&self.js, message.clone(), span).await {
                    Ok(ack) => match ack.await {
                        Ok(_) => return Ok(()),
                        Err(e) => e.into(),
                    },
                    Err(e) => e.into(),
                };
            let subject = &message.subject;
            span.in_scope(
                || tracing::warn!(%subject, error = %Chain(&*err), "Publish failed; retrying."),
            );
            last_error = Some(err);
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Err(PublishError {
            subject: message.subject,
            source: last_error.unwrap_or_else(|| "no attempt was made".into()),
        })
    }
}

/// Builds the outcome body.
pub fn outcome_body(
    request: &messages::ProvisioningRequestedV1,
    result: &JobResult,
    step: &str,
    whmcs_order_id: Option<u64>,
    started_at: time::OffsetDateTime,
) -> ProvisioningOutcomeV1 {
    outcome_body_at(
        request,
        result,
        step,
        whmcs_order_id,
        started_at,
        time::OffsetDateTime::now_utc(),
    )
}

fn outcome_body_at(
    request: &messages::ProvisioningRequestedV1,
    result: &JobResult,
    step: &str,
    whmcs_order_id: Option<u64>,
    started_at: time::OffsetDateTime,
    finished: time::OffsetDateTime,
) -> ProvisioningOutcomeV1 {
    let (service_ids, invoice_id, order_id) = match result {
        JobResult::Activated {
            whmcs_order_id,
            service_ids,
            invoice_id,
        } => (service_ids.clone(), *invoice_id, Some(*whmcs_order_id)),
        _ => (Vec::new(), None, whmcs_order_id),
    };
    let (error_code, error_message) = match result {
        JobResult::Failed { code, message } => (Some(code.clone()), Some(message.clone())),
        JobResult::Skipped { reason } => (None, Some(reason.clone())),
        JobResult::Activated { .. } => (None, None),
    };
    ProvisioningOutcomeV1 {
        schema: ProvisioningOutcomeV1::SCHEMA.to_owned(),
        order_id: request.order_id.clone(),
        result: result.outcome(),
        whmcs_order_id: order_id,
        whmcs_service_ids: service_ids,
        whmcs_invoice_id: invoice_id,
        error_code,
        error_message,
        step: step.to_owned(),
        correlation_id: request.correlation_id.clone(),
        event_id: request.event_id.clone(),
        idem_key: request.idem_key.clone(),
        started_at: messages::bodies::rfc3339(started_at),
        finished_at: messages::bodies::rfc3339(finished),
        duration_ms: u64::try_from((finished - started_at).whole_milliseconds()).unwrap_or(0),
    }
}

/// Builds the Salesforce update for a failed or activated job; `None` for skipped ones.
pub fn update_body(
    request: &messages::ProvisioningRequestedV1,
    result: &JobResult,
    sequence: u64,
) -> Option<OrderUpdateV1> {
    let fields = order_fields(result)?;
    Some(OrderUpdateV1 {
        schema: OrderUpdateV1::SCHEMA.to_owned(),
        order_id: request.order_id.clone(),
        sequence,
        fields,
        correlation_id: request.correlation_id.clone(),
        event_id: request.event_id.clone(),
        created_at: messages::bodies::rfc3339(time::OffsetDateTime::now_utc()),
    })
}

/// The result a closed journal entry records; `None` while the job runs.
pub fn result_of(record: &JobRecord) -> Option<JobResult> {
    Some(match record.state {
        JobState::Running => return None,
        JobState::Activated => JobResult::Activated {
            whmcs_order_id: record.whmcs_order_id?,
            service_ids: record.whmcs_service_ids.clone(),
            invoice_id: record.whmcs_invoice_id,
        },
        JobState::Failed | JobState::Interrupted => JobResult::failed(
            record
                .error_code
                .clone()
                .unwrap_or_else(|| crate::steps::codes::INTERRUPTED.to_owned()),
            record.error_message.as_deref().unwrap_or_default(),
        ),
        JobState::Skipped => JobResult::Skipped {
            reason: record.error_message.clone().unwrap_or_default(),
        },
    })
}

/// The request fields a journal entry keeps, as a request (for building its report).
pub fn request_of(record: &JobRecord) -> messages::ProvisioningRequestedV1 {
    messages::ProvisioningRequestedV1 {
        schema: messages::ProvisioningRequestedV1::SCHEMA.to_owned(),
        event_id: record.event_id.clone(),
        replay_id: String::new(),
        channel: String::new(),
        schema_id: String::new(),
        order_id: record.order_id.clone(),
        idem_key: record.idem_key.clone(),
        correlation_id: record.correlation_id.clone(),
        requested_by: None,
        version: None,
        created_at: None,
        created_by_id: None,
        received_at: String::new(),
    }
}

/// What a closed journal entry reports: its outcome and, unless skipped, its Salesforce update.
/// `sequence` is the revision of the closing write, so a report published again (by the
/// reconciler or the next claim) is the same report.
pub struct Report {
    pub outcome: ProvisioningOutcomeV1,
    pub update: Option<OrderUpdateV1>,
}

impl Report {
    pub fn of(record: &JobRecord, sequence: u64) -> Option<Self> {
        let result = result_of(record)?;
        let request = request_of(record);
        let parse = |at: &str| {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
        };
        let finished = record
            .finished_at
            .as_deref()
            .and_then(parse)
            .unwrap_or_else(time::OffsetDateTime::now_utc);
        let started = parse(&record.started_at).unwrap_or(finished);
        let outcome = outcome_body_at(
            &request,
            &result,
            &record.step,
            record.whmcs_order_id,
            started,
            finished,
        );
        let update = update_body(&request, &result, sequence);
        Some(Self { outcome, update })
    }
}
