//! The org's data: records of the four objects, the event log of the one topic, and the access
//! tokens issued. One `Store` lives behind one mutex in [`crate::state`]; nothing here awaits, so
//! the lock is never held across a suspension point.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::sobjects::SObject;

/// Replay ids start here and grow by [`REPLAY_STRIDE`]: far from zero, and not contiguous, so
/// a client that computes replay ids instead of storing the server's is caught.
pub const REPLAY_BASE: u64 = 1_000_000;
pub const REPLAY_STRIDE: u64 = 3;

#[derive(Debug, Clone)]
pub struct Record {
    pub object: SObject,
    pub fields: Map<String, Value>,
}

impl Record {
    pub fn get(&self, field: &str) -> &Value {
        self.fields.get(field).unwrap_or(&Value::Null)
    }

    pub fn id(&self) -> &str {
        self.fields
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// One event in the topic's log, as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub replay_id: u64,
    pub event_id: String,
    pub schema_id: String,
    pub payload: Vec<u8>,
    pub info: EventMeta,
}

/// What tests may want to know about an event without decoding it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventMeta {
    pub order_id: Option<String>,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    /// `None` for well-formed events; the poison kind's name otherwise.
    pub poison: Option<String>,
    /// `"sim"` (seeded through the handle or admin API) or `"publish"` (the gRPC Publish RPC).
    pub source: &'static str,
    pub published_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub last_used: Instant,
}

#[derive(Debug, Default)]
pub struct Store {
    records: HashMap<String, Record>,
    /// Insertion order per object: query results come back in creation order.
    by_object: HashMap<SObject, Vec<String>>,
    items_by_order: HashMap<String, Vec<String>>,
    deleted: HashSet<String>,
    next_id: u64,
    next_order_number: u64,
    pub events: Vec<StoredEvent>,
    pub tokens: HashMap<String, TokenInfo>,
    /// Every access token issued, revoked ones included, oldest first: tests search logs and
    /// telemetry for them (they must never appear there).
    pub issued_tokens: Vec<String>,
    /// Every JWT bearer assertion received by the token endpoint, oldest first, for the same
    /// searches.
    pub assertions: Vec<String>,
    pub api_usage: u64,
    /// Open query cursors (`nextRecordsUrl` of paged child results).
    pub query_locators: crate::rest::locator::QueryLocators,
}

