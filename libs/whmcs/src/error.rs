//! Failures of WHMCS calls, classified the way the provisioner must react to them
//! (reference `whmcs.md` §1 "HTTP status codes" and §3 "Retry classification"):
//!
//! - **authentication/permission** ([`WhmcsError::Auth`]): HTTP 403 (or 401), or WHMCS's
//!   pre-action error texts. Never retried: three failures in 30 minutes ban the caller's IP.
//! - **business** ([`WhmcsError::Api`]): `result=error` with WHMCS's message; the action ran and
//!   refused, so nothing changed.
//! - **transport** ([`WhmcsError::Http`], [`WhmcsError::Timeout`], [`WhmcsError::Transport`],
//!   [`WhmcsError::Decode`]): for a mutating action the outcome is unknown
//!   ([`WhmcsError::outcome_unknown`]) and must be reconciled (GetOrders + notes marker) before
//!   anything is repeated, because WHMCS's AddOrder is neither atomic nor idempotent.
//! - [`WhmcsError::Connect`]: no connection was made, so nothing reached WHMCS.

use std::time::Duration;

/// Error texts WHMCS produces before the action runs (authentication, access control, API
/// roles). Older versions and some proxies send them with HTTP 200, so the text decides, not
/// only the status. Compared case-insensitively as prefixes.
const AUTH_MESSAGES: &[&str] = &[
    "authentication failed",
    "invalid or missing credentials",
    "invalid ip",
    "invalid access key",
    "ip banned",
    "invalid permissions",
    "access denied",
    "invalid administrative identifier",
    "administrator account disabled",
    "invalid password provided",
];

/// Whether WHMCS's message is one of its authentication or permission texts.
pub fn is_auth_message(message: &str) -> bool {
    let lower = message.trim().to_ascii_lowercase();
    AUTH_MESSAGES.iter().any(|m| lower.starts_with(m))
}

/// Read-only WHMCS actions are all named `Get…`; everything else may change data.
pub fn is_read_only_action(action: &str) -> bool {
    action
        .get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("get"))
}

/// `Display` (and [`WhmcsError::message`]) is the contract's error message, and every text in
/// it is redacted of the credentials before it leaves the client: the `detail` of `Connect`,
/// `Transport` and `Decode` is therefore the cause's text, redacted, not the cause as a `source`
/// (whose chain would print it again, unredacted).
#[derive(Debug, thiserror::Error)]
pub enum WhmcsError {
    /// Credentials, IP/access key or API role rejected. `status` is 403 (or 401) from WHMCS or
    /// a proxy, or 200 when an auth text came as `result=error`.
    #[error("WHMCS {action}: authentication or permission refused (HTTP {status}): {message}")]
    Auth {
        action: String,
        status: u16,
        message: String,
        /// The body was WHMCS's JSON envelope. A non-JSON 403 usually comes from a proxy or WAF,
        /// which might sit after a partially processed request, so it does not prove that
        /// nothing happened.
        from_whmcs: bool,
    },
    /// `result=error`: WHMCS ran the action and refused it.
    #[error("WHMCS {action} answered result=error: {message}")]
    Api { action: String, message: String },
    /// A non-2xx status other than the authentication ones.
    #[error("WHMCS {action} answered HTTP {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        action: String,
        status: u16,
        /// WHMCS's `message` when the body was its JSON envelope.
        message: Option<String>,
    },
    #[error("WHMCS {action} timed out after {after:?}")]
    Timeout { action: String, after: Duration },
    #[error("cannot connect to WHMCS for {action}: {detail}")]
    Connect { action: String, detail: String },
    #[error("WHMCS {action} transport error: {detail}")]
    Transport { action: String, detail: String },
    /// A 2xx reply that is not WHMCS's JSON envelope, or lacks the fields the action returns
    /// (a PHP fatal page, a proxy page, the XML/NVP answer of a mistyped `responsetype`).
    #[error("WHMCS {action} gave an unusable reply (HTTP {status}): {detail}")]
    Decode {
        action: String,
        status: u16,
        detail: String,
    },
    /// Rejected before sending: the request cannot be right (e.g. AddOrder without items).
    #[error("invalid WHMCS {action} request: {detail}")]
    InvalidRequest { action: String, detail: String },
}

impl platform::metrics::ApiCallError for WhmcsError {
    fn http_status(&self) -> Option<u16> {
        WhmcsError::http_status(self)
    }

    fn contract_code(&self) -> String {
        WhmcsError::contract_code(self)
    }
}

impl WhmcsError {
    pub fn action(&self) -> &str {
        match self {
            Self::Auth { action, .. }
            | Self::Api { action, .. }
            | Self::Http { action, .. }
            | Self::Timeout { action, .. }
            | Self::Connect { action, .. }
            | Self::Transport { action, .. }
            | Self::Decode { action, .. }
            | Self::InvalidRequest { action, .. } => action,
        }
    }

