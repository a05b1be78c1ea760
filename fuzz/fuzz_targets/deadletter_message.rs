//! provctl's reading of the dead-letter stream: a stored message (subject, headers, payload) as
//! `deadletter list` summarises it, `deadletter show` details it and `deadletter replay` turns it
//! back into the original message. Invariants: a replay goes only to a subject a service
//! consumes, carries the original bytes, and never copies a header value that NATS could not
//! carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provctl::deadletter;

const STREAM: &str = "PROVISIONING_DEADLETTER";

fuzz_target!(|data: &[u8]| {
    let message = provisioning_fuzz::nats_message(data);
    let stored = async_nats::jetstream::message::StreamMessage {
        subject: message.subject.into(),
        sequence: 42,
        headers: message.headers,
        payload: message.payload,
        time: time::OffsetDateTime::UNIX_EPOCH,
    };
    let summary = deadletter::summarize(&stored);
    let Ok(body) = deadletter::read_dead_letter(STREAM, &stored) else {
        assert!(summary.unreadable.is_some());
        return;
    };
    assert!(summary.unreadable.is_none());
    let shown = deadletter::detail(STREAM, &stored, body.clone());
    let _ = serde_json::to_string(&shown).expect("the detail serialises");
    match deadletter::replay(&stored, &body, "provctl-replay:42:fuzz") {
        Ok(replay) => {
            assert!(shown.replay_refused.is_none());
            assert!(
                replay.subject.starts_with("provisioning.requested.")
                    || replay.subject.starts_with("sf.order.update."),
                "{}",
                replay.subject
            );
            assert_eq!(replay.payload.len(), shown.payload_bytes);
            for (_, values) in replay.headers.iter() {
                for value in values {
                    assert!(!value.as_str().contains(['\r', '\n']));
                }
            }
        }
        Err(reason) => assert_eq!(shown.replay_refused.as_deref(), Some(reason.as_str())),
    }
});
