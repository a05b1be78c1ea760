//! Lenient field parsers. WHMCS returns ids and counts as strings or numbers depending on the
//! version and the action (`"orderid":"1"` next to `"totalresults":2`), comma-separated id
//! lists as strings, and empty lists as `""`, `[]`, `{}` or a wrapper object
//! (`"orders":{"order":[…]}`). Each helper accepts every shape seen and rejects the rest.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

fn number_from(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            // `u64::MAX as f64` rounds up to 2^64, one past the range: the bound is strict, or
            // 2^64 and above would saturate to u64::MAX instead of being refused.
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A required id or count given as a number or a numeric string.
pub fn u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = Value::deserialize(d)?;
    number_from(&value).ok_or_else(|| D::Error::custom(format!("expected an id, got {value}")))
}

/// A count that may be absent (then 0).
pub fn u64_any_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(opt_u64_any(d)?.unwrap_or(0))
}

/// An optional number; absent, `null` and `""` are `None`.
pub fn opt_u64_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        value => number_from(&value)
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a number, got {value}"))),
    }
}

/// An optional id where `0` also means "none" (WHMCS's `invoiceid` when no invoice was made).
pub fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(opt_u64_any(d)?.filter(|id| *id != 0))
}

/// A comma-separated id list (`"1,2"`), also accepted as an array or one number; `""` is empty.
pub fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let value = Value::deserialize(d)?;
    let parse_text = |s: &str| -> Result<Vec<u64>, D::Error> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse()
                    .map_err(|_| D::Error::custom(format!("{part:?} in an id list is not an id")))
            })
            .collect()
    };
    match &value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => parse_text(s),
        Value::Number(_) => number_from(&value)
            .map(|id| vec![id])
            .ok_or_else(|| D::Error::custom(format!("expected an id list, got {value}"))),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                number_from(item)
                    .ok_or_else(|| D::Error::custom(format!("{item} in an id list is not an id")))
            })
            .collect(),
        _ => Err(D::Error::custom(format!(
            "expected an id list, got {value}"
        ))),
    }
}

/// Text that may arrive as a number or `null`.
pub fn string_any<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(if b { "1" } else { "0" }.to_owned()),
        other => Err(D::Error::custom(format!("expected text, got {other}"))),
    }
}

/// Optional text; `null` and `""` are `None`.
pub fn opt_string_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(string_any(d)?).filter(|s| !s.is_empty()))
}

/// A PHP-style flag: `true`, `1`, `"1"`, `"on"`, `"true"`, `"yes"`.
pub fn bool_any<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "on" | "yes"
        ),
        _ => false,
    })
}

/// Flattens WHMCS's list shapes into items: `[…]`, `{"order":[…]}`, `{"order":{…one…}}`,
/// PHP associative arrays `{"0":{…},"1":{…}}`, and `""`/`null`/`{}`/`[]` for none.
fn list_items(value: Value) -> Result<Vec<Value>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
        Value::Array(items) => Ok(items),
        Value::Object(map) if map.is_empty() => Ok(Vec::new()),
        Value::Object(mut map) if map.len() == 1 => {
            let Some(key) = map.keys().next().cloned() else {
                return Ok(Vec::new());
            };
            let inner = map.remove(&key).unwrap_or(Value::Null);
            if key.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(vec![inner]);
            }
            match inner {
                Value::Array(items) => Ok(items),
                obj @ Value::Object(_) => Ok(vec![obj]),
                Value::Null => Ok(Vec::new()),
                Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
                other => Err(format!("expected a list under {key:?}, got {other}")),
            }
        }
        Value::Object(map) if map.values().all(Value::is_object) => {
            Ok(map.into_iter().map(|(_, v)| v).collect())
        }
        other => Err(format!("expected a list, got {other}")),
    }
}

/// A list in any of WHMCS's shapes (see the module docs).
pub fn list_any<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    list_items(Value::deserialize(d)?)
        .map_err(D::Error::custom)?
        .into_iter()
        .map(|item| serde_json::from_value(item).map_err(D::Error::custom))
        .collect()
}

/// A decimal given as a string or number (`"10.00"`, `-1`).
pub fn f64_from(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[serde(deserialize_with = "u64_any")]
        id: u64,
        #[serde(default, deserialize_with = "opt_id")]
        invoice: Option<u64>,
        #[serde(default, deserialize_with = "id_list")]
        ids: Vec<u64>,
        #[serde(default, deserialize_with = "string_any")]
        text: String,
        #[serde(default, deserialize_with = "bool_any")]
        flag: bool,
        #[serde(default, deserialize_with = "list_any")]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        #[serde(deserialize_with = "u64_any")]
        id: u64,
    }

    fn parse(value: serde_json::Value) -> Result<Sample, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn ids_as_strings_or_numbers() {
        let a = parse(json!({"id": "12", "invoice": "0", "ids": "1, 2,3", "text": 5})).unwrap();
        assert_eq!(
            (a.id, a.invoice, a.ids, a.text.as_str()),
            (12, None, vec![1, 2, 3], "5")
        );
        let b = parse(json!({"id": 12.0, "invoice": 9, "ids": [4, "5"], "flag": "1"})).unwrap();
        assert_eq!(
            (b.id, b.invoice, b.ids, b.flag),
            (12, Some(9), vec![4, 5], true)
        );
        let c = parse(json!({"id": 1, "ids": "", "invoice": "", "text": null, "flag": 0})).unwrap();
        assert!(c.ids.is_empty() && c.invoice.is_none() && c.text.is_empty() && !c.flag);
        assert!(parse(json!({"id": "x"})).is_err());
        assert!(parse(json!({"id": -1})).is_err());
        assert!(parse(json!({"id": 1, "ids": "1,a"})).is_err());
        // Found by fuzzing (whmcs_reply): a float id of 2^64 became u64::MAX.
        assert!(parse(json!({"id": 18446744073709551616.0_f64})).is_err());
        assert_eq!(
            parse(json!({"id": 9007199254740992.0_f64})).unwrap().id,
            9_007_199_254_740_992
        );
    }

    #[test]
    fn lists_in_every_shape() {
        for (shape, expected) in [
            (json!([{"id": 1}, {"id": "2"}]), vec![1, 2]),
            (json!({"order": [{"id": 1}, {"id": 2}]}), vec![1, 2]),
            (json!({"order": {"id": 3}}), vec![3]),
            (json!({"0": {"id": 4}, "1": {"id": 5}}), vec![4, 5]),
            (json!({"0": {"id": 6}}), vec![6]),
            (json!(""), vec![]),
            (json!({}), vec![]),
            (json!({"order": []}), vec![]),
            (json!(null), vec![]),
        ] {
            let sample = parse(json!({"id": 1, "items": shape.clone()})).unwrap();
            let ids: Vec<u64> = sample.items.iter().map(|i| i.id).collect();
            assert_eq!(ids, expected, "{shape}");
        }
        assert!(parse(json!({"id": 1, "items": 5})).is_err());
    }
}
