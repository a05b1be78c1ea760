//! The monitoring files name only metrics that exist: the alert rules
//! (deploy/prometheus/rules.yml, and the PrometheusRule made from it) and the Grafana dashboard
//! (deploy/grafana/provisioning.json) are parsed with a PromQL parser, and every metric their
//! expressions select must be a family one of the three services exports. What the services
//! export is read from the real binaries: sf-bridge, the provisioner and sf-writer run as
//! processes against a real nats-server and the simulators, and their `/metrics` are scraped.
//! prometheus-client leaves a family out of `/metrics` until it has a series (no `# TYPE` line
//! either), so the test first drives the traffic that gives the labelled families their series
//! (a failed job, a Salesforce error, dead letters).
//!
//! Also here: the PrometheusRule agrees with rules.yml, every `runbook_url` points at a heading
//! of docs/runbook.md (GitHub's anchor rules), every alert is in docs/observability.md, and,
//! when promtool is installed, Prometheus' own checks and unit tests of the rules pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod support;

use messages::OrderUpdateV1;
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::{json, Value};
use sf_sim::PoisonKind;
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use whmcs_sim::faults::ActionFaults;

const WAIT: Duration = Duration::from_secs(60);

/// Where the runbook is served; rules.yml documents it as a placeholder to replace.
const RUNBOOK_BASE: &str =
    "https://github.com/example/provisioning-pipeline/blob/main/docs/runbook.md#";

