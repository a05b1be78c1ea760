//! One Salesforce write (a single-record PATCH or an sObject Collections PATCH) and the
//! classification of what came back: per record, or for the request as a whole.
//!
//! The classes decide what happens to the messages:
//! - [`RecordOutcome::Applied`]: the record was written; acknowledge.
//! - [`RecordOutcome::Permanent`]: this record will never be accepted as it is (bad field,
//!   deleted Order, value too long, bad picklist value): dead-letter and terminate.
//! - [`RecordOutcome::Retry`]: this record failed for a passing reason (row lock): retry later.
//! - [`RequestFailure::Service`]: Salesforce did not take the request (429, 5xx,
//!   `REQUEST_LIMIT_EXCEEDED`, timeout, connection, authentication): open the gate and retry.
//! - [`RequestFailure::Split`]: Salesforce refused the collection request as a whole (400): one
//!   of its records probably broke it, so its records are retried one by one to find out which.

use salesforce::rest::{ApiError, RestClient, RestError, SaveResult};
use serde_json::{Map, Value};

/// Record error codes that may succeed on a later attempt.
const TRANSIENT_RECORD_CODES: &[&str] = &[
    "UNABLE_TO_LOCK_ROW",
    "REQUEST_LIMIT_EXCEEDED",
    "SERVER_UNAVAILABLE",
    "UNKNOWN_EXCEPTION",
    // Only with allOrNone=true, which the writer never sends; retrying is the safe reading.
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Applied,
    Permanent { code: String, reason: String },
    Retry { code: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    Service {
        /// The contract's code (`503`, `ETIMEOUT`, ...), also the metric label.
        code: String,
        reason: String,
        /// Whether Salesforce may have applied the request although we saw no success (timeout,
        /// broken connection, unreadable answer, 500). The write claim is then kept until it
        /// expires instead of being released.
        maybe_applied: bool,
    },
    Split {
        reason: String,
    },
}

impl RequestFailure {
    pub fn code(&self) -> &str {
        match self {
            Self::Service { code, .. } => code,
            Self::Split { .. } => "split",
        }
    }
}

/// A record to write: the Order id and its fields (without `attributes` and `id`).
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order_id: String,
    pub fields: Map<String, Value>,
}

/// Writes one record with the single-record PATCH.
pub async fn write_single(
    rest: &RestClient,
    record: &OrderRecord,
) -> Result<RecordOutcome, RequestFailure> {
    let body = Value::Object(record.fields.clone());
    match rest.update_record("Order", &record.order_id, &body).await {
        Ok(()) => Ok(RecordOutcome::Applied),
        Err(err) => classify_single(&err),
    }
}

/// Writes up to 200 records with one sObject Collections PATCH (`allOrNone=false`); the
/// outcomes are in the order of `records`.
pub async fn write_collection(
    rest: &RestClient,
    records: &[OrderRecord],
) -> Result<Vec<RecordOutcome>, RequestFailure> {
    let body: Vec<Value> = records
        .iter()
        .map(|r| crate::batch::record(&r.order_id, r.fields.clone()))
        .collect();
    match rest.update_collection(&body, false).await {
        Ok(results) if results.len() == records.len() => {
            Ok(results.iter().map(record_outcome).collect())
        }
        Ok(results) => Err(RequestFailure::Service {
            code: "500".to_owned(),
            reason: format!(
                "Salesforce returned {} results for {} records",
                results.len(),
                records.len()
            ),
            maybe_applied: true,
        }),
        Err(err) => Err(classify_collection(&err)),
    }
}

/// The outcome of one entry of a collection response.
pub fn record_outcome(result: &SaveResult) -> RecordOutcome {
    if result.success {
        RecordOutcome::Applied
    } else {
        from_errors(&result.errors)
    }
}

