//! Numbers in bodies cross every hop unchanged. Found by the `sf_event_avro` fuzz target: a
//! `Version__c` of 1.0002431869524455 reached the provisioner as 1.0002431869524457, because
//! serde_json's default float parser is fast but not exact; the crate enables its
//! `float_roundtrip` parser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use messages::ProvisioningRequestedV1;

fn request(version: f64) -> ProvisioningRequestedV1 {
    ProvisioningRequestedV1 {
        schema: ProvisioningRequestedV1::SCHEMA.to_owned(),
        event_id: "e-1".to_owned(),
        replay_id: "AAAAAAAAAAE=".to_owned(),
        channel: "/event/OrderProvisionRequested__e".to_owned(),
        schema_id: "s-1".to_owned(),
        order_id: "800Sm0000000001IAA".to_owned(),
        idem_key: None,
        correlation_id: "c-1".to_owned(),
        requested_by: None,
        version: Some(version),
        created_at: None,
        created_by_id: None,
        received_at: "2026-01-01T00:00:00Z".to_owned(),
    }
}

#[test]
fn a_version_survives_serialisation_bit_for_bit() {
    for version in [
        1.0002431869524455,
        0.1 + 0.2,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        -123_456_789.123_456_79,
    ] {
        let json = serde_json::to_vec(&request(version)).unwrap();
        let back: ProvisioningRequestedV1 = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            back.version.map(f64::to_bits),
            Some(version.to_bits()),
            "{version:e} came back as {:?}",
            back.version
        );
    }
}