/// The canonical (18-character) form of a syntactically valid id, whatever case its suffix has.
/// Salesforce compares ids by their case-sensitive first 15 characters.
pub fn canonical_id(id: &str) -> Option<String> {
    messages::salesforce_id::validate(id).ok()?;
    id.get(..15).map(messages::salesforce_id::to_18)
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A 15-character id: key prefix, a fixed pod part, then a base-62 counter, as real ids look.
fn id15(prefix: &str, n: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut rest = n;
    for slot in digits.iter_mut().rev() {
        // `rest % 62` is below 62, so the index is always in range.
        *slot = BASE62.get((rest % 62) as usize).copied().unwrap_or(b'0');
        rest /= 62;
    }
    let counter: String = digits.iter().map(|&b| char::from(b)).collect();
    format!("{prefix}Sm0{counter}")
}

impl Store {
    pub fn new() -> Self {
        Self {
            next_id: 1,
            next_order_number: 100,
            ..Self::default()
        }
    }

    pub fn new_id(&mut self, object: SObject) -> String {
        // Spread the counter so consecutive ids differ in more than the last character.
        let n = self.next_id * 7919;
        self.next_id += 1;
        messages::salesforce_id::to_18(&id15(object.key_prefix(), n))
    }

    pub fn next_order_number(&mut self) -> String {
        self.next_order_number += 1;
        format!("{:08}", self.next_order_number)
    }

    pub fn insert(&mut self, record: Record) {
        let id = record.id().to_owned();
        if record.object == SObject::OrderItem {
            if let Some(order_id) = record.get("OrderId").as_str() {
                self.items_by_order
                    .entry(order_id.to_owned())
                    .or_default()
                    .push(id.clone());
            }
        }
        self.by_object
            .entry(record.object)
            .or_default()
            .push(id.clone());
        self.records.insert(id, record);
    }

    /// A record by id in any accepted form.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.get(&canonical_id(id)?)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Record> {
        self.records.get_mut(&canonical_id(id)?)
    }

    pub fn is_deleted(&self, id: &str) -> bool {
        canonical_id(id).is_some_and(|id| self.deleted.contains(&id))
    }

    /// Deletes an order and, as Salesforce cascades, its items. Returns whether it existed.
    pub fn delete_order(&mut self, id: &str) -> bool {
        let Some(id) = canonical_id(id) else {
            return false;
        };
        match self.records.get(&id) {
            Some(r) if r.object == SObject::Order => {}
            _ => return false,
        }
        self.records.remove(&id);
        let items = self.items_by_order.remove(&id).unwrap_or_default();
        for item in &items {
            self.records.remove(item);
        }
        for list in self.by_object.values_mut() {
            list.retain(|r| r != &id && !items.contains(r));
        }
        self.deleted.insert(id);
        self.deleted.extend(items);
        true
    }

    /// All records of one object, in creation order.
    pub fn all(&self, object: SObject) -> impl Iterator<Item = &Record> {
        self.by_object
            .get(&object)
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(id))
    }

    pub fn items_of(&self, order_id: &str) -> impl Iterator<Item = &Record> {
        let key = canonical_id(order_id).unwrap_or_default();
        self.items_by_order
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.records.get(id))
    }

    /// Replay id of the newest event, or the base when the topic is empty: the position a
    /// LATEST subscriber starts after, and what keepalives report.
    pub fn tip(&self) -> u64 {
        self.events.last().map_or(REPLAY_BASE, |e| e.replay_id)
    }

    pub fn append_event(
        &mut self,
        event_id: String,
        schema_id: String,
        payload: Vec<u8>,
        info: EventMeta,
    ) -> &StoredEvent {
        let replay_id = self.tip() + REPLAY_STRIDE;
        let index = self.events.len();
        self.events.push(StoredEvent {
            replay_id,
            event_id,
            schema_id,
            payload,
            info,
        });
        &self.events[index]
    }

    /// Where a CUSTOM subscription starts: the index after the event with this replay id, or
    /// 0 when it names the empty topic's base. `None` when it names nothing stored.
    pub fn index_after(&self, replay_id: u64) -> Option<usize> {
        if replay_id == REPLAY_BASE {
            return Some(0);
        }
        self.events
            .binary_search_by_key(&replay_id, |e| e.replay_id)
            .ok()
            .map(|i| i + 1)
    }

    pub fn token_valid(&mut self, token: &str, lifetime: Duration) -> bool {
        let now = Instant::now();
        match self.tokens.get_mut(token) {
            // Salesforce sessions time out after inactivity, so every use extends the token.
            Some(info) if now.duration_since(info.last_used) < lifetime => {
                info.last_used = now;
                true
            }
            Some(_) => {
                self.tokens.remove(token);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid_and_typed() {
        let mut store = Store::new();
        let a = store.new_id(SObject::Account);
        let b = store.new_id(SObject::Account);
        let o = store.new_id(SObject::Order);
        assert_ne!(a, b);
        assert_eq!(a.len(), 18);
        assert!(a.starts_with("001") && o.starts_with("801"));
        assert_eq!(messages::salesforce_id::validate(&a), Ok(()));
        assert_eq!(canonical_id(&a[..15]), Some(a.clone()));
        assert_eq!(
            canonical_id(&format!("{}{}", &a[..15], a[15..].to_lowercase())),
            Some(a)
        );
        assert_eq!(canonical_id("not-an-id!"), None);
    }

    #[test]
    fn replay_ids_grow_and_are_found() {
        let mut store = Store::new();
        assert_eq!(store.tip(), REPLAY_BASE);
        assert_eq!(store.index_after(REPLAY_BASE), Some(0));
        let first = store
            .append_event("e1".into(), "s".into(), vec![], EventMeta::default())
            .replay_id;
        let second = store
            .append_event("e2".into(), "s".into(), vec![], EventMeta::default())
            .replay_id;
        assert!(second > first && first > REPLAY_BASE);
        assert_eq!(store.index_after(first), Some(1));
        assert_eq!(store.index_after(second), Some(2));
        assert_eq!(store.index_after(first + 1), None);
    }
}
