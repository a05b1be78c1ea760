//! WHMCS reply parsing for every action the client calls, through `whmcs::parse_reply` (the
//! classification of status and body, then the lenient reply types) and `classify_reply` for
//! AcceptOrder. Invariant: a parsed reply serialises to JSON that parses back equal, so the
//! lenient id parsing accepts its own canonical output and loses nothing on the way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use whmcs::{AddOrderResponse, OrdersPage};

/// Parses, and checks that the canonical form of what was accepted parses back to itself.
fn round_trip<T>(action: &str, status: u16, body: &str) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let parsed: T = whmcs::parse_reply(action, status, body).ok()?;
    let mut json = serde_json::to_value(&parsed).expect("a reply serialises");
    if let Some(map) = json.as_object_mut() {
        map.insert("result".to_owned(), "success".into());
    }
    let again: T = whmcs::parse_reply(action, 200, &json.to_string())
        .unwrap_or_else(|e| panic!("{action}: its own output does not parse: {e}: {json}"));
    assert_eq!(again, parsed, "{action}: {json}");
    Some(parsed)
}

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = provisioning_fuzz::split_selector(data);
    let status = provisioning_fuzz::STATUSES[usize::from(selector >> 4) % 12];
    // reqwest's `text()` decodes lossily, so the parsers only ever see valid UTF-8.
    let body = String::from_utf8_lossy(rest);
    match selector % 6 {
        0 => {
            if let Ok(reply) =
                whmcs::parse_reply::<whmcs::ClientsDetailsReply>("GetClientsDetails", status, &body)
            {
                let _ = reply.client.is_closed();
            }
        }
        1 => {
            let _ = whmcs::parse_reply::<whmcs::PayMethodsReply>("GetPayMethods", status, &body);
        }
        2 => {
            if let Ok(reply) =
                whmcs::parse_reply::<whmcs::ProductsReply>("GetProducts", status, &body)
            {
                for product in &reply.products {
                    for cycle in whmcs::BillingCycle::ALL {
                        let _ = product.accepts_cycle(cycle);
                        let _ = product.price(None, cycle);
                    }
                }
            }
        }
        3 => {
            let _ = round_trip::<AddOrderResponse>("AddOrder", status, &body);
        }
        4 => {
            if let Err(err) = whmcs::classify_reply("AcceptOrder", status, &body) {
                let _ = (
                    err.contract_code(),
                    err.outcome_unknown(),
                    err.is_transient(),
                );
                let _ = err.to_string();
            }
        }
        _ => {
            if let Some(page) = round_trip::<OrdersPage>("GetOrders", status, &body) {
                for order in &page.orders {
                    let _ = (order.is_pending(), order.is_active(), order.service_ids());
                }
            }
        }
    }
});
