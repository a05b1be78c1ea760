//! Query locators: Salesforce's server-side cursors behind `nextRecordsUrl`.
//!
//! A child subquery (`(SELECT ... FROM OrderItems)`) whose rows exceed the page size comes back
//! as the first page with `"done": false` and
//! `"nextRecordsUrl": "/services/data/v62.0/query/01gSm0000000001AAA-200"`; a parameterless GET of
//! that URL answers the next page in the standard query-result shape. The rows not yet served
//! are kept here, so a later change to the records does not shift the pages of an open cursor,
//! as in Salesforce.
//!
//! Cursors are released after [`IDLE_EXPIRY`] without use (a fault may shorten that), and at
//! most [`MAX_OPEN`] are open: opening one more releases the oldest (Salesforce's documented
//! limits per user). A released or never-issued locator answers `400 INVALID_QUERY_LOCATOR`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Rows per page of a child relationship when no fault overrides it, as Salesforce usually
/// pages nested results.
pub const DEFAULT_CHILD_PAGE_SIZE: usize = 200;

/// Salesforce releases a query cursor after 15 minutes of inactivity.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Open cursors per user; opening one more releases the oldest.
pub const MAX_OPEN: usize = 10;

/// How results are paged and how long their cursors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Rows per page (at least 1).
    pub page_size: usize,
    /// A cursor unused this long is released; zero releases it before its first use.
    pub idle_expiry: Duration,
}

impl Default for Paging {
    fn default() -> Self {
        Self {
            page_size: DEFAULT_CHILD_PAGE_SIZE,
            idle_expiry: IDLE_EXPIRY,
        }
    }
}

impl Paging {
    /// Salesforce's paging, changed where the faults say so.
    pub fn from_faults(faults: &crate::faults::Faults) -> Self {
        let default = Self::default();
        Self {
            page_size: faults
                .soql_child_page_size
                .map_or(default.page_size, std::num::NonZeroUsize::get),
            idle_expiry: faults
                .soql_locator_idle_ms
                .map_or(default.idle_expiry, Duration::from_millis),
        }
    }
}

#[derive(Debug)]
struct Cursor {
    /// Rows from offset `first` on, rendered as they were when the query ran.
    rows: Vec<Value>,
    first: usize,
    total: usize,
    page_size: usize,
    idle_expiry: Duration,
    last_used: Instant,
    /// Opening order, to find the oldest cursor when the limit is reached.
    serial: u64,
}

/// One page read through a locator.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub records: Vec<Value>,
    /// Every row of the cursor, also those on other pages (`totalSize`).
    pub total: usize,
    /// The offset of the following page; `None` when this is the last.
    pub next_offset: Option<usize>,
}

impl Page {
    /// The standard query-result body, with `nextRecordsUrl` only when more rows follow.
    pub fn to_json(&self, version: &str, locator: &str) -> Value {
        let mut body = json!({
            "totalSize": self.total,
            "done": self.next_offset.is_none(),
            "records": self.records,
        });
        if let (Some(offset), Some(obj)) = (self.next_offset, body.as_object_mut()) {
            obj.insert(
                "nextRecordsUrl".into(),
                Value::String(next_records_url(version, locator, offset)),
            );
        }
        body
    }
}

#[derive(Debug, Default)]
pub struct QueryLocators {
    open: HashMap<String, Cursor>,
    serial: u64,
}

/// `/services/data/{version}/query/{locator}-{offset}`.
pub fn next_records_url(version: &str, locator: &str, offset: usize) -> String {
    format!("/services/data/{version}/query/{locator}-{offset}")
}

/// `01g...-200` → (`01g...`, 200); anything else is `None`.
pub fn split(path_segment: &str) -> Option<(&str, usize)> {
    let (locator, offset) = path_segment.rsplit_once('-')?;
    if locator.is_empty() || offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((locator, offset.parse().ok()?))
}

