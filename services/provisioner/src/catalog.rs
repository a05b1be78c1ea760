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

/// Most products remembered at once. Product ids come from Salesforce data, so an org with a
/// runaway catalogue (or a bad import) must not grow the cache without bound.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
pub struct Catalog {
    products: Mutex<Cache>,
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
        make_room(&mut cache, missing.len(), MAX_ENTRIES);
        for pid in missing {
            let product = fetched.iter().find(|p| p.pid == pid).cloned();
            cache.insert(pid, (now, product.clone()));
            found.insert(pid, product);
        }
        Ok(found)
    }
}

type Cache = HashMap<u64, (Instant, Option<Product>)>;

/// Makes room for `incoming` entries within `max`: stale entries go first; if everything is
/// fresh and there is still no room, the cache starts over rather than grow.
fn make_room(cache: &mut Cache, incoming: usize, max: usize) {
    if cache.len() + incoming > max {
        cache.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
    }
    if cache.len() + incoming > max {
        cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_never_grows_past_its_bound() {
        let mut cache = Cache::new();
        let stale = Instant::now().checked_sub(FRESH_FOR * 2);
        for pid in 0..8u64 {
            let at = if pid < 4 {
                stale.unwrap_or_else(Instant::now)
            } else {
                Instant::now()
            };
            cache.insert(pid, (at, None));
        }
        make_room(&mut cache, 2, 10);
        assert_eq!(cache.len(), 8, "room enough: nothing dropped");
        make_room(&mut cache, 4, 10);
        if stale.is_some() {
            assert_eq!(cache.len(), 4, "stale entries dropped first");
        }
        make_room(&mut cache, 10, 10);
        assert!(cache.is_empty(), "no room even when fresh: start over");
    }
}
