//! One trace per order, end to end: sf-bridge, the provisioner and sf-writer run as separate
//! processes (the binaries, against a real nats-server and the simulators in this process) and
//! export their spans over OTLP/gRPC to an in-process collector. The test approves orders in
//! sf-sim, waits for Salesforce's final state, stops the services with SIGTERM (which flushes
//! their spans) and checks the trace: one trace id per order, the parent/child chain from the
//! bridge's producer span to the steps, sf-writer's update span in the same trace with the batch
//! request linking to it, `order.id` and `correlation.id` on every span, error status and
//! `error.code` on a failed order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

mod support;

use sf_sim::SfSim;
use testkit::nats::NatsServer;
use testkit::otlp::{Collector, ReceivedSpan};
use testkit::process::ChildProcess;
use whmcs_sim::WhmcsSim;

const WAIT: Duration = Duration::from_secs(60);
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const CLIENT: i32 = 3;

struct Stack {
    nats: NatsServer,
    sf: SfSim,
    whmcs: WhmcsSim,
    collector: Collector,
}

impl Stack {
    /// A service's environment: what the pipeline's processes share, span export named
    /// `service`, the service's `own` variables and the test's `extra`.
    fn env(
        &self,
        service: &str,
        own: Vec<(&'static str, String)>,
        extra: &[(&str, &str)],
    ) -> HashMap<String, String> {
        let mut env = testkit::service::process_env(self.nats.url(), &self.sf);
        env.extend(testkit::stack::otlp_export(
            self.collector.endpoint(),
            service,
        ));
        env.extend(own);
        testkit::service::with_overrides(env, extra)
    }
}

/// Sets up an order that provisions (WHMCS client with a pay method, a mapped product).
fn seed_good_order(stack: &Stack) -> String {
    support::seed_good_order(&stack.sf, &stack.whmcs, "Acme Ltd")
}

/// An order whose Account has no WHMCS client: fails at `mapping` with `CLIENT_MISSING`.
fn seed_failing_order(stack: &Stack) -> String {
    support::seed_client_missing_order(&stack.sf)
}

fn status_of(stack: &Stack, order_id: &str) -> Option<String> {
    support::status_of(&stack.sf, order_id)
}

fn dump(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {:<40} trace={} span={} parent={} order.id={:?} links={:?}",
                s.service,
                s.name(),
                s.trace_id(),
                s.span_id(),
                s.parent_span_id(),
                s.attr("order.id"),
                s.links()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_order_across_the_three_services() {
    let started = std::time::Instant::now();
    let binaries = testkit::process::workspace_binaries(&testkit::service::PIPELINE);
    eprintln!("binaries ready after {:?}", started.elapsed());
    let nats = NatsServer::start().await;
    let sims = support::Simulators::start().await;
    let stack = Stack {
        nats,
        sf: sims.sf,
        whmcs: sims.whmcs,
        collector: Collector::start().await.expect("collector"),
    };
    let good = seed_good_order(&stack);
    let bad = seed_failing_order(&stack);

    let envs = [
        stack.env("sf-bridge", testkit::sim::pubsub_env(&stack.sf), &[]),
        stack.env(
            "provisioner",
            testkit::sim::whmcs_env(&stack.whmcs),
            &[("PROVISIONER_SHUTDOWN_GRACE_SECS", "5")],
        ),
        stack.env(
            "sf-writer",
            Vec::new(),
            &[("SF_WRITER_SHUTDOWN_GRACE_SECS", "5")],
        ),
    ];
    let mut services = testkit::service::spawn_all(&binaries, &envs);

    stack.sf.state().approve_order(&good).expect("approve good");
    stack.sf.state().approve_order(&bad).expect("approve bad");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let done = status_of(&stack, &good).as_deref() == Some("Activated")
            && status_of(&stack, &bad).as_deref() == Some("Failed");
        if done {
            break;
        }
        let exited = services.iter_mut().any(ChildProcess::has_exited);
        if exited || std::time::Instant::now() > deadline {
            panic!(
                "orders not final (exited: {exited}; good {:?}, bad {:?}):\n{}",
                status_of(&stack, &good),
                status_of(&stack, &bad),
                testkit::service::logs(&services)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("orders final after {:?}", started.elapsed());
    let logs: Vec<String> = services.iter().map(ChildProcess::log).collect();
    for service in &mut services {
        let status = service.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "a service did not stop cleanly: {status:?}"
        );
    }
    eprintln!("services stopped after {:?}", started.elapsed());
    // SIGTERM flushed the last batches; the collector has them once the processes are gone.
    let spans = stack.collector.spans();
    let all = dump(&spans);

    check_good_order(&spans, &good, &all);
    check_failed_order(&spans, &bad, &all);
    check_logs(&logs, &good);
}

fn of_order<'a>(spans: &'a [ReceivedSpan], order_id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.attr("order.id").as_deref() == Some(order_id))
        .collect()
}

fn one<'a>(spans: &[&'a ReceivedSpan], service: &str, name: &str, all: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name() == name)
        .collect();
    assert_eq!(found.len(), 1, "one {service} span {name:?}:\n{all}");
    found[0]
}

