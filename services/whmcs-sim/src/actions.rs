//! The actions, with WHMCS's semantics and error texts (reference `whmcs.md` §2–3):
//!
//! - **GetClientsDetails** (`clientid` or `email`): `Either clientid Or email Is Required`,
//!   `Client Not Found`.
//! - **GetPayMethods** (`clientid`, `paymethodid`, `type`): `Client ID Is Required`,
//!   `Client Not Found`, `Invalid Pay Method Type. Should be 'BankAccount' or 'CreditCard'`.
//! - **GetProducts** (`pid` as int or comma list, `gid`, `module`): pricing per currency with
//!   `-1.00` for disabled cycles; one-time prices in the `monthly` column.
//! - **GetPaymentMethods**: the active gateway modules.
//! - **AddOrder**: `Client ID Not Found`, `Unable to add order when client status is Closed`,
//!   `Invalid Payment Method. Valid options include …`, `Invalid IP address provided for
//!   'clientip'`, `No items added to cart so order cannot proceed`. Unknown pids are dropped
//!   silently; an unknown or disabled billing cycle silently becomes the product's first
//!   enabled one; `qty` only counts for products allowing quantities. Creates a Pending order
//!   (notes stored), Pending services and, unless `noinvoice`, an Unpaid invoice when the total
//!   is above zero (otherwise `invoiceid` 0). Ids come back as strings, as in WHMCS's docs.
//! - **AcceptOrder**: Pending only, else `Order ID not found or Status not Pending`. Module
//!   create runs when `autosetup` is truthy, or when no optional parameter is sent at all; with
//!   other optional parameters and no `autosetup` services become Active unprovisioned.
//! - **CancelOrder**: Pending only (same error); cancels services and the unpaid invoice.
//! - **GetOrders** (`id`, `userid`, `status`, `limitstart`, `limitnum` default 25): newest
//!   first, with `totalresults`, `startnumber`, `numreturned`, `orders.order[]`, `notes` and
//!   `lineitems.lineitem[]`.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::php::PhpParams;
use crate::state::{
    cycle_display, lock, now_text, AcceptRecord, Client, Data, Invoice, Order, PayType, Product,
    Service, WhmcsHandle, RECURRING_CYCLES,
};

type ActionResult = Result<Map<String, Value>, String>;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn money(amount: f64) -> String {
    format!("{amount:.2}")
}

pub(crate) fn run(sim: &WhmcsHandle, action: &str, params: &PhpParams, ip: IpAddr) -> ActionResult {
    let config = &sim.inner.config;
    let mut data = lock(&sim.inner.data);
    match action {
        "GetClientsDetails" => get_clients_details(&data, params, &config.currency_code),
        "GetPayMethods" => get_pay_methods(&data, params),
        "GetProducts" => get_products(&data, params, &config.currency_code),
        "GetPaymentMethods" => Ok(get_payment_methods(&config.gateways)),
        "AddOrder" => add_order(&mut data, params, &config.gateways, ip),
        "AcceptOrder" => accept_order(&mut data, params),
        "CancelOrder" => cancel_order(&mut data, params),
        "GetOrders" => get_orders(&data, params, &config.gateways, &config.currency_code),
        other => Err(format!("Command Not Found: {other}")),
    }
}

fn client_json(client: &Client, currency: &str) -> Value {
    json!({
        "userid": client.id,
        "id": client.id,
        "client_id": client.id,
        "uuid": format!("00000000-0000-4000-8000-{:012}", client.id),
        "firstname": client.firstname,
        "lastname": client.lastname,
        "fullname": format!("{} {}", client.firstname, client.lastname).trim().to_owned(),
        "companyname": client.companyname,
        "email": client.email,
        "address1": "1 Simulation Way",
        "city": "Testville",
        "state": "",
        "postcode": "00000",
        "countrycode": "US",
        "country": "US",
        "phonenumber": "",
        "currency": 1,
        "currency_code": currency,
        "defaultgateway": "",
        "groupid": 0,
        "status": client.status.as_str(),
        "credit": "0.00",
        "taxexempt": false,
        "disableautocc": false,
        "email_verified": false,
    })
}

fn get_clients_details(data: &Data, params: &PhpParams, currency: &str) -> ActionResult {
    let client = match (params.text("clientid"), params.text("email")) {
        (Some(id), _) => id.parse::<u64>().ok().and_then(|id| data.clients.get(&id)),
        (None, Some(email)) => data
            .clients
            .values()
            .find(|c| c.email.eq_ignore_ascii_case(email)),
        (None, None) => return Err("Either clientid Or email Is Required".to_owned()),
    };
    let client = client.ok_or_else(|| "Client Not Found".to_owned())?;
    let details = client_json(client, currency);
    // The client's fields are also repeated at the top level (deprecated, still sent).
    let mut body = object(details.clone());
    body.insert("client".to_owned(), details);
    Ok(body)
}

