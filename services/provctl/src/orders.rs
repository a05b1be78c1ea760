//! `provctl orders [--state S] [--since D] [--limit N]`: the orders of the provisioner's journal in
//! one state, newest first, for the person on call.
//!
//! The journal is a KV bucket (default `provisioning_jobs`, key `order.<OrderId>`, value a
//! [`JobRecord`]). Reading it key by key would cost a round trip per order; instead one ordered
//! consumer on the bucket's stream delivers the last message of every `$KV.<bucket>.order.*`
//! subject (`DeliverPolicy::LastPerSubject`), which is each order's current value, in one pass.
//! The consumer is ephemeral: the server removes it when provctl is done (inactivity).

use futures::StreamExt;
use messages::journal::{JobRecord, JobState, KEY_PREFIX};
use serde::Serialize;

use crate::table::{truncate, Table};
use crate::{Ctl, CtlError};

/// Width of the error message column in the table (`--json` has the whole message).
const MESSAGE_WIDTH: usize = 60;
/// How many keys of unreadable entries the report names.
const NAMED_UNREADABLE: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct OrdersQuery {
    /// Only entries in this state; every state when `None`.
    pub state: Option<JobState>,
    /// Only entries updated at most this long ago.
    pub since: Option<std::time::Duration>,
    /// At most this many, the newest.
    pub limit: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrderRow {
    pub order_id: String,
    pub state: JobState,
    pub step: String,
    pub attempts: u32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub updated_at: String,
    pub correlation_id: String,
    pub whmcs_order_id: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrdersReport {
    pub bucket: String,
    pub exists: bool,
    pub state: Option<JobState>,
    pub since_secs: Option<u64>,
    pub limit: usize,
    /// Order entries read (the current value of every `order.<OrderId>` key).
    pub entries_read: usize,
    /// Entries that matched the state and `--since`, before `--limit`.
    pub matching: usize,
    /// The newest `limit` of them, newest first by `updated_at`.
    pub orders: Vec<OrderRow>,
    /// Values under `order.` that are not a journal entry (skipped).
    pub unreadable: usize,
    /// The first few of their keys.
    pub unreadable_keys: Vec<String>,
    /// Keys under `order.` that are not `order.<OrderId>` (skipped).
    pub other_keys: usize,
}

fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// The rows of `query` among `records`, newest first; the number that matched before the limit.
/// An entry whose `updated_at` does not parse sorts last and never passes `--since`.
pub fn select(records: Vec<JobRecord>, query: &OrdersQuery) -> (usize, Vec<OrderRow>) {
    let now = time::OffsetDateTime::now_utc();
    let mut matching: Vec<(Option<time::OffsetDateTime>, JobRecord)> = records
        .into_iter()
        .filter(|r| query.state.is_none_or(|s| r.state == s))
        .map(|r| (parse_rfc3339(&r.updated_at), r))
        .filter(|(at, _)| match query.since {
            None => true,
            Some(since) => at.is_some_and(|at| {
                (now - at).whole_seconds() <= i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            }),
        })
        .collect();
    // Newest first; ties (and unparsable times) in order-id order, so the output is stable.
    matching
        .sort_by(|(a_at, a), (b_at, b)| b_at.cmp(a_at).then_with(|| a.order_id.cmp(&b.order_id)));
    let count = matching.len();
    let rows = matching
        .into_iter()
        .take(query.limit)
        .map(|(_, r)| OrderRow {
            order_id: r.order_id,
            state: r.state,
            step: r.step,
            attempts: r.attempts,
            error_code: r.error_code,
            error_message: r.error_message,
            updated_at: r.updated_at,
            correlation_id: r.correlation_id,
            whmcs_order_id: r.whmcs_order_id,
        })
        .collect();
    (count, rows)
}

impl Ctl {
    pub async fn orders(&self, query: &OrdersQuery) -> Result<OrdersReport, CtlError> {
        let bucket = self.names.journal_bucket.clone();
        let mut report = OrdersReport {
            bucket: bucket.clone(),
            exists: false,
            state: query.state,
            since_secs: query.since.map(|d| d.as_secs()),
            limit: query.limit,
            entries_read: 0,
            matching: 0,
            orders: Vec::new(),
            unreadable: 0,
            unreadable_keys: Vec::new(),
            other_keys: 0,
        };
        let stream_name = format!("KV_{bucket}");
        let Some(stream) = self.stream(&stream_name).await? else {
            return Ok(report);
        };
        report.exists = true;
        let subject_prefix = format!("$KV.{bucket}.");
        let unreadable_bucket = format!("cannot read the journal bucket {bucket}");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                name: Some(format!("provctl-orders-{}", uuid::Uuid::new_v4().simple())),
                filter_subject: format!("{subject_prefix}{KEY_PREFIX}>"),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| CtlError::js(unreadable_bucket.clone(), e))?;
        let mut records = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| CtlError::js(unreadable_bucket.clone(), e))?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|e| CtlError::js(unreadable_bucket.clone(), e))?;
                let pending = message
                    .info()
                    .map_err(|e| CtlError::js(unreadable_bucket.clone(), e))?
                    .pending;
                let key = message
                    .subject
                    .as_str()
                    .strip_prefix(&subject_prefix)
                    .unwrap_or(message.subject.as_str())
                    .to_owned();
                let deleted = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                let is_order_key = messages::journal::order_id_of_key(&key).is_some();
                if deleted {
                    // A deleted entry is no order's current state.
                } else if !is_order_key {
                    report.other_keys += 1;
                } else {
                    match serde_json::from_slice::<JobRecord>(&message.payload) {
                        Ok(record) => records.push(record),
                        Err(_) => {
                            report.unreadable += 1;
                            if report.unreadable_keys.len() < NAMED_UNREADABLE {
                                report.unreadable_keys.push(key);
                            }
                        }
                    }
                }
                // The last subject's message says nothing is left: done, without waiting.
                if pending == 0 {
                    break;
                }
            }
        }
        report.entries_read = records.len() + report.unreadable;
        let (matching, orders) = select(records, query);
        report.matching = matching;
        report.orders = orders;
        Ok(report)
    }
}

