//! The simulated installation's data and the in-process control API ([`WhmcsHandle`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::WhmcsSimConfig;
use crate::error::SimError;
use crate::faults::ActionFaults;

/// Every billing cycle by system name, recurring ones in WHMCS's fallback order.
pub const RECURRING_CYCLES: [&str; 6] = [
    "monthly",
    "quarterly",
    "semiannually",
    "annually",
    "biennially",
    "triennially",
];

/// The display form WHMCS stores and returns (`Semi-Annually`).
pub fn cycle_display(cycle: &str) -> &'static str {
    match cycle {
        "free" => "Free Account",
        "onetime" => "One Time",
        "monthly" => "Monthly",
        "quarterly" => "Quarterly",
        "semiannually" => "Semi-Annually",
        "annually" => "Annually",
        "biennially" => "Biennially",
        "triennially" => "Triennially",
        _ => "",
    }
}

/// Months per recurring cycle, for default prices.
fn cycle_months(cycle: &str) -> f64 {
    match cycle {
        "quarterly" => 3.0,
        "semiannually" => 6.0,
        "annually" => 12.0,
        "biennially" => 24.0,
        "triennially" => 36.0,
        _ => 1.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientStatus {
    Active,
    Inactive,
    Closed,
}

impl ClientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Inactive => "Inactive",
            Self::Closed => "Closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PayMethod {
    pub id: u64,
    /// `RemoteCreditCard`, `CreditCard`, `BankAccount`, `RemoteBankAccount`.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub gateway_name: String,
    pub card_last_four: Option<String>,
    pub expiry_date: Option<String>,
    pub card_type: Option<String>,
    pub bank_name: Option<String>,
    pub remote_token: String,
    pub last_updated: String,
}

impl PayMethod {
    pub fn is_card(&self) -> bool {
        self.kind.contains("CreditCard")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Client {
    pub id: u64,
    pub firstname: String,
    pub lastname: String,
    pub companyname: String,
    pub email: String,
    pub status: ClientStatus,
    pub pay_methods: Vec<PayMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayType {
    Free,
    #[serde(rename = "onetime")]
    OneTime,
    Recurring,
}

impl PayType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::OneTime => "onetime",
            Self::Recurring => "recurring",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product {
    pub pid: u64,
    pub gid: u64,
    pub name: String,
    pub module: String,
    pub paytype: PayType,
    pub allowqty: bool,
    /// Enabled recurring cycles with their price; one-time products keep their price under
    /// `onetime` (WHMCS stores it in the monthly column). A cycle absent here is `-1.00`.
    pub prices: BTreeMap<String, f64>,
    pub setup_fee: f64,
}

impl Product {
    /// The cycle AddOrder ends up with for a requested one: free/one-time products take it
    /// from the pay type; an unknown or disabled recurring cycle silently becomes the first
    /// enabled one (monthly → triennially), as WHMCS does. `None` when nothing is enabled.
    pub fn resolve_cycle(&self, requested: &str) -> Option<String> {
        match self.paytype {
            PayType::Free => Some("free".to_owned()),
            PayType::OneTime => Some("onetime".to_owned()),
            PayType::Recurring => {
                let requested = requested.trim().to_ascii_lowercase();
                if self.prices.contains_key(&requested) {
                    return Some(requested);
                }
                RECURRING_CYCLES
                    .iter()
                    .find(|c| self.prices.contains_key(**c))
                    .map(|c| (*c).to_owned())
            }
        }
    }

    pub fn price(&self, cycle: &str) -> f64 {
        self.prices.get(cycle).copied().unwrap_or(0.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub id: u64,
    pub pid: u64,
    pub product: String,
    /// System name (`monthly`).
    pub billingcycle: String,
    pub qty: u32,
    pub amount: f64,
    /// `Pending`, `Active`, `Cancelled`.
    pub status: String,
    /// Whether the product module's create ran on acceptance (false: marked Active only).
    pub provisioned: bool,
}

/// How AcceptOrder was called for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcceptRecord {
    /// The `autosetup` parameter as PHP reads it; `None` when not sent.
    pub autosetup: Option<bool>,
    pub sendemail: bool,
    pub sendregistrar: bool,
    /// Whether module create ran (see the AcceptOrder trap in the reference).
    pub module_create_ran: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub id: u64,
    pub ordernum: String,
    pub client_id: u64,
    pub date: String,
    /// `Pending`, `Active`, `Cancelled`, `Fraud` (or anything set through the admin API).
    pub status: String,
    pub notes: String,
    pub paymentmethod: String,
    pub promocode: String,
    pub amount: f64,
    pub invoice_id: Option<u64>,
    pub ipaddress: String,
    pub services: Vec<Service>,
    pub accept: Option<AcceptRecord>,
}

impl Order {
    pub fn service_ids(&self) -> Vec<u64> {
        self.services.iter().map(|s| s.id).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invoice {
    pub id: u64,
    pub client_id: u64,
    pub total: f64,
    /// `Unpaid`, `Paid`, `Cancelled`.
    pub status: String,
}

/// Calls per action and other counters, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WhmcsStats {
    /// By canonical action name (`AddOrder`), or the lower-cased name for unknown actions.
    pub calls: BTreeMap<String, u64>,
    pub auth_failures: u64,
    /// Injected faults that fired.
    pub faults_fired: u64,
}

impl WhmcsStats {
    /// Calls of `action`, in any spelling WHMCS accepts (`AddOrder`, `addorder`).
    pub fn calls(&self, action: &str) -> u64 {
        let key = crate::api::canonical_action(&crate::api::normalize_action(action));
        self.calls.get(&key).copied().unwrap_or(0)
    }
}

/// What [`WhmcsHandle::seed_demo`] creates, documented in the crate docs.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSeed {
    pub clients: Vec<(u64, String)>,
    pub products: Vec<(u64, String)>,
    pub client_without_pay_method: u64,
    pub closed_client: u64,
}

/// A product to seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSpec {
    pub name: String,
    /// System cycle names. `onetime` or `free` make a one-time/free product (alone only);
    /// otherwise the recurring cycles enabled. Empty: a recurring product with no enabled
    /// cycle, which AddOrder drops from the cart.
    #[serde(default)]
    pub cycles: Vec<String>,
    #[serde(default)]
    pub allowqty: bool,
    /// Monthly-equivalent price; each cycle costs this times its months. Default 10.
    #[serde(default)]
    pub monthly_price: Option<f64>,
    #[serde(default)]
    pub setup_fee: f64,
    #[serde(default)]
    pub module: Option<String>,
}

/// A client to seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default = "active")]
    pub status: ClientStatus,
    #[serde(default)]
    pub with_pay_method: bool,
}

fn active() -> ClientStatus {
    ClientStatus::Active
}

#[derive(Debug, Default)]
pub(crate) struct Data {
    pub next_id: HashMap<&'static str, u64>,
    pub clients: BTreeMap<u64, Client>,
    pub products: BTreeMap<u64, Product>,
    pub orders: BTreeMap<u64, Order>,
    pub invoices: BTreeMap<u64, Invoice>,
}

impl Data {
    pub fn next(&mut self, table: &'static str) -> u64 {
        let id = self.next_id.entry(table).or_insert(0);
        *id += 1;
        *id
    }
}

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    pub per_action: BTreeMap<String, ActionFaults>,
    pub latency_all: Duration,
    /// Actions whose calls wait at a gate the test opens ([`WhmcsHandle::gate`]).
    pub gates: BTreeMap<String, crate::faults::GateState>,
}

#[derive(Debug, Default)]
pub(crate) struct AccessState {
    /// Failed authentications per IP (times within the window).
    pub failures: HashMap<IpAddr, Vec<Instant>>,
    pub banned_until: HashMap<IpAddr, Instant>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: WhmcsSimConfig,
    pub data: Mutex<Data>,
    pub faults: Mutex<FaultState>,
    pub stats: Mutex<WhmcsStats>,
    pub access: Mutex<AccessState>,
}

pub(crate) use platform::sync::lock;

pub(crate) fn now_text() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ')
        .collect::<String>()
        .trim()
        .to_ascii_lowercase()
        .replace(' ', ".");
    if s.is_empty() {
        "client".to_owned()
    } else {
        s
    }
}

fn new_pay_method(id: u64, gateway: &str, bank: bool) -> PayMethod {
    if bank {
        PayMethod {
            id,
            kind: "RemoteBankAccount".to_owned(),
            description: "Business account".to_owned(),
            gateway_name: gateway.to_owned(),
            card_last_four: None,
            expiry_date: None,
            card_type: None,
            bank_name: Some("Sim Bank".to_owned()),
            remote_token: format!("ba_sim_{id:06}"),
            last_updated: now_text(),
        }
    } else {
        PayMethod {
            id,
            kind: "RemoteCreditCard".to_owned(),
            description: String::new(),
            gateway_name: gateway.to_owned(),
            card_last_four: Some("4242".to_owned()),
            expiry_date: Some("12/30".to_owned()),
            card_type: Some("Visa".to_owned()),
            bank_name: None,
            remote_token: format!("pm_sim_{id:06}"),
            last_updated: now_text(),
        }
    }
}

/// In-process control of a running simulator: seeding, inspection, faults, counters. The
/// admin API ([`crate::admin`]) offers the same over HTTP. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WhmcsHandle {
    pub(crate) inner: Arc<Inner>,
}