fn get_pay_methods(data: &Data, params: &PhpParams) -> ActionResult {
    let client_id = params
        .text("clientid")
        .ok_or_else(|| "Client ID Is Required".to_owned())?;
    let client = client_id
        .parse::<u64>()
        .ok()
        .and_then(|id| data.clients.get(&id))
        .ok_or_else(|| "Client Not Found".to_owned())?;
    let kind = match params.text("type") {
        None => None,
        Some("CreditCard") => Some(true),
        Some("BankAccount") => Some(false),
        Some(_) => {
            return Err(
                "Invalid Pay Method Type. Should be 'BankAccount' or 'CreditCard'".to_owned(),
            )
        }
    };
    let wanted_id = params.id("paymethodid");
    let methods: Vec<Value> = client
        .pay_methods
        .iter()
        .filter(|pm| kind.is_none_or(|card| pm.is_card() == card))
        .filter(|pm| wanted_id.is_none_or(|id| pm.id == id))
        .map(|pm| {
            let mut entry = json!({
                "id": pm.id,
                "type": pm.kind,
                "description": pm.description,
                "gateway_name": pm.gateway_name,
                "contact_type": "Client",
                "contact_id": client.id,
                "remote_token": pm.remote_token,
                "last_updated": pm.last_updated,
            });
            if let Value::Object(map) = &mut entry {
                if pm.is_card() {
                    map.insert("card_last_four".into(), json!(pm.card_last_four));
                    map.insert("expiry_date".into(), json!(pm.expiry_date));
                    map.insert("start_date".into(), json!(""));
                    map.insert("issue_number".into(), json!(""));
                    map.insert("card_type".into(), json!(pm.card_type));
                } else {
                    map.insert("bank_name".into(), json!(pm.bank_name));
                }
            }
            entry
        })
        .collect();
    Ok(object(
        json!({ "clientid": client.id, "paymethods": methods }),
    ))
}

fn product_json(product: &Product, currency: &str) -> Value {
    let mut pricing = Map::new();
    pricing.insert("prefix".into(), json!("$"));
    pricing.insert("suffix".into(), json!(format!(" {currency}")));
    for fee in [
        "msetupfee",
        "qsetupfee",
        "ssetupfee",
        "asetupfee",
        "bsetupfee",
        "tsetupfee",
    ] {
        pricing.insert(fee.into(), json!(money(product.setup_fee)));
    }
    for cycle in RECURRING_CYCLES {
        let price = match product.paytype {
            PayType::OneTime if cycle == "monthly" => product.prices.get("onetime").copied(),
            PayType::Recurring => product.prices.get(cycle).copied(),
            _ => None,
        };
        pricing.insert(cycle.into(), json!(money(price.unwrap_or(-1.0))));
    }
    json!({
        "pid": product.pid,
        "gid": product.gid,
        "type": "hostingaccount",
        "name": product.name,
        "slug": product.name.to_ascii_lowercase().replace(' ', "-"),
        "description": "",
        "module": product.module,
        "paytype": product.paytype.as_str(),
        "allowqty": u8::from(product.allowqty),
        "quantity_available": 0,
        "pricing": { currency: pricing },
        "customfields": { "customfield": [] },
        "configoptions": { "configoption": [] },
    })
}

fn get_products(data: &Data, params: &PhpParams, currency: &str) -> ActionResult {
    let pids: Option<Vec<u64>> = params.text("pid").map(|raw| {
        raw.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    });
    let gid = params.id("gid");
    let module = params.text("module");
    let products: Vec<Value> = data
        .products
        .values()
        .filter(|p| pids.as_ref().is_none_or(|ids| ids.contains(&p.pid)))
        .filter(|p| gid.is_none_or(|g| p.gid == g))
        .filter(|p| module.is_none_or(|m| p.module.eq_ignore_ascii_case(m)))
        .map(|p| product_json(p, currency))
        .collect();
    Ok(object(json!({
        "totalresults": products.len(),
        "products": { "product": products },
    })))
}

fn get_payment_methods(gateways: &[(String, String)]) -> Map<String, Value> {
    let list: Vec<Value> = gateways
        .iter()
        .map(|(module, display)| json!({ "module": module, "displayname": display }))
        .collect();
    object(json!({
        "totalresults": list.len(),
        "paymentmethods": { "paymentmethod": list },
    }))
}

