//! Fault injection: failures a real org produces rarely and on nobody's schedule.
//!
//! JSON form (admin API `PUT /admin/faults`), every field optional:
//! `{"pubsub_abort_after_events": 3, "pubsub_unauthenticated_after_events": 1,
//!   "pubsub_duplicate_deliveries": false, "pubsub_stall": false,
//!   "keepalive_interval_ms": 200, "rest_status": {"status": 503, "count": 2},
//!   "rest_latency_ms": 0, "token_status": {"status": 500, "count": 1},
//!   "rest_slow_records": {"ids": ["801..."], "latency_ms": 1000}}`

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// After N more events delivered (over all Subscribe streams), the stream that delivered the
    /// N-th ends with `UNAVAILABLE` and error-code `service.unavailable`. One-shot: cleared
    /// when it fires. `Some(0)` ends the next stream that is asked for events.
    pub pubsub_abort_after_events: Option<u32>,
    /// After N more events delivered, every access token is revoked (as a session that expires
    /// or is revoked by an admin) and the stream that delivered the N-th ends with
    /// `UNAUTHENTICATED` and error-code `service.auth.error`: a reconnect with the old token is
    /// refused. One-shot, like `pubsub_abort_after_events` (each counts the events delivered
    /// while it is set).
    pub pubsub_unauthenticated_after_events: Option<u32>,
    /// Every event is delivered twice in a row (each copy counts against the requested amount),
    /// as at-least-once delivery allows.
    pub pubsub_duplicate_deliveries: bool,
    /// Streams send nothing at all (no events, no keepalives, no idle close) while set; requests
    /// are still read and counted. Clearing it resumes delivery.
    pub pubsub_stall: bool,
    /// Overrides the configured keepalive interval.
    #[serde(rename = "keepalive_interval_ms", with = "opt_millis")]
    pub keepalive_interval: Option<Duration>,
    /// The next `count` REST calls answer `status` with Salesforce's error body for it.
    #[serde(with = "status_count")]
    pub rest_status: Option<(u16, u32)>,
    /// Added before every REST response.
    #[serde(rename = "rest_latency_ms", with = "millis")]
    pub rest_latency: Duration,
    /// The next `count` token requests answer `status`.
    #[serde(with = "status_count")]
    pub token_status: Option<(u16, u32)>,
    /// REST calls naming one of these records in their path (a single-record PATCH or GET)
    /// wait this long before they are answered, on top of `rest_latency`: one slow record among
    /// fast ones, as a locked or trigger-heavy row is in a real org. Collection requests are
    /// not slowed (their ids are in the body).
    pub rest_slow_records: Option<SlowRecords>,
    /// Rows per page of a child subquery's result (`None`: 200, as Salesforce usually pages
    /// them). Larger results come back with `done: false` and a `nextRecordsUrl`
    /// (see `rest::locator`). Zero is refused: a page must make progress.
    pub soql_child_page_size: Option<std::num::NonZeroUsize>,
    /// Query cursors (`nextRecordsUrl`) opened from now on are released after this long
    /// without use (`None`: 15 minutes, as in Salesforce); `0` releases them at once, so every
    /// `nextRecordsUrl` answers `INVALID_QUERY_LOCATOR`.
    pub soql_locator_idle_ms: Option<u64>,
}

/// Records whose REST calls are slow, and by how much.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowRecords {
    /// Record ids, 15- or 18-character; either spelling matches the record.
    pub ids: Vec<String>,
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
}

impl SlowRecords {
    /// The extra latency for a call to `path`: `latency` when a path segment is one of `ids`.
    pub(crate) fn latency_for(&self, path: &str) -> Duration {
        let wanted: Vec<String> = self
            .ids
            .iter()
            .filter_map(|id| crate::store::canonical_id(id))
            .collect();
        let named = path
            .split('/')
            .filter_map(crate::store::canonical_id)
            .any(|id| wanted.contains(&id));
        if named {
            self.latency
        } else {
            Duration::ZERO
        }
    }
}