impl WhmcsHandle {
    pub(crate) fn new(config: WhmcsSimConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                data: Mutex::default(),
                faults: Mutex::default(),
                stats: Mutex::default(),
                access: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &WhmcsSimConfig {
        &self.inner.config
    }

    /// An Active client named `name` (company name; first word as first name), with one stored
    /// card on the first gateway when `with_pay_method`.
    pub fn seed_client(&self, name: &str, with_pay_method: bool) -> u64 {
        self.seed_client_with(&ClientSpec {
            name: name.to_owned(),
            email: None,
            status: ClientStatus::Active,
            with_pay_method,
        })
    }

    pub fn seed_client_with(&self, spec: &ClientSpec) -> u64 {
        let gateway = self.default_gateway();
        let mut data = lock(&self.inner.data);
        let id = data.next("client");
        let mut words = spec.name.split_whitespace();
        let firstname = words.next().unwrap_or("Client").to_owned();
        let lastname = words.collect::<Vec<_>>().join(" ");
        let pay_methods = if spec.with_pay_method {
            let pm_id = data.next("paymethod");
            vec![new_pay_method(pm_id, &gateway, false)]
        } else {
            Vec::new()
        };
        let client = Client {
            id,
            firstname,
            lastname,
            companyname: spec.name.clone(),
            email: spec
                .email
                .clone()
                .unwrap_or_else(|| format!("{}.{id}@example.test", slug(&spec.name))),
            status: spec.status,
            pay_methods,
        };
        data.clients.insert(id, client);
        id
    }

    fn default_gateway(&self) -> String {
        self.inner
            .config
            .gateways
            .iter()
            .find(|(m, _)| m == "stripe")
            .or_else(|| self.inner.config.gateways.first())
            .map(|(m, _)| m.clone())
            .unwrap_or_else(|| "stripe".to_owned())
    }

    pub fn set_client_status(&self, client_id: u64, status: ClientStatus) -> Result<(), SimError> {
        let mut data = lock(&self.inner.data);
        let client = data
            .clients
            .get_mut(&client_id)
            .ok_or_else(|| SimError::NotFound(format!("client {client_id}")))?;
        client.status = status;
        Ok(())
    }

    /// Stores a card (or, with `bank`, a bank account) for the client; returns its id.
    pub fn add_pay_method(
        &self,
        client_id: u64,
        gateway: Option<&str>,
        bank: bool,
    ) -> Result<u64, SimError> {
        let gateway = gateway.map_or_else(|| self.default_gateway(), str::to_owned);
        let mut data = lock(&self.inner.data);
        if !data.clients.contains_key(&client_id) {
            return Err(SimError::NotFound(format!("client {client_id}")));
        }
        let id = data.next("paymethod");
        if let Some(client) = data.clients.get_mut(&client_id) {
            client.pay_methods.push(new_pay_method(id, &gateway, bank));
        }
        Ok(id)
    }

    /// Removes every stored pay method of the client; returns how many there were.
    pub fn remove_pay_methods(&self, client_id: u64) -> Result<usize, SimError> {
        let mut data = lock(&self.inner.data);
        let client = data
            .clients
            .get_mut(&client_id)
            .ok_or_else(|| SimError::NotFound(format!("client {client_id}")))?;
        Ok(std::mem::take(&mut client.pay_methods).len())
    }

    pub fn client(&self, client_id: u64) -> Option<Client> {
        lock(&self.inner.data).clients.get(&client_id).cloned()
    }

    pub fn clients(&self) -> Vec<Client> {
        lock(&self.inner.data).clients.values().cloned().collect()
    }

    /// A product with the given cycles (system names, see [`ProductSpec::cycles`]) at a
    /// default price. Unknown cycle names are ignored with a warning; use
    /// [`Self::seed_product_with`] to have them rejected.
    pub fn seed_product(&self, name: &str, cycles: &[&str]) -> u64 {
        let known: Vec<String> = cycles
            .iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| {
                let ok = !cycle_display(c).is_empty();
                if !ok {
                    tracing::warn!(cycle = %c, product = name, "Ignoring an unknown billing cycle.");
                }
                ok
            })
            .collect();
        let only_special = known.iter().any(|c| c == "onetime" || c == "free");
        let cycles = if only_special && known.len() > 1 {
            // A product has one pay type: one-time/free wins over recurring cycles.
            known
                .into_iter()
                .filter(|c| c == "onetime" || c == "free")
                .take(1)
                .collect()
        } else {
            known
        };
        let spec = ProductSpec {
            name: name.to_owned(),
            cycles,
            allowqty: false,
            monthly_price: None,
            setup_fee: 0.0,
            module: None,
        };
        // The spec was cleaned above, so validation cannot fail; keep a fallback anyway.
        self.seed_product_with(&spec).unwrap_or_else(|err| {
            tracing::error!(error = %err, "Could not seed a product.");
            0
        })
    }

