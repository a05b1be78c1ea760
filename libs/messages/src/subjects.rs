//! Subjects of the contract and the streams that capture them.

/// `provisioning.requested.<OrderId>`: one message per Platform Event, published by sf-bridge.
pub fn provisioning_requested(order_id: &str) -> String {
    format!("{PROVISIONING_REQUESTED_PREFIX}.{order_id}")
}
pub const PROVISIONING_REQUESTED_PREFIX: &str = "provisioning.requested";
pub const PROVISIONING_REQUESTED_ALL: &str = "provisioning.requested.>";

/// `provisioning.deadletter.<service>`: what a service could not process.
pub fn deadletter(service: &str) -> String {
    format!("{DEADLETTER_PREFIX}.{service}")
}
pub const DEADLETTER_PREFIX: &str = "provisioning.deadletter";
pub const DEADLETTER_ALL: &str = "provisioning.deadletter.>";

/// `provisioning.outcome.<OrderId>.<result>`, `<result>` ∈ `activated`, `failed`, `skipped`.
pub fn provisioning_outcome(order_id: &str, result: &str) -> String {
    format!("{PROVISIONING_OUTCOME_PREFIX}.{order_id}.{result}")
}
pub const PROVISIONING_OUTCOME_PREFIX: &str = "provisioning.outcome";
pub const PROVISIONING_OUTCOME_ALL: &str = "provisioning.outcome.>";

/// `sf.order.update.<OrderId>`: field changes for sf-writer to apply.
/// Request/reply subject of an order's status (`provisioning.status.<OrderId>`), answered by
/// the provisioner's NATS service [`STATUS_SERVICE`].
pub fn provisioning_status(order_id: &str) -> String {
    format!("{PROVISIONING_STATUS_PREFIX}.{order_id}")
}
pub const PROVISIONING_STATUS_PREFIX: &str = "provisioning.status";
/// The subject the status service's endpoint listens on (one token: the Order id).
pub const PROVISIONING_STATUS_ENDPOINT: &str = "provisioning.status.*";
/// Name of the NATS service (micro protocol) answering `provisioning.status.<OrderId>`, as
/// `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` show it.
pub const STATUS_SERVICE: &str = "provisioning-status";

pub fn order_update(order_id: &str) -> String {
    format!("{ORDER_UPDATE_PREFIX}.{order_id}")
}
pub const ORDER_UPDATE_PREFIX: &str = "sf.order.update";
pub const ORDER_UPDATE_ALL: &str = "sf.order.update.>";

/// The Order a `<prefix>.<OrderId>` subject names, in its canonical 18-character form; `None`
/// when the subject has another prefix, more tokens, or a last token that is not a Salesforce id.
/// Consumers compare it with the body's order id, so a message cannot name one Order in its
/// subject (what permissions and stream filters see) and act on another.
pub fn order_named(subject: &str, prefix: &str) -> Option<String> {
    let token = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    crate::salesforce_id::canonical(token).ok()
}

/// Default stream names (overridable by configuration; documented in docs/configuration.md).
pub mod streams {
    /// Captures `provisioning.requested.>`.
    pub const REQUESTS: &str = "PROVISIONING_REQUESTS";
    /// Captures `provisioning.deadletter.>`.
    pub const DEADLETTER: &str = "PROVISIONING_DEADLETTER";
    /// Captures `provisioning.outcome.>`.
    pub const OUTCOMES: &str = "PROVISIONING_OUTCOMES";
    /// Captures `sf.order.update.>`.
    pub const ORDER_UPDATES: &str = "SF_ORDER_UPDATES";
}

/// Default durable consumer names.
pub mod consumers {
    pub const PROVISIONER: &str = "provisioner";
    pub const SF_WRITER: &str = "sf-writer";
}

/// Default KV bucket names.
pub mod buckets {
    /// sf-bridge replay cursor, one key per channel.
    pub const BRIDGE_CURSOR: &str = "sf_bridge_cursor";
    /// sf-bridge leadership lease, one key per channel.
    pub const BRIDGE_LEASE: &str = "sf_bridge_lease";
    /// Provisioner job journal, one key per order.
    pub const JOBS: &str = "provisioning_jobs";
    /// sf-writer: last applied update sequence (and in-flight write claim) per Order.
    pub const SF_WRITER_APPLIED: &str = "sf_writer_applied";
}

/// A KV key derived from a channel name (`/event/Foo__e` → `event.Foo__e`), since KV keys
/// allow only `[-/_=.a-zA-Z0-9]` and must not start with a dot.
pub fn channel_key(channel: &str) -> String {
    let trimmed = channel.trim_start_matches('/');
    trimmed
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.') => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_a_subject_names() {
        let canonical = "801000000000001AAA";
        for subject in [
            order_update("801000000000001"),
            order_update(canonical),
            provisioning_requested("801000000000001aaa"),
        ] {
            let prefix = if subject.starts_with(ORDER_UPDATE_PREFIX) {
                ORDER_UPDATE_PREFIX
            } else {
                PROVISIONING_REQUESTED_PREFIX
            };
            assert_eq!(
                order_named(&subject, prefix).as_deref(),
                Some(canonical),
                "{subject}"
            );
        }
        for subject in [
            "sf.order.update",
            "sf.order.update.",
            "sf.order.update.801000000000001.x",
            "sf.order.updates.801000000000001",
            "sf.order.update.801' OR 1=1",
            "provisioning.requested.801000000000001",
        ] {
            assert_eq!(order_named(subject, ORDER_UPDATE_PREFIX), None, "{subject}");
        }
    }

    #[test]
    fn channel_key_is_a_valid_kv_key() {
        assert_eq!(
            channel_key("/event/OrderProvisionRequested__e"),
            "event.OrderProvisionRequested__e"
        );
        assert_eq!(channel_key("/event/we ird*"), "event.we_ird_");
    }

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(
            provisioning_requested("801xx0000000001AAA"),
            "provisioning.requested.801xx0000000001AAA"
        );
        assert_eq!(deadletter("sf-bridge"), "provisioning.deadletter.sf-bridge");
    }
}
