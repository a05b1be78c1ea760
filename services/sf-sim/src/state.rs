//! The shared state of one simulated org and [`SimHandle`], the in-process control surface that
//! tests use (the admin HTTP API is a thin JSON layer over the same methods).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::avro::{EventFields, SchemaRegistry, SchemaVersion, UNKNOWN_SCHEMA_ID};
use crate::config::SimConfig;
use crate::error::SimError;
use crate::faults::{take_status, Faults};
use crate::sobjects::SObject;
use crate::store::{canonical_id, EventMeta, Record, Store, TokenInfo};

pub(crate) use platform::sync::lock;

/// The URLs clients are given, fixed once the listeners are bound.
#[derive(Debug, Clone)]
pub(crate) struct Urls {
    pub login: String,
    pub instance: String,
    pub pubsub: String,
}

pub(crate) struct Inner {
    pub config: SimConfig,
    pub urls: Urls,
    /// The integration user, also the `CreatedById` of events.
    pub user_id: String,
    pub schemas: SchemaRegistry,
    pub decoding_key: jsonwebtoken::DecodingKey,
    pub cancel: CancellationToken,
    store: Mutex<Store>,
    stats: Mutex<SimStats>,
    faults: Mutex<Faults>,
    /// Bumped on every new event and fault change; Subscribe streams wait on it.
    wake: watch::Sender<u64>,
    /// Observers of Order writes ([`SimHandle::watch_order_writes`]); empty unless a benchmark
    /// or test asks, so the REST path pays nothing for them otherwise.
    order_writes: Mutex<Vec<mpsc::UnboundedSender<OrderWrite>>>,
}

/// One Order write through the REST API (a single PATCH or one record of a collection) that set
/// `Activation_Status__c`, with the moment it was stored: benchmarks time an order from its
/// approval to this without polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderWrite {
    /// The Order's 18-character id.
    pub order_id: String,
    /// The `Activation_Status__c` written (`null` is the empty string).
    pub status: String,
    pub at: Instant,
}

/// Counters for assertions. `rest_requests_by_route` keys are `"<METHOD> <route>"` with the
/// route relative to `/services/data/vNN.N` (e.g. `"GET /query"`,
/// `"PATCH /sobjects/{sobject}/{id}"`, `"PATCH /composite/sobjects"`), `"unmatched"` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStats {
    pub subscribe_calls: u64,
    pub fetch_requests: u64,
    /// Largest outstanding requested count on any stream, after the 100 cap.
    pub max_outstanding_seen: u32,
    pub events_delivered: u64,
    pub keepalives_sent: u64,
    /// Subscribe streams open right now.
    pub active_streams: u64,
    pub token_requests: u64,
    pub token_failures: u64,
    /// Pub/Sub calls (Subscribe, GetSchema, GetTopic, Publish) refused with UNAUTHENTICATED
    /// because their access token was missing, unknown, expired or revoked.
    pub pubsub_auth_refusals: u64,
    pub rest_requests: u64,
    pub rest_requests_by_route: BTreeMap<String, u64>,
    pub get_schema_calls: u64,
    pub get_topic_calls: u64,
    pub publish_calls: u64,
}

/// What a publish produced; `replay_id` is base64 in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedEvent {
    pub event_id: String,
    #[serde(with = "b64")]
    pub replay_id: Vec<u8>,
    pub schema_id: String,
}

/// An event to publish. `None` fields are null in the payload (nothing is made up), so tests can
/// produce events without a correlation id; [`SimHandle::approve_order`] fills everything in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSpec {
    pub order_id: Option<String>,
    pub idem_key: Option<String>,
    pub correlation_id: Option<String>,
    pub requested_by: Option<String>,
    pub version: Option<f64>,
    pub schema: SchemaVersion,
}

/// Events a subscriber must survive without stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoisonKind {
    /// Bytes that are not a record of the schema (a valid payload cut in half).
    UndecodableAvro,
    /// A valid record whose `OrderId__c` is null.
    MissingOrderId,
    /// A valid record whose `OrderId__c` is `"not-an-id!"`.
    MalformedOrderId,
    /// A schema id that `GetSchema` answers NOT_FOUND for.
    UnknownSchema,
}

