//! The Order as the provisioner reads it: one SOQL query for the Order, its Account's WHMCS
//! client id and its items (CONTRACT §4).

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct SfOrder {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "AccountId", default)]
    pub account_id: Option<String>,
    #[serde(rename = "Status", default)]
    pub status: Option<String>,
    #[serde(rename = "Activation_Status__c", default)]
    pub activation_status: Option<String>,
    #[serde(rename = "WHMCS_Order_ID__c", default)]
    pub whmcs_order_id: Option<Value>,
    #[serde(rename = "Account", default)]
    pub account: Option<SfAccount>,
    #[serde(rename = "OrderItems", default)]
    pub order_items: Option<SfChildren<SfOrderItem>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SfAccount {
    #[serde(rename = "WH_Account__c", default)]
    pub wh_account: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SfChildren<T> {
    #[serde(default = "Vec::new")]
    pub records: Vec<T>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SfOrderItem {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Quantity", default)]
    pub quantity: Option<f64>,
    #[serde(rename = "Product2", default)]
    pub product: Option<SfProduct>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SfProduct {
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    #[serde(rename = "WH_Product_ID__c", default)]
    pub wh_product_id: Option<Value>,
    #[serde(rename = "Billing_Cycle__c", default)]
    pub billing_cycle: Option<String>,
}

/// The query, for an id already validated as a Salesforce id (so it cannot break out of the
/// quotes).
pub fn soql(order_id: &str) -> String {
    format!(
        "SELECT Id, AccountId, Status, Activation_Status__c, WHMCS_Order_ID__c, Account.WH_Account__c, \
         (SELECT Id, Quantity, Product2.Name, Product2.WH_Product_ID__c, Product2.Billing_Cycle__c FROM OrderItems) \
         FROM Order WHERE Id = '{order_id}'"
    )
}

/// A positive whole number from a text or number field (`"42"`, `42`, `42.0`).
pub fn whole_number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= 9.0e15)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let trimmed = s.trim();
            trimmed.parse::<u64>().ok().or_else(|| {
                trimmed
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && *f >= 1.0 && *f <= 9.0e15)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
    .filter(|n| *n > 0)
}

/// Salesforce `Billing_Cycle__c` → WHMCS cycle (CONTRACT §4); anything else is `None`, never a
/// guess (WHMCS would silently substitute the first enabled cycle).
pub fn whmcs_cycle(billing_cycle: &str) -> Option<&'static str> {
    match billing_cycle.trim().to_ascii_lowercase().as_str() {
        "free" => Some("free"),
        "one time" => Some("onetime"),
        "monthly" => Some("monthly"),
        "quarterly" => Some("quarterly"),
        "semi-annually" => Some("semiannually"),
        "annually" => Some("annually"),
        "biennially" => Some("biennially"),
        "triennially" => Some("triennially"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cycles_map_case_insensitively_and_nothing_else() {
        assert_eq!(whmcs_cycle("Semi-Annually"), Some("semiannually"));
        assert_eq!(whmcs_cycle("ONE TIME"), Some("onetime"));
        assert_eq!(whmcs_cycle(" monthly "), Some("monthly"));
        assert_eq!(whmcs_cycle("Yearly"), None);
        assert_eq!(whmcs_cycle("semiannually"), None);
    }

    #[test]
    fn ids_parse_leniently() {
        assert_eq!(whole_number(Some(&json!("42"))), Some(42));
        assert_eq!(whole_number(Some(&json!(42.0))), Some(42));
        assert_eq!(whole_number(Some(&json!(7))), Some(7));
        assert_eq!(whole_number(Some(&json!("4.5"))), None);
        assert_eq!(whole_number(Some(&json!("0"))), None);
        assert_eq!(whole_number(Some(&json!(null))), None);
        assert_eq!(whole_number(None), None);
    }

    #[test]
    fn query_response_shape_parses() {
        let order: SfOrder = serde_json::from_value(json!({
            "attributes": {"type": "Order"}, "Id": "801000000000001AAA", "AccountId": "001000000000001AAA",
            "Status": "Draft", "Activation_Status__c": "Activating", "WHMCS_Order_ID__c": null,
            "Account": {"attributes": {"type": "Account"}, "WH_Account__c": "12"},
            "OrderItems": {"totalSize": 1, "done": true, "records": [
                {"Id": "802000000000001AAA", "Quantity": 2.0,
                 "Product2": {"Name": "Hosting", "WH_Product_ID__c": "5", "Billing_Cycle__c": "Monthly"}}]}
        }))
        .unwrap();
        assert_eq!(
            whole_number(order.account.as_ref().and_then(|a| a.wh_account.as_ref())),
            Some(12)
        );
        assert_eq!(order.order_items.unwrap().records[0].quantity, Some(2.0));
    }
}
