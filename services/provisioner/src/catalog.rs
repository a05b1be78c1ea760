//! WHMCS products, cached for a minute: AddOrder silently drops an unknown product id and
//! silently replaces a cycle the product does not offer, so every mapped item is checked against
//! GetProducts before the order is placed. Products change rarely; the cache keeps the check off
//! the critical path after the first order for a product.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use whmcs::types::{GetProductsRequest, Product};
use whmcs::{WhmcsClient, WhmcsError};

const FRESH_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Catalog {
    products: Mutex<HashMap<u64, (Instant, Option<Product>)>>,
}

impl Catalog {
    /// The products for `pids` (`None` for ids WHMCS does not know), from cache where fresh.
    pub async fn lookup(
        &self,
        whmcs: &WhmcsClient,
        pids: &[u64],
    ) -> Result<HashMap<u64, Option<Product>>, WhmcsError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.products.lock().await;
            for pid in pids {
                match cache.get(pid) {
                    Some((at, product)) if at.elapsed() < FRESH_FOR => {
                        found.insert(*pid, product.clone());
                    }
                    _ => missing.push(*pid),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort_unstable();
        missing.dedup();
        let fetched = whmcs
            .get_products(&GetProductsRequest {
                pids: missing.clone(),
                ..Default::default()
            })
            .await?;
        let mut cache = self.products.lock().await;
        let now = Instant::now();
        for pid in missing {
            let product = fetched.iter().find(|p| p.pid == pid).cloned();
            cache.insert(pid, (now, product.clone()));
            found.insert(pid, product);
        }
        Ok(found)
    }
}
