//! Step names and the outcome of a job, as the contract names them (docs/contract.md §5).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Validation,
    OrderDetails,
    Guard,
    Mapping,
    PaymentMethod,
    WhmcsCreate,
    WhmcsAccept,
    SfSuccessUpdate,
}

impl Step {
    pub const ALL: [Step; 8] = [
        Step::Validation,
        Step::OrderDetails,
        Step::Guard,
        Step::Mapping,
        Step::PaymentMethod,
        Step::WhmcsCreate,
        Step::WhmcsAccept,
        Step::SfSuccessUpdate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validation => "validation",
            Step::OrderDetails => "order_details",
            Step::Guard => "guard",
            Step::Mapping => "mapping",
            Step::PaymentMethod => "payment_method",
            Step::WhmcsCreate => "whmcs_create",
            Step::WhmcsAccept => "whmcs_accept",
            Step::SfSuccessUpdate => "sf_success_update",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Contract error codes that are not HTTP statuses.
pub mod codes {
    pub const PAYMENT_METHOD_MISSING: &str = "409";
    pub const CLIENT_MISSING: &str = "CLIENT_MISSING";
    pub const NO_ITEMS: &str = "NO_ITEMS";
    pub const MAPPING_MISSING: &str = "MAPPING_MISSING";
    pub const WHMCS_ERROR: &str = "WHMCS_ERROR";
    pub const INTERRUPTED: &str = "INTERRUPTED";
}

/// Salesforce's `Activation_Error_Message__c` holds at most 255 characters.
pub fn truncate_message(message: &str) -> String {
    const MAX: usize = 255;
    if message.chars().count() <= MAX {
        return message.to_owned();
    }
    let mut out: String = message.chars().take(MAX - 1).collect();
    out.push('…');
    out
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobResult {
    Activated {
        whmcs_order_id: u64,
        service_ids: Vec<u64>,
        invoice_id: Option<u64>,
    },
    Failed {
        code: String,
        message: String,
    },
    Skipped {
        reason: String,
    },
}

impl JobResult {
    pub fn failed(code: impl Into<String>, message: impl AsRef<str>) -> Self {
        Self::Failed {
            code: code.into(),
            message: truncate_message(message.as_ref()),
        }
    }

    pub fn outcome(&self) -> messages::OutcomeResult {
        match self {
            Self::Activated { .. } => messages::OutcomeResult::Activated,
            Self::Failed { .. } => messages::OutcomeResult::Failed,
            Self::Skipped { .. } => messages::OutcomeResult::Skipped,
        }
    }

    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Failed { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_fit_salesforce() {
        let long = "x".repeat(400);
        let cut = truncate_message(&long);
        assert_eq!(cut.chars().count(), 255);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_message("short"), "short");
    }
}
