//! sf-bridge's decoding of an `OrderProvisionRequested__e` payload and its conversion into
//! `provisioning.requested.v1`: the schema JSON as `GetSchema` serves it (the simulator's two
//! versions), `salesforce::avro::decode_record`, `sf_bridge::event::to_requested`. The selector
//! picks the schema the payload is decoded with, so payloads written with one version are also
//! decoded with the other (V2 adds a field in the middle). Invariant: a body the bridge would
//! publish is one the provisioner accepts unchanged, with the canonical 18-character Order id.
#![no_main]

use std::sync::OnceLock;

use apache_avro::Schema;
use libfuzzer_sys::fuzz_target;
use sf_bridge::event::{to_requested, EventEnvelope};

fn schemas() -> &'static [Schema; 2] {
    static SCHEMAS: OnceLock<[Schema; 2]> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let registry = sf_sim::avro::SchemaRegistry::for_channel(sf_sim::config::DEFAULT_CHANNEL)
            .expect("the simulator's schemas");
        [sf_sim::SchemaVersion::V1, sf_sim::SchemaVersion::V2].map(|version| {
            let json = &registry
                .get(registry.id_of(version))
                .expect("a registered schema")
                .json;
            salesforce::avro::parse_schema(json).expect("the simulator's schema parses")
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let (selector, payload) = provisioning_fuzz::split_selector(data);
    let schema = &schemas()[usize::from(selector & 1)];
    let Ok(record) = salesforce::avro::decode_record(schema, payload) else {
        return;
    };
    let envelope = EventEnvelope {
        event_id: "fuzz-event",
        replay_id: &[0, 0, 0, 0, 0, 0, 0, 1],
        schema_id: "fuzz-schema",
        channel: sf_sim::config::DEFAULT_CHANNEL,
        received_at: "2026-01-01T00:00:00Z",
    };
    let _ = sf_bridge::event::created_epoch_ms(&record);
    let Ok(body) = to_requested(&envelope, record) else {
        return;
    };
    provisioning_fuzz::assert_canonical_id(&body.order_id);
    let json = serde_json::to_vec(&body).expect("a body serialises");
    let subject = messages::subjects::provisioning_requested(&body.order_id);
    match provisioner::job::validate(&subject, &json) {
        Ok(accepted) => assert_eq!(accepted, body),
        Err(reason) => panic!("the provisioner refuses what the bridge publishes: {reason}"),
    }
});
