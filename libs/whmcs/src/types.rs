//! Typed requests and replies of the actions the pipeline uses. Requests turn themselves into
//! [`Params`]; replies parse leniently ([`crate::lenient`]) and ignore fields they do not name.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lenient;
use crate::params::Params;

/// WHMCS billing cycles. AddOrder silently replaces an unknown or disabled cycle with the
/// product's first enabled one, so only these system names are ever sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BillingCycle {
    Free,
    #[serde(rename = "onetime")]
    OneTime,
    Monthly,
    Quarterly,
    #[serde(rename = "semiannually")]
    SemiAnnually,
    Annually,
    Biennially,
    Triennially,
}

impl BillingCycle {
    pub const ALL: [BillingCycle; 8] = [
        Self::Free,
        Self::OneTime,
        Self::Monthly,
        Self::Quarterly,
        Self::SemiAnnually,
        Self::Annually,
        Self::Biennially,
        Self::Triennially,
    ];

    /// The recurring cycles in the order WHMCS falls back through them.
    pub const RECURRING: [BillingCycle; 6] = [
        Self::Monthly,
        Self::Quarterly,
        Self::SemiAnnually,
        Self::Annually,
        Self::Biennially,
        Self::Triennially,
    ];

    /// The system name AddOrder expects (`semiannually`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::OneTime => "onetime",
            Self::Monthly => "monthly",
            Self::Quarterly => "quarterly",
            Self::SemiAnnually => "semiannually",
            Self::Annually => "annually",
            Self::Biennially => "biennially",
            Self::Triennially => "triennially",
        }
    }

    /// The display/stored form GetOrders and GetClientsProducts return (`Semi-Annually`).
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Free => "Free Account",
            Self::OneTime => "One Time",
            Self::Monthly => "Monthly",
            Self::Quarterly => "Quarterly",
            Self::SemiAnnually => "Semi-Annually",
            Self::Annually => "Annually",
            Self::Biennially => "Biennially",
            Self::Triennially => "Triennially",
        }
    }

    /// The GetProducts pricing key holding this cycle's price. One-time products keep their
    /// price in the `monthly` column; free products have none.
    pub fn pricing_key(self) -> Option<&'static str> {
        match self {
            Self::Free => None,
            Self::OneTime => Some("monthly"),
            other => Some(other.as_str()),
        }
    }

    pub fn is_recurring(self) -> bool {
        !matches!(self, Self::Free | Self::OneTime)
    }
}

impl fmt::Display for BillingCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WHMCS billing cycle")]
pub struct UnknownBillingCycle(pub String);

impl FromStr for BillingCycle {
    type Err = UnknownBillingCycle;

    /// Accepts system names and display forms, case-insensitively (`Semi-Annually`,
    /// `semiannually`, `One Time`, `One-Time`, `Free Account`). Nothing else: a guess here
    /// would become a silently different cycle in WHMCS.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        Ok(match key.as_str() {
            "free" | "freeaccount" => Self::Free,
            "onetime" => Self::OneTime,
            "monthly" => Self::Monthly,
            "quarterly" => Self::Quarterly,
            "semiannually" => Self::SemiAnnually,
            "annually" => Self::Annually,
            "biennially" => Self::Biennially,
            "triennially" => Self::Triennially,
            _ => return Err(UnknownBillingCycle(s.to_owned())),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// GetClientsDetails

/// The `client` object of GetClientsDetails (the fields the pipeline reads).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawClientDetails")]
pub struct ClientDetails {
    pub id: u64,
    pub firstname: String,
    pub lastname: String,
    pub companyname: String,
    pub email: String,
    /// `Active`, `Inactive` or `Closed`; AddOrder rejects Closed clients.
    pub status: String,
    pub defaultgateway: String,
    pub currency_code: String,
}

/// WHMCS sends the id as `id`, `client_id` and `userid` at once (versions differ in which), so
/// serde aliases, which reject duplicates, cannot be used.
#[derive(Deserialize)]
struct RawClientDetails {
    #[serde(default, deserialize_with = "lenient::opt_u64_any")]
    id: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64_any")]
    client_id: Option<u64>,
    #[serde(default, deserialize_with = "lenient::opt_u64_any")]
    userid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::string_any")]
    firstname: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    lastname: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    companyname: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    email: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    status: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    defaultgateway: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    currency_code: String,
}

impl TryFrom<RawClientDetails> for ClientDetails {
    type Error = String;

