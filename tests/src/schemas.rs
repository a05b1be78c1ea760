//! The contract's JSON Schemas (`docs/schemas/<schema>.json`, generated from the body types by
//! `messages::schemas`) as validators, so tests can check that what the services really publish
//! and answer is what the published contract promises.
//!
//! The files are read from the repository, not regenerated from the types: a test validating
//! against them checks the published documents themselves. Each is checked against the Draft
//! 2020-12 meta-schema and compiled once per test process; nothing is fetched from the network
//! (jsonschema is built without its HTTP and file resolvers, and the schemas refer only to
//! themselves). `format` is validated (`date-time` timestamps), so a timestamp that is not
//! RFC 3339 fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

/// Where the checked-in schemas are: `docs/schemas` of the workspace this crate belongs to.
pub fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("schemas")
}

/// The names of every published schema (`provisioning.outcome.v1`, ...), sorted.
pub fn names() -> Vec<&'static str> {
    validators().keys().map(String::as_str).collect()
}

/// Checks `body` against the published schema `schema_name`; `Err` lists every violation, each
/// with where in the body it is. An unknown schema name is an error too.
pub fn validate(schema_name: &str, body: &Value) -> Result<(), Vec<String>> {
    let Some(validator) = validators().get(schema_name) else {
        return Err(vec![format!(
            "no published schema named {schema_name:?} in {} (known: {:?})",
            schema_dir().display(),
            names()
        )]);
    };
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| {
            let at = e.instance_path.to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            format!("at {at}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Panics, listing every violation and the body, unless `body` is valid against `schema_name`.
#[track_caller]
pub fn assert_valid(schema_name: &str, body: &Value) {
    if let Err(errors) = validate(schema_name, body) {
        panic!(
            "a body is not valid {schema_name} (docs/schemas/{schema_name}.json):\n  {}\nbody: {body}",
            errors.join("\n  ")
        );
    }
}

/// The validators, keyed by schema name (the file name without `.json`), compiled on first use.
/// A missing directory, an unreadable or invalid schema panics: the tests cannot run without
/// the published schemas.
fn validators() -> &'static BTreeMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<BTreeMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let dir = schema_dir();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read the schemas in {}: {e}", dir.display()));
        let mut validators = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let schema = load(&path);
            validators.insert(name.to_owned(), compile(&path, &schema));
        }
        assert!(
            !validators.is_empty(),
            "no schema (*.json) in {}",
            dir.display()
        );
        validators
    })
}

fn load(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn compile(path: &std::path::Path, schema: &Value) -> jsonschema::Validator {
    if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
        panic!(
            "{} is not a valid Draft 2020-12 schema: {e}",
            path.display()
        );
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("{} does not compile: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_body_of_the_contract_has_a_compiled_schema() {
        assert_eq!(
            names(),
            [
                "provisioning.deadletter.v1",
                "provisioning.outcome.v1",
                "provisioning.requested.v1",
                "provisioning.status.v1",
                "sf.order.update.v1",
            ]
        );
    }

    fn outcome() -> Value {
        json!({
            "schema": "provisioning.outcome.v1", "order_id": "801000000000001AAA",
            "result": "failed", "whmcs_order_id": null, "whmcs_service_ids": [],
            "whmcs_invoice_id": null, "error_code": "CLIENT_MISSING",
            "error_message": "no client", "step": "mapping", "correlation_id": "c",
            "event_id": "e", "idem_key": null, "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:01.5Z", "duration_ms": 1500
        })
    }

    #[test]
    fn a_valid_body_passes_and_unknown_fields_are_allowed() {
        assert_valid("provisioning.outcome.v1", &outcome());
        let mut extended = outcome();
        extended["a_field_added_within_v1"] = json!({"any": 1});
        assert_valid("provisioning.outcome.v1", &extended);
    }

    #[test]
    fn every_violation_is_listed_with_where_it_is() {
        let mut body = outcome();
        body["schema"] = json!("provisioning.outcome.v2");
        body["result"] = json!("done");
        body["duration_ms"] = json!(-1);
        body["finished_at"] = json!("yesterday");
        body.as_object_mut().unwrap().remove("order_id");
        let errors = validate("provisioning.outcome.v1", &body).unwrap_err();
        let all = errors.join("\n");
        for at in [
            "at /schema",
            "at /result",
            "at /duration_ms",
            "at /finished_at",
            "at /:",
        ] {
            assert!(all.contains(at), "{at} missing in:\n{all}");
        }
        assert!(all.contains("order_id"), "{all}");
    }

    #[test]
    fn an_unknown_schema_name_is_an_error() {
        let errors = validate("provisioning.nothing.v1", &json!({})).unwrap_err();
        assert!(errors[0].contains("no published schema"), "{errors:?}");
    }

    #[test]
    #[should_panic(expected = "is not valid provisioning.outcome.v1")]
    fn assert_valid_panics_on_an_invalid_body() {
        assert_valid("provisioning.outcome.v1", &json!({"schema": "x"}));
    }
}
