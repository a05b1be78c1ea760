//! `provctl status --check`: the status report, judged. Each rule below is one problem kind; a
//! report with any problem makes provctl exit 3 ([`crate::exit::Exit::NeedsAttention`]), so cron
//! or an alerting script can run it (docs/runbook.md, "provctl").
//!
//! provctl sees only NATS, so the rules are what JetStream state can tell honestly:
//!
//! - `no_leader`: no sf-bridge replica holds the subscription lease (absent, or expired: the
//!   lease bucket's `max_age` is the lease TTL, so an expired lease is an absent key). Nothing
//!   reads Salesforce.
//! - `cursor_unreadable`: the stored cursor is not the bridge's document; the bridge would fall
//!   back to the earliest retained event.
//! - `cursor_stalled`: a leader is subscribed, and the newest event in the requests stream was
//!   received by the bridge (its body's `received_at`) more than `cursor_grace` ago, yet the
//!   stored cursor is older than that event. The bridge writes the cursor within a second of an
//!   acknowledged event, so events arrive while the cursor does not follow. A replayed dead
//!   letter carries its original `received_at` and does not count. What provctl cannot see: a
//!   bridge that receives nothing at all looks the same as a quiet channel; that is the
//!   `sf_bridge_cursor_age_seconds` alert (docs/observability.md).
//! - `consumer_lag`: a consumer (`provisioner`, `sf-writer`) has more than `max_lag` messages not
//!   yet delivered.
//! - `dead_letters`: a `provisioning.deadletter.<service>` subject whose newest dead letter is
//!   younger than `deadletter_window`. Dead letters stay 30 days as the record; an alert that
//!   fired for all of them would fire for a month after one was handled.
//! - `under_replicated`: a stream or bucket with fewer replicas than `JETSTREAM_REPLICAS`.
//! - `missing`: a stream, bucket or consumer the services create at start does not exist (a
//!   service never started against this NATS, or someone deleted it).

use std::time::Duration;

use serde::Serialize;

use crate::status::StatusReport;
use crate::table::human_duration;
use crate::{is_no_message, rfc3339, Ctl, CtlError};

/// Thresholds of `status --check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSettings {
    /// Most messages a consumer may have pending before it is lagging.
    pub max_lag: u64,
    /// Dead letters younger than this need attention; `0` ignores dead letters.
    pub deadletter_window: Duration,
    /// How long an event may be newer than the stored cursor.
    pub cursor_grace: Duration,
}

pub const DEFAULT_MAX_LAG: u64 = 1_000;
pub const DEFAULT_DEADLETTER_WINDOW: Duration = Duration::from_secs(24 * 3_600);
pub const DEFAULT_CURSOR_GRACE: Duration = Duration::from_secs(120);