/// Series Prometheus makes itself for every target (not exported by the services); only the
/// ones the rules or the dashboard use.
const PROMETHEUS_SERIES: &[&str] = &["up"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = workspace().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(relative: &str) -> Value {
    serde_norway::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// What the services export

/// The sample names of every family a `/metrics` text declares with `# TYPE`: a counter `x` is
/// `x_total`, a histogram `x` is `x_bucket`, `x_sum` and `x_count`.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

const SERVICES: [&str; 3] = testkit::service::PIPELINE;

/// The three services as processes against a real nats-server and the simulators.
struct Pipeline {
    nats: NatsServer,
    sims: support::Simulators,
    services: Vec<ChildProcess>,
    /// Each service's `/metrics` port, in the order of [`SERVICES`].
    ports: Vec<u16>,
}

impl Pipeline {
    async fn start() -> Self {
        let binaries = testkit::process::workspace_binaries(&SERVICES);
        let nats = NatsServer::start().await;
        let sims = support::Simulators::start().await;
        let envs = sims.pipeline_envs().map(|own| {
            let mut env = testkit::service::process_env(nats.url(), &sims.sf);
            env.extend(own);
            testkit::service::with_overrides(env, &[])
        });
        let mut services = testkit::service::spawn_all(&binaries, &envs);
        let mut ports = Vec::new();
        for (name, service) in SERVICES.iter().zip(services.iter_mut()) {
            ports.push(testkit::process::wait_http_port(name, service, WAIT).await);
        }
        Self {
            nats,
            sims,
            services,
            ports,
        }
    }

    fn logs(&self) -> String {
        testkit::service::logs(&self.services)
    }

    async fn until_status(&self, order_id: &str, status: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while support::status_of(&self.sims.sf, order_id).as_deref() != Some(status) {
            assert!(
                std::time::Instant::now() < deadline,
                "{order_id} not {status} (is {:?}):\n{}",
                support::status_of(&self.sims.sf, order_id),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Traffic that gives the services' labelled families their first series: prometheus-client
    /// leaves a family without series out of `/metrics` altogether (as Prometheus' Go client
    /// does), so a fresh process does not show `provisioner_attempts_total` or
    /// `whmcs_api_errors_total`. A job that fails at WHMCS, a Salesforce write answered 503
    /// once, and an update and a Platform Event that are dead-lettered.
    async fn exercise(&self) {
        let (sf, whmcs) = (&self.sims.sf, &self.sims.whmcs);
        whmcs.state().set_faults(
            "AddOrder",
            ActionFaults::error("Unable to add order when client status is Closed", 1),
        );
        let order = support::seed_good_order(sf, whmcs, "Metrics Ltd");
        sf.state().approve_order(&order).expect("approve");
        self.until_status(&order, "Failed").await;

        // An Order no job touches: only sf-writer calls Salesforce's REST API while its update
        // is written, so the one 503 is its (a retry, then the write).
        let draft = support::seed_good_order(sf, whmcs, "Draft Ltd");
        let mut faults = sf.state().faults();
        faults.rest_status = Some((503, 1));
        sf.state().set_faults(faults);
        let js = async_nats::jetstream::new(self.nats.client().await);
        let update = OrderUpdateV1 {
            schema: OrderUpdateV1::SCHEMA.to_owned(),
            order_id: draft.clone(),
            sequence: 1,
            fields: json!({
                "Activation_Status__c": "Failed",
                "Activation_Error_Code__c": "WHMCS_ERROR",
                "Activation_Error_Message__c": "monitoring test",
            })
            .as_object()
            .cloned()
            .unwrap(),
            correlation_id: format!("monitoring-{draft}"),
            event_id: format!("monitoring-event-{draft}"),
            created_at: "2026-12-01T00:00:00Z".to_owned(),
        };
        let subject = messages::subjects::order_update(&draft);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(messages::headers::SCHEMA, OrderUpdateV1::SCHEMA);
        for payload in [serde_json::to_vec(&update).unwrap(), b"not json".to_vec()] {
            js.publish_with_headers(subject.clone(), headers.clone(), payload.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
        self.until_status(&draft, "Failed").await;
        sf.state()
            .publish_poison(PoisonKind::MissingOrderId)
            .expect("poison event");
    }

    async fn scrape(&self) -> BTreeMap<&'static str, String> {
        let mut scraped = BTreeMap::new();
        for (name, port) in SERVICES.iter().zip(&self.ports) {
            let answer = testkit::stack::http_get(*port, "/metrics", Duration::from_secs(5)).await;
            let body = answer.as_deref().and_then(testkit::stack::ok_body);
            scraped.insert(*name, body.unwrap_or_default());
        }
        scraped
    }
}

fn union_of_names(scraped: &BTreeMap<&'static str, String>) -> BTreeSet<String> {
    scraped
        .values()
        .flat_map(|text| exported_names(text))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The metrics an expression names

#[derive(Default)]
struct Selectors {
    names: BTreeSet<String>,
    /// Selectors that name no metric (`{job="x"}`, `{__name__=~"..."}`): nothing to check.
    unnamed: Vec<String>,
}

impl ExprVisitor for Selectors {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let selector = match expr {
            Expr::VectorSelector(vs) => vs,
            Expr::MatrixSelector(ms) => &ms.vs,
            _ => return Ok(true),
        };
        let by_matcher = selector
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.clone());
        match selector.name.clone().or(by_matcher) {
            Some(name) => {
                self.names.insert(name);
            }
            None => self.unnamed.push(selector.to_string()),
        }
        Ok(true)
    }
}

/// The metric names `expr` selects, or why it cannot be checked.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    let ast = parser::parse(expr).map_err(|e| format!("does not parse: {e}"))?;
    let mut selectors = Selectors::default();
    let Ok(_) = walk_expr(&mut selectors, &ast);
    if selectors.unnamed.is_empty() {
        Ok(selectors.names)
    } else {
        Err(format!(
            "selects series without a metric name: {:?}",
            selectors.unnamed
        ))
    }
}

/// The metric names `expr` tests with `absent()`: a healthy process must export them from its
/// start, or the alert fires on a fresh deployment.
fn absent_names(expr: &str) -> BTreeSet<String> {
    struct Absent(BTreeSet<String>);
    impl ExprVisitor for Absent {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            if let Expr::Call(call) = expr {
                if matches!(call.func.name, "absent" | "absent_over_time") {
                    for arg in &call.args.args {
                        let mut selectors = Selectors::default();
                        let Ok(_) = walk_expr(&mut selectors, arg);
                        self.0.extend(selectors.names);
                    }
                }
            }
            Ok(true)
        }
    }
    let mut absent = Absent(BTreeSet::new());
    if let Ok(ast) = parser::parse(expr) {
        let Ok(_) = walk_expr(&mut absent, &ast);
    }
    absent.0
}

/// What is wrong with `expr` against the `exported` names: an unknown metric, a parse error.
fn check_expr(expr: &str, exported: &BTreeSet<String>) -> Result<(), String> {
    let unknown: Vec<String> = metric_names(expr)?
        .into_iter()
        .filter(|name| !exported.contains(name) && !PROMETHEUS_SERIES.contains(&name.as_str()))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("names metrics no service exports: {unknown:?}"))
    }
}

/// Grafana's built-in interval variables, replaced by durations so that the text parses as
/// PromQL.
fn without_grafana_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h")
}

