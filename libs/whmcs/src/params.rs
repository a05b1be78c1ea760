//! Request parameters in the form PHP reads them.
//!
//! WHMCS parses the body with PHP's own rules, which generic encoders get wrong:
//! - arrays need bracket keys (`pid[0]=1&pid[1]=2`); repeated bare keys keep only the last value;
//! - flags are PHP truthiness, so the string `"false"` is *true*: flags go out as `1`/`0`.
//!
//! Keys are percent-encoded like PHP's `http_build_query` does (`pid%5B0%5D=1`); PHP decodes
//! the key before it looks for brackets.

/// Ordered form parameters for one call.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may hold service passwords; only the keys are shown.
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    /// A scalar parameter.
    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.pairs.push((key.to_owned(), value.to_string()));
        self
    }

    /// A scalar when present.
    pub fn set_opt<V: ToString>(&mut self, key: &str, value: Option<V>) -> &mut Self {
        if let Some(value) = value {
            self.set(key, value);
        }
        self
    }

    /// A flag as `1` or `0`, never `true`/`false` (PHP reads `"false"` as true).
    pub fn flag(&mut self, key: &str, value: bool) -> &mut Self {
        self.set(key, if value { "1" } else { "0" })
    }

    /// One element of a positional array: `key[index]=value`.
    pub fn element(&mut self, key: &str, index: usize, value: impl ToString) -> &mut Self {
        self.pairs
            .push((format!("{key}[{index}]"), value.to_string()));
        self
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `application/x-www-form-urlencoded` body.
    pub fn encode(&self) -> String {
        // Encoding a list of string pairs cannot fail; the fallback only keeps this total.
        serde_urlencoded::to_string(&self.pairs).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_use_indexed_brackets_and_flags_are_numeric() {
        let mut params = Params::new();
        params
            .set("action", "AddOrder")
            .element("pid", 0, 7)
            .element("pid", 1, 9)
            .element("billingcycle", 0, "monthly")
            .element("billingcycle", 1, "annually")
            .flag("noinvoice", true)
            .flag("noemail", false)
            .set_opt::<u32>("promocode", None);
        assert_eq!(
            params.encode(),
            "action=AddOrder&pid%5B0%5D=7&pid%5B1%5D=9&billingcycle%5B0%5D=monthly\
             &billingcycle%5B1%5D=annually&noinvoice=1&noemail=0"
        );
        let decoded: Vec<(String, String)> = serde_urlencoded::from_str(&params.encode()).unwrap();
        assert_eq!(decoded[1], ("pid[0]".to_owned(), "7".to_owned()));
        assert!(!params.encode().contains("true") && !params.encode().contains("false"));
    }

    #[test]
    fn values_are_percent_encoded_and_debug_hides_them() {
        let mut params = Params::new();
        params
            .set("notes", "prov:801 & more=1")
            .set("secret", "hunter2");
        assert_eq!(
            params.encode(),
            "notes=prov%3A801+%26+more%3D1&secret=hunter2"
        );
        assert_eq!(params.get("notes"), Some("prov:801 & more=1"));
        assert!(!format!("{params:?}").contains("hunter2"));
    }
}
