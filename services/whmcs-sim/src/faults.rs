//! Fault injection per action: what a real install, its PHP workers or the proxy in front of
//! it do rarely and on nobody's schedule.
//!
//! JSON form (admin API `PUT /admin/faults/{action}`), every field optional:
//! `{"latency_ms": 200, "http_status": {"status": 503, "count": 2},
//!   "error": {"message": "Server busy", "count": 1}, "hang": {"duration_ms": 60000, "count": 1},
//!   "fail_after_commit": {"status": 500, "count": 1}}`
//! (`fail_after_commit` takes `status` or `duration_ms`).
//!
//! Counted faults are consumed one per call and disappear at zero.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Answer `status` (with an HTML body, as a proxy or a crashed PHP worker does) instead of
/// running the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFault {
    pub status: u16,
    pub count: u32,
}

/// Answer `result=error` with `message` instead of running the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFault {
    pub message: String,
    pub count: u32,
}

/// Hold the request for `duration_ms` without running the action, then answer 504 as a
/// gateway would. Meant to outlast the client's timeout: nothing is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HangFault {
    pub duration_ms: u64,
    pub count: u32,
}

/// Run the action and commit it, then fail the reply: answer `status`, or hold the reply for
/// `duration_ms` (then answer normally). The caller sees a failure although the order exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterCommitFault {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionFaults {
    /// Added before every call of the action.
    pub latency_ms: u64,
    pub http_status: Option<StatusFault>,
    pub error: Option<ErrorFault>,
    pub hang: Option<HangFault>,
    pub fail_after_commit: Option<AfterCommitFault>,
}

impl ActionFaults {
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency_ms: millis(latency),
            ..Self::default()
        }
    }

    pub fn http_status(status: u16, count: u32) -> Self {
        Self {
            http_status: Some(StatusFault { status, count }),
            ..Self::default()
        }
    }

    pub fn error(message: impl Into<String>, count: u32) -> Self {
        Self {
            error: Some(ErrorFault {
                message: message.into(),
                count,
            }),
            ..Self::default()
        }
    }

    pub fn hang(duration: Duration, count: u32) -> Self {
        Self {
            hang: Some(HangFault {
                duration_ms: millis(duration),
                count,
            }),
            ..Self::default()
        }
    }

    pub fn fail_after_commit_status(status: u16, count: u32) -> Self {
        Self {
            fail_after_commit: Some(AfterCommitFault {
                status: Some(status),
                duration_ms: None,
                count,
            }),
            ..Self::default()
        }
    }

    pub fn fail_after_commit_hang(duration: Duration, count: u32) -> Self {
        Self {
            fail_after_commit: Some(AfterCommitFault {
                status: None,
                duration_ms: Some(millis(duration)),
                count,
            }),
            ..Self::default()
        }
    }

    /// Checks values an HTTP reply cannot carry.
    pub fn validate(&self) -> Result<(), String> {
        let status_ok = |s: u16| (100..=599).contains(&s);
        if let Some(f) = &self.http_status {
            if !status_ok(f.status) {
                return Err(format!(
                    "http_status.status {} is not an HTTP status",
                    f.status
                ));
            }
        }
        if let Some(f) = &self.fail_after_commit {
            match (f.status, f.duration_ms) {
                (Some(s), None) if status_ok(s) => {}
                (None, Some(_)) => {}
                (Some(s), None) => {
                    return Err(format!(
                        "fail_after_commit.status {s} is not an HTTP status"
                    ))
                }
                _ => {
                    return Err(
                        "fail_after_commit needs exactly one of status and duration_ms".to_owned(),
                    )
                }
            }
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A gate closed in front of an action: calls wait before running until it opens. Opening
/// (or dropping) it lets every waiting and later call through.
#[derive(Debug)]
pub struct Gate {
    open: tokio::sync::watch::Sender<bool>,
    arrived: tokio::sync::watch::Receiver<u64>,
}

/// The simulator's side of a [`Gate`].
#[derive(Debug, Clone)]
pub struct GateState {
    open: tokio::sync::watch::Receiver<bool>,
    arrived: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Gate {
    pub(crate) fn closed() -> (Self, GateState) {
        let (open_tx, open_rx) = tokio::sync::watch::channel(false);
        let (arrived_tx, arrived_rx) = tokio::sync::watch::channel(0);
        (
            Self {
                open: open_tx,
                arrived: arrived_rx,
            },
            GateState {
                open: open_rx,
                arrived: std::sync::Arc::new(arrived_tx),
            },
        )
    }

    /// Waits until `calls` calls in all have reached the gate.
    pub async fn arrived(&mut self, calls: u64) {
        // The sender lives in the simulator's state as long as the gate is installed.
        let _ = self.arrived.wait_for(|n| *n >= calls).await;
    }

    /// Opens the gate: waiting calls run, later calls pass.
    pub fn open(self) {
        drop(self);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open.send_replace(true);
    }
}

impl GateState {
    /// Counts the call as arrived and waits until the gate opens.
    pub(crate) async fn pass(mut self) {
        self.arrived.send_modify(|n| *n += 1);
        let _ = self.open.wait_for(|open| *open).await;
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Takes one use of a counted fault, dropping it when used up.
pub(crate) fn take<T: Clone>(
    slot: &mut Option<T>,
    count: impl Fn(&mut T) -> &mut u32,
) -> Option<T> {
    let fault = slot.as_mut()?;
    let remaining = count(fault);
    if *remaining == 0 {
        *slot = None;
        return None;
    }
    *remaining -= 1;
    let taken = fault.clone();
    if *count(fault) == 0 {
        *slot = None;
    }
    Some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_are_consumed() {
        let mut faults = ActionFaults::http_status(503, 2);
        assert!(take(&mut faults.http_status, |f| &mut f.count).is_some());
        assert!(take(&mut faults.http_status, |f| &mut f.count).is_some());
        assert!(take(&mut faults.http_status, |f| &mut f.count).is_none());
        assert!(faults.is_empty());
    }

    #[test]
    fn json_form_and_validation() {
        let faults: ActionFaults = serde_json::from_str(
            r#"{"latency_ms": 5, "fail_after_commit": {"status": 500, "count": 1}}"#,
        )
        .unwrap();
        assert!(faults.validate().is_ok());
        assert!(serde_json::from_str::<ActionFaults>(r#"{"bogus": 1}"#).is_err());
        let both: ActionFaults = serde_json::from_str(
            r#"{"fail_after_commit": {"status": 500, "duration_ms": 5, "count": 1}}"#,
        )
        .unwrap();
        assert!(both.validate().is_err());
        assert!(ActionFaults::http_status(700, 1).validate().is_err());
    }
}