/// Takes one use of a `(status, count)` fault, clearing it when the count runs out.
pub(crate) fn take_status(slot: &mut Option<(u16, u32)>) -> Option<u16> {
    let (status, count) = (*slot)?;
    if count <= 1 {
        *slot = None;
    } else {
        *slot = Some((status, count - 1));
    }
    (count > 0).then_some(status)
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let ms = Option::<u64>::deserialize(d)?;
        match ms {
            // A zero period would make a stream spin; refuse it rather than guess.
            Some(0) => Err(serde::de::Error::custom(
                "keepalive_interval_ms must be positive",
            )),
            other => Ok(other.map(Duration::from_millis)),
        }
    }
}

mod status_count {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StatusCount {
        status: u16,
        #[serde(default = "one")]
        count: u32,
    }

    fn one() -> u32 {
        1
    }

    pub fn serialize<S: Serializer>(v: &Option<(u16, u32)>, s: S) -> Result<S::Ok, S::Error> {
        v.map(|(status, count)| StatusCount { status, count })
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(u16, u32)>, D::Error> {
        let v = Option::<StatusCount>::deserialize(d)?;
        match v {
            Some(StatusCount { status, .. }) if !(100..=599).contains(&status) => Err(
                serde::de::Error::custom(format!("status {status} is not an HTTP status")),
            ),
            other => Ok(other.map(|sc| (sc.status, sc.count))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let faults = Faults {
            pubsub_abort_after_events: Some(2),
            pubsub_unauthenticated_after_events: Some(1),
            keepalive_interval: Some(Duration::from_millis(200)),
            rest_status: Some((503, 2)),
            rest_latency: Duration::from_millis(5),
            ..Faults::default()
        };
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(
            json["rest_status"],
            serde_json::json!({"status": 503, "count": 2})
        );
        assert_eq!(json["keepalive_interval_ms"], 200);
        let back: Faults = serde_json::from_value(json).unwrap();
        assert_eq!(back, faults);
        let partial: Faults = serde_json::from_str(r#"{"token_status":{"status":500}}"#).unwrap();
        assert_eq!(partial.token_status, Some((500, 1)));
        assert!(serde_json::from_str::<Faults>(r#"{"rest_status":{"status":42}}"#).is_err());
        assert!(serde_json::from_str::<Faults>(r#"{"nope":1}"#).is_err());
        let slow: Faults = serde_json::from_str(
            r#"{"rest_slow_records":{"ids":["801000000000001"],"latency_ms":250}}"#,
        )
        .unwrap();
        assert_eq!(
            slow.rest_slow_records,
            Some(SlowRecords {
                ids: vec!["801000000000001".to_owned()],
                latency: Duration::from_millis(250),
            })
        );
    }

    #[test]
    fn slow_records_match_either_spelling_in_the_path_only() {
        let slow = SlowRecords {
            ids: vec!["801000000000001".to_owned()],
            latency: Duration::from_millis(250),
        };
        let delay = Duration::from_millis(250);
        let path = "/services/data/v62.0/sobjects/Order/801000000000001AAA";
        assert_eq!(slow.latency_for(path), delay);
        assert_eq!(
            slow.latency_for("/services/data/v62.0/sobjects/Order/801000000000001aaa"),
            delay
        );
        assert_eq!(
            slow.latency_for("/services/data/v62.0/sobjects/Order/801000000000002AAA"),
            Duration::ZERO
        );
        assert_eq!(
            slow.latency_for("/services/data/v62.0/composite/sobjects"),
            Duration::ZERO
        );
    }

    #[test]
    fn status_is_taken_count_times() {
        let mut slot = Some((503, 2));
        assert_eq!(take_status(&mut slot), Some(503));
        assert_eq!(take_status(&mut slot), Some(503));
        assert_eq!(take_status(&mut slot), None);
        let mut zero = Some((503, 0));
        assert_eq!(take_status(&mut zero), None);
        assert_eq!(zero, None);
    }
}