/// `(key, pid, requested cycle, requested qty)` per cart position.
fn cart_positions(params: &PhpParams) -> Vec<(String, String, String, Option<String>)> {
    match params.array("pid") {
        Some(pids) => pids
            .iter()
            .map(|(key, pid)| {
                (
                    key.clone(),
                    pid.clone(),
                    params
                        .element("billingcycle", key)
                        .unwrap_or_default()
                        .to_owned(),
                    params.element("qty", key).map(str::to_owned),
                )
            })
            .collect(),
        // A scalar pid is one product, with scalar companions.
        None => params
            .text("pid")
            .map(|pid| {
                vec![(
                    "0".to_owned(),
                    pid.to_owned(),
                    params.get("billingcycle").unwrap_or_default().to_owned(),
                    params.get("qty").map(str::to_owned),
                )]
            })
            .unwrap_or_default(),
    }
}

fn ordernum(id: u64) -> String {
    // Ten digits that look random but are stable per id, like WHMCS's order numbers.
    format!(
        "{:010}",
        id.wrapping_mul(2_654_435_761).wrapping_add(1_000_000_000) % 10_000_000_000
    )
}

fn add_order(
    data: &mut Data,
    params: &PhpParams,
    gateways: &[(String, String)],
    ip: IpAddr,
) -> ActionResult {
    let client_id = params
        .id("clientid")
        .filter(|id| data.clients.contains_key(id))
        .ok_or_else(|| "Client ID Not Found".to_owned())?;
    let closed = data
        .clients
        .get(&client_id)
        .is_some_and(|c| c.status == crate::state::ClientStatus::Closed);
    if closed {
        return Err("Unable to add order when client status is Closed".to_owned());
    }
    let paymentmethod = params.text("paymentmethod").unwrap_or_default().to_owned();
    if !gateways.iter().any(|(module, _)| *module == paymentmethod) {
        let valid: Vec<&str> = gateways.iter().map(|(m, _)| m.as_str()).collect();
        return Err(format!(
            "Invalid Payment Method. Valid options include {}",
            valid.join(",")
        ));
    }
    let ipaddress = match params.text("clientip") {
        Some(raw) => raw
            .parse::<IpAddr>()
            .map_err(|_| "Invalid IP address provided for 'clientip'".to_owned())?
            .to_string(),
        None => ip.to_string(),
    };

    let mut lines = Vec::new();
    for (_, pid, cycle, qty) in cart_positions(params) {
        let Some(product) = pid
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|p| data.products.get(&p))
        else {
            continue;
        };
        let Some(cycle) = product.resolve_cycle(&cycle) else {
            continue;
        };
        let qty = if product.allowqty {
            qty.and_then(|q| q.trim().parse::<u32>().ok())
                .filter(|q| *q >= 1)
                .unwrap_or(1)
        } else {
            1
        };
        let amount = product.price(&cycle) * f64::from(qty) + product.setup_fee;
        lines.push((product.pid, product.name.clone(), cycle, qty, amount));
    }
    if lines.is_empty() {
        return Err("No items added to cart so order cannot proceed".to_owned());
    }

    let order_id = data.next("order");
    let services: Vec<Service> = lines
        .into_iter()
        .map(|(pid, product, billingcycle, qty, amount)| Service {
            id: data.next("service"),
            pid,
            product,
            billingcycle,
            qty,
            amount,
            status: "Pending".to_owned(),
            provisioned: false,
        })
        .collect();
    let total: f64 = services.iter().map(|s| s.amount).sum();
    let noinvoice = params.truthy("noinvoice");
    let invoice_id = if !noinvoice && total > 0.0 {
        let id = data.next("invoice");
        data.invoices.insert(
            id,
            Invoice {
                id,
                client_id,
                total,
                status: "Unpaid".to_owned(),
            },
        );
        Some(id)
    } else {
        None
    };
    let service_ids: Vec<String> = services.iter().map(|s| s.id.to_string()).collect();
    data.orders.insert(
        order_id,
        Order {
            id: order_id,
            ordernum: ordernum(order_id),
            client_id,
            date: now_text(),
            status: "Pending".to_owned(),
            notes: params.get("notes").unwrap_or_default().to_owned(),
            paymentmethod,
            promocode: params.get("promocode").unwrap_or_default().to_owned(),
            amount: total,
            invoice_id,
            ipaddress,
            services,
            accept: None,
        },
    );
    let mut body = object(json!({
        "orderid": order_id.to_string(),
        "serviceids": service_ids.join(","),
        "productids": service_ids.join(","),
        "addonids": "",
        "domainids": "",
    }));
    if !noinvoice {
        body.insert(
            "invoiceid".to_owned(),
            json!(invoice_id.unwrap_or(0).to_string()),
        );
    }
    Ok(body)
}

fn pending_order<'a>(data: &'a mut Data, params: &PhpParams) -> Result<&'a mut Order, String> {
    let not_pending = || "Order ID not found or Status not Pending".to_owned();
    let id = params.id("orderid").ok_or_else(not_pending)?;
    data.orders
        .get_mut(&id)
        .filter(|o| o.status == "Pending")
        .ok_or_else(not_pending)
}