fn from_errors(errors: &[ApiError]) -> RecordOutcome {
    let code = errors
        .first()
        .map(|e| e.error_code.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "UNKNOWN".to_owned());
    let reason = if errors.is_empty() {
        "Salesforce refused the record without saying why".to_owned()
    } else {
        errors
            .iter()
            .map(|e| {
                if e.fields.is_empty() {
                    format!("{}: {}", e.error_code, e.message)
                } else {
                    format!("{}: {} ({})", e.error_code, e.message, e.fields.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if errors
        .iter()
        .any(|e| TRANSIENT_RECORD_CODES.contains(&e.error_code.as_str()))
    {
        RecordOutcome::Retry { code, reason }
    } else {
        RecordOutcome::Permanent { code, reason }
    }
}

/// A failed single-record PATCH: a 4xx about the record is that record's outcome; anything else
/// concerns Salesforce as a whole.
pub fn classify_single(err: &RestError) -> Result<RecordOutcome, RequestFailure> {
    match err {
        RestError::Http { status, errors }
            if is_record_status(*status, errors) && !errors.is_empty() =>
        {
            Ok(from_errors(errors))
        }
        RestError::Http { status, errors } if is_record_status(*status, errors) => {
            Ok(RecordOutcome::Permanent {
                code: status.to_string(),
                reason: format!("Salesforce answered HTTP {status} without an error body"),
            })
        }
        other => Err(service(other)),
    }
}

/// A failed collection PATCH: a 4xx about the request body means a record broke it (split);
/// anything else concerns Salesforce as a whole.
pub fn classify_collection(err: &RestError) -> RequestFailure {
    match err {
        RestError::Http { status, errors } if is_record_status(*status, errors) => {
            RequestFailure::Split {
                reason: err.to_string(),
            }
        }
        other => service(other),
    }
}

/// 4xx statuses that speak about the request's content, not about access to Salesforce: not
/// 401 (session), 429 (rate), 403 with `REQUEST_LIMIT_EXCEEDED` (daily limit); a 403 about a
/// record (no access to it) is the record's.
fn is_record_status(status: u16, errors: &[ApiError]) -> bool {
    match status {
        401 | 429 => false,
        403 => {
            !errors.is_empty()
                && !errors
                    .iter()
                    .any(|e| e.error_code == "REQUEST_LIMIT_EXCEEDED")
        }
        400..=499 => true,
        _ => false,
    }
}

fn service(err: &RestError) -> RequestFailure {
    let maybe_applied = match err {
        RestError::Timeout | RestError::Transport(_) | RestError::Decode(_) => true,
        RestError::Http { status, .. } => *status >= 500 && *status != 503,
        RestError::Connect(_) | RestError::Auth(_) => false,
    };
    RequestFailure::Service {
        code: err.contract_code(),
        reason: err.to_string(),
        maybe_applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str) -> ApiError {
        ApiError {
            error_code: code.to_owned(),
            message: "m".to_owned(),
            fields: vec![],
        }
    }

    #[test]
    fn record_errors_are_permanent_unless_known_transient() {
        for code in [
            "ENTITY_IS_DELETED",
            "STRING_TOO_LONG",
            "INVALID_FIELD",
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        ] {
            let result = SaveResult {
                id: None,
                success: false,
                errors: vec![api(code)],
            };
            assert!(
                matches!(record_outcome(&result), RecordOutcome::Permanent { code: c, .. } if c == code)
            );
        }
        let locked = SaveResult {
            id: None,
            success: false,
            errors: vec![api("UNABLE_TO_LOCK_ROW")],
        };
        assert!(matches!(
            record_outcome(&locked),
            RecordOutcome::Retry { .. }
        ));
    }

    #[test]
    fn request_failures_split_or_back_off() {
        let http = |status, code: &str| RestError::Http {
            status,
            errors: vec![api(code)],
        };
        assert!(matches!(
            classify_collection(&http(400, "JSON_PARSER_ERROR")),
            RequestFailure::Split { .. }
        ));
        for err in [
            http(503, "SERVER_UNAVAILABLE"),
            http(429, "x"),
            http(401, "INVALID_SESSION_ID"),
            http(403, "REQUEST_LIMIT_EXCEEDED"),
            RestError::Timeout,
            RestError::Connect("refused".into()),
        ] {
            assert!(
                matches!(classify_collection(&err), RequestFailure::Service { .. }),
                "{err}"
            );
            assert!(classify_single(&err).is_err(), "{err}");
        }
        assert!(matches!(
            classify_single(&http(404, "ENTITY_IS_DELETED")),
            Ok(RecordOutcome::Permanent { .. })
        ));
        assert!(matches!(
            classify_single(&http(400, "UNABLE_TO_LOCK_ROW")),
            Ok(RecordOutcome::Retry { .. })
        ));
        assert!(matches!(
            classify_collection(&RestError::Timeout),
            RequestFailure::Service {
                maybe_applied: true,
                ..
            }
        ));
        assert!(matches!(
            classify_collection(&http(503, "x")),
            RequestFailure::Service {
                maybe_applied: false,
                ..
            }
        ));
    }
}