impl QueryLocators {
    /// Opens a cursor over `rows` (everything after the first page, which starts at offset 0)
    /// and returns its locator.
    pub fn open(
        &mut self,
        rows: Vec<Value>,
        first: usize,
        total: usize,
        paging: Paging,
        now: Instant,
    ) -> String {
        self.release_idle(now);
        while self.open.len() >= MAX_OPEN {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, c)| c.serial)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.open.remove(&id),
                None => break,
            };
        }
        self.serial += 1;
        // Query locators are ids with key prefix 01g, like the records' ids.
        let locator = messages::salesforce_id::to_18(&format!("01gSm{:010}", self.serial));
        self.open.insert(
            locator.clone(),
            Cursor {
                rows,
                first,
                total,
                // A zero page would never make progress; the fault type already refuses it.
                page_size: paging.page_size.max(1),
                idle_expiry: paging.idle_expiry,
                last_used: now,
                serial: self.serial,
            },
        );
        locator
    }

    /// The page at `offset`, or `None` when the locator is unknown, released, or the offset is
    /// not one of its rows.
    pub fn page(&mut self, locator: &str, offset: usize, now: Instant) -> Option<Page> {
        self.release_idle(now);
        let cursor = self.open.get_mut(locator)?;
        let start = offset.checked_sub(cursor.first)?;
        if offset >= cursor.total || start >= cursor.rows.len() {
            return None;
        }
        cursor.last_used = now;
        let end = start
            .saturating_add(cursor.page_size)
            .min(cursor.rows.len());
        let records = cursor.rows.get(start..end)?.to_vec();
        let next = cursor.first + end;
        Some(Page {
            records,
            total: cursor.total,
            next_offset: (next < cursor.total).then_some(next),
        })
    }

    /// Releases every cursor, as a session's cursors expire (for tests of that path).
    pub fn release_all(&mut self) {
        self.open.clear();
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn release_idle(&mut self, now: Instant) {
        self.open
            .retain(|_, c| now.saturating_duration_since(c.last_used) < c.idle_expiry);
    }
}