// ---------------------------------------------------------------------------------------------
// The files

/// `(alert name, rule)` of every rule in a `groups:` document.
fn rules(groups: &Value) -> Vec<(String, Value)> {
    groups
        .as_array()
        .expect("groups is a list")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").clone())
        .map(|rule| {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("alert or record")
                .to_owned();
            (name, rule)
        })
        .collect()
}

fn rule_file() -> Vec<(String, Value)> {
    rules(&yaml("deploy/prometheus/rules.yml")["groups"])
}

/// Every panel's `(title, expr)`, rows' nested panels included.
fn dashboard_exprs(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str();
            out.push((title.clone(), expr.unwrap_or_default().to_owned()));
        }
        dashboard_exprs(&panel["panels"], out);
    }
}

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/provisioning.json")).expect("dashboard JSON")
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation other than `-` and `_`
/// removed, spaces made `-`; a repeated anchor gets `-1`, `-2`, ...
fn github_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if in_fence || !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug: String = line[hashes..]
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    anchors
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_metrics_the_services_export() {
    // The expressions first: one that does not parse fails before any process starts.
    let mut exprs: Vec<(String, String)> = rule_file()
        .into_iter()
        .map(|(alert, rule)| {
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            (format!("rules.yml {alert}"), expr)
        })
        .collect();
    let mut panels = Vec::new();
    dashboard_exprs(&dashboard()["panels"], &mut panels);
    assert!(panels.len() >= 20, "dashboard targets: {panels:?}");
    exprs.extend(panels.into_iter().map(|(title, expr)| {
        (
            format!("dashboard panel {title:?}"),
            without_grafana_variables(&expr),
        )
    }));
    let mut used = BTreeSet::new();
    for (source, expr) in &exprs {
        let names = metric_names(expr).unwrap_or_else(|e| panic!("{source}: {e}\n{expr}"));
        used.extend(names);
    }

    let pipeline = Pipeline::start().await;
    let fresh = pipeline.scrape().await;
    // Every service serves the process metrics (platform::metrics::ProcessCollector).
    for (service, text) in &fresh {
        let names = exported_names(text);
        for process in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_open_fds",
        ] {
            assert!(
                names.contains(process),
                "{service} lacks {process}:\n{text}"
            );
        }
    }
    // What the absent() alerts look for is there before any traffic.
    let from_start = union_of_names(&fresh);
    let absent: BTreeSet<String> = exprs
        .iter()
        .flat_map(|(_, expr)| absent_names(expr))
        .collect();
    assert!(
        absent.contains("sf_bridge_leader"),
        "the no-leader alert tests absent(sf_bridge_leader): {absent:?}"
    );
    let missing: Vec<&String> = absent.difference(&from_start).collect();
    assert!(
        missing.is_empty(),
        "absent() of {missing:?}, which a fresh service does not export: the alert would fire"
    );
    pipeline.exercise().await;
    // The dead letters are counted after the test's last step; wait for every family the
    // expressions use, and report the ones that never appear.
    let deadline = std::time::Instant::now() + WAIT;
    let (scraped, exported) = loop {
        let scraped = pipeline.scrape().await;
        let exported = union_of_names(&scraped);
        let all = used
            .iter()
            .all(|name| exported.contains(name) || PROMETHEUS_SERIES.contains(&name.as_str()));
        if all || std::time::Instant::now() > deadline {
            break (scraped, exported);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let problems: Vec<String> = exprs
        .iter()
        .filter_map(|(source, expr)| {
            check_expr(expr, &exported)
                .err()
                .map(|e| format!("{source}: {e}"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "{}\nexported: {exported:?}\n{}",
        problems.join("\n"),
        scraped.values().cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn an_unknown_metric_or_an_unparsable_expression_is_reported() {
    let exported: BTreeSet<String> = ["sf_bridge_leader", "provisioner_attempts_total"]
        .map(str::to_owned)
        .into();
    assert_eq!(
        check_expr(
            "max(sf_bridge_leader) < 1 or absent(sf_bridge_leader)",
            &exported
        ),
        Ok(())
    );
    assert_eq!(check_expr("sum by (job) (up)", &exported), Ok(()));
    // A typo in a rule: the counter without its _total.
    let wrong = check_expr(
        r#"sum(rate(provisioner_attempts{result="failed"}[15m])) > 0 and sf_bridge_leader"#,
        &exported,
    );
    assert_eq!(
        wrong,
        Err(r#"names metrics no service exports: ["provisioner_attempts"]"#.to_owned())
    );
    // Names inside functions, matrices, binary operators and `__name__` matchers count.
    assert!(check_expr(r#"{__name__="sf_bridge_lader"}"#, &exported)
        .is_err_and(|e| e.contains("sf_bridge_lader")));
    assert!(check_expr(
        "histogram_quantile(0.9, rate(provisioner_duration_seconds_bucket[5m]))",
        &exported
    )
    .is_err_and(|e| e.contains("provisioner_duration_seconds_bucket")));
    assert!(check_expr(r#"{job="sf-bridge"}"#, &exported)
        .is_err_and(|e| e.contains("without a metric name")));
    assert!(check_expr("sum(rate(sf_bridge_leader[5m]", &exported)
        .is_err_and(|e| e.contains("does not parse")));
    assert_eq!(
        absent_names(
            "max(sf_bridge_leader) < 1 or absent(sf_bridge_leader) or absent(up{job=\"x\"})"
        ),
        ["sf_bridge_leader", "up"].map(str::to_owned).into()
    );
    // Grafana's variables are replaced before parsing.
    assert_eq!(
        check_expr(
            &without_grafana_variables(
                "sum(increase(provisioner_attempts_total[$__range])) / sum(rate(provisioner_attempts_total[$__rate_interval]))"
            ),
            &exported
        ),
        Ok(())
    );
}

#[test]
fn exported_names_follow_the_family_types() {
    let text = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n\
                # TYPE b_seconds histogram\n# TYPE c gauge\nc 1\n# TYPE d info\n# EOF\n";
    let names = exported_names(text);
    let expected: BTreeSet<String> = [
        "a_events_total",
        "b_seconds_bucket",
        "b_seconds_sum",
        "b_seconds_count",
        "c",
        "d_info",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(names, expected);
}

#[test]
fn the_prometheus_rule_is_rules_yml() {
    let rules = yaml("deploy/prometheus/rules.yml");
    let operator = yaml("deploy/k8s/monitoring/prometheusrule.yaml");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        operator["spec"]["groups"], rules["groups"],
        "deploy/k8s/monitoring/prometheusrule.yaml is not rules.yml's: run deploy/prometheus/prometheusrule.sh"
    );
    // The file is the script's output as it stands, comments included.
    let output = std::process::Command::new("bash")
        .arg(workspace().join("deploy/prometheus/prometheusrule.sh"))
        .arg("--stdout")
        .output()
        .expect("run prometheusrule.sh");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        read("deploy/k8s/monitoring/prometheusrule.yaml"),
        "run deploy/prometheus/prometheusrule.sh"
    );
    let kustomization = yaml("deploy/k8s/monitoring/kustomization.yaml");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(resources, ["podmonitor.yaml", "prometheusrule.yaml"]);
}

#[test]
fn the_pod_monitor_scrapes_the_three_services_on_http() {
    let monitor = yaml("deploy/k8s/monitoring/podmonitor.yaml");
    assert_eq!(monitor["kind"], "PodMonitor");
    let expression = &monitor["spec"]["selector"]["matchExpressions"][0];
    assert_eq!(expression["key"], "app.kubernetes.io/name");
    assert_eq!(expression["operator"], "In");
    let mut values: Vec<&str> = expression["values"]
        .as_array()
        .expect("values")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["provisioner", "sf-bridge", "sf-writer"]);
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "http");
    assert_eq!(endpoint["path"], "/metrics");
    // The dashboard's process panels select the services by `job`, which is this label's value.
    assert_eq!(monitor["spec"]["jobLabel"], "app.kubernetes.io/name");
}

#[test]
fn every_alert_has_a_runbook_section_and_is_documented() {
    let anchors = github_anchors(&read("docs/runbook.md"));
    let observability = read("docs/observability.md");
    let mut problems = Vec::new();
    let alerts = rule_file();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for (alert, rule) in &alerts {
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or("");
        match url.strip_prefix(RUNBOOK_BASE) {
            Some(anchor) if anchor == alert.to_lowercase() && anchors.contains(anchor) => {}
            _ => problems.push(format!(
                "{alert}: runbook_url {url:?} is not {RUNBOOK_BASE}{} with a heading \
                 \"### {alert}\" in docs/runbook.md",
                alert.to_lowercase()
            )),
        }
        for annotation in ["summary", "description"] {
            if rule["annotations"][annotation]
                .as_str()
                .is_none_or(str::is_empty)
            {
                problems.push(format!("{alert}: no {annotation}"));
            }
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or("");
        if !["page", "warn"].contains(&severity) {
            problems.push(format!("{alert}: severity {severity:?}"));
        }
        if !observability.contains(&format!("`{alert}`")) {
            problems.push(format!("{alert}: not in docs/observability.md"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The rules live in rules.yml only; a copy in the docs would drift.
    assert!(
        !observability.contains("- alert:"),
        "docs/observability.md holds a copy of the rules"
    );
}

#[test]
fn github_anchors_follow_githubs_rules() {
    let markdown = "# Operations runbook\n## 409 Payment method missing\n\
                    ## Dead letters (`provisioning.deadletter.sf-bridge`)\n\
                    ## CLIENT_MISSING, NO_ITEMS, MAPPING_MISSING\n### SfBridgeNoLeader\n\
                    ```\n## not a heading\n```\n#hashtag\n## Dead letters (x)\n## Dead letters (x)\n";
    let expected: BTreeSet<String> = [
        "operations-runbook",
        "409-payment-method-missing",
        "dead-letters-provisioningdeadlettersf-bridge",
        "client_missing-no_items-mapping_missing",
        "sfbridgenoleader",
        "dead-letters-x",
        "dead-letters-x-1",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(github_anchors(markdown), expected);
}

#[test]
fn the_dashboard_reads_its_data_source_from_a_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().expect("list");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let reference = format!("${{{}}}", datasource["name"].as_str().expect("name"));
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] != "row" {
            panels.push(panel);
        }
    }
    for panel in panels {
        let title = &panel["title"];
        assert_eq!(panel["datasource"]["uid"], reference.as_str(), "{title}");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], reference.as_str(), "{title}");
        }
    }
}

/// Prometheus' own validation and the rules' unit tests (deploy/prometheus/rules.test.yml).
/// scripts/test.sh (CI) always provides promtool through `PROMTOOL` (scripts/ensure-promtool.sh),
/// and then a missing or broken promtool fails the test; a developer's plain `cargo test` without
/// promtool on PATH skips it, saying so.
#[test]
fn promtool_checks_and_tests_the_rules() {
    let promtool = std::env::var("PROMTOOL").ok();
    let required = promtool.is_some();
    let promtool = promtool.unwrap_or_else(|| "promtool".to_owned());
    let runs = std::process::Command::new(&promtool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        assert!(!required, "PROMTOOL={promtool} does not run");
        eprintln!("SKIPPED: promtool is not installed; `eval \"$(scripts/ensure-promtool.sh)\"` provides it");
        return;
    }
    let output = std::process::Command::new("bash")
        .arg(workspace().join("deploy/prometheus/check.sh"))
        .env("PROMTOOL", &promtool)
        .output()
        .expect("run check.sh");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