    pub fn seed_product_with(&self, spec: &ProductSpec) -> Result<u64, SimError> {
        let cycles: Vec<String> = spec
            .cycles
            .iter()
            .map(|c| c.trim().to_ascii_lowercase())
            .collect();
        if let Some(bad) = cycles.iter().find(|c| cycle_display(c).is_empty()) {
            return Err(SimError::Invalid(format!("billing cycle {bad:?}")));
        }
        let special: Vec<&String> = cycles
            .iter()
            .filter(|c| *c == "onetime" || *c == "free")
            .collect();
        if !special.is_empty() && cycles.len() > 1 {
            return Err(SimError::Invalid(
                "cycles: onetime and free cannot be combined with other cycles".to_owned(),
            ));
        }
        let monthly = spec.monthly_price.unwrap_or(10.0);
        if !monthly.is_finite()
            || monthly < 0.0
            || !spec.setup_fee.is_finite()
            || spec.setup_fee < 0.0
        {
            return Err(SimError::Invalid("price".to_owned()));
        }
        let (paytype, prices) = match special.first().map(|s| s.as_str()) {
            Some("free") => (PayType::Free, BTreeMap::new()),
            Some(_) => (
                PayType::OneTime,
                BTreeMap::from([("onetime".to_owned(), monthly)]),
            ),
            None => (
                PayType::Recurring,
                cycles
                    .iter()
                    .map(|c| {
                        (
                            c.clone(),
                            (monthly * cycle_months(c) * 100.0).round() / 100.0,
                        )
                    })
                    .collect(),
            ),
        };
        let mut data = lock(&self.inner.data);
        let pid = data.next("product");
        data.products.insert(
            pid,
            Product {
                pid,
                gid: 1,
                name: spec.name.clone(),
                module: spec.module.clone().unwrap_or_default(),
                paytype,
                allowqty: spec.allowqty,
                prices,
                setup_fee: spec.setup_fee,
            },
        );
        Ok(pid)
    }

