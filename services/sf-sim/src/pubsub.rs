//! The Pub/Sub API (`eventbus.v1.PubSub`) over plaintext HTTP/2.
//!
//! Every RPC checks the `accesstoken`/`instanceurl`/`tenantid` metadata. Failures carry
//! Salesforce's `error-code` and `rpc-id` as trailers (tonic sends a `Status`'s metadata as
//! trailers), and the rpc id at the end of the message.
//!
//! A Subscribe stream is one task: it reads FetchRequests, delivers what was requested as soon
//! as events exist (woken by a watch channel, never by polling), sends keepalives while events
//! are owed and none exist, and closes when nothing is owed and the client stays silent.

use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use futures::StreamExt as _;
use pubsub_proto::pub_sub_server::PubSub;
use pubsub_proto::{
    error_codes, metadata, ConsumerEvent, Error as PublishError, ErrorCode, FetchRequest,
    FetchResponse, ManagedFetchRequest, ManagedFetchResponse, ProducerEvent, PublishRequest,
    PublishResponse, PublishResult, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo,
    TopicRequest,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::state::Inner;
use crate::store::EventMeta;

/// Most events a client may have requested and not yet received on one stream.
pub const MAX_OUTSTANDING: u32 = 100;
/// Largest single event Publish accepts.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// A Status the way Pub/Sub words it: message ending in `rpcId: ...`, trailers `error-code`
/// (when there is one) and `rpc-id`.
pub(crate) fn status(
    code: Code,
    message: &str,
    error_code: Option<&'static str>,
    rpc_id: &str,
) -> Status {
    let mut md = MetadataMap::new();
    if let Some(error_code) = error_code {
        md.insert(metadata::ERROR_CODE, MetadataValue::from_static(error_code));
    }
    if let Ok(value) = MetadataValue::try_from(rpc_id) {
        md.insert(metadata::RPC_ID, value);
    }
    Status::with_metadata(code, format!("{message} rpcId: {rpc_id}"), md)
}

fn unauthenticated(rpc_id: &str) -> Status {
    status(
        Code::Unauthenticated,
        "An authentication exception occurred. Provide valid authentication via metadata headers.",
        Some(error_codes::AUTH_ERROR),
        rpc_id,
    )
}

fn unavailable(rpc_id: &str) -> Status {
    status(
        Code::Unavailable,
        "The service is unavailable. Try again later.",
        Some(error_codes::SERVICE_UNAVAILABLE),
        rpc_id,
    )
}

fn topic_not_found(topic: &str, rpc_id: &str) -> Status {
    status(
        Code::NotFound,
        &format!("The topic {topic} does not exist or you do not have access to it."),
        Some(error_codes::TOPIC_NOT_FOUND),
        rpc_id,
    )
}

fn new_rpc_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub(crate) struct PubSubService {
    inner: Arc<Inner>,
}

impl PubSubService {
    pub fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    fn authenticate(&self, md: &MetadataMap, rpc_id: &str) -> Result<(), Status> {
        let text = |key: &str| md.get(key).and_then(|v| v.to_str().ok()).map(str::trim);
        let instance_ok = text(metadata::INSTANCE_URL).is_some_and(|u| {
            u.trim_end_matches('/')
                .eq_ignore_ascii_case(&self.inner.urls.instance)
        });
        let tenant_ok = text(metadata::TENANT_ID).is_some_and(|t| self.inner.is_org_id(t));
        // The token is checked last so that a refused call does not extend its session.
        if instance_ok
            && tenant_ok
            && text(metadata::ACCESS_TOKEN).is_some_and(|t| self.inner.token_valid(t))
        {
            Ok(())
        } else {
            tracing::info!(
                rpc_id,
                "Pub/Sub call refused: authentication metadata missing or invalid."
            );
            self.inner.stat(|s| s.pubsub_auth_refusals += 1);
            Err(unauthenticated(rpc_id))
        }
    }

    fn is_topic(&self, name: &str) -> bool {
        name.trim().eq_ignore_ascii_case(&self.inner.config.channel)
    }
}

#[tonic::async_trait]
impl PubSub for PubSubService {
    type SubscribeStream = ReceiverStream<Result<FetchResponse, Status>>;
    type PublishStreamStream = ReceiverStream<Result<PublishResponse, Status>>;
    type ManagedSubscribeStream = ReceiverStream<Result<ManagedFetchResponse, Status>>;

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let rpc_id = new_rpc_id();
        self.inner.stat(|s| s.subscribe_calls += 1);
        self.authenticate(request.metadata(), &rpc_id)?;
        let (tx, rx) = mpsc::channel(16);
        let subscription = Subscription::new(self.inner.clone(), tx, rpc_id);
        tokio::spawn(subscription.run(request.into_inner()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        let rpc_id = new_rpc_id();
        self.inner.stat(|s| s.get_schema_calls += 1);
        self.authenticate(request.metadata(), &rpc_id)?;
        let schema_id = request.into_inner().schema_id;
        match self.inner.schemas.get(&schema_id) {
            Some(schema) => Ok(Response::new(SchemaInfo {
                schema_json: schema.json.clone(),
                schema_id: schema.id.clone(),
                rpc_id,
            })),
            None => Err(status(
                Code::NotFound,
                &format!("Schema {schema_id} was not found."),
                None,
                &rpc_id,
            )),
        }
    }

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let rpc_id = new_rpc_id();
        self.inner.stat(|s| s.get_topic_calls += 1);
        self.authenticate(request.metadata(), &rpc_id)?;
        let topic_name = request.into_inner().topic_name;
        if !self.is_topic(&topic_name) {
            return Err(topic_not_found(&topic_name, &rpc_id));
        }
        Ok(Response::new(TopicInfo {
            topic_name: self.inner.config.channel.clone(),
            tenant_guid: self.inner.config.org_id.clone(),
            can_publish: true,
            can_subscribe: true,
            schema_id: self.inner.schemas.current_id().to_owned(),
            rpc_id,
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let rpc_id = new_rpc_id();
        self.inner.stat(|s| s.publish_calls += 1);
        self.authenticate(request.metadata(), &rpc_id)?;
        let request = request.into_inner();
        if !self.is_topic(&request.topic_name) {
            return Err(topic_not_found(&request.topic_name, &rpc_id));
        }
        let results = request
            .events
            .into_iter()
            .map(|event| self.publish_one(event))
            .collect();
        Ok(Response::new(PublishResponse {
            results,
            schema_id: self.inner.schemas.current_id().to_owned(),
            rpc_id,
        }))
    }

    async fn publish_stream(
        &self,
        _request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        Err(Status::unimplemented(
            "PublishStream is not simulated; use Publish.",
        ))
    }

    async fn managed_subscribe(
        &self,
        _request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        Err(Status::unimplemented(
            "ManagedSubscribe is not simulated; use Subscribe.",
        ))
    }
}

impl PubSubService {
    fn publish_one(&self, event: ProducerEvent) -> PublishResult {
        let correlation_key = event.id.clone();
        let failed = |msg: String| PublishResult {
            replay_id: Vec::new(),
            error: Some(PublishError {
                code: ErrorCode::Publish as i32,
                msg,
            }),
            correlation_key: correlation_key.clone(),
        };
        if event.payload.len() > MAX_EVENT_BYTES {
            return failed("The event exceeds the maximum size of 1 MB.".to_owned());
        }
        let decoded = match self.inner.schemas.decode(&event.schema_id, &event.payload) {
            Ok(value) => value,
            Err(err) => {
                return failed(format!(
                    "The event could not be published: {}",
                    platform::error::Chain(&err)
                ))
            }
        };
        let event_id = if event.id.trim().is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            event.id
        };
        let meta = EventMeta {
            order_id: avro_string(&decoded, "OrderId__c"),
            idem_key: avro_string(&decoded, "IdemKey__c"),
            correlation_id: avro_string(&decoded, "CorrelationId__c"),
            poison: None,
            source: "publish",
            published_at_ms: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        };
        let published = self
            .inner
            .append_event(event_id, event.schema_id, event.payload, meta);
        PublishResult {
            replay_id: published.replay_id,
            error: None,
            correlation_key,
        }
    }
}

fn avro_string(record: &AvroValue, field: &str) -> Option<String> {
    let AvroValue::Record(fields) = record else {
        return None;
    };
    let (_, value) = fields.iter().find(|(name, _)| name == field)?;
    let value = match value {
        AvroValue::Union(_, inner) => inner.as_ref(),
        other => other,
    };
    match value {
        AvroValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// What happened to a send.
enum Sent {
    Ok,
    /// The client is gone; end quietly.
    Closed,
}

struct Subscription {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Result<FetchResponse, Status>>,
    rpc_id: String,
    /// Set by the first FetchRequest, which names the topic and the start position.
    started: bool,
    /// Index into the topic's log of the next event to deliver.
    next_index: usize,
    /// The last delivered event must go out once more (duplicate-delivery fault).
    duplicate_pending: bool,
    outstanding: u32,
    last_activity: Instant,
    last_sent: Instant,
}

impl Subscription {
    fn new(
        inner: Arc<Inner>,
        tx: mpsc::Sender<Result<FetchResponse, Status>>,
        rpc_id: String,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            tx,
            rpc_id,
            started: false,
            next_index: 0,
            duplicate_pending: false,
            outstanding: 0,
            last_activity: now,
            last_sent: now,
        }
    }

    async fn run(mut self, mut inbound: Streaming<FetchRequest>) {
        self.inner.stat(|s| s.active_streams += 1);
        let outcome = self.serve(&mut inbound).await;
        if let Err(status) = outcome {
            tracing::info!(rpc_id = %self.rpc_id, code = ?status.code(), message = status.message(), "Subscribe stream ended with an error.");
            let _ = self.tx.send(Err(status)).await;
        } else {
            tracing::debug!(rpc_id = %self.rpc_id, "Subscribe stream closed.");
        }
        self.inner
            .stat(|s| s.active_streams = s.active_streams.saturating_sub(1));
    }

    async fn serve(&mut self, inbound: &mut Streaming<FetchRequest>) -> Result<(), Status> {
        let mut wake = self.inner.subscribe_wake();
        let mut inbound_open = true;
        loop {
            let stalled = self.inner.faults().pubsub_stall;
            if !stalled && self.started && self.outstanding > 0 {
                if let Sent::Closed = self.deliver().await? {
                    return Ok(());
                }
            }
            if !inbound_open && self.outstanding == 0 {
                // Nothing owed and nothing more can be asked for.
                return Ok(());
            }
            let keepalive_at = (!stalled && self.started && self.outstanding > 0)
                .then(|| self.last_sent + self.inner.keepalive_interval());
            let idle_at = (!stalled && self.outstanding == 0)
                .then(|| self.last_activity + self.inner.config.idle_close);
            let far = Instant::now() + std::time::Duration::from_secs(86_400);
            tokio::select! {
                () = self.inner.cancel.cancelled() => return Err(unavailable(&self.rpc_id)),
                () = self.tx.closed() => return Ok(()),
                message = inbound.next(), if inbound_open => match message {
                    Some(Ok(request)) => self.on_request(&request)?,
                    Some(Err(err)) => {
                        tracing::debug!(rpc_id = %self.rpc_id, error = %platform::error::Chain(&err), "Subscribe request stream failed.");
                        return Ok(());
                    }
                    None => inbound_open = false,
                },
                changed = wake.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(keepalive_at.unwrap_or(far)), if keepalive_at.is_some() => {
                    if let Sent::Closed = self.keepalive().await {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                    tracing::debug!(rpc_id = %self.rpc_id, "Closing an idle Subscribe stream.");
                    return Ok(());
                }
            }
        }
    }

    fn on_request(&mut self, request: &FetchRequest) -> Result<(), Status> {
        self.inner.stat(|s| s.fetch_requests += 1);
        self.last_activity = Instant::now();
        let topic = request.topic_name.trim();
        if !self.started {
            if topic.is_empty() {
                return Err(status(
                    Code::InvalidArgument,
                    "The topic name is required in the first fetch request.",
                    None,
                    &self.rpc_id,
                ));
            }
            if !topic.eq_ignore_ascii_case(&self.inner.config.channel) {
                return Err(topic_not_found(topic, &self.rpc_id));
            }
        } else if !topic.is_empty() && !topic.eq_ignore_ascii_case(&self.inner.config.channel) {
            return Err(status(
                Code::InvalidArgument,
                "The topic name in a fetch request must match the topic of the first request.",
                None,
                &self.rpc_id,
            ));
        }
        if request.num_requested <= 0 {
            return Err(status(
                Code::InvalidArgument,
                "The requested number of events in a fetch request must be greater than zero.",
                Some(error_codes::FETCH_NUM_REQUESTED_INVALID),
                &self.rpc_id,
            ));
        }
        if !self.started {
            self.next_index = self.start_position(request)?;
            self.started = true;
        }
        let requested = u32::try_from(request.num_requested).unwrap_or(MAX_OUTSTANDING);
        self.outstanding = self
            .outstanding
            .saturating_add(requested)
            .min(MAX_OUTSTANDING);
        let outstanding = self.outstanding;
        self.inner
            .stat(|s| s.max_outstanding_seen = s.max_outstanding_seen.max(outstanding));
        Ok(())
    }

    fn start_position(&self, request: &FetchRequest) -> Result<usize, Status> {
        let store = self.inner.store();
        match ReplayPreset::try_from(request.replay_preset) {
            Ok(ReplayPreset::Latest) => Ok(store.events.len()),
            Ok(ReplayPreset::Earliest) => Ok(0),
            Ok(ReplayPreset::Custom) => {
                let corrupted = || {
                    status(
                        Code::InvalidArgument,
                        "The Replay ID validation failed. Ensure that the Replay ID is valid.",
                        Some(error_codes::REPLAY_ID_CORRUPTED),
                        &self.rpc_id,
                    )
                };
                let bytes: [u8; 8] = request
                    .replay_id
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupted())?;
                store
                    .index_after(u64::from_be_bytes(bytes))
                    .ok_or_else(corrupted)
            }
            Err(_) => Err(status(
                Code::InvalidArgument,
                "The replay preset is not valid.",
                None,
                &self.rpc_id,
            )),
        }
    }

    /// Sends what is owed and available, honouring the abort and duplicate faults.
    async fn deliver(&mut self) -> Result<Sent, Status> {
        let duplicate = self.inner.faults().pubsub_duplicate_deliveries;
        let owed = usize::try_from(self.outstanding).unwrap_or(0);
        // Each pick remembers the cursor after it, so a batch cut short by the abort fault
        // leaves the cursor exactly after the last event that went out.
        let mut picks: Vec<(ConsumerEvent, usize, bool)> = Vec::new();
        {
            let store = self.inner.store();
            let (mut index, mut pending) = (self.next_index, self.duplicate_pending);
            while picks.len() < owed {
                let source = if pending {
                    pending = false;
                    index.checked_sub(1)
                } else if index < store.events.len() {
                    index += 1;
                    pending = duplicate;
                    Some(index - 1)
                } else {
                    None
                };
                let Some(event) = source.and_then(|i| store.events.get(i)) else {
                    break;
                };
                let consumer = ConsumerEvent {
                    event: Some(ProducerEvent {
                        id: event.event_id.clone(),
                        schema_id: event.schema_id.clone(),
                        payload: event.payload.clone(),
                        headers: Vec::new(),
                    }),
                    replay_id: event.replay_id.to_be_bytes().to_vec(),
                };
                picks.push((consumer, index, pending));
            }
        }
        let (allowed, abort) = self.inner.take_abort_budget(picks.len());
        picks.truncate(allowed);
        let (allowed, revoke) = self.inner.take_unauthenticated_budget(picks.len());
        picks.truncate(allowed);
        if let Some((_, index, pending)) = picks.last() {
            self.next_index = *index;
            self.duplicate_pending = *pending;
        }
        if !picks.is_empty() {
            let count = u32::try_from(picks.len()).unwrap_or(MAX_OUTSTANDING);
            self.outstanding = self.outstanding.saturating_sub(count);
            let events: Vec<ConsumerEvent> = picks.into_iter().map(|(e, _, _)| e).collect();
            let latest_replay_id = events
                .last()
                .map(|e| e.replay_id.clone())
                .unwrap_or_default();
            let delivered = events.len() as u64;
            let response = FetchResponse {
                events,
                latest_replay_id,
                rpc_id: self.rpc_id.clone(),
                pending_num_requested: i32::try_from(self.outstanding).unwrap_or(0),
            };
            if let Sent::Closed = self.send(response).await {
                return Ok(Sent::Closed);
            }
            self.inner.stat(|s| s.events_delivered += delivered);
        }
        if revoke {
            // The events above went out first, as Salesforce ends a stream after what it sent.
            self.inner.revoke_tokens();
            return Err(unauthenticated(&self.rpc_id));
        }
        if abort {
            return Err(unavailable(&self.rpc_id));
        }
        Ok(Sent::Ok)
    }

    async fn keepalive(&mut self) -> Sent {
        let tip = self.inner.store().tip();
        let response = FetchResponse {
            events: Vec::new(),
            latest_replay_id: tip.to_be_bytes().to_vec(),
            rpc_id: self.rpc_id.clone(),
            pending_num_requested: i32::try_from(self.outstanding).unwrap_or(0),
        };
        let sent = self.send(response).await;
        if let Sent::Ok = sent {
            self.inner.stat(|s| s.keepalives_sent += 1);
        }
        sent
    }

    async fn send(&mut self, response: FetchResponse) -> Sent {
        match self.tx.send(Ok(response)).await {
            Ok(()) => {
                let now = Instant::now();
                self.last_sent = now;
                self.last_activity = now;
                Sent::Ok
            }
            Err(_) => Sent::Closed,
        }
    }
}