    fn try_from(raw: RawClientDetails) -> Result<Self, Self::Error> {
        Ok(Self {
            id: raw
                .id
                .or(raw.client_id)
                .or(raw.userid)
                .ok_or_else(|| "the client has no id".to_owned())?,
            firstname: raw.firstname,
            lastname: raw.lastname,
            companyname: raw.companyname,
            email: raw.email,
            status: raw.status,
            defaultgateway: raw.defaultgateway,
            currency_code: raw.currency_code,
        })
    }
}

impl ClientDetails {
    pub fn is_closed(&self) -> bool {
        self.status.eq_ignore_ascii_case("closed")
    }
}

/// GetClientsDetails' reply.
#[derive(Debug, Deserialize)]
pub struct ClientsDetailsReply {
    pub client: ClientDetails,
}

// ---------------------------------------------------------------------------------------------
// GetPayMethods

/// A stored pay method of a client (card or bank account, local or tokenised remotely).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PayMethod {
    #[serde(deserialize_with = "lenient::u64_any")]
    pub id: u64,
    /// `CreditCard`, `RemoteCreditCard`, `BankAccount`, `RemoteBankAccount`, `PayToken`.
    #[serde(rename = "type", default, deserialize_with = "lenient::string_any")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub description: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub gateway_name: String,
    #[serde(default, deserialize_with = "lenient::opt_string_any")]
    pub card_last_four: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string_any")]
    pub expiry_date: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string_any")]
    pub card_type: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string_any")]
    pub bank_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string_any")]
    pub last_updated: Option<String>,
}

/// GetPayMethods' reply (no `paymethods` key: none).
#[derive(Debug, Deserialize)]
pub struct PayMethodsReply {
    #[serde(default, deserialize_with = "lenient::list_any")]
    pub paymethods: Vec<PayMethod>,
}

// ---------------------------------------------------------------------------------------------
// GetProducts

/// GetProducts filters; all unset lists every product.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetProductsRequest {
    /// One or more product ids (sent as a comma list, as WHMCS accepts).
    pub pids: Vec<u64>,
    pub gid: Option<u64>,
    pub module: Option<String>,
}

impl GetProductsRequest {
    pub fn all() -> Self {
        Self::default()
    }

    pub fn pid(pid: u64) -> Self {
        Self {
            pids: vec![pid],
            ..Self::default()
        }
    }

    pub(crate) fn params(&self) -> Params {
        let mut params = Params::new();
        if !self.pids.is_empty() {
            let list: Vec<String> = self.pids.iter().map(u64::to_string).collect();
            params.set("pid", list.join(","));
        }
        params
            .set_opt("gid", self.gid)
            .set_opt("module", self.module.as_deref());
        params
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Product {
    #[serde(deserialize_with = "lenient::u64_any")]
    pub pid: u64,
    #[serde(default, deserialize_with = "lenient::opt_u64_any")]
    pub gid: Option<u64>,
    #[serde(rename = "type", default, deserialize_with = "lenient::string_any")]
    pub kind: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub module: String,
    /// `free`, `onetime` or `recurring`.
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub paytype: String,
    #[serde(default, deserialize_with = "lenient::bool_any")]
    pub allowqty: bool,
    /// Per currency code: `monthly`…`triennially`, `msetupfee`…, `prefix`, `suffix`. A price of
    /// `-1.00` means the cycle is disabled.
    #[serde(default, deserialize_with = "pricing_any")]
    pub pricing: BTreeMap<String, serde_json::Map<String, Value>>,
}

fn pricing_any<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, serde_json::Map<String, Value>>, D::Error> {
    // PHP renders an empty array as `[]`, not `{}`.
    match Value::deserialize(d)? {
        Value::Object(map) => Ok(map
            .into_iter()
            .filter_map(|(currency, prices)| match prices {
                Value::Object(prices) => Some((currency, prices)),
                _ => None,
            })
            .collect()),
        _ => Ok(BTreeMap::new()),
    }
}

impl Product {
    /// The price of `cycle` in `currency` (or the first currency listed), when enabled.
    pub fn price(&self, currency: Option<&str>, cycle: BillingCycle) -> Option<f64> {
        let prices = match currency {
            Some(code) => self.pricing.get(code)?,
            None => self.pricing.values().next()?,
        };
        let key = cycle.pricing_key()?;
        lenient::f64_from(prices.get(key)?).filter(|price| *price >= 0.0)
    }

    /// Whether AddOrder will keep `cycle` for this product rather than substitute another:
    /// free and one-time products take their cycle from the pay type; recurring ones need a
    /// price that is not `-1.00`.
    pub fn accepts_cycle(&self, cycle: BillingCycle) -> bool {
        match self.paytype.to_ascii_lowercase().as_str() {
            "free" => cycle == BillingCycle::Free,
            "onetime" => cycle == BillingCycle::OneTime,
            _ => cycle.is_recurring() && self.price(None, cycle).is_some(),
        }
    }
}

/// GetProducts' reply (no `products` key: none).
#[derive(Debug, Deserialize)]
pub struct ProductsReply {
    #[serde(default, deserialize_with = "lenient::list_any")]
    pub products: Vec<Product>,
}

// ---------------------------------------------------------------------------------------------
// AddOrder

/// One product line of AddOrder: the positions of `pid[]`, `billingcycle[]` and `qty[]` align.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub pid: u64,
    pub billingcycle: BillingCycle,
    /// WHMCS 8.12+; honoured only for products that allow quantities (otherwise 1).
    pub qty: Option<u32>,
}

/// AddOrder for an existing client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddOrderRequest {
    pub clientid: u64,
    /// A gateway module name (`stripe`, `mailin`, …) as GetPaymentMethods lists them.
    pub paymentmethod: String,
    pub items: Vec<OrderLine>,
    /// Stored as the order's notes and returned by GetOrders: the idempotency marker.
    pub notes: Option<String>,
    pub promocode: Option<String>,
    pub noinvoice: bool,
    pub noinvoiceemail: bool,
    pub noemail: bool,
}