fn check_good_order(spans: &[ReceivedSpan], order_id: &str, all: &str) {
    let order = of_order(spans, order_id);
    assert!(!order.is_empty(), "no span of {order_id}:\n{all}");

    // One trace, every span with both attributes (once).
    let trace = order[0].trace_id();
    let correlation = order[0].attr("correlation.id").expect("correlation.id");
    for span in &order {
        assert_eq!(
            span.trace_id(),
            trace,
            "{} in another trace:\n{all}",
            span.name()
        );
        assert_eq!(span.attr_count("order.id"), 1, "{}", span.name());
        assert_eq!(
            span.attr("correlation.id").as_deref(),
            Some(correlation.as_str()),
            "{}",
            span.name()
        );
        assert!(!span.is_error(), "{} failed:\n{all}", span.name());
    }
    // Every span of the trace belongs to the order.
    let in_trace: Vec<_> = spans.iter().filter(|s| s.trace_id() == trace).collect();
    assert_eq!(
        in_trace.len(),
        order.len(),
        "spans of the trace without order.id:\n{all}"
    );

    // sf-bridge starts the trace with its producer span.
    let bridge = one(&order, "sf-bridge", "send provisioning.requested", all);
    assert!(
        bridge.parent_span_id().is_empty(),
        "the bridge span is the root"
    );
    assert_eq!(bridge.kind(), PRODUCER);
    assert_eq!(bridge.attr("messaging.system").as_deref(), Some("nats"));

    // The provisioner's job span is its child.
    let job = one(&order, "provisioner", "process provisioning.requested", all);
    assert_eq!(
        job.parent_span_id(),
        bridge.span_id(),
        "job ← bridge:\n{all}"
    );
    assert_eq!(job.kind(), CONSUMER);

    // A child span per step, with HTTP client spans beneath.
    let steps: Vec<_> = order
        .iter()
        .filter(|s| {
            s.service == "provisioner" && s.attr("step").is_some() && s.name().starts_with("step ")
        })
        .collect();
    let names: Vec<String> = steps.iter().filter_map(|s| s.attr("step")).collect();
    for expected in [
        "order_details",
        "guard",
        "mapping",
        "payment_method",
        "whmcs_create",
        "whmcs_accept",
        "sf_success_update",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "step {expected} in {names:?}:\n{all}"
        );
    }
    for step in &steps {
        assert_eq!(
            step.parent_span_id(),
            job.span_id(),
            "{} ← job",
            step.name()
        );
    }
    let create = steps
        .iter()
        .find(|s| s.attr("step").as_deref() == Some("whmcs_create"))
        .unwrap();
    let add_order = order
        .iter()
        .find(|s| s.attr("whmcs.action").as_deref() == Some("AddOrder"))
        .unwrap_or_else(|| panic!("AddOrder span:\n{all}"));
    assert_eq!(add_order.parent_span_id(), create.span_id());
    assert_eq!(add_order.kind(), CLIENT);
    assert_eq!(
        add_order.attr("http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        add_order.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let url = add_order.attr("url.full").unwrap_or_default();
    assert!(url.ends_with("/includes/api.php"), "{url}");
    let query = order
        .iter()
        .find(|s| s.attr("salesforce.action").as_deref() == Some("query"))
        .unwrap_or_else(|| panic!("Salesforce query span:\n{all}"));
    assert_eq!(query.kind(), CLIENT);
    assert!(!query
        .attr("url.full")
        .unwrap_or_default()
        .contains("Bearer"));

    // sf-writer: the order's update span is in the trace, and the request span links to it.
    let update = one(&order, "sf-writer", "process sf.order.update", all);
    assert_eq!(update.kind(), CONSUMER);
    assert!(!update.parent_span_id().is_empty());
    let linking: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "sf-writer" && s.name().starts_with("write "))
        .filter(|s| s.links().contains(&(trace.clone(), update.span_id())))
        .collect();
    assert_eq!(
        linking.len(),
        1,
        "a request span links to the update:\n{all}"
    );
    assert_ne!(linking[0].trace_id(), trace, "the batch has its own trace");
}

fn check_failed_order(spans: &[ReceivedSpan], order_id: &str, all: &str) {
    let order = of_order(spans, order_id);
    let trace = order.first().map(|s| s.trace_id()).unwrap_or_default();
    assert!(
        order.iter().all(|s| s.trace_id() == trace),
        "one trace:\n{all}"
    );
    assert!(order
        .iter()
        .all(|s| s.attr("correlation.id").is_some_and(|c| !c.is_empty())));
    let job = one(&order, "provisioner", "process provisioning.requested", all);
    assert!(job.is_error(), "the failed job span has error status");
    assert_eq!(job.attr("error.code").as_deref(), Some("CLIENT_MISSING"));
    let mapping = order
        .iter()
        .find(|s| s.attr("step").as_deref() == Some("mapping"))
        .unwrap_or_else(|| panic!("mapping step:\n{all}"));
    assert!(mapping.is_error());
    assert_eq!(
        mapping.attr("error.code").as_deref(),
        Some("CLIENT_MISSING")
    );
    // The Failed update still reaches Salesforce in the same trace.
    one(&order, "sf-writer", "process sf.order.update", all);
}

fn check_logs(logs: &[String], order_id: &str) {
    let provisioner = &logs[1];
    let line = provisioner
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "Starting fulfillment orchestration" && l["order_id"] == order_id)
        .unwrap_or_else(|| panic!("the start line of {order_id}:\n{provisioner}"));
    for field in ["trace_id", "span_id", "correlation_id"] {
        assert!(
            line[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field} in {line}"
        );
    }
    let step_line = provisioner
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "Step completed." && l["order_id"] == order_id)
        .unwrap_or_else(|| panic!("a step line of {order_id}"));
    assert!(step_line["step"].is_string() && step_line["trace_id"] == line["trace_id"]);
}
