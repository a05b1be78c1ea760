//! PHP's view of a request body and WHMCS's reply formats.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// `$_POST` as PHP builds it: `key[sub]` and `key[]` make arrays (insertion-ordered, a repeated
/// sub-key overwrites), a repeated bare key keeps the last value, and a later scalar replaces
/// an array of the same name (and the reverse).
#[derive(Debug, Default, Clone)]
pub struct PhpParams {
    scalars: HashMap<String, String>,
    arrays: HashMap<String, Vec<(String, String)>>,
}

impl PhpParams {
    pub fn parse(body: &[u8]) -> Self {
        // PHP skips what it cannot decode instead of failing the request.
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let mut params = Self::default();
        for (key, value) in pairs {
            params.insert(key, value);
        }
        params
    }

    fn insert(&mut self, key: String, value: String) {
        match key.find('[') {
            Some(open) if open > 0 && key.ends_with(']') => {
                let name = key[..open].to_owned();
                let inner = &key[open + 1..];
                // Only the first bracket level matters for the parameters WHMCS reads.
                let sub = inner.split(']').next().unwrap_or_default().to_owned();
                self.scalars.remove(&name);
                let entries = self.arrays.entry(name).or_default();
                let sub = if sub.is_empty() {
                    let next = entries
                        .iter()
                        .filter_map(|(k, _)| k.parse::<i64>().ok())
                        .max()
                        .map_or(0, |max| max + 1);
                    next.to_string()
                } else {
                    sub
                };
                match entries.iter_mut().find(|(k, _)| *k == sub) {
                    Some(entry) => entry.1 = value,
                    None => entries.push((sub, value)),
                }
            }
            _ => {
                self.arrays.remove(&key);
                self.scalars.insert(key, value);
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.scalars.get(key).map(String::as_str)
    }

    /// `isset($_POST[key])`: present as a scalar or an array.
    pub fn isset(&self, key: &str) -> bool {
        self.scalars.contains_key(key) || self.arrays.contains_key(key)
    }

    /// A non-empty trimmed scalar.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    /// A scalar read as PHP's `(int)` cast of a positive id would be used.
    pub fn id(&self, key: &str) -> Option<u64> {
        self.text(key)?.parse().ok().filter(|id| *id > 0)
    }

    /// PHP truthiness: absent, `""` and `"0"` are false; everything else, `"false"` included,
    /// is true.
    pub fn truthy(&self, key: &str) -> bool {
        if self.arrays.get(key).is_some_and(|a| !a.is_empty()) {
            return true;
        }
        self.get(key).is_some_and(|v| !v.is_empty() && v != "0")
    }

    pub fn array(&self, key: &str) -> Option<&[(String, String)]> {
        self.arrays.get(key).map(Vec::as_slice)
    }

    /// `$array[$sub]` of an array parameter.
    pub fn element(&self, key: &str, sub: &str) -> Option<&str> {
        self.arrays
            .get(key)?
            .iter()
            .find(|(k, _)| k == sub)
            .map(|(_, v)| v.as_str())
    }
}

/// The formats `responsetype` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
    Nvp,
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_value(out: &mut String, key: &str, value: &Value) {
    match value {
        Value::Array(items) => {
            // WHMCS lists are `{"order": [..]}`: each item repeats the inner key.
            for item in items {
                xml_value(out, key, item);
            }
        }
        Value::Object(map) => {
            out.push_str(&format!("<{key}>"));
            for (k, v) in map {
                xml_value(out, k, v);
            }
            out.push_str(&format!("</{key}>"));
        }
        Value::Null => out.push_str(&format!("<{key}></{key}>")),
        Value::String(s) => out.push_str(&format!("<{key}><![CDATA[{s}]]></{key}>")),
        other => out.push_str(&format!(
            "<{key}>{}</{key}>",
            xml_escape(&other.to_string())
        )),
    }
}

/// The XML WHMCS answers when `responsetype` is `xml` (or absent for list actions).
pub fn to_xml(action: &str, body: &Map<String, Value>) -> String {
    let mut out =
        String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<whmcsapi version=\"8.12.1\">\n");
    out.push_str(&format!("<action>{}</action>\n", xml_escape(action)));
    for (key, value) in body {
        xml_value(&mut out, key, value);
        out.push('\n');
    }
    out.push_str("</whmcsapi>");
    out
}

/// The NVP answer of simple actions without `responsetype`: `key=value;key=value`.
pub fn to_nvp(body: &Map<String, Value>) -> String {
    // `result` leads, as in WHMCS's output; the map itself is sorted by key.
    let result = body.get("result").into_iter().map(|v| ("result", v));
    let rest = body
        .iter()
        .filter(|(k, _)| *k != "result")
        .map(|(k, v)| (k.as_str(), v));
    result
        .chain(rest)
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some(format!("{k}={s}")),
            Value::Number(n) => Some(format!("{k}={n}")),
            Value::Bool(b) => Some(format!("{k}={}", u8::from(*b))),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_array_rules() {
        let p = PhpParams::parse(
            b"pid%5B0%5D=1&pid%5B1%5D=2&billingcycle[1]=annually&x=1&x=2&qty[]=5&qty[]=6&flag=false",
        );
        assert_eq!(
            p.array("pid").unwrap(),
            &[("0".into(), "1".into()), ("1".into(), "2".into())]
        );
        assert_eq!(p.element("billingcycle", "1"), Some("annually"));
        assert_eq!(p.element("billingcycle", "0"), None);
        assert_eq!(p.get("x"), Some("2"));
        assert_eq!(p.element("qty", "1"), Some("6"));
        assert!(p.truthy("flag"), "PHP reads \"false\" as true");
        assert!(!p.truthy("missing"));
        let p = PhpParams::parse(b"pid=1&pid=2&n=0");
        assert_eq!(p.get("pid"), Some("2"));
        assert!(!p.truthy("n"));
    }

    #[test]
    fn xml_and_nvp() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"result":"success","orders":{"order":[{"id":1},{"id":2}]},"n":"a<b"}"#,
        )
        .unwrap();
        let xml = to_xml("getorders", &body);
        assert!(xml.contains("<orders><order><id>1</id></order><order><id>2</id></order></orders>"));
        assert!(to_nvp(&body).starts_with("result=success"));
    }
}