impl AddOrderRequest {
    pub fn new(clientid: u64, paymentmethod: impl Into<String>, items: Vec<OrderLine>) -> Self {
        Self {
            clientid,
            paymentmethod: paymentmethod.into(),
            items,
            notes: None,
            promocode: None,
            noinvoice: false,
            noinvoiceemail: false,
            noemail: false,
        }
    }

    pub fn with_notes(mut self, notes: impl Into<String>) -> Self {
        self.notes = Some(notes.into());
        self
    }

    pub(crate) fn params(&self) -> Result<Params, String> {
        if self.items.is_empty() {
            return Err("an order needs at least one item".to_owned());
        }
        if self.paymentmethod.trim().is_empty() {
            return Err("paymentmethod is empty".to_owned());
        }
        let mut params = Params::new();
        params
            .set("clientid", self.clientid)
            .set("paymentmethod", self.paymentmethod.trim());
        for (i, item) in self.items.iter().enumerate() {
            params.element("pid", i, item.pid).element(
                "billingcycle",
                i,
                item.billingcycle.as_str(),
            );
            if let Some(qty) = item.qty {
                params.element("qty", i, qty);
            }
        }
        params
            .set_opt("notes", self.notes.as_deref())
            .set_opt("promocode", self.promocode.as_deref())
            .flag("noinvoice", self.noinvoice)
            .flag("noinvoiceemail", self.noinvoiceemail)
            .flag("noemail", self.noemail);
        Ok(params)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "RawAddOrderResponse")]
pub struct AddOrderResponse {
    pub orderid: u64,
    /// `serviceids` (or `productids`, its pre-7.8 name; WHMCS 7.8+ sends both).
    pub serviceids: Vec<u64>,
    pub addonids: Vec<u64>,
    pub domainids: Vec<u64>,
    /// Absent with `noinvoice`, and 0 when no invoice was generated: both are `None`.
    pub invoiceid: Option<u64>,
}

#[derive(Deserialize)]
struct RawAddOrderResponse {
    #[serde(deserialize_with = "lenient::u64_any")]
    orderid: u64,
    #[serde(default, deserialize_with = "lenient::id_list")]
    serviceids: Vec<u64>,
    #[serde(default, deserialize_with = "lenient::id_list")]
    productids: Vec<u64>,
    #[serde(default, deserialize_with = "lenient::id_list")]
    addonids: Vec<u64>,
    #[serde(default, deserialize_with = "lenient::id_list")]
    domainids: Vec<u64>,
    #[serde(default, deserialize_with = "lenient::opt_id")]
    invoiceid: Option<u64>,
}