impl Default for CheckSettings {
    fn default() -> Self {
        Self {
            max_lag: DEFAULT_MAX_LAG,
            deadletter_window: DEFAULT_DEADLETTER_WINDOW,
            cursor_grace: DEFAULT_CURSOR_GRACE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    NoLeader,
    CursorUnreadable,
    CursorStalled,
    ConsumerLag,
    DeadLetters,
    UnderReplicated,
    Missing,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoLeader => "no_leader",
            Self::CursorUnreadable => "cursor_unreadable",
            Self::CursorStalled => "cursor_stalled",
            Self::ConsumerLag => "consumer_lag",
            Self::DeadLetters => "dead_letters",
            Self::UnderReplicated => "under_replicated",
            Self::Missing => "missing",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The stream, bucket, consumer or subject concerned.
    pub resource: String,
    /// One line for a person.
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckThresholds {
    pub max_lag: u64,
    pub deadletter_window_secs: u64,
    pub cursor_grace_secs: u64,
}

/// The status report with its problems: `status --json` plus `problems` and `thresholds`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    #[serde(flatten)]
    pub status: StatusReport,
    pub thresholds: CheckThresholds,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn needs_attention(&self) -> bool {
        !self.problems.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = self.status.render();
        out.push('\n');
        if self.problems.is_empty() {
            out.push_str("check: nothing needs attention\n");
        } else {
            out.push_str(&format!(
                "check: {} problem(s) need attention\n",
                self.problems.len()
            ));
            for p in &self.problems {
                out.push_str(&format!("ATTENTION {}: {}\n", p.kind.as_str(), p.message));
            }
        }
        out
    }
}

/// The problems the status report alone shows (every rule but `cursor_stalled` and
/// `dead_letters`, which read messages).
pub fn problems_in(status: &StatusReport, settings: &CheckSettings) -> Vec<Problem> {
    let mut problems = Vec::new();
    let b = &status.bridge;
    let lease_key = messages::kv::lease::key(&status.channel);
    if b.lease_holder.is_none() {
        problems.push(Problem {
            kind: ProblemKind::NoLeader,
            resource: format!("{}/{lease_key}", b.lease_bucket),
            message: format!(
                "no sf-bridge replica holds the subscription lease {}/{lease_key}: nothing reads \
                 Salesforce (bridges stopped, crashing, or unable to reach the bucket)",
                b.lease_bucket
            ),
        });
    }
    if let Some(reason) = b.cursor.as_ref().and_then(|c| c.unreadable.as_ref()) {
        problems.push(Problem {
            kind: ProblemKind::CursorUnreadable,
            resource: format!(
                "{}/{}",
                b.cursor_bucket,
                messages::kv::cursor::key(&status.channel)
            ),
            message: format!(
                "the replay cursor in {} is unreadable ({reason}); a restarting bridge starts \
                 from the earliest retained event",
                b.cursor_bucket
            ),
        });
    }
    for s in &status.streams {
        let what = match s.name.strip_prefix("KV_") {
            Some(bucket) => format!("KV bucket {bucket}"),
            None => format!("stream {}", s.name),
        };
        if !s.exists {
            problems.push(Problem {
                kind: ProblemKind::Missing,
                resource: s.name.clone(),
                message: format!(
                    "{what} does not exist: the services create it at start (never started \
                     against this NATS?)"
                ),
            });
        } else if s.under_replicated {
            problems.push(Problem {
                kind: ProblemKind::UnderReplicated,
                resource: s.name.clone(),
                message: format!(
                    "{what} has {} replica(s), fewer than JETSTREAM_REPLICAS asks for: one \
                     node's loss can stall or lose it",
                    s.replicas.max(1)
                ),
            });
        }
    }
    for c in &status.consumers {
        if !c.exists {
            problems.push(Problem {
                kind: ProblemKind::Missing,
                resource: format!("{}/{}", c.stream, c.name),
                message: format!(
                    "consumer {} on {} does not exist: its service creates it at start",
                    c.name, c.stream
                ),
            });
        } else if c.pending > settings.max_lag {
            problems.push(Problem {
                kind: ProblemKind::ConsumerLag,
                resource: format!("{}/{}", c.stream, c.name),
                message: format!(
                    "consumer {} on {} has {} messages pending, more than {} (--max-lag); \
                     {} waiting pull requests",
                    c.name, c.stream, c.pending, settings.max_lag, c.waiting
                ),
            });
        }
    }
    problems
}

fn parse_rfc3339(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Ctl {
    /// `status` with its problems ([module docs](self)).
    pub async fn check(&self, settings: &CheckSettings) -> Result<CheckReport, CtlError> {
        let status = self.status().await?;
        let mut problems = problems_in(&status, settings);
        if let Some(problem) = self.cursor_stalled(&status, settings).await? {
            problems.push(problem);
        }
        problems.extend(self.recent_dead_letters(&status, settings).await?);
        Ok(CheckReport {
            status,
            thresholds: CheckThresholds {
                max_lag: settings.max_lag,
                deadletter_window_secs: settings.deadletter_window.as_secs(),
                cursor_grace_secs: settings.cursor_grace.as_secs(),
            },
            problems,
        })
    }

    async fn cursor_stalled(
        &self,
        status: &StatusReport,
        settings: &CheckSettings,
    ) -> Result<Option<Problem>, CtlError> {
        // Without a leader nothing can move the cursor: `no_leader` already says so.
        let b = &status.bridge;
        let (Some(_), Some(cursor)) = (&b.lease_holder, &b.cursor) else {
            return Ok(None);
        };
        let Some(cursor_at) = cursor.updated_at.as_deref().and_then(parse_rfc3339) else {
            return Ok(None);
        };
        let name = &self.names.requests_stream;
        let Some(last) = status
            .streams
            .iter()
            .find(|s| &s.name == name && s.exists && s.last_seq > 0)
            .map(|s| s.last_seq)
        else {
            return Ok(None);
        };
        let Some(stream) = self.stream(name).await? else {
            return Ok(None);
        };
        let message = match stream.get_raw_message(last).await {
            Ok(message) => message,
            Err(err) if is_no_message(&err) => return Ok(None),
            Err(err) => {
                return Err(CtlError::js(
                    format!("cannot read message {last} of {name}"),
                    err,
                ))
            }
        };
        // Only the bridge's own bodies say when the bridge received them.
        let Some(received_at) = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|v| v.get("received_at")?.as_str().and_then(parse_rfc3339))
        else {
            return Ok(None);
        };
        let since_received = (time::OffsetDateTime::now_utc() - received_at).whole_seconds();
        if cursor_at >= received_at || since_received <= duration_secs(settings.cursor_grace) {
            return Ok(None);
        }
        Ok(Some(Problem {
            kind: ProblemKind::CursorStalled,
            resource: format!("{}/{}", b.cursor_bucket, cursor.key),
            message: format!(
                "the bridge received an event {} ago ({name} seq {last}, received_at {}) but the \
                 replay cursor was last written {}: the cursor does not follow the events \
                 (runbook: \"Cursor not advancing\")",
                human_duration(since_received),
                rfc3339(received_at),
                cursor.updated_at.as_deref().unwrap_or("-"),
            ),
        }))
    }

    async fn recent_dead_letters(
        &self,
        status: &StatusReport,
        settings: &CheckSettings,
    ) -> Result<Vec<Problem>, CtlError> {
        let d = &status.dead_letters;
        if !d.exists || d.total == 0 || settings.deadletter_window.is_zero() {
            return Ok(Vec::new());
        }
        let Some(stream) = self.stream(&d.stream).await? else {
            return Ok(Vec::new());
        };
        let mut problems = Vec::new();
        for (subject, count) in &d.by_subject {
            let message = match stream.get_last_raw_message_by_subject(subject).await {
                Ok(message) => message,
                // Removed between the count and now (stream limits): nothing to report.
                Err(err) if is_no_message(&err) => continue,
                Err(err) => {
                    return Err(CtlError::js(
                        format!("cannot read the newest {subject} of {}", d.stream),
                        err,
                    ))
                }
            };
            let age = (time::OffsetDateTime::now_utc() - message.time).whole_seconds();
            if age >= duration_secs(settings.deadletter_window) {
                continue;
            }
            let service = subject
                .strip_prefix(messages::subjects::DEADLETTER_PREFIX)
                .and_then(|s| s.strip_prefix('.'))
                .unwrap_or(subject);
            problems.push(Problem {
                kind: ProblemKind::DeadLetters,
                resource: subject.clone(),
                message: format!(
                    "{subject}: newest dead letter stored {} ago (seq {}, {}), {count} in {}: \
                     `provctl deadletter list --service {service}`",
                    human_duration(age),
                    message.sequence,
                    rfc3339(message.time),
                    d.stream
                ),
            });
        }
        Ok(problems)
    }
}
