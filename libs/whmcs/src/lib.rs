//! Typed async client for the WHMCS External API (`includes/api.php`), as the provisioner uses
//! it (docs/contract.md §2 and §5; the API's traps are documented where each is handled).
//!
//! - [`settings`]: `WHMCS_API_URL`, `WHMCS_API_IDENTIFIER`, `WHMCS_API_SECRET`,
//!   `WHMCS_API_ACCESS_KEY`, `WHMCS_TIMEOUT_SECS`; `Debug` never shows the secrets.
//! - [`params`]: the request body PHP expects: bracket arrays (`pid[0]=…`), flags as `1`/`0`.
//! - [`client`]: one POST per call with `responsetype=json` and a per-call timeout; typed
//!   actions GetClientsDetails, GetPayMethods, GetProducts, AddOrder, AcceptOrder (always
//!   `autosetup=1`), GetOrders, and [`WhmcsClient::find_order_by_marker`] to reconcile an
//!   AddOrder whose outcome is unknown.
//! - [`error`]: failures classified as authentication, business (`result=error`) or transport,
//!   with the contract's error codes and [`WhmcsError::outcome_unknown`].
//! - [`lenient`]: parsers for ids and lists that WHMCS returns as strings or numbers.
//!
//! No call is ever retried here: AddOrder is not idempotent and failed authentications count
//! toward WHMCS's IP ban, so retry policy belongs to the caller.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use whmcs::{AddOrderRequest, BillingCycle, OrderLine, WhmcsClient, WhmcsSettings};
//! let env = platform::config::Env::process();
//! let client = WhmcsClient::new(WhmcsSettings::from_env(&env)?)?;
//! let marker = "prov:801000000000001AAA";
//! let request = AddOrderRequest::new(
//!     42,
//!     "stripe",
//!     vec![OrderLine { pid: 1, billingcycle: BillingCycle::Monthly, qty: None }],
//! )
//! .with_notes(marker);
//! match client.add_order(&request).await {
//!     Ok(created) => println!("order {}", created.orderid),
//!     Err(err) if err.outcome_unknown() => {
//!         let found = client.find_order_by_marker(42, marker).await?;
//!         println!("reconciled: {:?}", found.map(|o| o.id));
//!     }
//!     Err(err) => println!("failed with {}: {}", err.contract_code(), err.message()),
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod lenient;
pub mod params;
pub mod settings;
pub mod types;

pub use client::{classify_reply, parse_reply, WhmcsClient};
pub use error::WhmcsError;
pub use params::Params;
pub use settings::WhmcsSettings;
pub use types::{
    order_status, AcceptOrderRequest, AddOrderRequest, AddOrderResponse, BillingCycle,
    ClientDetails, ClientsDetailsReply, GetOrdersRequest, GetProductsRequest, LineItem, Order,
    OrderLine, OrdersPage, PayMethod, PayMethodsReply, Product, ProductsReply, UnknownBillingCycle,
};