impl From<RawAddOrderResponse> for AddOrderResponse {
    fn from(raw: RawAddOrderResponse) -> Self {
        Self {
            orderid: raw.orderid,
            serviceids: if raw.serviceids.is_empty() {
                raw.productids
            } else {
                raw.serviceids
            },
            addonids: raw.addonids,
            domainids: raw.domainids,
            invoiceid: raw.invoiceid,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AcceptOrder

/// AcceptOrder. `autosetup=1` is always sent: with any optional parameter present and
/// `autosetup` absent, WHMCS marks services Active *without* running the module create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptOrderRequest {
    pub orderid: u64,
    pub sendemail: bool,
    pub serverid: Option<u64>,
    pub registrar: Option<String>,
    pub sendregistrar: bool,
}

impl AcceptOrderRequest {
    pub fn new(orderid: u64) -> Self {
        Self {
            orderid,
            sendemail: false,
            serverid: None,
            registrar: None,
            sendregistrar: false,
        }
    }

    pub fn send_email(mut self, sendemail: bool) -> Self {
        self.sendemail = sendemail;
        self
    }

    pub(crate) fn params(&self) -> Params {
        let mut params = Params::new();
        params
            .set("orderid", self.orderid)
            .flag("autosetup", true)
            .flag("sendemail", self.sendemail)
            .set_opt("serverid", self.serverid)
            .set_opt("registrar", self.registrar.as_deref())
            .flag("sendregistrar", self.sendregistrar);
        params
    }
}

// ---------------------------------------------------------------------------------------------
// GetOrders

/// GetOrders filters. WHMCS's default page is 25 orders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOrdersRequest {
    pub id: Option<u64>,
    /// The client id.
    pub userid: Option<u64>,
    /// Exact status: `Pending`, `Active`, `Fraud`, `Cancelled` or a custom one.
    pub status: Option<String>,
    pub limitstart: Option<u64>,
    pub limitnum: Option<u64>,
}

impl GetOrdersRequest {
    pub fn by_id(id: u64) -> Self {
        Self {
            id: Some(id),
            ..Self::default()
        }
    }

    pub fn for_client(userid: u64) -> Self {
        Self {
            userid: Some(userid),
            ..Self::default()
        }
    }

    pub(crate) fn params(&self) -> Params {
        let mut params = Params::new();
        params
            .set_opt("id", self.id)
            .set_opt("userid", self.userid)
            .set_opt("status", self.status.as_deref())
            .set_opt("limitstart", self.limitstart)
            .set_opt("limitnum", self.limitnum);
        params
    }
}

/// Order statuses WHMCS ships with.
pub mod order_status {
    pub const PENDING: &str = "Pending";
    pub const ACTIVE: &str = "Active";
    pub const CANCELLED: &str = "Cancelled";
    pub const FRAUD: &str = "Fraud";
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct LineItem {
    #[serde(rename = "type", default, deserialize_with = "lenient::string_any")]
    pub kind: String,
    /// The service (or addon/domain) id.
    #[serde(default, deserialize_with = "lenient::opt_u64_any")]
    pub relid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub producttype: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub product: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub domain: String,
    /// Display form (`Monthly`, `Semi-Annually`, `One Time`).
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub billingcycle: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub amount: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Order {
    #[serde(deserialize_with = "lenient::u64_any")]
    pub id: u64,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub ordernum: String,
    #[serde(default, deserialize_with = "lenient::opt_u64_any")]
    pub userid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub date: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub amount: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub paymentmethod: String,
    #[serde(default, deserialize_with = "lenient::opt_id")]
    pub invoiceid: Option<u64>,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub status: String,
    #[serde(default, deserialize_with = "lenient::string_any")]
    pub notes: String,
    #[serde(default, deserialize_with = "lenient::list_any")]
    pub lineitems: Vec<LineItem>,
}

impl Order {
    pub fn is_pending(&self) -> bool {
        self.status.eq_ignore_ascii_case(order_status::PENDING)
    }

    pub fn is_active(&self) -> bool {
        self.status.eq_ignore_ascii_case(order_status::ACTIVE)
    }

    /// Service ids of the order's product lines.
    pub fn service_ids(&self) -> Vec<u64> {
        self.lineitems
            .iter()
            .filter(|item| item.kind.eq_ignore_ascii_case("product"))
            .filter_map(|item| item.relid)
            .collect()
    }
}

/// One page of GetOrders, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct OrdersPage {
    #[serde(default, deserialize_with = "lenient::u64_any_or_zero")]
    pub totalresults: u64,
    #[serde(default, deserialize_with = "lenient::u64_any_or_zero")]
    pub startnumber: u64,
    #[serde(default, deserialize_with = "lenient::u64_any_or_zero")]
    pub numreturned: u64,
    #[serde(default, deserialize_with = "lenient::list_any")]
    pub orders: Vec<Order>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn billing_cycles_parse_system_and_display_forms_only() {
        for cycle in BillingCycle::ALL {
            assert_eq!(cycle.as_str().parse::<BillingCycle>(), Ok(cycle));
            assert_eq!(cycle.display_name().parse::<BillingCycle>(), Ok(cycle));
        }
        assert_eq!("One-Time".parse(), Ok(BillingCycle::OneTime));
        assert_eq!("SEMI-ANNUALLY".parse(), Ok(BillingCycle::SemiAnnually));
        assert!("yearly".parse::<BillingCycle>().is_err());
        assert!("".parse::<BillingCycle>().is_err());
    }

    #[test]
    fn add_order_encodes_aligned_bracket_arrays() {
        let request = AddOrderRequest {
            noinvoice: true,
            ..AddOrderRequest::new(
                42,
                "stripe",
                vec![
                    OrderLine {
                        pid: 1,
                        billingcycle: BillingCycle::SemiAnnually,
                        qty: None,
                    },
                    OrderLine {
                        pid: 2,
                        billingcycle: BillingCycle::OneTime,
                        qty: Some(3),
                    },
                ],
            )
            .with_notes("prov:801xx")
        };
        let params = request.params().unwrap();
        let pairs: Vec<(&str, &str)> = params
            .pairs()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("clientid", "42"),
                ("paymentmethod", "stripe"),
                ("pid[0]", "1"),
                ("billingcycle[0]", "semiannually"),
                ("pid[1]", "2"),
                ("billingcycle[1]", "onetime"),
                ("qty[1]", "3"),
                ("notes", "prov:801xx"),
                ("noinvoice", "1"),
                ("noinvoiceemail", "0"),
                ("noemail", "0"),
            ]
        );
        assert!(AddOrderRequest::new(1, "stripe", vec![]).params().is_err());
    }