impl PoisonKind {
    fn name(self) -> &'static str {
        match self {
            PoisonKind::UndecodableAvro => "undecodable_avro",
            PoisonKind::MissingOrderId => "missing_order_id",
            PoisonKind::MalformedOrderId => "malformed_order_id",
            PoisonKind::UnknownSchema => "unknown_schema",
        }
    }
}

/// One event of the topic's log, for assertions.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEventInfo {
    pub event_id: String,
    #[serde(with = "b64")]
    pub replay_id: Vec<u8>,
    pub schema_id: String,
    #[serde(flatten)]
    pub meta: EventMeta,
}

/// Ids created by [`SimHandle::seed_demo`].
#[derive(Debug, Clone, Serialize)]
pub struct DemoSeed {
    pub accounts: Vec<String>,
    pub products: Vec<String>,
    pub orders: Vec<String>,
    /// The account without `WH_Account__c` (orders for it fail with CLIENT_MISSING).
    pub account_without_client: String,
    /// The product without a WHMCS mapping (orders with it fail with MAPPING_MISSING).
    pub product_without_mapping: String,
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

/// Salesforce's REST datetime format, e.g. `2024-05-01T12:00:00.000+0000`.
pub(crate) fn sf_datetime(at: time::OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_default()
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

pub(crate) fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Takes `wanted` events from a one-shot "after N events" budget: how many may be delivered, and
/// whether the budget ran out with them (the fault fires and is cleared).
fn take_budget(slot: &mut Option<u32>, wanted: usize) -> (usize, bool) {
    match *slot {
        None => (wanted, false),
        Some(left) => {
            let left = usize::try_from(left).unwrap_or(usize::MAX);
            let allowed = wanted.min(left);
            let remaining = left - allowed;
            if remaining == 0 {
                *slot = None;
                (allowed, true)
            } else {
                *slot = Some(u32::try_from(remaining).unwrap_or(u32::MAX));
                (allowed, false)
            }
        }
    }
}

impl Inner {
    pub fn new(
        config: SimConfig,
        urls: Urls,
        decoding_key: jsonwebtoken::DecodingKey,
        cancel: CancellationToken,
    ) -> Result<Self, SimError> {
        let schemas = SchemaRegistry::for_channel(&config.channel)?;
        let store = Store::new();
        let user_id = messages::salesforce_id::to_18("005Sm0000000001");
        let (wake, _) = watch::channel(0);
        Ok(Self {
            config,
            urls,
            user_id,
            schemas,
            decoding_key,
            cancel,
            store: Mutex::new(store),
            stats: Mutex::new(SimStats::default()),
            faults: Mutex::new(Faults::default()),
            wake,
            order_writes: Mutex::new(Vec::new()),
        })
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    pub fn stat(&self, update: impl FnOnce(&mut SimStats)) {
        update(&mut lock(&self.stats));
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    pub fn update_faults<R>(&self, update: impl FnOnce(&mut Faults) -> R) -> R {
        let result = update(&mut lock(&self.faults));
        self.notify();
        result
    }

    /// Takes one unit of the "abort after N events" budget for `wanted` events: returns how many
    /// may be delivered and whether the stream must end after them.
    pub fn take_abort_budget(&self, wanted: usize) -> (usize, bool) {
        take_budget(&mut lock(&self.faults).pubsub_abort_after_events, wanted)
    }

    /// The same for "UNAUTHENTICATED after N events" (the session revoked mid-stream).
    pub fn take_unauthenticated_budget(&self, wanted: usize) -> (usize, bool) {
        take_budget(
            &mut lock(&self.faults).pubsub_unauthenticated_after_events,
            wanted,
        )
    }

    /// Revokes every access token, as an expired or revoked session does.
    pub fn revoke_tokens(&self) {
        self.store().tokens.clear();
    }

    /// The injected status (one use taken) and latency for a REST call to `path`.
    pub fn take_rest_fault(&self, path: &str) -> (Option<u16>, Duration) {
        let mut faults = lock(&self.faults);
        let status = take_status(&mut faults.rest_status);
        let slow = faults
            .rest_slow_records
            .as_ref()
            .map_or(Duration::ZERO, |slow| slow.latency_for(path));
        (status, faults.rest_latency.saturating_add(slow))
    }

    pub fn take_token_fault(&self) -> Option<u16> {
        take_status(&mut lock(&self.faults).token_status)
    }

    pub fn keepalive_interval(&self) -> Duration {
        lock(&self.faults)
            .keepalive_interval
            .unwrap_or(self.config.keepalive_interval)
    }

    /// Tells the observers that `order_id`'s `Activation_Status__c` was stored as `status`;
    /// observers that went away are dropped.
    pub fn order_written(&self, order_id: &str, status: &str) {
        let mut observers = lock(&self.order_writes);
        if observers.is_empty() {
            return;
        }
        let write = OrderWrite {
            order_id: order_id.to_owned(),
            status: status.to_owned(),
            at: Instant::now(),
        };
        observers.retain(|observer| observer.send(write.clone()).is_ok());
    }

    pub fn subscribe_wake(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    pub fn notify(&self) {
        self.wake.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn issue_token(&self) -> String {
        let org15 = self.config.org_id.get(..15).unwrap_or(&self.config.org_id);
        let token = format!("{org15}!AQ{}", random_token(94));
        let mut store = self.store();
        store.tokens.insert(
            token.clone(),
            TokenInfo {
                last_used: Instant::now(),
            },
        );
        store.issued_tokens.push(token.clone());
        token
    }

    pub fn record_assertion(&self, assertion: &str) {
        self.store().assertions.push(assertion.to_owned());
    }

    pub fn token_valid(&self, token: &str) -> bool {
        self.store().token_valid(token, self.config.token_lifetime)
    }

    /// The org id in either form, as `tenantid` may carry.
    pub fn is_org_id(&self, candidate: &str) -> bool {
        match candidate.len() {
            15 => self.config.org_id.get(..15) == Some(candidate),
            18 => canonical_id(candidate).is_some_and(|c| c == self.config.org_id),
            _ => false,
        }
    }

    /// Stores an event and wakes every stream.
    pub fn append_event(
        &self,
        event_id: String,
        schema_id: String,
        payload: Vec<u8>,
        meta: EventMeta,
    ) -> PublishedEvent {
        let published = {
            let mut store = self.store();
            let stored = store.append_event(event_id, schema_id, payload, meta);
            PublishedEvent {
                event_id: stored.event_id.clone(),
                replay_id: stored.replay_id.to_be_bytes().to_vec(),
                schema_id: stored.schema_id.clone(),
            }
        };
        self.notify();
        published
    }
}

/// In-process control of a running simulator; cheap to clone.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("org_id", &self.inner.config.org_id)
            .finish()
    }
}

impl SimHandle {
    pub fn org_id(&self) -> &str {
        &self.inner.config.org_id
    }

    /// The integration user's id (`CreatedById` of events, user in the token's `id` URL).
    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    pub fn channel(&self) -> &str {
        &self.inner.config.channel
    }

    /// The schema id of a version (V1 is the topic's current schema).
    pub fn schema_id(&self, version: SchemaVersion) -> String {
        self.inner.schemas.id_of(version).to_owned()
    }

    /// Creates an Account; returns its id.
    pub fn seed_account(&self, name: &str, wh_account: Option<&str>) -> String {
        let now = sf_datetime(time::OffsetDateTime::now_utc());
        let mut store = self.inner.store();
        let id = store.new_id(SObject::Account);
        let mut fields = Map::new();
        fields.insert("Id".into(), Value::String(id.clone()));
        fields.insert("Name".into(), Value::String(name.to_owned()));
        fields.insert("WH_Account__c".into(), opt_string(wh_account));
        fields.insert("CreatedDate".into(), Value::String(now.clone()));
        fields.insert("LastModifiedDate".into(), Value::String(now));
        store.insert(Record {
            object: SObject::Account,
            fields,
        });
        id
    }

    /// Creates a Product2; returns its id.
    pub fn seed_product(
        &self,
        name: &str,
        wh_product_id: Option<&str>,
        billing_cycle: Option<&str>,
    ) -> String {
        let now = sf_datetime(time::OffsetDateTime::now_utc());
        let mut store = self.inner.store();
        let id = store.new_id(SObject::Product2);
        let mut fields = Map::new();
        fields.insert("Id".into(), Value::String(id.clone()));
        fields.insert("Name".into(), Value::String(name.to_owned()));
        fields.insert("ProductCode".into(), Value::String(product_code(name)));
        fields.insert("IsActive".into(), Value::Bool(true));
        fields.insert("WH_Product_ID__c".into(), opt_string(wh_product_id));
        fields.insert("Billing_Cycle__c".into(), opt_string(billing_cycle));
        fields.insert("CreatedDate".into(), Value::String(now.clone()));
        fields.insert("LastModifiedDate".into(), Value::String(now));
        store.insert(Record {
            object: SObject::Product2,
            fields,
        });
        id
    }

    /// Creates a Draft Order with one OrderItem per `(product id, quantity)`; returns its id.
    /// Ids are stored as given (canonicalised when valid): a dangling account id makes the
    /// `Account` relationship null, as a deleted parent would.
    pub fn seed_order<S, Q>(&self, account_id: &str, items: &[(S, Q)]) -> String
    where
        S: AsRef<str>,
        Q: Into<f64> + Copy,
    {
        let at = time::OffsetDateTime::now_utc();
        let now = sf_datetime(at);
        let mut store = self.inner.store();
        let id = store.new_id(SObject::Order);
        let mut fields = Map::new();
        fields.insert("Id".into(), Value::String(id.clone()));
        fields.insert(
            "AccountId".into(),
            Value::String(canonical_or_raw(account_id)),
        );
        let number = store.next_order_number();
        fields.insert("OrderNumber".into(), Value::String(number));
        fields.insert("Status".into(), Value::String("Draft".into()));
        fields.insert("EffectiveDate".into(), Value::String(at.date().to_string()));
        for name in [
            "Activation_Status__c",
            "WHMCS_Order_ID__c",
            "Activation_Error_Code__c",
            "Activation_Error_Message__c",
        ] {
            fields.insert(name.into(), Value::Null);
        }
        fields.insert("CreatedDate".into(), Value::String(now.clone()));
        fields.insert("LastModifiedDate".into(), Value::String(now.clone()));
        store.insert(Record {
            object: SObject::Order,
            fields,
        });
        for (n, (product_id, quantity)) in items.iter().enumerate() {
            let item_id = store.new_id(SObject::OrderItem);
            let mut fields = Map::new();
            fields.insert("Id".into(), Value::String(item_id));
            fields.insert("OrderId".into(), Value::String(id.clone()));
            fields.insert(
                "Product2Id".into(),
                Value::String(canonical_or_raw(product_id.as_ref())),
            );
            fields.insert(
                "OrderItemNumber".into(),
                Value::String(format!("{:010}", n + 1)),
            );
            fields.insert("Quantity".into(), f64_value((*quantity).into()));
            fields.insert("UnitPrice".into(), f64_value(10.0));
            fields.insert("CreatedDate".into(), Value::String(now.clone()));
            store.insert(Record {
                object: SObject::OrderItem,
                fields,
            });
        }
        id
    }

    /// A small data set for the local demo: three good orders, one whose account has no WHMCS
    /// client, one with an unmapped product, one without items.
    pub fn seed_demo(&self) -> DemoSeed {
        let acme = self.seed_account("Acme Hosting GmbH", Some("1"));
        let globex = self.seed_account("Globex Corporation", Some("2"));
        let initech = self.seed_account("Initech (no WHMCS client)", None);
        let web = self.seed_product("Web Hosting Starter", Some("1"), Some("Monthly"));
        let vps = self.seed_product("VPS Pro", Some("2"), Some("Annually"));
        let domain = self.seed_product("Domain Registration", Some("3"), Some("One Time"));
        let unmapped = self.seed_product("Legacy Mail Add-on", None, Some("Monthly"));
        let orders = vec![
            self.seed_order(&acme, &[(web.as_str(), 1.0)]),
            self.seed_order(&acme, &[(vps.as_str(), 2.0), (domain.as_str(), 1.0)]),
            self.seed_order(&globex, &[(web.as_str(), 3.0)]),
            self.seed_order(&initech, &[(web.as_str(), 1.0)]),
            self.seed_order(&globex, &[(unmapped.as_str(), 1.0)]),
            self.seed_order::<&str, f64>(&globex, &[]),
        ];
        DemoSeed {
            accounts: vec![acme, globex, initech.clone()],
            products: vec![web, vps, domain, unmapped.clone()],
            orders,
            account_without_client: initech,
            product_without_mapping: unmapped,
        }
    }

    /// What the approval Flow does: marks the order `Activating` and publishes a complete event
    /// for it. Fails with [`SimError::NotFound`] for an unknown order (use
    /// [`SimHandle::publish_event`] to publish for ids that do not exist).
    pub fn approve_order(&self, order_id: &str) -> Result<PublishedEvent, SimError> {
        let order_id = {
            let mut store = self.inner.store();
            let record = store
                .get_mut(order_id)
                .filter(|r| r.object == SObject::Order)
                .ok_or_else(|| SimError::NotFound(order_id.to_owned()))?;
            record
                .fields
                .insert("Activation_Status__c".into(), "Activating".into());
            record.fields.insert(
                "LastModifiedDate".into(),
                Value::String(sf_datetime(time::OffsetDateTime::now_utc())),
            );
            record.id().to_owned()
        };
        self.publish_event(EventSpec {
            order_id: Some(order_id),
            idem_key: Some(uuid::Uuid::new_v4().to_string()),
            correlation_id: Some(uuid::Uuid::new_v4().to_string()),
            requested_by: Some("sim-operator".to_owned()),
            version: Some(1.0),
            schema: SchemaVersion::V1,
        })
    }

    /// Publishes one event on the channel.
    pub fn publish_event(&self, spec: EventSpec) -> Result<PublishedEvent, SimError> {
        let fields = EventFields {
            created_date_ms: now_ms(),
            created_by_id: self.inner.user_id.clone(),
            order_id: spec.order_id.clone(),
            idem_key: spec.idem_key.clone(),
            correlation_id: spec.correlation_id.clone(),
            requested_by: spec.requested_by,
            version: spec.version,
            priority: (spec.schema == SchemaVersion::V2).then(|| "Normal".to_owned()),
        };
        let payload = self.inner.schemas.encode(spec.schema, &fields)?;
        let meta = EventMeta {
            order_id: spec.order_id,
            idem_key: spec.idem_key,
            correlation_id: spec.correlation_id,
            poison: None,
            source: "sim",
            published_at_ms: fields.created_date_ms,
        };
        let schema_id = self.inner.schemas.id_of(spec.schema).to_owned();
        Ok(self
            .inner
            .append_event(uuid::Uuid::new_v4().to_string(), schema_id, payload, meta))
    }

    /// Publishes an event a subscriber cannot process.
    pub fn publish_poison(&self, kind: PoisonKind) -> Result<PublishedEvent, SimError> {
        let mut fields = EventFields {
            created_date_ms: now_ms(),
            created_by_id: self.inner.user_id.clone(),
            order_id: None,
            idem_key: Some(uuid::Uuid::new_v4().to_string()),
            correlation_id: Some(uuid::Uuid::new_v4().to_string()),
            requested_by: Some("sim-poison".to_owned()),
            version: Some(1.0),
            priority: None,
        };
        let mut schema_id = self.inner.schemas.current_id().to_owned();
        let payload = match kind {
            PoisonKind::MalformedOrderId => {
                fields.order_id = Some("not-an-id!".to_owned());
                self.inner.schemas.encode(SchemaVersion::V1, &fields)?
            }
            PoisonKind::MissingOrderId => self.inner.schemas.encode(SchemaVersion::V1, &fields)?,
            PoisonKind::UndecodableAvro => self.inner.schemas.undecodable(&fields)?,
            PoisonKind::UnknownSchema => {
                fields.order_id = Some(messages::salesforce_id::to_18("801Sm0000POISON"));
                schema_id = UNKNOWN_SCHEMA_ID.to_owned();
                self.inner.schemas.encode(SchemaVersion::V1, &fields)?
            }
        };
        let meta = EventMeta {
            order_id: fields.order_id,
            idem_key: fields.idem_key,
            correlation_id: fields.correlation_id,
            poison: Some(kind.name().to_owned()),
            source: "sim",
            published_at_ms: fields.created_date_ms,
        };
        Ok(self
            .inner
            .append_event(uuid::Uuid::new_v4().to_string(), schema_id, payload, meta))
    }

    /// Invalidates every access token issued so far.
    pub fn expire_tokens(&self) {
        self.inner.revoke_tokens();
    }

    /// Releases every open query cursor, as Salesforce does after 15 idle minutes: their
    /// `nextRecordsUrl`s then answer `INVALID_QUERY_LOCATOR`.
    pub fn expire_query_locators(&self) {
        self.inner.store().query_locators.release_all();
    }

    /// A valid access token without the OAuth round trip, for tests of other paths.
    pub fn issue_token(&self) -> String {
        self.inner.issue_token()
    }

    /// Every access token issued so far (revoked ones too), oldest first. Each is
    /// `<org id, 15 characters>!AQ` and 94 random characters, so a search for it finds nothing
    /// but the token.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.store().issued_tokens.clone()
    }

    /// Every JWT bearer assertion the token endpoint received (valid or not), oldest first.
    pub fn received_assertions(&self) -> Vec<String> {
        self.inner.store().assertions.clone()
    }

    pub fn faults(&self) -> Faults {
        self.inner.faults()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.inner.update_faults(|f| *f = faults);
    }

    pub fn update_faults(&self, update: impl FnOnce(&mut Faults)) {
        self.inner.update_faults(update);
    }

    pub fn stats(&self) -> SimStats {
        lock(&self.inner.stats).clone()
    }

    /// Zeroes the counters (except `active_streams`, which describes the present).
    pub fn reset_stats(&self) {
        self.inner.stat(|s| {
            *s = SimStats {
                active_streams: s.active_streams,
                ..SimStats::default()
            };
        });
    }

    /// Every later REST write of an Order's `Activation_Status__c`, in the order they were
    /// stored, each with the `Instant` it was stored at. Unbounded (a benchmark may let a
    /// backlog of 100,000 writes queue up); drop the receiver to stop.
    pub fn watch_order_writes(&self) -> mpsc::UnboundedReceiver<OrderWrite> {
        let (sender, receiver) = mpsc::unbounded_channel();
        lock(&self.inner.order_writes).push(sender);
        receiver
    }

    /// The Order's fields (including `Id`), or `None` when there is no such order.
    pub fn order(&self, order_id: &str) -> Option<Value> {
        let store = self.inner.store();
        store
            .get(order_id)
            .filter(|r| r.object == SObject::Order)
            .map(|r| Value::Object(r.fields.clone()))
    }

    /// The order's items' fields, in creation order.
    pub fn order_items(&self, order_id: &str) -> Vec<Value> {
        let store = self.inner.store();
        store
            .items_of(order_id)
            .map(|r| Value::Object(r.fields.clone()))
            .collect()
    }

    /// Sets a field of an Order without the REST API's validation (to build odd states).
    pub fn set_order_field(
        &self,
        order_id: &str,
        field: &str,
        value: Value,
    ) -> Result<(), SimError> {
        let def = SObject::Order
            .field(field)
            .ok_or_else(|| SimError::UnknownField(field.to_owned()))?;
        let mut store = self.inner.store();
        match store.get_mut(order_id) {
            Some(record) if record.object == SObject::Order => {
                record.fields.insert(def.name.to_owned(), value);
                Ok(())
            }
            _ => Err(SimError::NotFound(order_id.to_owned())),
        }
    }

    /// Deletes an Order (and its items); later updates get `ENTITY_IS_DELETED`.
    pub fn delete_order(&self, order_id: &str) -> bool {
        self.inner.store().delete_order(order_id)
    }

    /// Every event of the topic, oldest first.
    pub fn events(&self) -> Vec<StoredEventInfo> {
        let store = self.inner.store();
        store
            .events
            .iter()
            .map(|e| StoredEventInfo {
                event_id: e.event_id.clone(),
                replay_id: e.replay_id.to_be_bytes().to_vec(),
                schema_id: e.schema_id.clone(),
                meta: e.info.clone(),
            })
            .collect()
    }

    /// Replay id of the newest event (the base value when the topic is empty), 8 bytes.
    pub fn latest_replay_id(&self) -> Vec<u8> {
        self.inner.store().tip().to_be_bytes().to_vec()
    }
}

fn opt_string(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |v| Value::String(v.to_owned()))
}

fn f64_value(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn canonical_or_raw(id: &str) -> String {
    canonical_id(id).unwrap_or_else(|| id.to_owned())
}

fn product_code(name: &str) -> String {
    let code: String = name
        .split_whitespace()
        .filter_map(|w| w.chars().next())
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    format!("{code}-{:03}", rand::rng().random_range(0..1000))
}