impl OrdersReport {
    pub fn render(&self) -> String {
        if !self.exists {
            return format!(
                "KV bucket {} does not exist yet: the provisioner creates it on its first start\n",
                self.bucket
            );
        }
        let mut out = String::new();
        let state = self.state.map_or("any state", JobState::as_str);
        let since = self
            .since_secs
            .map(|s| {
                format!(
                    ", updated in the last {}",
                    crate::table::human_duration(s as i64)
                )
            })
            .unwrap_or_default();
        if self.orders.is_empty() {
            out.push_str(&format!(
                "no orders in {state}{since} ({} entries in {})\n",
                self.entries_read, self.bucket
            ));
        } else {
            let mut table = Table::new([
                "ORDER",
                "STATE",
                "STEP",
                "CODE",
                "ATTEMPTS",
                "UPDATED",
                "CORRELATION",
                "MESSAGE",
            ]);
            for o in &self.orders {
                table.row([
                    o.order_id.clone(),
                    o.state.as_str().to_owned(),
                    if o.step.is_empty() {
                        "-".to_owned()
                    } else {
                        o.step.clone()
                    },
                    o.error_code.clone().unwrap_or_else(|| "-".to_owned()),
                    o.attempts.to_string(),
                    o.updated_at.clone(),
                    o.correlation_id.clone(),
                    o.error_message
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |m| truncate(m, MESSAGE_WIDTH)),
                ]);
            }
            out.push_str(&table.render());
            out.push_str(&format!(
                "{} shown of {} in {state}{since} ({} entries in {}): `provctl order <ORDER>`\n",
                self.orders.len(),
                self.matching,
                self.entries_read,
                self.bucket
            ));
        }
        if self.unreadable > 0 || self.other_keys > 0 {
            out.push_str(&format!(
                "skipped: {} unreadable entries{}, {} keys that are not order.<OrderId>\n",
                self.unreadable,
                if self.unreadable_keys.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.unreadable_keys.join(", "))
                },
                self.other_keys
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(order: &str, state: JobState, updated_at: &str) -> JobRecord {
        let mut r = JobRecord::new(order);
        r.state = state;
        r.updated_at = updated_at.to_owned();
        r
    }

    fn ago(secs: i64) -> String {
        messages::bodies::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
    }

    #[test]
    fn state_since_order_and_limit() {
        let records = vec![
            record("A", JobState::Failed, &ago(7_200)),
            record("B", JobState::Failed, &ago(60)),
            record("C", JobState::Activated, &ago(30)),
            record("D", JobState::Failed, "not a time"),
            record("E", JobState::Failed, &ago(600)),
        ];
        let query = |state, since: Option<u64>, limit| OrdersQuery {
            state,
            since: since.map(std::time::Duration::from_secs),
            limit,
        };
        let ids = |(count, rows): (usize, Vec<OrderRow>)| {
            (
                count,
                rows.into_iter().map(|r| r.order_id).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            ids(select(
                records.clone(),
                &query(Some(JobState::Failed), None, 10)
            )),
            (4, vec!["B".into(), "E".into(), "A".into(), "D".into()])
        );
        assert_eq!(
            ids(select(
                records.clone(),
                &query(Some(JobState::Failed), Some(3_600), 10)
            )),
            (2, vec!["B".into(), "E".into()])
        );
        assert_eq!(
            ids(select(records.clone(), &query(None, None, 2))),
            (5, vec!["C".into(), "B".into()])
        );
        assert_eq!(
            ids(select(records, &query(Some(JobState::Running), None, 10))),
            (0, vec![])
        );
    }
}
