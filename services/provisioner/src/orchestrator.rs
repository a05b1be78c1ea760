//! The orchestration of one claimed job: `order_details` → `guard` → `mapping` →
//! `payment_method` → `whmcs_create` → `whmcs_accept`. No WHMCS call is retried: a failure ends
//! the job with the contract's error code, and operators retry from Salesforce.
//!
//! WHMCS side effects happen once per Salesforce Order: AddOrder carries a marker with the
//! Order id in `notes`; a retry reuses the WHMCS order the journal remembers or, when an earlier
//! attempt's outcome was unknown, the one GetOrders finds by the marker.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use messages::ProvisioningRequestedV1;
use platform::error::Chain;
use salesforce::rest::RestClient;
use tracing::Instrument;
use whmcs::WhmcsClient;

use crate::journal::{JobRecord, Journal, JournalError};
use crate::metrics::ProvisionerMetrics;
use crate::order_reader::OrderReader;
use crate::salesforce_order::{self, SfOrder};
use crate::steps::{codes, JobResult, Step};

/// The marker AddOrder writes into the WHMCS order's `notes`.
pub fn marker(order_id: &str) -> String {
    format!("[sf-order:{order_id}]")
}

/// Why a job stopped without a result of its own: it can no longer prove it holds its journal
/// entry, so it must not act (no WHMCS call, no report); whoever holds the entry reports.
#[derive(Debug, thiserror::Error)]
pub enum JobLost {
    #[error("another worker took over the job's journal entry")]
    TakenOver,
    #[error("the job journal stayed unavailable")]
    JournalUnavailable(#[source] JournalError),
    /// The task writing the entry ended without an answer (a panic): whether the write landed
    /// is unknown, so the job cannot prove it still holds the entry.
    #[error("the journal write ended without an answer")]
    WriteAborted(#[source] tokio::task::JoinError),
}

/// A running job's journal entry, shared by the steps (which record progress) and the lease
/// renewal; one lock keeps the compare-and-swap revisions in order.
pub struct JobJournal {
    pub journal: Journal,
    pub state: Arc<tokio::sync::Mutex<(JobRecord, u64)>>,
}

impl JobJournal {
    pub fn new(journal: Journal, record: JobRecord, revision: u64) -> Self {
        Self {
            journal,
            state: Arc::new(tokio::sync::Mutex::new((record, revision))),
        }
    }

    /// Applies `change` to the entry and writes it at the job's own last revision: the write
    /// succeeds only while the job still holds the entry, which is what makes it a fence before
    /// a side effect. A store error is retried for up to two leases (a journal outage does not
    /// end the job); a write whose answer was lost is recognised by reading the entry back.
    ///
    /// The write runs in a task of its own that holds the lock until the answer is recorded:
    /// a caller that stops waiting (the lease keeper dropped when the job ends) must not leave
    /// a write applied on the server whose new revision the job never learned, or the job's
    /// next write would look like a takeover.
    pub async fn checkpoint(&self, change: impl FnOnce(&mut JobRecord)) -> Result<(), JobLost> {
        let mut guard = self.state.clone().lock_owned().await;
        change(&mut guard.0);
        let journal = self.journal.clone();
        let write = tokio::spawn(async move {
            let (record, revision) = &mut *guard;
            let outcome = write_fenced(&journal, record, *revision).await;
            if let Ok(next) = outcome {
                *revision = next;
            }
            outcome.map(drop)
        });
        write
            .await
            .unwrap_or_else(|e| Err(JobLost::WriteAborted(e)))
    }

    pub async fn snapshot(&self) -> (JobRecord, u64) {
        self.state.lock().await.clone()
    }
}

/// One fenced write of `record` at `revision`, with the retries `checkpoint` describes; the new
/// revision.
async fn write_fenced(
    journal: &Journal,
    record: &mut JobRecord,
    revision: u64,
) -> Result<u64, JobLost> {
    // Retrying is safe however long it takes: the compare-and-swap is the fence, so if recovery
    // took the entry over meanwhile, this write fails instead of landing. Recovery itself needs
    // a whole lease of successful scans without a new revision before it takes over, so a job
    // that waits out an outage of the journal (a node restart, a leader election) usually keeps
    // its entry. The bound only keeps a job from hanging for ever.
    let give_up = tokio::time::Instant::now() + journal.lease() * 2;
    let mut backoff = platform::backoff::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(2),
    );
    let mut ambiguous = false;
    loop {
        match journal.replace(record, revision).await {
            Ok(next) => return Ok(next),
            Err(JournalError::Conflict(_)) => {
                if ambiguous {
                    if let Some(next) = own_write(journal, record).await {
                        return Ok(next);
                    }
                }
                return Err(JobLost::TakenOver);
            }
            Err(err) => {
                ambiguous = true;
                if tokio::time::Instant::now() >= give_up {
                    return Err(JobLost::JournalUnavailable(err));
                }
                tracing::warn!(error = %Chain(&err), "Could not write the job's journal entry; retrying.");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// After a write whose answer was lost: the entry's revision if what is stored is that write
/// (everything but its timestamp), else `None`.
async fn own_write(journal: &Journal, record: &JobRecord) -> Option<u64> {
    match journal.read(&record.order_id).await.ok()? {
        crate::journal::Stored::Record(stored, revision) => {
            let mut stored = *stored;
            stored.updated_at.clone_from(&record.updated_at);
            (stored == *record).then_some(revision)
        }
        _ => None,
    }
}

/// Where the orchestration stopped, and how.
#[derive(Debug)]
pub struct Finished {
    pub result: JobResult,
    pub step: Step,
}

impl Step {
    /// The job ends at this step with `result`.
    fn ends(self, result: JobResult) -> Finished {
        Finished { result, step: self }
    }
}

/// Why the sequence of steps stopped before activating: the job ended at a step (with its
/// result, to be recorded and reported), or it lost its journal entry (nothing to report).
enum Stop {
    Finished(Finished),
    Lost(JobLost),
}

impl From<Finished> for Stop {
    fn from(finished: Finished) -> Self {
        Self::Finished(finished)
    }
}

pub struct Orchestrator {
    pub catalog: crate::catalog::Catalog,
    pub salesforce: RestClient,
    /// The jobs' Order reads, coalesced under load (through `salesforce`).
    pub order_reader: OrderReader,
    pub whmcs: WhmcsClient,
    pub default_payment_method: String,
    pub metrics: ProvisionerMetrics,
}

struct MappedItem {
    /// The Salesforce product name, for messages.
    name: String,
    pid: u64,
    cycle: whmcs::types::BillingCycle,
    quantity: u32,
}

impl Orchestrator {
    /// Runs the steps after `validation` (done by the caller before claiming). `Err` when the
    /// job lost its journal entry: it then stops without acting or reporting.
    pub async fn run(
        &self,
        request: &ProvisioningRequestedV1,
        job: &JobJournal,
        previous: Option<&JobRecord>,
    ) -> Result<Finished, JobLost> {
        match self.steps(request, job, previous).await {
            Ok(finished) | Err(Stop::Finished(finished)) => Ok(finished),
            Err(Stop::Lost(lost)) => Err(lost),
        }
    }

    /// The steps in order; the first that ends the job (a failure, a skip, a lost entry) stops
    /// the sequence, and only a job that passed them all is activated.
    async fn steps(
        &self,
        request: &ProvisioningRequestedV1,
        job: &JobJournal,
        previous: Option<&JobRecord>,
    ) -> Result<Finished, Stop> {
        let order = self.order_details(request, job).await?;
        self.guard(&order, job).await?;
        let (client_id, items) = self.mapping(&order, job).await?;
        let payment_method = self.payment_method_step(client_id, job).await?;
        let (whmcs_order_id, service_ids, invoice_id) = self
            .whmcs_create(request, job, previous, client_id, &payment_method, &items)
            .await?;
        self.whmcs_accept(whmcs_order_id, job).await?;
        Ok(Finished {
            result: JobResult::Activated {
                whmcs_order_id,
                service_ids,
                invoice_id,
            },
            step: Step::WhmcsAccept,
        })
    }

    async fn order_details(
        &self,
        request: &ProvisioningRequestedV1,
        job: &JobJournal,
    ) -> Result<SfOrder, Finished> {
        let step = Step::OrderDetails;
        match self
            .step(step, job, self.order_reader.read(&request.order_id))
            .await
        {
            Ok(Some(order)) => Ok(order),
            // No such Order (deleted, or an id of another object or none at all in a hand-made
            // message): it is not Activating, so the guard's answer applies, and nothing is
            // written to Salesforce for it (a Failed update would be a write for a record that
            // does not exist).
            Ok(None) => Err(step.ends(JobResult::Skipped {
                reason: format!("Order {} not found in Salesforce", request.order_id),
            })),
            Err(err) => Err(step.ends(JobResult::failed(err.contract_code(), err.to_string()))),
        }
    }

    /// Only an Order whose activation is requested is provisioned; any other is skipped.
    async fn guard(&self, order: &SfOrder, job: &JobJournal) -> Result<(), Finished> {
        let status = order.activation_status.as_deref().unwrap_or("");
        let passed = self
            .step(Step::Guard, job, async { status == "Activating" })
            .await;
        if passed {
            return Ok(());
        }
        let reason = format!(
            "Activation_Status__c is {:?}, not Activating",
            order.activation_status
        );
        Err(Step::Guard.ends(JobResult::Skipped { reason }))
    }

    async fn mapping(
        &self,
        order: &SfOrder,
        job: &JobJournal,
    ) -> Result<(u64, Vec<MappedItem>), Finished> {
        self.step(Step::Mapping, job, async {
            let (client_id, items) = map_order(order)?;
            self.check_products(&items).await?;
            Ok((client_id, items))
        })
        .await
        .map_err(|result| Step::Mapping.ends(result))
    }

    async fn payment_method_step(
        &self,
        client_id: u64,
        job: &JobJournal,
    ) -> Result<String, Finished> {
        self.step(Step::PaymentMethod, job, self.payment_method(client_id))
            .await
            .map_err(|result| Step::PaymentMethod.ends(result))
    }

    async fn whmcs_create(
        &self,
        request: &ProvisioningRequestedV1,
        job: &JobJournal,
        previous: Option<&JobRecord>,
        client_id: u64,
        payment_method: &str,
        items: &[MappedItem],
    ) -> Result<(u64, Vec<u64>, Option<u64>), Stop> {
        self.step(
            Step::WhmcsCreate,
            job,
            self.create_order(request, job, previous, client_id, payment_method, items),
        )
        .await
        .map_err(|failure| match failure {
            CreateFailure::Failed(result) => Stop::Finished(Step::WhmcsCreate.ends(result)),
            CreateFailure::Lost(lost) => Stop::Lost(lost),
        })
    }

    async fn whmcs_accept(&self, whmcs_order_id: u64, job: &JobJournal) -> Result<(), Finished> {
        self.step(Step::WhmcsAccept, job, self.accept_order(whmcs_order_id))
            .await
            .map_err(|result| Step::WhmcsAccept.ends(result))
    }

    /// Runs one step inside its span, logging its duration and recording it in the metrics.
    /// A failed step's span gets status error and `error.code`; the order ids come from the job
    /// span (see `platform::telemetry::join_order`).
    pub async fn step<T: StepOutcome>(
        &self,
        step: Step,
        job: &JobJournal,
        work: impl Future<Output = T>,
    ) -> T {
        // The step being attempted is what an operator (and recovery) reads first in the
        // journal; it is persisted with the next journal write.
        job.state.lock().await.0.step = step.as_str().to_owned();
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {step}"),
            otel.kind = "internal",
            step = %step,
        );
        let started = Instant::now();
        let output = work.instrument(span.clone()).await;
        let elapsed = started.elapsed();
        self.metrics.observe_step(step, elapsed);
        let _entered = span.enter();
        let duration_ms = elapsed.as_millis() as u64;
        match output.failure() {
            None => tracing::info!(step = %step, duration_ms, "Step completed."),
            Some((code, message)) => {
                platform::telemetry::record_error(&span, &code, &message);
                tracing::warn!(step = %step, duration_ms, error_code = %code, error_message = %message, "Step failed.");
            }
        }
        output
    }

    /// The Order's `Activation_Status__c` (`None` when the Order is gone or the field empty).
    pub async fn activation_status(
        &self,
        order_id: &str,
    ) -> Result<Option<String>, salesforce::rest::RestError> {
        let records = self
            .salesforce
            .query::<SfOrder>(&salesforce_order::soql(order_id))
            .await?;
        Ok(records.into_iter().next().and_then(|o| o.activation_status))
    }

    /// Every item's product exists in WHMCS and offers the item's cycle (AddOrder would silently
    /// drop or change it otherwise).
    async fn check_products(&self, items: &[MappedItem]) -> Result<(), JobResult> {
        let pids: Vec<u64> = items.iter().map(|item| item.pid).collect();
        let products = self
            .catalog
            .lookup(&self.whmcs, &pids)
            .await
            .map_err(whmcs_failure)?;
        let problems: Vec<String> = items
            .iter()
            .filter_map(
                |item| match products.get(&item.pid).and_then(Option::as_ref) {
                    None => Some(format!(
                        "{} maps to WHMCS product {}, which does not exist",
                        item.name, item.pid
                    )),
                    Some(product) if !product.accepts_cycle(item.cycle) => Some(format!(
                        "{} maps to WHMCS product {} ({}), which is not offered {}",
                        item.name,
                        item.pid,
                        product.name,
                        item.cycle.display_name()
                    )),
                    Some(_) => None,
                },
            )
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(JobResult::failed(
                codes::MAPPING_MISSING,
                problems.join("; "),
            ))
        }
    }

    async fn payment_method(&self, client_id: u64) -> Result<String, JobResult> {
        let methods = self
            .whmcs
            .get_pay_methods(client_id)
            .await
            .map_err(whmcs_failure)?;
        let Some(method) = methods.first() else {
            return Err(JobResult::failed(
                codes::PAYMENT_METHOD_MISSING,
                "Payment method missing",
            ));
        };
        let gateway = method.gateway_name.trim();
        Ok(if gateway.is_empty() {
            self.default_payment_method.clone()
        } else {
            gateway.to_owned()
        })
    }

    /// AddOrder, or the WHMCS order an earlier attempt created. The job proves it still holds
    /// its journal entry (a checkpoint) before AddOrder and again before AcceptOrder.
    async fn create_order(
        &self,
        request: &ProvisioningRequestedV1,
        job: &JobJournal,
        previous: Option<&JobRecord>,
        client_id: u64,
        payment_method: &str,
        items: &[MappedItem],
    ) -> Result<(u64, Vec<u64>, Option<u64>), CreateFailure> {
        let marker = marker(&request.order_id);
        if let Some(previous) = previous {
            let remembered = previous.whmcs_order_id.map(|id| {
                (
                    id,
                    previous.whmcs_service_ids.clone(),
                    previous.whmcs_invoice_id,
                )
            });
            let found = match remembered {
                Some(found) => Some(found),
                // An earlier attempt may have created the order without learning its id.
                None => self
                    .whmcs
                    .find_order_by_marker(client_id, &marker)
                    .await
                    .map_err(whmcs_failure)?
                    .map(|order| (order.id, Vec::new(), order.invoiceid)),
            };
            if let Some((order_id, service_ids, invoice_id)) = found {
                tracing::info!(
                    whmcs_order_id = order_id,
                    "Reusing the WHMCS order of an earlier attempt; not calling AddOrder."
                );
                job.checkpoint(|r| {
                    r.whmcs_order_id = Some(order_id);
                    r.step = Step::WhmcsAccept.as_str().to_owned();
                })
                .await?;
                return Ok((order_id, service_ids, invoice_id));
            }
        }
        // The fence: nothing may call AddOrder for a job that lost its entry.
        job.checkpoint(|r| {
            r.whmcs_client_id = Some(client_id);
            r.step = Step::WhmcsCreate.as_str().to_owned();
        })
        .await?;
        let lines = items
            .iter()
            .map(|item| whmcs::types::OrderLine {
                pid: item.pid,
                billingcycle: item.cycle,
                qty: Some(item.quantity),
            })
            .collect();
        let mut order = whmcs::types::AddOrderRequest::new(client_id, payment_method, lines);
        order.notes = Some(format!(
            "Salesforce Order {} (correlation {}) {marker}",
            request.order_id, request.correlation_id
        ));
        order.noinvoiceemail = true;
        match self.whmcs.add_order(&order).await {
            Ok(created) => {
                let (id, services, invoice) = (
                    created.orderid,
                    created.serviceids.clone(),
                    created.invoiceid,
                );
                // One write records the order and that AcceptOrder is next (so recovery reports
                // an interruption at the right step), and is the fence before AcceptOrder.
                job.checkpoint(|r| {
                    r.whmcs_order_id = Some(id);
                    r.whmcs_service_ids.clone_from(&services);
                    r.whmcs_invoice_id = invoice;
                    r.step = Step::WhmcsAccept.as_str().to_owned();
                })
                .await?;
                Ok((id, services, invoice))
            }
            Err(err) => {
                if err.outcome_unknown() {
                    // Not a retry: a read, so the journal knows the order if WHMCS made it.
                    if let Ok(Some(found)) =
                        self.whmcs.find_order_by_marker(client_id, &marker).await
                    {
                        tracing::warn!(whmcs_order_id = found.id, "AddOrder outcome was unknown; WHMCS has the order. Recorded for the retry.");
                        job.checkpoint(|r| r.whmcs_order_id = Some(found.id))
                            .await?;
                    }
                }
                Err(whmcs_failure(err).into())
            }
        }
    }

    /// AcceptOrder with `autosetup=1`. "Not Pending" is ambiguous (already accepted, or gone):
    /// GetOrders decides.
    async fn accept_order(&self, whmcs_order_id: u64) -> Result<(), JobResult> {
        match self
            .whmcs
            .accept_order(&whmcs::types::AcceptOrderRequest::new(whmcs_order_id))
            .await
        {
            Ok(()) => Ok(()),
            Err(err)
                if err.is_business()
                    && err.message().to_ascii_lowercase().contains("not pending") =>
            {
                let order = self
                    .whmcs
                    .get_order(whmcs_order_id)
                    .await
                    .map_err(whmcs_failure)?;
                match order {
                    Some(order) if order.status.eq_ignore_ascii_case("Active") => {
                        tracing::info!(whmcs_order_id, "WHMCS order was already accepted.");
                        Ok(())
                    }
                    Some(order) => Err(JobResult::failed(
                        codes::WHMCS_ERROR,
                        format!(
                            "WHMCS order {whmcs_order_id} is {} and cannot be accepted",
                            order.status
                        ),
                    )),
                    None => Err(JobResult::failed(
                        codes::WHMCS_ERROR,
                        format!("WHMCS order {whmcs_order_id} not found"),
                    )),
                }
            }
            Err(err) => Err(whmcs_failure(err)),
        }
    }
}

/// What a step's output says about failure: the contract's error code and a message.
pub trait StepOutcome {
    fn failure(&self) -> Option<(String, String)>;
}

/// The guard: `false` skips the order, which is not a failure.
impl StepOutcome for bool {
    fn failure(&self) -> Option<(String, String)> {
        None
    }
}

impl<T> StepOutcome for Result<T, JobResult> {
    fn failure(&self) -> Option<(String, String)> {
        match self {
            Err(JobResult::Failed { code, message }) => Some((code.clone(), message.clone())),
            _ => None,
        }
    }
}

impl<T> StepOutcome for Result<T, CreateFailure> {
    fn failure(&self) -> Option<(String, String)> {
        match self {
            Ok(_) => None,
            Err(CreateFailure::Failed(JobResult::Failed { code, message })) => {
                Some((code.clone(), message.clone()))
            }
            Err(CreateFailure::Failed(_)) => None,
            Err(CreateFailure::Lost(lost)) => {
                Some(("JOB_LOST".to_owned(), Chain(lost).to_string()))
            }
        }
    }
}

/// Why AddOrder (or the reuse of an earlier order) did not produce a WHMCS order.
enum CreateFailure {
    Failed(JobResult),
    Lost(JobLost),
}

impl From<JobResult> for CreateFailure {
    fn from(result: JobResult) -> Self {
        Self::Failed(result)
    }
}

impl From<JobLost> for CreateFailure {
    fn from(lost: JobLost) -> Self {
        Self::Lost(lost)
    }
}

impl<T> StepOutcome for Result<T, salesforce::rest::RestError> {
    fn failure(&self) -> Option<(String, String)> {
        self.as_ref()
            .err()
            .map(|err| (err.contract_code(), err.to_string()))
    }
}

/// A read shared by a batch of jobs: the same mapping as a job's own error.
impl<T> StepOutcome for Result<T, Arc<salesforce::rest::RestError>> {
    fn failure(&self) -> Option<(String, String)> {
        self.as_ref()
            .err()
            .map(|err| (err.contract_code(), err.to_string()))
    }
}

impl<T> StepOutcome for Result<T, crate::publisher::PublishError> {
    fn failure(&self) -> Option<(String, String)> {
        self.as_ref()
            .err()
            .map(|err| ("PUBLISH_FAILED".to_owned(), Chain(err).to_string()))
    }
}

fn whmcs_failure(err: whmcs::WhmcsError) -> JobResult {
    JobResult::failed(err.contract_code(), err.message())
}

/// The WHMCS client id and the items to order, or the contract's mapping error.
fn map_order(order: &SfOrder) -> Result<(u64, Vec<MappedItem>), JobResult> {
    let client_id =
        salesforce_order::whole_number(order.account.as_ref().and_then(|a| a.wh_account.as_ref()))
            .ok_or_else(|| {
                JobResult::failed(
                    codes::CLIENT_MISSING,
                    "The Account has no WH_Account__c (WHMCS client id)",
                )
            })?;
    let items = order
        .order_items
        .as_ref()
        .map(|c| c.records.as_slice())
        .unwrap_or_default();
    if items.is_empty() {
        return Err(JobResult::failed(codes::NO_ITEMS, "The Order has no items"));
    }
    let mut mapped = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for item in items {
        let product = item.product.as_ref();
        let name = product
            .and_then(|p| p.name.clone())
            .unwrap_or_else(|| item.id.clone());
        let pid = salesforce_order::whole_number(product.and_then(|p| p.wh_product_id.as_ref()));
        let cycle = product
            .and_then(|p| p.billing_cycle.as_deref())
            .and_then(salesforce_order::whmcs_cycle)
            .and_then(|system_name| system_name.parse::<whmcs::types::BillingCycle>().ok());
        match (pid, cycle) {
            (Some(pid), Some(cycle)) => {
                let quantity = item
                    .quantity
                    .filter(|q| *q >= 1.0)
                    .map_or(1, |q| q.round() as u32);
                mapped.push(MappedItem {
                    name: name.clone(),
                    pid,
                    cycle,
                    quantity,
                });
            }
            (None, _) => problems.push(format!("{name} has no WH_Product_ID__c")),
            (Some(_), None) => problems.push(format!(
                "{name} has billing cycle {:?}, which maps to no WHMCS cycle",
                product
                    .and_then(|p| p.billing_cycle.clone())
                    .unwrap_or_default()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(JobResult::failed(
            codes::MAPPING_MISSING,
            problems.join("; "),
        ));
    }
    Ok((client_id, mapped))
}
