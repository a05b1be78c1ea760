//! Salesforce REST answers, through the functions the clients decode them with: a query page
//! (generic, and the provisioner's Order with its nested items), sObject Collections results, an
//! error body with any status (`salesforce::rest::error_from_reply`), and the OAuth token
//! endpoint's answer (`salesforce::auth::parse_token_response`). Invariant: collection results
//! serialise to JSON that decodes back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::salesforce_order::SfOrder;
use salesforce::rest::{decode_body, error_from_reply, QueryResult, SaveResult};

fuzz_target!(|data: &[u8]| {
    let (selector, body) = provisioning_fuzz::split_selector(data);
    let status = provisioning_fuzz::STATUSES[usize::from(selector >> 4) % 12];
    match selector % 5 {
        0 => {
            if let Ok(page) = decode_body::<QueryResult<serde_json::Value>>(body) {
                // The client follows nextRecordsUrl only while the page is not done.
                let _ = (page.done, page.next_records_url, page.total_size);
            }
        }
        1 => {
            if let Ok(page) = decode_body::<QueryResult<SfOrder>>(body) {
                for order in &page.records {
                    if let Some(items) = &order.order_items {
                        let _ = items.next_page();
                    }
                }
            }
        }
        2 => {
            if let Ok(results) = decode_body::<Vec<SaveResult>>(body) {
                let json = serde_json::to_vec(&results).expect("results serialise");
                let again: Vec<SaveResult> = decode_body(&json).expect("own output decodes");
                assert_eq!(again, results);
            }
        }
        3 => {
            // Only a failed status reaches error_from_reply.
            let status = if (200..300).contains(&status) {
                500
            } else {
                status
            };
            let err = error_from_reply(status, body);
            assert_eq!(err.http_status(), Some(status));
            let _ = (err.contract_code(), err.is_transient(), err.to_string());
        }
        _ => match salesforce::auth::parse_token_response(status, body, 1) {
            Ok(token) => {
                assert!((200..300).contains(&status));
                // The org id becomes gRPC metadata (`tenantid`): plain ASCII alphanumerics only.
                assert!(!token.org_id.is_empty());
                assert!(token.org_id.bytes().all(|b| b.is_ascii_alphanumeric()));
                let _ = format!("{token:?}");
            }
            Err(err) => {
                let _ = (err.is_transient(), err.to_string());
            }
        },
    }
});