    pub fn products(&self) -> Vec<Product> {
        lock(&self.inner.data).products.values().cloned().collect()
    }

    /// Every order, newest first.
    pub fn orders(&self) -> Vec<Order> {
        lock(&self.inner.data)
            .orders
            .values()
            .rev()
            .cloned()
            .collect()
    }

    /// The client's orders, newest first (`.len()` is the count).
    pub fn orders_for_client(&self, client_id: u64) -> Vec<Order> {
        lock(&self.inner.data)
            .orders
            .values()
            .rev()
            .filter(|o| o.client_id == client_id)
            .cloned()
            .collect()
    }

    pub fn order(&self, order_id: u64) -> Option<Order> {
        lock(&self.inner.data).orders.get(&order_id).cloned()
    }

    /// Sets an order's status directly (e.g. to test AcceptOrder on a non-Pending order).
    pub fn set_order_status(&self, order_id: u64, status: &str) -> Result<(), SimError> {
        if status.trim().is_empty() {
            return Err(SimError::Invalid("empty order status".to_owned()));
        }
        let mut data = lock(&self.inner.data);
        let order = data
            .orders
            .get_mut(&order_id)
            .ok_or_else(|| SimError::NotFound(format!("order {order_id}")))?;
        order.status = status.trim().to_owned();
        Ok(())
    }