/// Pages every child relationship named in `relationships` in a query result: a nested result
/// with more than a page of rows keeps the first page and gets `done: false` and a
/// `nextRecordsUrl` to the rest (its `totalSize` stays the count of all rows).
pub fn page_children(
    result: &mut Value,
    relationships: &[&str],
    paging: Paging,
    locators: &mut QueryLocators,
    version: &str,
    now: Instant,
) {
    let page_size = paging.page_size.max(1);
    let Some(records) = result.get_mut("records").and_then(Value::as_array_mut) else {
        return;
    };
    for record in records {
        for name in relationships {
            let Some(child) = record.get_mut(*name).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(rows) = child.get_mut("records").and_then(Value::as_array_mut) else {
                continue;
            };
            if rows.len() <= page_size {
                continue;
            }
            let total = rows.len();
            let rest = rows.split_off(page_size);
            let locator = locators.open(rest, page_size, total, paging, now);
            child.insert("totalSize".into(), json!(total));
            child.insert("done".into(), Value::Bool(false));
            child.insert(
                "nextRecordsUrl".into(),
                Value::String(next_records_url(version, &locator, page_size)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages_of(page_size: usize) -> Paging {
        Paging {
            page_size,
            ..Paging::default()
        }
    }

    fn rows(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({ "n": i })).collect()
    }

    fn result_with_children(n: usize) -> Value {
        json!({ "totalSize": 1, "done": true, "records": [
            { "Id": "801", "OrderItems": { "totalSize": n, "done": true, "records": rows(n) } }
        ]})
    }

    #[test]
    fn splits_locator_and_offset() {
        assert_eq!(
            split("01gD0000002HU6KIAW-2000"),
            Some(("01gD0000002HU6KIAW", 2000))
        );
        for bad in ["01gD0000002HU6KIAW", "-2000", "01g-", "01g-x2", "01g-+2"] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn small_child_results_are_left_whole() {
        let mut locators = QueryLocators::default();
        let mut result = result_with_children(2);
        let before = result.clone();
        page_children(
            &mut result,
            &["OrderItems"],
            pages_of(2),
            &mut locators,
            "v62.0",
            Instant::now(),
        );
        assert_eq!(result, before);
        assert_eq!(locators.open_count(), 0);
    }

    #[test]
    fn large_child_results_are_paged_to_the_end() {
        let now = Instant::now();
        let mut locators = QueryLocators::default();
        let mut result = result_with_children(5);
        page_children(
            &mut result,
            &["OrderItems"],
            pages_of(2),
            &mut locators,
            "v62.0",
            now,
        );
        let child = &result["records"][0]["OrderItems"];
        assert_eq!(child["totalSize"], 5);
        assert_eq!(child["done"], false);
        assert_eq!(child["records"], json!(rows(2)));
        let url = child["nextRecordsUrl"].as_str().unwrap();
        let segment = url.strip_prefix("/services/data/v62.0/query/").unwrap();
        let (locator, offset) = split(segment).unwrap();
        assert_eq!(offset, 2);
        assert!(
            locator.starts_with("01g") && locator.len() == 18,
            "{locator}"
        );

        let second = locators.page(locator, offset, now).unwrap();
        assert_eq!(second.records, rows(5)[2..4].to_vec());
        assert_eq!(second.total, 5);
        assert_eq!(second.next_offset, Some(4));
        let body = second.to_json("v62.0", locator);
        assert_eq!(body["done"], false);
        assert_eq!(
            body["nextRecordsUrl"],
            next_records_url("v62.0", locator, 4)
        );
        let last = locators.page(locator, 4, now).unwrap();
        assert_eq!(last.records, rows(5)[4..].to_vec());
        assert_eq!(last.next_offset, None);
        let body = last.to_json("v62.0", locator);
        assert_eq!(body["done"], true);
        assert!(body.get("nextRecordsUrl").is_none());
        // Offsets outside the cursor's remaining rows are not pages of it.
        assert_eq!(locators.page(locator, 5, now), None);
        assert_eq!(locators.page(locator, 1, now), None);
        assert_eq!(locators.page("01gSm0000000099AAA", 2, now), None);
    }

    #[test]
    fn cursors_expire_when_idle_and_the_oldest_gives_way() {
        let start = Instant::now();
        let mut locators = QueryLocators::default();
        let idle = locators.open(rows(3), 2, 5, pages_of(2), start);
        let used = locators.open(rows(3), 2, 5, pages_of(2), start);
        // Use keeps a cursor alive; the idle one is released once the period has passed.
        let later = start + IDLE_EXPIRY - Duration::from_secs(1);
        assert!(locators.page(&used, 2, later).is_some());
        let expired = start + IDLE_EXPIRY;
        assert_eq!(locators.page(&idle, 2, expired), None);
        assert!(locators.page(&used, 2, expired).is_some());

        locators.release_all();
        let first = locators.open(rows(1), 2, 3, pages_of(2), start);
        let others: Vec<String> = (1..MAX_OPEN)
            .map(|_| locators.open(rows(1), 2, 3, pages_of(2), start))
            .collect();
        assert_eq!(locators.open_count(), MAX_OPEN);
        let newest = locators.open(rows(1), 2, 3, pages_of(2), start);
        assert_eq!(locators.open_count(), MAX_OPEN);
        assert_eq!(locators.page(&first, 2, start), None, "oldest released");
        assert!(locators.page(&others[0], 2, start).is_some());
        assert!(locators.page(&newest, 2, start).is_some());

        // A zero idle period releases a cursor before anyone can use it.
        let gone = locators.open(
            rows(1),
            2,
            3,
            Paging {
                page_size: 2,
                idle_expiry: Duration::ZERO,
            },
            start,
        );
        assert_eq!(locators.page(&gone, 2, start), None);
    }

    #[test]
    fn faults_change_the_paging() {
        let faults = crate::faults::Faults {
            soql_child_page_size: std::num::NonZeroUsize::new(3),
            soql_locator_idle_ms: Some(0),
            ..crate::faults::Faults::default()
        };
        assert_eq!(
            Paging::from_faults(&faults),
            Paging {
                page_size: 3,
                idle_expiry: Duration::ZERO
            }
        );
        assert_eq!(
            Paging::from_faults(&crate::faults::Faults::default()),
            Paging {
                page_size: 200,
                idle_expiry: Duration::from_secs(900)
            }
        );
    }
}