    /// The HTTP status WHMCS (or a proxy) answered with, when there was an answer.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Auth { status, .. } | Self::Http { status, .. } | Self::Decode { status, .. } => {
                Some(*status)
            }
            Self::Api { .. } => Some(200),
            Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::Transport { .. }
            | Self::InvalidRequest { .. } => None,
        }
    }

    /// The contract's `Activation_Error_Code__c` for this failure (docs/contract.md §5): `WHMCS_ERROR`
    /// for `result=error`, the HTTP status for HTTP failures, `ETIMEOUT`, `ECONNREFUSED`.
    pub fn contract_code(&self) -> String {
        match self {
            Self::Api { .. } | Self::InvalidRequest { .. } => "WHMCS_ERROR".to_owned(),
            // An auth text in a result=error envelope is still "WHMCS answered result=error".
            Self::Auth { status: 200, .. } => "WHMCS_ERROR".to_owned(),
            Self::Auth { status, .. } | Self::Http { status, .. } => status.to_string(),
            Self::Timeout { .. } => "ETIMEOUT".to_owned(),
            Self::Connect { .. } => "ECONNREFUSED".to_owned(),
            Self::Transport { .. } => "ECONNRESET".to_owned(),
            Self::Decode { status, .. } if *status >= 300 => status.to_string(),
            // A 200 that is not an answer is treated like the server error it almost always is.
            Self::Decode { .. } => "500".to_owned(),
        }
    }

    /// The text for `Activation_Error_Message__c`: WHMCS's own message for business and auth
    /// errors (the contract asks for it verbatim), otherwise the error's description.
    pub fn message(&self) -> String {
        match self {
            Self::Api { message, .. } | Self::Auth { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Auth { .. })
    }

    /// `result=error`: the action ran and refused.
    pub fn is_business(&self) -> bool {
        matches!(self, Self::Api { .. })
    }

    /// Whether the same call may succeed later without anyone acting. Auth failures are
    /// permanent on purpose: repeating them gets the IP banned.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Auth { .. } | Self::Api { .. } | Self::InvalidRequest { .. } => false,
            Self::Http { status, .. } => *status == 429 || *status >= 500,
            Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::Transport { .. }
            | Self::Decode { .. } => true,
        }
    }

    /// For a mutating action (AddOrder, AcceptOrder, …): WHMCS may have done the work even
    /// though no answer says so. The caller must reconcile (GetOrders) before repeating it.
    /// Always false for `Get…` actions, which change nothing.
    pub fn outcome_unknown(&self) -> bool {
        if is_read_only_action(self.action()) {
            return false;
        }
        match self {
            Self::Timeout { .. } | Self::Transport { .. } | Self::Decode { .. } => true,
            Self::Http { status, .. } => *status >= 500,
            Self::Auth { from_whmcs, .. } => !from_whmcs,
            Self::Api { .. } | Self::Connect { .. } | Self::InvalidRequest { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(action: &str) -> String {
        action.to_owned()
    }

    #[test]
    fn contract_codes() {
        let api = WhmcsError::Api {
            action: act("AddOrder"),
            message: "Client ID Not Found".into(),
        };
        assert_eq!(api.contract_code(), "WHMCS_ERROR");
        assert_eq!(api.message(), "Client ID Not Found");
        for status in [500u16, 503, 429] {
            let err = WhmcsError::Http {
                action: act("AddOrder"),
                status,
                message: None,
            };
            assert_eq!(err.contract_code(), status.to_string());
        }
        let auth = WhmcsError::Auth {
            action: act("GetOrders"),
            status: 403,
            message: "Authentication Failed".into(),
            from_whmcs: true,
        };
        assert_eq!(auth.contract_code(), "403");
        let timeout = WhmcsError::Timeout {
            action: act("AddOrder"),
            after: Duration::from_secs(1),
        };
        assert_eq!(timeout.contract_code(), "ETIMEOUT");
        let refused = WhmcsError::Connect {
            action: act("AddOrder"),
            detail: "refused".into(),
        };
        assert_eq!(refused.contract_code(), "ECONNREFUSED");
        let html = WhmcsError::Decode {
            action: act("AddOrder"),
            status: 200,
            detail: "<html>".into(),
        };
        assert_eq!(html.contract_code(), "500");
    }

    #[test]
    fn classification() {
        let auth = WhmcsError::Auth {
            action: act("AddOrder"),
            status: 403,
            message: "Authentication Failed".into(),
            from_whmcs: true,
        };
        assert!(auth.is_auth() && !auth.is_transient() && !auth.outcome_unknown());
        let waf = WhmcsError::Auth {
            action: act("AddOrder"),
            status: 403,
            message: "<html>Forbidden</html>".into(),
            from_whmcs: false,
        };
        assert!(waf.outcome_unknown());

        let timeout_add = WhmcsError::Timeout {
            action: act("AddOrder"),
            after: Duration::from_secs(1),
        };
        assert!(timeout_add.outcome_unknown() && timeout_add.is_transient());
        let timeout_get = WhmcsError::Timeout {
            action: act("GetOrders"),
            after: Duration::from_secs(1),
        };
        assert!(!timeout_get.outcome_unknown());
        let server = WhmcsError::Http {
            action: act("AcceptOrder"),
            status: 502,
            message: None,
        };
        assert!(server.outcome_unknown() && server.is_transient());
        let bad_request = WhmcsError::Http {
            action: act("AcceptOrder"),
            status: 400,
            message: Some("Empty action request".into()),
        };
        assert!(!bad_request.outcome_unknown() && !bad_request.is_transient());
        let refused = WhmcsError::Connect {
            action: act("AddOrder"),
            detail: String::new(),
        };
        assert!(!refused.outcome_unknown() && refused.is_transient());
        let business = WhmcsError::Api {
            action: act("AddOrder"),
            message: "x".into(),
        };
        assert!(business.is_business() && !business.outcome_unknown() && !business.is_transient());
    }

    #[test]
    fn auth_texts_and_read_only_actions() {
        assert!(is_auth_message("Invalid IP 10.0.0.1"));
        assert!(is_auth_message(
            "invalid permissions: API action \"addorder\" is not allowed"
        ));
        assert!(is_auth_message("IP Banned"));
        assert!(!is_auth_message("Client ID Not Found"));
        assert!(is_read_only_action("GetOrders") && is_read_only_action("getproducts"));
        assert!(!is_read_only_action("AddOrder") && !is_read_only_action("Ge"));
    }
}
