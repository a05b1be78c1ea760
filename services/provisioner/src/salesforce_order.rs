//! The Order as the provisioner reads it: one SOQL query for the Order, its Account's WHMCS
//! client id and its items (docs/contract.md §4), plus the further pages of the items when Salesforce
//! pages them ([`read_order`]).

use salesforce::rest::{QueryResult, RestClient, RestError};
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

/// A child relationship's rows nested in a record. Salesforce pages them like a query: when
/// there are more than one page holds, `done` is false and `next_records_url` names the rest.
#[derive(Debug, Clone, Deserialize)]
pub struct SfChildren<T> {
    #[serde(default = "Vec::new")]
    pub records: Vec<T>,
    /// Absent in hand-written or older answers, which hold every row.
    #[serde(default = "all_rows_here")]
    pub done: bool,
    #[serde(rename = "nextRecordsUrl", default)]
    pub next_records_url: Option<String>,
}

fn all_rows_here() -> bool {
    true
}

impl<T> SfChildren<T> {
    /// Where the next page is: `None` when every row is here. A result that says more rows
    /// follow but not where is an error: going on would act on part of the order.
    pub fn next_page(&self) -> Result<Option<&str>, RestError> {
        match (self.done, self.next_records_url.as_deref()) {
            (true, _) => Ok(None),
            (false, Some(url)) => Ok(Some(url)),
            (false, None) => Err(RestError::Decode(
                "a child result is not done but has no nextRecordsUrl".to_owned(),
            )),
        }
    }

    /// Adds a page read through `next_records_url`. A page that is not the last must bring
    /// rows: a cursor that never advances would otherwise be followed forever.
    pub fn append(&mut self, mut page: QueryResult<T>) -> Result<(), RestError> {
        if !page.done && page.records.is_empty() {
            return Err(RestError::Decode(
                "a page of a child result brought no rows and is not the last".to_owned(),
            ));
        }
        self.records.append(&mut page.records);
        self.done = page.done;
        self.next_records_url = page.next_records_url;
        Ok(())
    }
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

/// The query's text up to the condition on `Id`: one place for the fields, so a lone read and a
/// batched one ([`soql_in`]) ask for the same.
const SELECT_ORDERS_BY_ID: &str = "SELECT Id, AccountId, Status, Activation_Status__c, WHMCS_Order_ID__c, Account.WH_Account__c, \
     (SELECT Id, Quantity, Product2.Name, Product2.WH_Product_ID__c, Product2.Billing_Cycle__c FROM OrderItems) \
     FROM Order WHERE Id";

/// The query, for an id already validated as a Salesforce id (so it cannot break out of the
/// quotes).
pub fn soql(order_id: &str) -> String {
    format!("{SELECT_ORDERS_BY_ID} = '{order_id}'")
}

/// The same query for several Orders at once (`Id IN (...)`), for ids already validated as
/// Salesforce ids. The caller bounds the number of ids, which bounds the URL's length.
pub fn soql_in<'a>(order_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut query = format!("{SELECT_ORDERS_BY_ID} IN (");
    for (n, id) in order_ids.into_iter().enumerate() {
        if n > 0 {
            query.push_str(", ");
        }
        query.push('\'');
        query.push_str(id);
        query.push('\'');
    }
    query.push(')');
    query
}

/// Reads the Order ([`soql`]) and every one of its items: when Salesforce pages the nested
/// `OrderItems`, their `nextRecordsUrl` is followed until the last page, so an order is never
/// mapped from part of its items. `None` when there is no such Order. Any failure on the way,
/// also on a later page, is the call's error.
pub async fn read_order(rest: &RestClient, order_id: &str) -> Result<Option<SfOrder>, RestError> {
    let Some(mut order) = rest
        .query::<SfOrder>(&soql(order_id))
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    read_remaining_items(rest, &mut order).await?;
    Ok(Some(order))
}

/// Follows the nested `OrderItems`' `nextRecordsUrl` of an Order read by a query until its
/// last page, so the Order holds every item.
pub async fn read_remaining_items(rest: &RestClient, order: &mut SfOrder) -> Result<(), RestError> {
    if let Some(items) = order.order_items.as_mut() {
        while let Some(next) = items.next_page()? {
            let page = rest.query_more::<SfOrderItem>(next).await?;
            items.append(page)?;
        }
    }
    Ok(())
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

/// Salesforce `Billing_Cycle__c` → WHMCS cycle (docs/contract.md §4); anything else is `None`, never a
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
    fn the_batched_query_asks_for_what_the_single_one_does() {
        let single = soql("801000000000001AAA");
        assert!(
            single.ends_with("FROM Order WHERE Id = '801000000000001AAA'"),
            "{single}"
        );
        let batched = soql_in(["801000000000001AAA", "801000000000002AAA"]);
        assert_eq!(
            batched,
            single.replace(
                "= '801000000000001AAA'",
                "IN ('801000000000001AAA', '801000000000002AAA')"
            )
        );
    }

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
        let items = order.order_items.unwrap();
        assert_eq!(items.records[0].quantity, Some(2.0));
        assert!(items.done);
        assert_eq!(items.next_page().unwrap(), None);
    }

    fn item(id: &str) -> Value {
        json!({"attributes": {"type": "OrderItem"}, "Id": id, "Quantity": 1.0})
    }

    fn ids(children: &SfChildren<SfOrderItem>) -> Vec<&str> {
        children.records.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn paged_items_name_their_next_page_and_pages_append_until_done() {
        let next = "/services/data/v62.0/query/01gD0000002HU6KIAW-2";
        let order: SfOrder = serde_json::from_value(json!({
            "Id": "801000000000001AAA",
            "OrderItems": {"totalSize": 5, "done": false, "nextRecordsUrl": next,
                           "records": [item("a"), item("b")]}
        }))
        .unwrap();
        let mut items = order.order_items.unwrap();
        assert_eq!(items.next_page().unwrap(), Some(next));

        let page: QueryResult<SfOrderItem> = serde_json::from_value(json!({
            "totalSize": 5, "done": false,
            "nextRecordsUrl": "/services/data/v62.0/query/01gD0000002HU6KIAW-4",
            "records": [item("c"), item("d")]
        }))
        .unwrap();
        items.append(page).unwrap();
        assert_eq!(
            items.next_page().unwrap(),
            Some("/services/data/v62.0/query/01gD0000002HU6KIAW-4")
        );
        let last: QueryResult<SfOrderItem> = serde_json::from_value(json!({
            "totalSize": 5, "done": true, "records": [item("e")]
        }))
        .unwrap();
        items.append(last).unwrap();
        assert_eq!(items.next_page().unwrap(), None);
        assert_eq!(ids(&items), ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn incomplete_children_without_a_way_on_are_errors() {
        let mut items: SfChildren<SfOrderItem> =
            serde_json::from_value(json!({"done": false, "records": [item("a")]})).unwrap();
        let err = items.next_page().unwrap_err();
        assert!(matches!(err, RestError::Decode(_)), "{err:?}");

        // A page that is not the last yet brings nothing would be followed forever.
        items.next_records_url = Some("/services/data/v62.0/query/01g-1".to_owned());
        let stuck = QueryResult {
            total_size: 3,
            done: false,
            next_records_url: Some("/services/data/v62.0/query/01g-1".to_owned()),
            records: Vec::<SfOrderItem>::new(),
        };
        assert!(matches!(items.append(stuck), Err(RestError::Decode(_))));
        assert_eq!(ids(&items), ["a"]);
    }
}