    #[test]
    fn accept_order_always_sends_autosetup() {
        let params = AcceptOrderRequest::new(5).params();
        assert_eq!(params.get("autosetup"), Some("1"));
        assert_eq!(params.get("sendemail"), Some("0"));
        assert_eq!(params.get("orderid"), Some("5"));
    }

    #[test]
    fn add_order_reply_with_string_ids() {
        let reply: AddOrderResponse = serde_json::from_value(json!({
            "result": "success", "orderid": "7", "productids": "3,4", "serviceids": "3,4",
            "addonids": "", "domainids": "", "invoiceid": "0"
        }))
        .unwrap();
        assert_eq!(reply.orderid, 7);
        assert_eq!(reply.serviceids, vec![3, 4]);
        assert!(reply.invoiceid.is_none() && reply.addonids.is_empty());
        let old: AddOrderResponse =
            serde_json::from_value(json!({"orderid": 1, "productids": "5"})).unwrap();
        assert_eq!(old.serviceids, vec![5]);
        let client: ClientDetails = serde_json::from_value(json!({
            "id": 3, "client_id": "3", "userid": 3, "status": "Closed"
        }))
        .unwrap();
        assert!(client.id == 3 && client.is_closed());
        let legacy: ClientDetails = serde_json::from_value(json!({"userid": "4"})).unwrap();
        assert_eq!(legacy.id, 4);
    }

    #[test]
    fn orders_page_and_products() {
        let page: OrdersPage = serde_json::from_value(json!({
            "totalresults": "2", "startnumber": 0, "numreturned": 1,
            "orders": {"order": [{"id": "9", "userid": 4, "status": "Pending", "notes": "prov:x",
                "invoiceid": "12",
                "lineitems": {"lineitem": [{"type": "product", "relid": "30",
                    "billingcycle": "Monthly", "amount": "10.00", "status": "Pending"}]}}]}
        }))
        .unwrap();
        assert_eq!(page.totalresults, 2);
        let order = &page.orders[0];
        assert_eq!(
            (order.id, order.userid, order.invoiceid),
            (9, Some(4), Some(12))
        );
        assert!(order.is_pending());
        assert_eq!(order.service_ids(), vec![30]);

        let product: Product = serde_json::from_value(json!({
            "pid": "3", "name": "VPS", "paytype": "recurring", "allowqty": "0",
            "pricing": {"USD": {"prefix": "$", "monthly": "10.00", "annually": "-1.00"}}
        }))
        .unwrap();
        assert!(product.accepts_cycle(BillingCycle::Monthly));
        assert!(!product.accepts_cycle(BillingCycle::Annually));
        assert!(!product.accepts_cycle(BillingCycle::Quarterly));
        assert_eq!(
            product.price(Some("USD"), BillingCycle::Monthly),
            Some(10.0)
        );
        let empty: Product = serde_json::from_value(json!({"pid": 1, "pricing": []})).unwrap();
        assert!(empty.pricing.is_empty());
    }
}