fn accept_order(data: &mut Data, params: &PhpParams) -> ActionResult {
    let optional = [
        "serverid",
        "serviceusername",
        "servicepassword",
        "registrar",
        "sendregistrar",
        "autosetup",
        "sendemail",
    ];
    let any_optional = optional.iter().any(|k| params.isset(k));
    let autosetup = params
        .isset("autosetup")
        .then(|| params.truthy("autosetup"));
    // WHMCS's trap: any optional parameter without `autosetup` resolves it to null, so no
    // module create runs; with no optional parameter the products' own setting applies (the
    // simulator's products all auto-setup).
    let module_create = match autosetup {
        Some(value) => value,
        None => !any_optional,
    };
    let order = pending_order(data, params)?;
    for service in order.services.iter_mut().filter(|s| s.status == "Pending") {
        service.status = "Active".to_owned();
        service.provisioned = module_create;
    }
    order.status = "Active".to_owned();
    order.accept = Some(AcceptRecord {
        autosetup,
        sendemail: params.truthy("sendemail"),
        sendregistrar: params.truthy("sendregistrar"),
        module_create_ran: module_create,
    });
    Ok(Map::new())
}

fn cancel_order(data: &mut Data, params: &PhpParams) -> ActionResult {
    let order = pending_order(data, params)?;
    order.status = "Cancelled".to_owned();
    for service in &mut order.services {
        service.status = "Cancelled".to_owned();
    }
    let invoice = order.invoice_id;
    if let Some(invoice) = invoice.and_then(|id| data.invoices.get_mut(&id)) {
        if invoice.status == "Unpaid" {
            invoice.status = "Cancelled".to_owned();
        }
    }
    Ok(Map::new())
}

fn order_json(data: &Data, order: &Order, gateways: &[(String, String)], currency: &str) -> Value {
    let client = data.clients.get(&order.client_id);
    let name = client
        .map(|c| format!("{} {}", c.firstname, c.lastname).trim().to_owned())
        .unwrap_or_default();
    let gateway_name = gateways
        .iter()
        .find(|(m, _)| *m == order.paymentmethod)
        .map(|(_, d)| d.clone())
        .unwrap_or_default();
    let paymentstatus = order
        .invoice_id
        .and_then(|id| data.invoices.get(&id))
        .map(|i| i.status.clone())
        .unwrap_or_default();
    let lineitems: Vec<Value> = order
        .services
        .iter()
        .map(|s| {
            json!({
                "type": "product",
                "relid": s.id,
                "producttype": "Hosting Account",
                "product": s.product,
                "domain": "",
                "billingcycle": cycle_display(&s.billingcycle),
                "amount": format!("${} {currency}", money(s.amount)),
                "status": s.status,
            })
        })
        .collect();
    json!({
        "id": order.id.to_string(),
        "ordernum": order.ordernum,
        "userid": order.client_id.to_string(),
        "contactid": "0",
        "requestor_id": "0",
        "admin_requestor_id": "0",
        "date": order.date,
        "nameservers": "",
        "transfersecret": "",
        "renewals": "",
        "promocode": order.promocode,
        "promotype": "",
        "promovalue": "",
        "orderdata": "[]",
        "amount": money(order.amount),
        "paymentmethod": order.paymentmethod,
        "invoiceid": order.invoice_id.unwrap_or(0).to_string(),
        "status": order.status,
        "ipaddress": order.ipaddress,
        "fraudmodule": "",
        "fraudoutput": "",
        "notes": order.notes,
        "paymentmethodname": gateway_name,
        "paymentstatus": paymentstatus,
        "name": name,
        "currencyprefix": "$",
        "currencysuffix": format!(" {currency}"),
        "frauddata": "",
        "validationdata": "",
        "lineitems": { "lineitem": lineitems },
    })
}

fn get_orders(
    data: &Data,
    params: &PhpParams,
    gateways: &[(String, String)],
    currency: &str,
) -> ActionResult {
    let id = params.id("id");
    let userid = params.id("userid");
    let status = params.text("status");
    let start = params
        .text("limitstart")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = params
        .text("limitnum")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(25);
    let matching: Vec<&Order> = data
        .orders
        .values()
        .rev()
        .filter(|o| id.is_none_or(|id| o.id == id))
        .filter(|o| userid.is_none_or(|u| o.client_id == u))
        .filter(|o| status.is_none_or(|s| o.status.eq_ignore_ascii_case(s)))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|o| order_json(data, o, gateways, currency))
        .collect();
    Ok(object(json!({
        "totalresults": matching.len(),
        "startnumber": start,
        "numreturned": page.len(),
        "orders": { "order": page },
    })))
}
