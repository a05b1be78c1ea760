//! `provctl order <OrderId>`: where an order is, from the provisioner's journal and the last
//! published outcome, with the trace to open in Jaeger.

use serde::Serialize;
use serde_json::Value;

use crate::table::Table;
use crate::{is_no_message, rfc3339, trace_id_of, Ctl, CtlError};

#[derive(Debug, Clone, Serialize)]
pub struct OrderReport {
    pub order_id: String,
    /// The journal entry (KV `provisioning_jobs`, key `order.<OrderId>`), as stored.
    pub journal: Option<JournalEntry>,
    /// The last `provisioning.outcome.<OrderId>.<result>` message.
    pub outcome: Option<OutcomeEntry>,
    pub trace_id: Option<String>,
    /// Where the trace id came from: `outcome` (its `traceparent` header) or `journal`.
    pub trace_source: Option<String>,
    pub jaeger_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    pub key: String,
    pub revision: u64,
    pub record: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutcomeEntry {
    pub stream: String,
    pub stream_sequence: u64,
    pub subject: String,
    pub published_at: String,
    pub traceparent: Option<String>,
    pub body: Value,
}

const RESULTS: [&str; 3] = ["activated", "failed", "skipped"];

impl Ctl {
    pub async fn order(&self, order_id: &str) -> Result<OrderReport, CtlError> {
        let order_id = order_id.trim();
        // Either spelling of the Order finds it: everything is keyed by the 18-character form.
        let canonical = messages::salesforce_id::canonical(order_id)
            .map_err(|e| CtlError::InvalidOrderId(order_id.to_owned(), e))?;
        let order_id = canonical.as_str();

        let key = messages::journal::key(order_id);
        let journal = match self.bucket(&self.names.journal_bucket).await? {
            None => None,
            Some(bucket) => bucket
                .entry(key.clone())
                .await
                .map_err(|e| CtlError::js(format!("cannot read journal entry {key}"), e))?
                .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
                .map(|e| JournalEntry {
                    key: key.clone(),
                    revision: e.revision,
                    record: serde_json::from_slice(&e.value).unwrap_or_else(|err| {
                        Value::String(format!(
                            "unreadable ({err}): {}",
                            String::from_utf8_lossy(&e.value)
                        ))
                    }),
                }),
        };

        let outcome = self.last_outcome(order_id).await?;
        let from_outcome = outcome
            .as_ref()
            .and_then(|o| o.traceparent.as_deref())
            .and_then(trace_id_of);
        let from_journal = journal
            .as_ref()
            .and_then(|j| j.record.get("traceparent"))
            .and_then(Value::as_str)
            .and_then(trace_id_of);
        let (trace_id, trace_source) = match (from_outcome, from_journal) {
            (Some(t), _) => (Some(t), Some("outcome".to_owned())),
            (None, Some(t)) => (Some(t), Some("journal".to_owned())),
            (None, None) => (None, None),
        };
        Ok(OrderReport {
            order_id: order_id.to_owned(),
            jaeger_url: trace_id
                .as_ref()
                .map(|t| format!("{}/trace/{t}", self.jaeger_ui_url)),
            journal,
            outcome,
            trace_id,
            trace_source,
        })
    }

    /// The newest outcome of the order, whatever its result. Looked up per result subject (exact
    /// subjects work on every server version), newest sequence wins.
    async fn last_outcome(&self, order_id: &str) -> Result<Option<OutcomeEntry>, CtlError> {
        let name = &self.names.outcomes_stream;
        let Some(stream) = self.stream(name).await? else {
            return Ok(None);
        };
        let mut newest: Option<async_nats::jetstream::message::StreamMessage> = None;
        for result in RESULTS {
            let subject = messages::subjects::provisioning_outcome(order_id, result);
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => {
                    if newest
                        .as_ref()
                        .is_none_or(|n| n.sequence < message.sequence)
                    {
                        newest = Some(message);
                    }
                }
                Err(err) if is_no_message(&err) => {}
                Err(err) => {
                    return Err(CtlError::js(
                        format!("cannot read {subject} from {name}"),
                        err,
                    ))
                }
            }
        }
        Ok(newest.map(|m| OutcomeEntry {
            stream: name.clone(),
            stream_sequence: m.sequence,
            subject: m.subject.to_string(),
            published_at: rfc3339(m.time),
            traceparent: m
                .headers
                .get(messages::headers::TRACEPARENT)
                .map(|v| v.as_str().to_owned()),
            body: serde_json::from_slice(&m.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&m.payload).into_owned())
            }),
        }))
    }
}

impl OrderReport {
    /// Whether the pipeline knows the order at all: a journal entry or an outcome.
    pub fn found(&self) -> bool {
        self.journal.is_some() || self.outcome.is_some()
    }
}

fn field(value: &Value, name: &str) -> String {
    match value.get(name) {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

impl OrderReport {
    pub fn render(&self) -> String {
        let mut out = format!("Order {}\n\n", self.order_id);
        match &self.journal {
            None => out.push_str(
                "journal: no entry (the provisioner has not claimed a job for this order)\n",
            ),
            Some(j) => {
                out.push_str(&format!("journal ({} revision {})\n", j.key, j.revision));
                let mut table = Table::new(["FIELD", "VALUE"]);
                for name in [
                    "state",
                    "step",
                    "attempts",
                    "error_code",
                    "whmcs_client_id",
                    "whmcs_order_id",
                    "whmcs_service_ids",
                    "whmcs_invoice_id",
                    "event_id",
                    "idem_key",
                    "correlation_id",
                    "worker",
                    "started_at",
                    "updated_at",
                ] {
                    table.row([name.to_owned(), field(&j.record, name)]);
                }
                out.push_str(&table.render());
            }
        }
        out.push('\n');
        match &self.outcome {
            None => out.push_str("outcome: none published yet\n"),
            Some(o) => {
                out.push_str(&format!(
                    "last outcome ({} seq {}, {})\n",
                    o.stream, o.stream_sequence, o.published_at
                ));
                let mut table = Table::new(["FIELD", "VALUE"]);
                for name in [
                    "result",
                    "step",
                    "error_code",
                    "error_message",
                    "whmcs_order_id",
                    "whmcs_service_ids",
                    "whmcs_invoice_id",
                    "duration_ms",
                    "finished_at",
                ] {
                    table.row([name.to_owned(), field(&o.body, name)]);
                }
                out.push_str(&table.render());
            }
        }
        out.push('\n');
        match (&self.trace_id, &self.jaeger_url) {
            (Some(trace), Some(url)) => out.push_str(&format!(
                "trace {trace} (from the {})\njaeger {url}\n",
                self.trace_source.as_deref().unwrap_or("?")
            )),
            _ => out.push_str("trace: unknown (no outcome or journal entry carries one)\n"),
        }
        out
    }
}