    pub fn invoice(&self, invoice_id: u64) -> Option<Invoice> {
        lock(&self.inner.data).invoices.get(&invoice_id).cloned()
    }

    /// Replaces the faults of one action (any spelling: `AddOrder`, `addorder`).
    pub fn set_faults(&self, action: &str, faults: ActionFaults) {
        let key = crate::api::normalize_action(action);
        let mut state = lock(&self.inner.faults);
        if faults.is_empty() {
            state.per_action.remove(&key);
        } else {
            state.per_action.insert(key, faults);
        }
    }

    /// Current faults by canonical action name.
    pub fn faults(&self) -> BTreeMap<String, ActionFaults> {
        lock(&self.inner.faults)
            .per_action
            .iter()
            .map(|(k, v)| (crate::api::canonical_action(k), v.clone()))
            .collect()
    }

    /// Closes a gate in front of `action` (any spelling): its calls wait there, before running,
    /// until the returned [`crate::faults::Gate`] is opened or dropped. For tests that must
    /// observe a job in the middle of a call without racing a timer.
    pub fn gate(&self, action: &str) -> crate::faults::Gate {
        let key = crate::api::normalize_action(action);
        let (gate, state) = crate::faults::Gate::closed();
        lock(&self.inner.faults).gates.insert(key, state);
        gate
    }

    /// Clears every fault, including the latency of all actions.
    pub fn clear_faults(&self) {
        let mut state = lock(&self.inner.faults);
        state.per_action.clear();
        state.latency_all = Duration::ZERO;
        state.gates.clear();
    }

    /// Latency added to every call (before any per-action latency).
    pub fn set_latency_all(&self, latency: Duration) {
        lock(&self.inner.faults).latency_all = latency;
    }

    pub fn latency_all(&self) -> Duration {
        lock(&self.inner.faults).latency_all
    }

    pub fn stats(&self) -> WhmcsStats {
        lock(&self.inner.stats).clone()
    }

    pub fn reset_stats(&self) {
        *lock(&self.inner.stats) = WhmcsStats::default();
    }

    /// Lifts every IP ban and forgets failed logins.
    pub fn clear_bans(&self) {
        *lock(&self.inner.access) = AccessState::default();
    }

    /// The demo data set (see the crate docs). On an empty simulator the ids are 1, 2, 3, 4
    /// for clients and 1, 2, 3 for products, matching `WH_Account__c`/`WH_Product_ID__c` of
    /// sf-sim's demo.
    pub fn seed_demo(&self) -> DemoSeed {
        let clients = [
            ("Acme Hosting GmbH", ClientStatus::Active, true),
            ("Globex Corporation", ClientStatus::Active, true),
            ("Umbrella Labs (no pay method)", ClientStatus::Active, false),
            ("Closed Industries", ClientStatus::Closed, true),
        ];
        let client_ids: Vec<(u64, String)> = clients
            .iter()
            .map(|(name, status, pm)| {
                let id = self.seed_client_with(&ClientSpec {
                    name: (*name).to_owned(),
                    email: None,
                    status: *status,
                    with_pay_method: *pm,
                });
                (id, (*name).to_owned())
            })
            .collect();
        let products = [
            (
                "Web Hosting Starter",
                vec!["monthly", "quarterly", "annually"],
                true,
                5.0,
            ),
            (
                "VPS Pro",
                vec!["monthly", "semiannually", "annually"],
                true,
                20.0,
            ),
            ("Domain Registration", vec!["onetime"], false, 12.0),
        ];
        let product_ids: Vec<(u64, String)> = products
            .iter()
            .filter_map(|(name, cycles, allowqty, price)| {
                self.seed_product_with(&ProductSpec {
                    name: (*name).to_owned(),
                    cycles: cycles.iter().map(|c| (*c).to_owned()).collect(),
                    allowqty: *allowqty,
                    monthly_price: Some(*price),
                    setup_fee: 0.0,
                    module: Some("cpanel".to_owned()),
                })
                .ok()
                .map(|id| (id, (*name).to_owned()))
            })
            .collect();
        DemoSeed {
            client_without_pay_method: client_ids.get(2).map_or(0, |c| c.0),
            closed_client: client_ids.get(3).map_or(0, |c| c.0),
            clients: client_ids,
            products: product_ids,
        }
    }
}
