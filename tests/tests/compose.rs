//! Consistency of the deployment files with the code, since no Docker engine or cluster runs on
//! the build machines: `docker-compose.yml` (and, below, `deploy/k8s/`) may only set variables a
//! service reads, run binaries the workspace builds and the image contains, and wire ports that
//! the services listen on.
//!
//! The variables a binary reads are derived from its configuration sources at test time (see
//! [`config_sources`]), so a variable added to a deployment file without code reading it, or
//! a variable renamed in the code, fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::Value;

// ------------------------------------------------------------------------------------------------
// What the code reads

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The source without its unit tests (which build settings from made-up pairs).
fn without_tests(source: &str) -> &str {
    source
        .find("#[cfg(test)]")
        .map_or(source, |at| &source[..at])
}

/// String literals of `source`, with the text just before each (to tell `env!("X")` apart).
fn string_literals(source: &str) -> Vec<(String, String)> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' => {
                // A char literal ('"', '\'') or a lifetime: skip just what a char literal spans.
                if bytes.get(i + 1) == Some(&b'\\') {
                    i += 3;
                } else if bytes.get(i + 2) == Some(&b'\'') {
                    i += 2;
                }
                i += 1;
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let before_start = start.saturating_sub(40);
                out.push((
                    source[start..j.min(bytes.len())].to_owned(),
                    source[before_start..i].to_owned(),
                ));
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    out
}

fn looks_like_variable(s: &str) -> bool {
    let mut parts = s.split('_');
    s.len() >= 3
        && s.contains('_')
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && parts.all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
}

/// Variable names named in the configuration code of `source`: upper-case literals such as
/// `env.string_or("SF_BRIDGE_STREAM", ..)`, `existing_file("NATS_CREDS_FILE")` or
/// `std::env::var("HOSTNAME")`, but not compile-time `env!("CARGO_PKG_VERSION")`.
fn variables_named_in(source: &str) -> BTreeSet<String> {
    string_literals(without_tests(source))
        .into_iter()
        .filter(|(lit, before)| {
            let compile_time = before.trim_end().ends_with("env!(");
            let runtime_var = before.trim_end().ends_with("env::var(");
            !compile_time && (looks_like_variable(lit) || runtime_var)
        })
        .map(|(lit, _)| lit)
        .collect()
}

/// Variables read through `platform::config::Env` methods or `std::env::var` anywhere in
/// `source`: used to prove [`config_sources`] misses no file.
fn env_reads_in(source: &str) -> BTreeSet<String> {
    const READERS: &[&str] = &[
        ".get(",
        ".required(",
        ".string_or(",
        ".parse_or(",
        ".parse_opt(",
        ".bool_or(",
        ".int_in_range(",
        ".millis_or(",
        ".secs_or(",
        ".socket_addr_or(",
        ".http_url_or(",
        ".http_url_required(",
        "env::var(",
    ];
    string_literals(without_tests(source))
        .into_iter()
        .filter(|(lit, before)| {
            let before = before.trim_end();
            looks_like_variable(lit) && READERS.iter().any(|r| before.ends_with(r))
        })
        .map(|(lit, _)| lit)
        .collect()
}

/// The files whose code reads each binary's configuration: the shared settings it builds
/// (`CommonSettings` = platform config, NATS and telemetry; `SalesforceSettings`; `WhmcsSettings`)
/// and its own config and main.
fn config_sources(binary: &str) -> Vec<&'static str> {
    const COMMON: &[&str] = &[
        "libs/platform/src/config.rs",
        "libs/platform/src/nats.rs",
        "libs/platform/src/telemetry.rs",
    ];
    const SALESFORCE: &str = "libs/salesforce/src/settings.rs";
    let files: Vec<&'static str> = match binary {
        "sf-bridge" => [COMMON, &[SALESFORCE, "services/sf-bridge/src/config.rs"]].concat(),
        "provisioner" => [
            COMMON,
            &[
                SALESFORCE,
                "libs/whmcs/src/settings.rs",
                "services/provisioner/src/config.rs",
            ],
        ]
        .concat(),
        "sf-writer" => [COMMON, &[SALESFORCE, "services/sf-writer/src/config.rs"]].concat(),
        // The simulators read telemetry settings only, besides their own.
        "sf-sim" => vec![
            "libs/platform/src/telemetry.rs",
            "services/sf-sim/src/config.rs",
            "services/sf-sim/src/stand_in.rs",
        ],
        "whmcs-sim" => vec![
            "libs/platform/src/telemetry.rs",
            "services/whmcs-sim/src/config.rs",
            "services/whmcs-sim/src/stand_in.rs",
        ],
        // The operator CLI: the services' NATS variables and resource names.
        "provctl" => vec![
            "libs/platform/src/nats.rs",
            "services/provctl/src/settings.rs",
        ],
        other => panic!("no configuration sources known for binary {other}"),
    };
    for f in &files {
        assert!(
            root().join(f).is_file(),
            "{f} is gone: update config_sources"
        );
    }
    files
}

/// Every variable `binary` reads.
fn variables_read_by(binary: &str) -> BTreeSet<String> {
    config_sources(binary)
        .iter()
        .flat_map(|f| variables_named_in(&read(f)))
        .collect()
}

/// Variables `binary` requires (`env.required("X")`, `env.http_url_required("X")`).
fn variables_required_by(binary: &str) -> BTreeSet<String> {
    config_sources(binary)
        .iter()
        .flat_map(|f| {
            string_literals(without_tests(&read(f)))
                .into_iter()
                .filter(|(lit, before)| {
                    let before = before.trim_end();
                    looks_like_variable(lit)
                        && (before.ends_with(".required(")
                            || before.ends_with(".http_url_required("))
                })
                .map(|(lit, _)| lit)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn rust_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Binaries the workspace builds under services/: `[[bin]]` names and packages with a
/// `src/main.rs`.
fn workspace_binaries() -> BTreeSet<String> {
    let mut bins = BTreeSet::new();
    let services = root().join("services");
    for entry in std::fs::read_dir(&services).unwrap().flatten() {
        let manifest = entry.path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_owned();
                continue;
            }
            let Some(name) = line
                .strip_prefix("name")
                .map(str::trim_start)
                .and_then(|l| l.strip_prefix('='))
                .map(|l| l.trim().trim_matches('"').to_owned())
            else {
                continue;
            };
            if section == "[[bin]]"
                || (section == "[package]" && entry.path().join("src/main.rs").is_file())
            {
                bins.insert(name);
            }
        }
    }
    bins
}

/// Binaries the image contains: the `BINARIES` build argument of the Dockerfile.
fn image_binaries() -> BTreeSet<String> {
    let dockerfile = read("deploy/docker/Dockerfile");
    let line = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("ARG BINARIES="))
        .expect("ARG BINARIES= in the Dockerfile");
    line.split_once('=')
        .unwrap()
        .1
        .trim()
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The port of an `ip:port` listen address.
fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not an ip:port address"))
}

/// Listen address variables of each binary and their defaults; the first is where /health is.
fn listen_variables(binary: &str) -> Vec<(&'static str, &'static str)> {
    match binary {
        "sf-sim" => vec![
            ("SF_SIM_LOGIN_ADDR", "0.0.0.0:8081"),
            ("SF_SIM_INSTANCE_ADDR", "0.0.0.0:8082"),
            ("SF_SIM_PUBSUB_ADDR", "0.0.0.0:7443"),
        ],
        "whmcs-sim" => vec![("WHMCS_SIM_ADDR", "0.0.0.0:8090")],
        _ => vec![("HTTP_ADDR", "0.0.0.0:8080")],
    }
}

/// `(host, port)` of an `http://`/`https://`/`nats://` URL value.
fn url_host_port(value: &str) -> Option<(String, Option<u16>)> {
    let (scheme, rest) = value.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, None),
    };
    let port = port.or(match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "nats" => Some(4222),
        _ => None,
    });
    Some((host.to_owned(), port))
}

// ------------------------------------------------------------------------------------------------
// The derivation itself

#[test]
fn variable_derivation_sees_what_the_services_read() {
    let bridge = variables_read_by("sf-bridge");
    for v in [
        "NATS_URL",
        "NATS_CREDS_FILE",
        "NATS_TLS_CA_FILE",
        "HTTP_ADDR",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "SF_CLIENT_ID",
        "SF_PUBSUB_ENDPOINT",
        "SF_EVENTS_REPLAY",
    ] {
        assert!(bridge.contains(v), "sf-bridge should read {v}: {bridge:?}");
    }
    assert!(!bridge.contains("WHMCS_API_URL"));
    assert!(!bridge.contains("CARGO_PKG_VERSION"));
    let provisioner = variables_read_by("provisioner");
    assert!(provisioner.contains("WHMCS_API_SECRET"));
    assert!(provisioner.contains("PROVISIONER_CONCURRENCY"));
    let sim = variables_read_by("sf-sim");
    assert!(sim.contains("SF_SIM_SEED_DEMO") && sim.contains("LOG_FORMAT"));
    assert!(!sim.contains("NATS_URL") && !sim.contains("HTTP_ADDR"));
    assert!(variables_required_by("provisioner").contains("WHMCS_API_URL"));
    assert!(variables_required_by("sf-writer").contains("SF_PRIVATE_KEY_PATH"));
}

/// A service that starts reading a variable in a file [`config_sources`] does not list would make
/// the allow-lists wrong: every `Env` read in a service's sources must be in its allow-list.
#[test]
fn config_sources_cover_every_env_read_of_each_service() {
    for binary in workspace_binaries() {
        let allowed = variables_read_by(&binary);
        let mut files = Vec::new();
        rust_files_under(
            &root().join("services").join(&binary).join("src"),
            &mut files,
        );
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for var in env_reads_in(&text) {
                assert!(
                    allowed.contains(&var),
                    "{} reads {var}, but config_sources({binary:?}) does not list that file",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn string_literal_scanner_handles_rust_syntax() {
    let src = r#"
        // "NOT_THIS" in a comment
        let c = '"'; let l: &'static str = "A_B";
        env.get("C_D"); let e = env!("CARGO_PKG_VERSION"); std::env::var("HOSTNAME");
        #[cfg(test)] mod tests { env.get("TEST_ONLY"); }
    "#;
    let vars = variables_named_in(src);
    assert_eq!(
        vars.into_iter().collect::<Vec<_>>(),
        ["A_B", "C_D", "HOSTNAME"]
    );
    assert_eq!(env_reads_in(src).into_iter().collect::<Vec<_>>(), ["C_D"]);
}

// ------------------------------------------------------------------------------------------------
// docker-compose.yml

struct Compose {
    services: BTreeMap<String, Value>,
    volumes: BTreeSet<String>,
}

fn compose() -> Compose {
    let mut doc: Value = serde_norway::from_str(&read("docker-compose.yml")).unwrap();
    doc.apply_merge().unwrap();
    // Merge keys nested below the top level (`<<: *health` inside a healthcheck) too.
    let mut services = BTreeMap::new();
    for (name, service) in doc["services"].as_mapping().expect("services").clone() {
        let mut service = service;
        merge_all(&mut service);
        services.insert(name.as_str().unwrap().to_owned(), service);
    }
    let volumes = doc
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Compose { services, volumes }
}

fn merge_all(value: &mut Value) {
    value.apply_merge().unwrap();
    match value {
        Value::Mapping(map) => map.values_mut().for_each(merge_all),
        Value::Sequence(seq) => seq.iter_mut().for_each(merge_all),
        _ => {}
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("not a string: {other:?}"),
            })
            .collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        None => Vec::new(),
        Some(other) => panic!("not a list: {other:?}"),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("environment values must be scalars, not {other:?}"),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), scalar(v)))
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let s = item.as_str().unwrap();
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Some(other) => panic!("environment must be a map or list, not {other:?}"),
    }
}

/// The workspace binary a compose service runs, if it runs one: a service of the image the file
/// builds (one service carries the `build:`, the others run its tag).
fn binary_of(service: &Value) -> Option<String> {
    let built = compose_built_image();
    let ours = service.get("image").and_then(Value::as_str) == Some(built.as_str());
    let command = string_list(service.get("command"));
    ours.then(|| {
        command
            .first()
            .cloned()
            .expect("services built from our image must name their binary in `command`")
    })
}

/// The image tag of the one service with a `build:` section.
fn compose_built_image() -> String {
    let mut built = compose()
        .services
        .into_values()
        .filter(|s| s.get("build").is_some());
    let image = built.next().expect("a service builds the image")["image"]
        .as_str()
        .expect("the built service names its image")
        .to_owned();
    assert!(
        built.next().is_none(),
        "build the image in one service only"
    );
    image
}

/// Ports a compose service listens on inside its container.
fn compose_listen_ports(name: &str, service: &Value) -> BTreeSet<u16> {
    if let Some(binary) = binary_of(service) {
        let env = environment(service);
        return listen_variables(&binary)
            .into_iter()
            .map(|(var, default)| port_of_addr(env.get(var).map_or(default, String::as_str)))
            .collect();
    }
    let image = service
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if image.starts_with("nats:") {
        // From the mounted configuration file.
        let conf = read("deploy/nats/nats.conf");
        let port = |key: &str| {
            conf.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(key))
                .map(|v| port_of_addr(v.trim().trim_start_matches(':').trim()))
                .unwrap_or_else(|| panic!("nats.conf has no {key}"))
        };
        [port("listen"), port("http")].into()
    } else if image.starts_with("jaegertracing/jaeger:2") {
        // Jaeger v2 all-in-one defaults: OTLP gRPC, OTLP HTTP, UI.
        [4317, 4318, 16686].into()
    } else {
        assert!(
            service.get("ports").is_none(),
            "{name}: unknown image {image:?} publishes ports; teach this test its listen ports"
        );
        BTreeSet::new()
    }
}

/// The `CMD`/`CMD-SHELL` port argument of `healthcheck N`, or the port in a health URL.
fn healthcheck_port(test: &[String]) -> Option<u16> {
    if test.get(1).map(String::as_str) == Some("healthcheck") {
        return test.get(2).and_then(|p| p.parse().ok());
    }
    test.iter()
        .find_map(|arg| url_host_port(arg).and_then(|(_, p)| p))
}

#[test]
fn compose_sets_only_variables_the_services_read_and_all_they_require() {
    let compose = compose();
    let mut checked = 0;
    for (name, service) in &compose.services {
        let Some(binary) = binary_of(service) else {
            assert!(
                service.get("environment").is_none() || name == "keygen",
                "{name}: a third-party image with environment; check it by hand"
            );
            continue;
        };
        let env = environment(service);
        let allowed = variables_read_by(&binary);
        for var in env.keys() {
            assert!(
                allowed.contains(var),
                "docker-compose.yml sets {var} on {name}, but {binary} does not read it \
                 (it reads: {allowed:?})"
            );
        }
        let disabled_sf = binary == "sf-bridge"
            && env.get("SF_EVENTS_ENABLED").map(String::as_str) == Some("false");
        for var in variables_required_by(&binary) {
            if disabled_sf && var.starts_with("SF_") {
                continue;
            }
            assert!(
                env.contains_key(&var),
                "{name} ({binary}) requires {var}, which docker-compose.yml does not set"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the five services, checked {checked}"
    );
}

#[test]
fn compose_runs_binaries_that_exist_in_the_workspace_and_the_image() {
    let compose = compose();
    let workspace = workspace_binaries();
    let image = image_binaries();
    for bin in &image {
        assert!(
            workspace.contains(bin),
            "the Dockerfile copies {bin}, which the workspace does not build ({workspace:?})"
        );
    }
    let mut ran = BTreeSet::new();
    for (name, service) in &compose.services {
        if let Some(build) = service.get("build") {
            let context = build["context"].as_str().unwrap();
            let dockerfile = build["dockerfile"].as_str().unwrap();
            assert!(
                root().join(context).join(dockerfile).is_file(),
                "{name}: {dockerfile} does not exist"
            );
        } else {
            let image = service["image"].as_str().unwrap();
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert!(tag.is_some(), "{name}: pin a tag for {image}");
        }
        if let Some(binary) = binary_of(service) {
            assert!(
                workspace.contains(&binary),
                "{name} runs {binary}, which is no workspace binary"
            );
            assert!(
                image.contains(&binary),
                "{name} runs {binary}, which the image does not contain"
            );
            ran.insert(binary);
        }
    }
    for needed in [
        "sf-bridge",
        "provisioner",
        "sf-writer",
        "sf-sim",
        "whmcs-sim",
    ] {
        assert!(ran.contains(needed), "docker-compose.yml runs no {needed}");
    }
}

#[test]
fn compose_ports_and_urls_agree() {
    let compose = compose();
    let listens: BTreeMap<&str, BTreeSet<u16>> = compose
        .services
        .iter()
        .map(|(n, s)| (n.as_str(), compose_listen_ports(n, s)))
        .collect();
    let mut host_ports = BTreeSet::new();
    for (name, service) in &compose.services {
        let listening = &listens[name.as_str()];
        for mapping in string_list(service.get("ports")) {
            let (host, container) = mapping
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{name}: write ports as \"host:container\": {mapping}"));
            let container: u16 = container.parse().unwrap();
            assert!(
                listening.contains(&container),
                "{name} publishes {container}, but listens on {listening:?}"
            );
            assert!(
                host_ports.insert(host.to_owned()),
                "host port {host} is published twice"
            );
        }
        if let Some(health) = service.get("healthcheck") {
            let test = string_list(health.get("test"));
            let port = healthcheck_port(&test)
                .unwrap_or_else(|| panic!("{name}: health check names no port: {test:?}"));
            assert!(
                listening.contains(&port),
                "{name}'s health check probes {port}, but it listens on {listening:?}"
            );
            if let Some(binary) = binary_of(service) {
                let (var, default) = listen_variables(&binary)[0];
                let env = environment(service);
                assert_eq!(
                    port,
                    port_of_addr(env.get(var).map_or(default, String::as_str)),
                    "{name}: the health check must probe /health on {var}"
                );
            }
        }
        // URLs handed to a service must point at a service and a port it listens on.
        for (var, value) in environment(service) {
            let Some((host, port)) = url_host_port(&value) else {
                continue;
            };
            let target = listens.get(host.as_str()).unwrap_or_else(|| {
                panic!("{name}: {var}={value} points at {host}, which is no compose service")
            });
            let port = port.unwrap_or_else(|| panic!("{name}: {var}={value} has no port"));
            assert!(
                target.contains(&port),
                "{name}: {var}={value}, but {host} listens on {target:?}"
            );
        }
    }
    // The simulators hand out URLs with their public host: it must be their compose name.
    for (name, var) in [
        ("sf-sim", "SF_SIM_PUBLIC_HOST"),
        ("whmcs-sim", "WHMCS_SIM_PUBLIC_HOST"),
    ] {
        let env = environment(&compose.services[name]);
        assert_eq!(
            env.get(var).map(String::as_str),
            Some(name),
            "{name}: {var}"
        );
    }
    // And the contract's wiring in particular.
    let sim = environment(&compose.services["sf-sim"]);
    let bridge = environment(&compose.services["sf-bridge"]);
    assert_eq!(
        url_host_port(&bridge["SF_PUBSUB_ENDPOINT"]).unwrap().1,
        Some(port_of_addr(&sim["SF_SIM_PUBSUB_ADDR"]))
    );
    for service in ["sf-bridge", "provisioner", "sf-writer"] {
        let env = environment(&compose.services[service]);
        assert_eq!(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT").map(String::as_str),
            Some("http://jaeger:4317"),
            "{service}"
        );
        assert_eq!(
            url_host_port(&env["SF_LOGIN_URL"]).unwrap().1,
            Some(port_of_addr(&sim["SF_SIM_LOGIN_ADDR"])),
            "{service}"
        );
    }
}

#[test]
fn compose_dependencies_volumes_and_files_exist() {
    let compose = compose();
    for (name, service) in &compose.services {
        if let Some(deps) = service.get("depends_on") {
            let deps: Vec<(String, Option<String>)> = match deps {
                Value::Sequence(items) => items
                    .iter()
                    .map(|d| (d.as_str().unwrap().to_owned(), None))
                    .collect(),
                Value::Mapping(map) => map
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            v.get("condition")
                                .and_then(Value::as_str)
                                .map(str::to_owned),
                        )
                    })
                    .collect(),
                other => panic!("{name}: depends_on must be a list or map: {other:?}"),
            };
            for (dep, condition) in deps {
                let target = compose
                    .services
                    .get(&dep)
                    .unwrap_or_else(|| panic!("{name} depends on {dep}, which is no service"));
                match condition.as_deref() {
                    Some("service_healthy") => assert!(
                        target.get("healthcheck").is_some(),
                        "{name} waits for {dep} to be healthy, but {dep} has no health check"
                    ),
                    Some("service_completed_successfully") => assert_eq!(
                        target.get("restart").and_then(Value::as_str),
                        Some("no"),
                        "{dep} is a one-shot job and must not restart"
                    ),
                    Some("service_started") | None => {}
                    Some(other) => panic!("{name}: unknown condition {other}"),
                }
            }
        }
        // Mounts: named volumes are declared, bind-mounted files exist; file paths handed to a
        // service lie inside one of its mounts.
        let mut targets = Vec::new();
        for mount in string_list(service.get("volumes")) {
            let mut parts = mount.split(':');
            let source = parts.next().unwrap();
            let target = parts.next().unwrap_or_else(|| panic!("{name}: {mount}"));
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    root().join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            } else {
                assert!(
                    compose.volumes.contains(source),
                    "{name} mounts volume {source}, which is not declared"
                );
            }
            targets.push(target.to_owned());
        }
        for (var, value) in environment(service) {
            if var.ends_with("_PATH") || var.ends_with("_FILE") {
                assert!(
                    targets.iter().any(|t| value.starts_with(&format!("{t}/"))),
                    "{name}: {var}={value} is on no mounted volume ({targets:?})"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// deploy/k8s
//
// What an operator applies with `kubectl apply -k` is the output of kustomize, so the checks run
// on that output, built here from the files (the build machines have no kubectl to rely on):
// [`kustomize`] follows `resources`, generates the ConfigMaps and applies the patches.

/// The image every pipeline container runs (`images:` in the kustomizations sets registry and tag).
const K8S_IMAGE: &str = "provisioning-pipeline";

/// The kustomizations an operator applies; each must hold the whole pipeline.
const K8S_KUSTOMIZATIONS: &[&str] = &["deploy/k8s/base", "deploy/k8s/overlays/production"];

/// The namespace the pipeline runs in, and the one of the NATS Helm release.
const K8S_NAMESPACE: &str = "provisioning";
const NATS_NAMESPACE: &str = "nats";
/// The Helm release name of the NATS chart (docs/deployment.md, deploy/k8s/nats/values.yaml).
const NATS_RELEASE: &str = "nats";

fn yaml_files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// The documents of a YAML file that are Kubernetes objects (have a `kind`).
fn k8s_documents(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            <Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        })
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// Every `kustomization.yaml` under deploy/k8s.
fn k8s_kustomization_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    yaml_files_under(&root().join("deploy/k8s"), &mut files);
    files.retain(|f| f.file_name().is_some_and(|n| n == "kustomization.yaml"));
    files.sort();
    files
}

/// `KEY=VALUE` pairs of a generator's `literals` and `envs` files (comments and blank lines
/// skipped, as kustomize does).
fn generator_data(dir: &Path, generator: &Value) -> BTreeMap<String, String> {
    let mut lines = string_list(generator.get("literals"));
    for env_file in string_list(generator.get("envs")) {
        let text = std::fs::read_to_string(dir.join(&env_file))
            .unwrap_or_else(|e| panic!("{}: envs {env_file}: {e}", dir.display()));
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    lines
        .iter()
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {line:?} is no KEY=VALUE", dir.display()));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// A strategic merge patch as kustomize applies it to the objects here: maps merge key by key,
/// lists of named items (containers, env, ports) merge item by name, anything else is replaced.
fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Mapping(target), Value::Mapping(patch)) => {
            for (key, value) in patch {
                match target.get_mut(key) {
                    Some(existing) => strategic_merge(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Sequence(target), Value::Sequence(patch))
            if patch.iter().all(|item| item.get("name").is_some()) =>
        {
            for item in patch {
                match target
                    .iter_mut()
                    .find(|t| t.get("name") == item.get("name"))
                {
                    Some(existing) => strategic_merge(existing, item),
                    None => target.push(item.clone()),
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// The objects `kubectl kustomize dir` builds, each with the file it comes from. Generated
/// ConfigMaps keep their generator's name (kustomize appends a content hash to it and rewrites
/// the references, so references match by the generator's name here). Not modelled: images
/// and labels, which no check here depends on.
fn kustomize(dir: &Path) -> Vec<(PathBuf, Value)> {
    let file = dir.join("kustomization.yaml");
    let k: Value = serde_norway::from_str(&std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!("{}: {e}", file.display());
    }))
    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut objects = Vec::new();
    for resource in string_list(k.get("resources")) {
        let path = dir.join(&resource);
        if path.is_dir() {
            objects.extend(kustomize(&path));
        } else {
            objects.extend(k8s_documents(&path).into_iter().map(|o| (path.clone(), o)));
        }
    }
    for generator in k
        .get("configMapGenerator")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let name = generator["name"].as_str().unwrap().to_owned();
        let data = generator_data(dir, generator);
        let existing = objects.iter_mut().find(|(_, o)| {
            o["kind"] == "ConfigMap" && o["metadata"]["name"].as_str() == Some(&name)
        });
        match (generator.get("behavior").and_then(Value::as_str), existing) {
            (None | Some("create"), None) => {
                let mut object: Value = serde_norway::from_str(&format!(
                    "{{apiVersion: v1, kind: ConfigMap, metadata: {{name: {name}}}, data: {{}}}}"
                ))
                .unwrap();
                for (key, value) in data {
                    object["data"][key.as_str()] = Value::String(value);
                }
                objects.push((file.clone(), object));
            }
            (Some("merge"), Some((_, object))) => {
                for (key, value) in data {
                    object["data"][key.as_str()] = Value::String(value);
                }
            }
            (behavior, existing) => {
                panic!(
                "{}: configMapGenerator {name} with behavior {behavior:?}, but the ConfigMap {}",
                file.display(),
                if existing.is_some() { "exists" } else { "does not exist" }
            )
            }
        }
    }
    for patch in k
        .get("patches")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let path = patch
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: only `patches: - path:` is modelled", file.display()));
        assert!(
            patch.get("target").is_none(),
            "{}: patch targets are not modelled",
            file.display()
        );
        for document in k8s_documents(&dir.join(path)) {
            let wanted = kind_and_name(&document);
            let (_, target) = objects
                .iter_mut()
                .find(|(_, o)| kind_and_name(o) == wanted)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: patch {path} targets {wanted:?}, which is not built",
                        file.display()
                    )
                });
            strategic_merge(target, &document);
        }
    }
    if let Some(namespace) = k.get("namespace").and_then(Value::as_str) {
        for (_, object) in &mut objects {
            object["metadata"]["namespace"] = Value::String(namespace.to_owned());
        }
    }
    objects
}

fn kind_and_name(object: &Value) -> (String, String) {
    (
        object["kind"].as_str().unwrap().to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn data_keys(object: &Value) -> BTreeMap<String, String> {
    ["data", "stringData"]
        .iter()
        .filter_map(|field| object.get(*field).and_then(Value::as_mapping))
        .flat_map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), scalar(v)))
        })
        .collect()
}

fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            Some(&object["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&object["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        "Pod" => Some(&object["spec"]),
        _ => None,
    }
}

/// The Secrets the operator creates (no kustomization holds one): their example file.
fn k8s_example_secrets() -> BTreeMap<String, BTreeMap<String, String>> {
    k8s_documents(&root().join("deploy/k8s/secrets.example.yaml"))
        .iter()
        .inspect(|o| {
            assert_eq!(
                o["kind"], "Secret",
                "secrets.example.yaml holds Secrets only"
            )
        })
        .map(|o| (kind_and_name(o).1, data_keys(o)))
        .collect()
}

/// A pipeline container of a built kustomization, with its environment resolved.
struct PipelineContainer {
    /// `<kustomization> <Kind>/<name>`, for messages.
    at: String,
    binary: String,
    workload: Value,
    container: Value,
    /// Name -> value; `None` for values from a secret or the downward API.
    env: BTreeMap<String, Option<String>>,
}

fn pipeline_containers(
    kustomization: &str,
    objects: &[(PathBuf, Value)],
) -> Vec<PipelineContainer> {
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "ConfigMap")
        .map(|(_, o)| (kind_and_name(o).1, data_keys(o)))
        .collect();
    let mut out = Vec::new();
    for (_, object) in objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let (kind, name) = kind_and_name(object);
        let at = format!("{kustomization} {kind}/{name}");
        for container in spec["containers"].as_sequence().unwrap() {
            let image_name = container["image"].as_str().unwrap();
            if image_name.split(':').next() != Some(K8S_IMAGE) {
                continue;
            }
            let command = [
                string_list(container.get("command")),
                string_list(container.get("args")),
            ]
            .concat();
            let binary = command
                .first()
                .unwrap_or_else(|| panic!("{at}: name the binary in args"))
                .clone();
            let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
            for from in container
                .get("envFrom")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let map_name = from
                    .get("configMapRef")
                    .map(|r| r["name"].as_str().unwrap())
                    .unwrap_or_else(|| panic!("{at}: envFrom other than configMapRef: {from:?}"));
                assert!(
                    from.get("prefix").is_none(),
                    "{at}: envFrom prefixes are not checked"
                );
                let data = config_maps
                    .get(map_name)
                    .unwrap_or_else(|| panic!("{at}: envFrom {map_name}, which is not built"));
                env.extend(data.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
            }
            for var in container
                .get("env")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let key = var["name"].as_str().unwrap().to_owned();
                env.insert(key, var.get("value").map(scalar));
            }
            out.push(PipelineContainer {
                at: at.clone(),
                binary,
                workload: object.clone(),
                container: container.clone(),
                env,
            });
        }
    }
    out
}

/// Each kustomization an operator applies, built.
fn k8s_builds() -> Vec<(&'static str, Vec<(PathBuf, Value)>)> {
    K8S_KUSTOMIZATIONS
        .iter()
        .map(|k| (*k, kustomize(&root().join(k))))
        .collect()
}

/// Pod template labels of a workload.
fn template_labels(workload: &Value) -> BTreeMap<String, String> {
    workload["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), scalar(v)))
        .collect()
}

/// Whether a label selector (`matchLabels` only) selects pods with `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not modelled: {selector:?}"
    );
    selector
        .get("matchLabels")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k.as_str().unwrap()) == Some(&scalar(v)))
}

#[test]
fn k8s_containers_run_existing_binaries_with_variables_they_read() {
    let secrets = k8s_example_secrets();
    let workspace = workspace_binaries();
    let image = image_binaries();
    for (kustomization, objects) in k8s_builds() {
        let mut deployed = BTreeMap::new();
        for c in pipeline_containers(kustomization, &objects) {
            let (at, binary, container) = (&c.at, &c.binary, &c.container);
            assert!(
                workspace.contains(binary),
                "{at}: {binary} is no workspace binary"
            );
            assert!(image.contains(binary), "{at}: the image has no {binary}");
            let allowed = variables_read_by(binary);
            for key in c.env.keys() {
                assert!(
                    allowed.contains(key),
                    "{at}: sets {key} (env or envFrom), which {binary} does not read"
                );
            }
            for var in container
                .get("env")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let key = var["name"].as_str().unwrap();
                if let Some(secret) = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                    let secret_name = secret["name"].as_str().unwrap();
                    let secret_key = secret["key"].as_str().unwrap();
                    let optional = secret.get("optional").and_then(Value::as_bool) == Some(true);
                    let exists = secrets
                        .get(secret_name)
                        .is_some_and(|s| s.contains_key(secret_key));
                    assert!(
                        exists || optional,
                        "{at}: {key} from secret {secret_name}/{secret_key}, which \
                         secrets.example.yaml does not describe"
                    );
                }
            }
            for var in variables_required_by(binary) {
                assert!(
                    c.env.contains_key(&var),
                    "{at}: {binary} requires {var}, which is not set"
                );
            }
            let (addr_var, default_addr) = listen_variables(binary)[0];
            let listen_port = port_of_addr(
                c.env
                    .get(addr_var)
                    .and_then(Option::as_deref)
                    .unwrap_or(default_addr),
            );
            let ports = container_ports(container);
            assert!(
                ports.values().any(|p| *p == listen_port),
                "{at}: containerPort {ports:?} is not {addr_var}'s port {listen_port}"
            );
            // Readiness is /health; liveness and start-up are /livez, which never depends on
            // NATS, Salesforce or WHMCS (docs/contract.md §3), so their outage restarts nothing,
            // also for a pod that starts during it.
            for (probe, path) in [
                ("readinessProbe", "/health"),
                ("livenessProbe", "/livez"),
                ("startupProbe", "/livez"),
            ] {
                let http = container
                    .get(probe)
                    .and_then(|p| p.get("httpGet"))
                    .unwrap_or_else(|| panic!("{at}: {probe} must be an httpGet on {path}"));
                assert_eq!(http["path"].as_str(), Some(path), "{at}: {probe}");
                assert_eq!(
                    resolve_port(&http["port"], &ports, at),
                    listen_port,
                    "{at}: {probe} must probe {addr_var}'s port"
                );
            }
            // Files handed over by path lie on a mounted volume; a secret volume holds the file.
            let volumes: BTreeMap<String, Value> = pod_spec(&c.workload)
                .unwrap()
                .get("volumes")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
                .collect();
            for (var, value) in &c.env {
                let (Some(value), true) = (value, var.ends_with("_PATH") || var.ends_with("_FILE"))
                else {
                    continue;
                };
                let (dir, file_name) = value.rsplit_once('/').unwrap();
                let mount = container
                    .get("volumeMounts")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                    .find(|m| m["mountPath"].as_str() == Some(dir))
                    .unwrap_or_else(|| panic!("{at}: {var}={value} is on no mounted volume"));
                let volume = &volumes[mount["name"].as_str().unwrap()];
                if let Some(secret) = volume.get("secret") {
                    let secret_name = secret["secretName"].as_str().unwrap();
                    assert!(
                        secrets
                            .get(secret_name)
                            .is_some_and(|s| s.contains_key(file_name)),
                        "{at}: {var}={value}, but secret {secret_name} has no key {file_name}"
                    );
                }
            }
            let resources = &container["resources"];
            for field in ["requests", "limits"] {
                assert!(
                    resources[field].get("memory").is_some(),
                    "{at}: set resources.{field}.memory"
                );
            }
            let replicas = c.workload["spec"].get("replicas").and_then(Value::as_u64);
            deployed.insert(
                binary.clone(),
                (c.workload["kind"].as_str().unwrap().to_owned(), replicas),
            );
        }
        for needed in ["sf-bridge", "provisioner", "sf-writer"] {
            assert!(
                deployed.contains_key(needed),
                "{kustomization} runs no {needed}"
            );
        }
        assert_eq!(
            deployed["sf-bridge"],
            ("Deployment".to_owned(), Some(2)),
            "{kustomization}: sf-bridge runs two replicas, one active through its lease"
        );
    }
}

/// Container ports by name (unnamed ones under "").
fn container_ports(container: &Value) -> BTreeMap<String, u16> {
    container
        .get("ports")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// A port given by number or by a container port's name.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>, at: &str) -> u16 {
    match port {
        Value::Number(n) => u16::try_from(n.as_u64().unwrap()).unwrap(),
        Value::String(named) => *ports
            .get(named)
            .unwrap_or_else(|| panic!("{at}: names no container port {named}")),
        other => panic!("{at}: port {other:?}"),
    }
}

#[test]
fn k8s_references_resolve() {
    for file in k8s_kustomization_files() {
        let dir = file.parent().unwrap();
        let k: Value = serde_norway::from_str(&read_path(&file)).unwrap();
        let mut paths = string_list(k.get("resources"));
        paths.extend(
            k.get("patches")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("path").and_then(Value::as_str).map(str::to_owned)),
        );
        for generator in k
            .get("configMapGenerator")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            paths.extend(string_list(generator.get("envs")));
        }
        for path in paths {
            assert!(
                dir.join(&path).exists(),
                "{}: {path} does not exist",
                file.display()
            );
        }
    }
    for (kustomization, objects) in k8s_builds() {
        let names: BTreeSet<(String, String)> =
            objects.iter().map(|(_, o)| kind_and_name(o)).collect();
        let workloads: Vec<&Value> = objects
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o["kind"] == "Deployment")
            .collect();
        for (file, object) in &objects {
            let (kind, name) = kind_and_name(object);
            let at = format!("{kustomization} ({}) {kind}/{name}", file.display());
            match kind.as_str() {
                "HorizontalPodAutoscaler" | "ScaledObject" => {
                    let target = &object["spec"]["scaleTargetRef"];
                    let target = (
                        target["kind"].as_str().unwrap_or("Deployment").to_owned(),
                        target["name"].as_str().unwrap().to_owned(),
                    );
                    assert!(
                        names.contains(&target),
                        "{at} targets {target:?}, which is not built"
                    );
                }
                "PodDisruptionBudget" | "Service" | "NetworkPolicy" => {
                    let selector = match kind.as_str() {
                        "PodDisruptionBudget" => object["spec"]["selector"].clone(),
                        "Service" => service_selector(object),
                        _ => object["spec"]["podSelector"].clone(),
                    };
                    let empty = selector
                        .get("matchLabels")
                        .and_then(Value::as_mapping)
                        .is_none_or(serde_norway::Mapping::is_empty);
                    assert!(
                        (kind == "NetworkPolicy" && empty)
                            || workloads
                                .iter()
                                .any(|w| selects(&selector, &template_labels(w))),
                        "{at} selects no pod of a Deployment built here"
                    );
                }
                _ => {}
            }
            if kind == "Service" {
                for port in object["spec"]["ports"].as_sequence().unwrap() {
                    let target = &port["targetPort"];
                    let backing = workloads
                        .iter()
                        .filter(|w| selects(&service_selector(object), &template_labels(w)))
                        .flat_map(|w| pod_spec(w).unwrap()["containers"].as_sequence().unwrap())
                        .any(|c| match target {
                            Value::String(named) => container_ports(c).contains_key(named),
                            other => container_ports(c)
                                .values()
                                .any(|p| Some(u64::from(*p)) == other.as_u64()),
                        });
                    assert!(backing, "{at}: targetPort {target:?} is no container port");
                }
            }
        }
    }
}

/// A Service's plain label map as a label selector.
fn service_selector(service: &Value) -> Value {
    let mut selector = Value::Mapping(serde_norway::Mapping::new());
    selector["matchLabels"] = service["spec"]["selector"].clone();
    selector
}

fn read_path(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `kubectl apply -k` and `kubectl delete -k` on any kustomization must not destroy what the
/// operator owns: no Namespace (deleting it deletes everything in it, secrets and all) and no
/// Secret (apply would overwrite the real one with a placeholder, delete would remove it).
#[test]
fn k8s_kustomizations_hold_no_namespace_and_no_secret_and_generate_their_config() {
    for file in k8s_kustomization_files() {
        let dir = file.parent().unwrap();
        let rel = dir.strip_prefix(root()).unwrap().display().to_string();
        for (source, object) in kustomize(dir) {
            let (kind, name) = kind_and_name(&object);
            assert!(
                kind != "Namespace" && kind != "Secret",
                "{rel} builds {kind}/{name} (from {}): create it out of band \
                 (deploy/k8s/namespaces, deploy/k8s/secrets.example.yaml)",
                source.display()
            );
            // ConfigMaps come from configMapGenerator (content-hashed names roll the pods on a
            // change); a plain ConfigMap file would be edited and applied without a rollout.
            assert!(
                kind != "ConfigMap" || source.ends_with("kustomization.yaml"),
                "{rel}: ConfigMap/{name} comes from {}; generate it with configMapGenerator",
                source.display()
            );
        }
        let text = read_path(&file);
        for operator_owned in ["secrets.example", "namespaces"] {
            assert!(
                !text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .any(|l| l.contains(operator_owned)),
                "{rel}/kustomization.yaml refers to {operator_owned}, which the operator applies once"
            );
        }
    }
    for (kustomization, objects) in k8s_builds() {
        let generated = objects
            .iter()
            .filter(|(_, o)| o["kind"] == "ConfigMap")
            .count();
        assert!(
            generated >= 4,
            "{kustomization}: {generated} generated ConfigMaps"
        );
        for (_, object) in &objects {
            assert_eq!(
                object["metadata"]["namespace"].as_str(),
                Some(K8S_NAMESPACE),
                "{kustomization}: {:?}",
                kind_and_name(object)
            );
        }
    }
    // The namespaces the operator applies once: the pipeline's at Pod Security `restricted`
    // (which every pod of the base meets), NATS's own at the level its chart's pods meet.
    let mut namespaces = BTreeMap::new();
    let mut files = Vec::new();
    yaml_files_under(&root().join("deploy/k8s/namespaces"), &mut files);
    for file in files {
        for object in k8s_documents(&file) {
            assert_eq!(object["kind"], "Namespace", "{}", file.display());
            let enforce = object["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
                .as_str()
                .map(str::to_owned);
            namespaces.insert(kind_and_name(&object).1, enforce);
        }
    }
    assert_eq!(
        namespaces.get(K8S_NAMESPACE),
        Some(&Some("restricted".to_owned())),
        "{namespaces:?}"
    );
    assert!(
        matches!(namespaces.get(NATS_NAMESPACE), Some(Some(level)) if level == "baseline" || level == "restricted"),
        "namespace {NATS_NAMESPACE} needs a Pod Security level: {namespaces:?}"
    );
}

/// A Deployment scaled by an HPA or a KEDA ScaledObject must not set `replicas`: every
/// `kubectl apply` would reset the autoscaler's choice (for a moment, or for good while it
/// stabilises). The provisioner scales on its consumer's lag, not on CPU.
#[test]
fn k8s_autoscaling_owns_the_replicas_and_follows_the_provisioners_consumer() {
    let values: Value = serde_norway::from_str(&read("deploy/k8s/nats/values.yaml")).unwrap();
    let monitor_port = values["config"]["monitor"]["port"].as_u64().unwrap_or(8222);
    assert_eq!(
        values["config"]["monitor"]["enabled"].as_bool(),
        Some(true),
        "KEDA reads the lag from the NATS monitoring port"
    );
    for (kustomization, objects) in k8s_builds() {
        let mut scaled_provisioner = false;
        for (_, object) in &objects {
            let (kind, name) = kind_and_name(object);
            if kind != "HorizontalPodAutoscaler" && kind != "ScaledObject" {
                continue;
            }
            let target = object["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
            let (_, deployment) = objects
                .iter()
                .find(|(_, o)| kind_and_name(o) == ("Deployment".to_owned(), target.to_owned()))
                .unwrap_or_else(|| panic!("{kustomization}: {kind}/{name} targets no Deployment"));
            assert!(
                deployment["spec"].get("replicas").is_none(),
                "{kustomization}: Deployment/{target} sets replicas beside {kind}/{name}"
            );
            if target != "provisioner" {
                continue;
            }
            assert_eq!(
                kind, "ScaledObject",
                "{kustomization}: scale the provisioner on consumer lag (KEDA), not with {kind}/{name}"
            );
            let container = pipeline_containers(kustomization, &objects)
                .into_iter()
                .find(|c| c.binary == "provisioner")
                .unwrap();
            let configured = |var: &str, default: &str| {
                container
                    .env
                    .get(var)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| default.to_owned())
            };
            let defaults = default_resource_names();
            let nats_url = configured("NATS_URL", "");
            let (nats_host, _) = url_host_port(&nats_url).unwrap();
            let triggers = object["spec"]["triggers"].as_sequence().unwrap();
            assert_eq!(triggers.len(), 1, "{kustomization}: one trigger, the lag");
            let trigger = &triggers[0];
            assert_eq!(trigger["type"].as_str(), Some("nats-jetstream"));
            let meta = &trigger["metadata"];
            let field = |key: &str| meta[key].as_str().map(str::to_owned);
            assert_eq!(
                field("stream"),
                Some(configured("SF_BRIDGE_STREAM", &defaults["REQUESTS"])),
                "{kustomization}: the provisioner consumes the requests stream"
            );
            assert_eq!(
                field("consumer"),
                Some(configured("PROVISIONER_CONSUMER", &defaults["PROVISIONER"])),
                "{kustomization}: the provisioner's durable consumer"
            );
            assert_eq!(field("account"), Some("$G".to_owned()));
            // The chart's headless service, in the namespace of NATS_URL's service: the scaler
            // reaches the consumer's leader as <server name>.<endpoint host>.
            let namespace = nats_host
                .strip_prefix(&format!("{NATS_RELEASE}."))
                .unwrap_or_else(|| panic!("NATS_URL {nats_url} is not the release's service"));
            assert_eq!(
                field("natsServerMonitoringEndpoint"),
                Some(format!(
                    "{NATS_RELEASE}-headless.{namespace}:{monitor_port}"
                )),
                "{kustomization}"
            );
            assert_eq!(
                field("lagThreshold"),
                Some(configured("PROVISIONER_CONCURRENCY", "32")),
                "{kustomization}: lagThreshold is one replica's PROVISIONER_CONCURRENCY"
            );
            let min = object["spec"]["minReplicaCount"].as_u64().unwrap_or(0);
            let max = object["spec"]["maxReplicaCount"].as_u64().unwrap_or(100);
            assert!(
                (2..=max).contains(&min),
                "{kustomization}: {min}..{max} replicas (two at least, for the PDB)"
            );
            scaled_provisioner = true;
        }
        assert!(
            scaled_provisioner,
            "{kustomization}: no ScaledObject scales the provisioner"
        );
    }
}

/// What a service may take from SIGTERM to exit, as its crate computes it: its own grace for the
/// work in hand (the variable as the deployment sets it, else the crate's default), then the
/// common shutdown tail (NATS flush, supervised tasks).
fn shutdown_budget_secs(binary: &str, env: &BTreeMap<String, Option<String>>) -> u64 {
    let grace = |var: &str, default: Duration| {
        env.get(var)
            .cloned()
            .flatten()
            .map_or(default, |v| Duration::from_secs(v.parse().unwrap()))
    };
    let budget = match binary {
        "provisioner" => provisioner::app::shutdown_budget(grace(
            "PROVISIONER_SHUTDOWN_GRACE_SECS",
            provisioner::config::DEFAULT_SHUTDOWN_GRACE,
        )),
        "sf-writer" => sf_writer::app::shutdown_budget(grace(
            "SF_WRITER_SHUTDOWN_GRACE_SECS",
            sf_writer::config::DEFAULT_SHUTDOWN_GRACE,
        )),
        "sf-bridge" => sf_bridge::app::shutdown_budget(),
        other => panic!("no shutdown budget known for {other}"),
    };
    budget.as_secs()
}

/// A compose duration (`1m30s`, `45s`, `500ms`, a bare number of seconds) in seconds.
fn compose_duration_secs(value: &Value) -> Option<f64> {
    if let Some(secs) = value.as_f64() {
        return Some(secs);
    }
    let text = value.as_str()?;
    let (mut total, mut number) = (0.0, String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') || c == 'u' {
            unit.extend(chars.next());
        }
        let scale = match unit.as_str() {
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * scale;
        number.clear();
    }
    number.is_empty().then_some(total)
}

/// Each pipeline service's `stop_grace_period` (Docker's default 10 s when unset) against its
/// shutdown budget: the errors, one per service that Docker would kill mid-shutdown.
fn compose_grace_errors(compose: &Compose) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, service) in &compose.services {
        let Some(binary) = binary_of(service) else {
            continue;
        };
        if !["sf-bridge", "provisioner", "sf-writer"].contains(&binary.as_str()) {
            continue;
        }
        let env = environment(service)
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        let budget = shutdown_budget_secs(&binary, &env);
        let default = Value::String("10s".to_owned());
        let period = service.get("stop_grace_period").unwrap_or(&default);
        match compose_duration_secs(period) {
            None => errors.push(format!(
                "{name}: stop_grace_period {period:?} is no duration"
            )),
            Some(given) if given <= budget as f64 => errors.push(format!(
                "{name}: stop_grace_period {given}s must exceed its {budget} s shutdown, or \
                 Docker kills it mid-shutdown"
            )),
            Some(_) => {}
        }
    }
    errors
}

#[test]
fn compose_stop_grace_exceeds_each_services_shutdown() {
    let mut compose = compose();
    assert_eq!(compose_grace_errors(&compose), Vec::<String>::new());

    // The check bites: the default grace, a grace too short for the budget, and a budget raised
    // by the grace variable the file sets.
    assert_eq!(compose_duration_secs(&Value::from("1m30s")), Some(90.0));
    assert_eq!(compose_duration_secs(&Value::from("500ms")), Some(0.5));
    assert_eq!(compose_duration_secs(&Value::from("soon")), None);
    let (writer, _) = compose
        .services
        .iter()
        .find(|(_, s)| binary_of(s).as_deref() == Some("sf-writer"))
        .map(|(n, s)| (n.clone(), s.clone()))
        .expect("docker-compose.yml runs sf-writer");
    let service = compose.services.get_mut(&writer).unwrap();
    let map = service.as_mapping_mut().unwrap();
    map.remove("stop_grace_period");
    let errors = compose_grace_errors(&compose);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(&format!("{writer}: stop_grace_period 10s")));
    let map = compose
        .services
        .get_mut(&writer)
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    map.insert("stop_grace_period".into(), "10m".into());
    let env = map
        .entry("environment".into())
        .or_insert_with(|| Value::Mapping(Default::default()));
    env.as_mapping_mut()
        .expect("environment as a map")
        .insert("SF_WRITER_SHUTDOWN_GRACE_SECS".into(), "900".into());
    let errors = compose_grace_errors(&compose);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("910 s shutdown"), "{errors:?}");
}

#[test]
fn k8s_termination_grace_exceeds_each_services_shutdown() {
    for (kustomization, objects) in k8s_builds() {
        for c in pipeline_containers(kustomization, &objects) {
            let budget = shutdown_budget_secs(&c.binary, &c.env);
            let granted = pod_spec(&c.workload).unwrap()["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: set terminationGracePeriodSeconds", c.at));
            assert!(
                granted > budget,
                "{}: terminationGracePeriodSeconds {granted} must exceed the {budget} s {} may \
                 take to shut down (SIGKILL would cut its work in hand)",
                c.at,
                c.binary
            );
        }
    }
    // The budget is read from the code: a grace raised in the ConfigMap raises it.
    let mut env = BTreeMap::new();
    let base = shutdown_budget_secs("sf-writer", &env);
    env.insert(
        "SF_WRITER_SHUTDOWN_GRACE_SECS".to_owned(),
        Some("100".to_owned()),
    );
    let default = sf_writer::config::DEFAULT_SHUTDOWN_GRACE.as_secs();
    assert_eq!(
        shutdown_budget_secs("sf-writer", &env),
        base - default + 100
    );
}

/// Every port a NetworkPolicy rule allows; a rule without ports allows all (`None`).
fn rule_ports(rule: &Value) -> Option<Vec<(String, Value)>> {
    rule.get("ports").and_then(Value::as_sequence).map(|ports| {
        ports
            .iter()
            .map(|p| {
                (
                    p.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_owned(),
                    p["port"].clone(),
                )
            })
            .collect()
    })
}

#[test]
fn k8s_network_policies_deny_by_default_and_allow_what_each_service_uses() {
    for (kustomization, objects) in k8s_builds() {
        let policies: Vec<&Value> = objects
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o["kind"] == "NetworkPolicy")
            .collect();
        let both = |p: &Value| {
            let types = string_list(p["spec"].get("policyTypes"));
            types.contains(&"Ingress".to_owned()) && types.contains(&"Egress".to_owned())
        };
        assert!(
            policies.iter().any(|p| {
                p["spec"]["podSelector"]
                    .as_mapping()
                    .is_some_and(serde_norway::Mapping::is_empty)
                    && both(p)
                    && p["spec"].get("ingress").is_none()
                    && p["spec"].get("egress").is_none()
            }),
            "{kustomization}: no default-deny NetworkPolicy (podSelector {{}}, both directions)"
        );
        for (_, workload) in objects.iter().filter(|(_, o)| o["kind"] == "Deployment") {
            let name = kind_and_name(workload).1;
            let labels = template_labels(workload);
            let own: Vec<&&Value> = policies
                .iter()
                .filter(|p| {
                    let selector = &p["spec"]["podSelector"];
                    !selector
                        .as_mapping()
                        .is_some_and(serde_norway::Mapping::is_empty)
                        && selects(selector, &labels)
                })
                .collect();
            assert!(
                own.iter().any(|p| both(p)),
                "{kustomization}: no NetworkPolicy of its own selects Deployment/{name}"
            );
            let at = format!("{kustomization} Deployment/{name}");
            let container = &pod_spec(workload).unwrap()["containers"][0];
            let ports = container_ports(container);
            let mut egress = BTreeSet::new();
            for policy in &own {
                for rule in policy["spec"]
                    .get("ingress")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let allowed = rule_ports(rule)
                        .unwrap_or_else(|| panic!("{at}: an ingress rule without ports"));
                    for (_, port) in allowed {
                        let port = resolve_port(&port, &ports, &at);
                        assert_eq!(
                            Some(&port),
                            ports.get("http"),
                            "{at}: ingress only to the http port"
                        );
                    }
                    assert!(
                        rule.get("from").is_some(),
                        "{at}: an ingress rule from anywhere"
                    );
                }
                for rule in policy["spec"]
                    .get("egress")
                    .and_then(Value::as_sequence)
                    .into_iter()
                    .flatten()
                {
                    let allowed = rule_ports(rule)
                        .unwrap_or_else(|| panic!("{at}: an egress rule without ports"));
                    for (protocol, port) in allowed {
                        egress.insert((protocol, resolve_port(&port, &ports, &at)));
                    }
                }
            }
            assert!(
                egress.contains(&("UDP".to_owned(), 53))
                    && egress.contains(&("TCP".to_owned(), 53)),
                "{at}: DNS (53 UDP and TCP) is not allowed: {egress:?}"
            );
            // Every endpoint the service is configured to reach is reachable.
            let c = pipeline_containers(kustomization, &objects)
                .into_iter()
                .find(|c| kind_and_name(&c.workload).1 == name)
                .unwrap();
            for (var, value) in &c.env {
                let Some((_, Some(port))) = value.as_deref().and_then(url_host_port) else {
                    continue;
                };
                assert!(
                    egress.contains(&("TCP".to_owned(), port)),
                    "{at}: {var}={} needs egress to port {port}: {egress:?}",
                    value.as_deref().unwrap_or_default()
                );
            }
            let wanted: BTreeSet<u16> = c
                .env
                .values()
                .filter_map(|v| v.as_deref().and_then(url_host_port).and_then(|(_, p)| p))
                .chain([53])
                .collect();
            let extra: Vec<_> = egress.iter().filter(|(_, p)| !wanted.contains(p)).collect();
            assert!(
                extra.is_empty(),
                "{at}: egress to ports nothing uses: {extra:?}"
            );
        }
    }
}

/// Default stream, consumer and bucket names, from libs/messages (the services' defaults), by
/// constant name.
fn default_resource_names() -> BTreeMap<String, String> {
    let source = read("libs/messages/src/subjects.rs");
    let mut names = BTreeMap::new();
    for module in [
        "pub mod streams {",
        "pub mod consumers {",
        "pub mod buckets {",
    ] {
        let start = source.find(module).unwrap();
        let body = &source[start..start + source[start..].find("\n}").unwrap()];
        for line in body.lines().map(str::trim_start) {
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            let constant = rest.split(':').next().unwrap().trim().to_owned();
            let value = rest.split('"').nth(1).unwrap().to_owned();
            names.insert(constant, value);
        }
    }
    names
}

#[test]
fn nats_cluster_and_jetstream_resources_are_replicated() {
    let values: Value = serde_norway::from_str(&read("deploy/k8s/nats/values.yaml")).unwrap();
    assert_eq!(values["config"]["cluster"]["enabled"].as_bool(), Some(true));
    let cluster = values["config"]["cluster"]["replicas"].as_u64().unwrap();
    assert_eq!(cluster, 3);
    assert_eq!(
        values["config"]["jetstream"]["enabled"].as_bool(),
        Some(true)
    );
    assert_eq!(
        values["config"]["jetstream"]["fileStore"]["enabled"].as_bool(),
        Some(true)
    );
    // The services create every stream and bucket (nothing is created beforehand), so each
    // service must ask for the cluster's replica count, and reach the release's service.
    for (kustomization, objects) in k8s_builds() {
        for c in pipeline_containers(kustomization, &objects) {
            assert_eq!(
                c.env.get("JETSTREAM_REPLICAS").cloned().flatten(),
                Some(cluster.to_string()),
                "{}: JETSTREAM_REPLICAS",
                c.at
            );
            let url = c.env.get("NATS_URL").cloned().flatten().unwrap();
            assert_eq!(
                url_host_port(&url),
                Some((
                    format!("{NATS_RELEASE}.{NATS_NAMESPACE}.svc.cluster.local"),
                    Some(4222)
                )),
                "{}: NATS_URL {url} is not the chart's service in namespace {NATS_NAMESPACE}",
                c.at
            );
        }
    }
    assert!(
        default_resource_names().len() >= 10,
        "{:?}",
        default_resource_names()
    );
    // The server version the tests run against (scripts/ensure-nats.sh).
    let ensure = read("scripts/ensure-nats.sh");
    let current = ensure
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("current_version=\"${NATS_SERVER_CURRENT_VERSION:-")
        })
        .and_then(|rest| rest.split('}').next())
        .expect("current_version in scripts/ensure-nats.sh");
    assert_eq!(
        values["container"]["image"]["tag"].as_str(),
        Some(format!("{current}-alpine").as_str()),
        "deploy/k8s/nats/values.yaml runs another nats-server than the tests"
    );
}

#[test]
fn kustomize_model_generates_merges_and_patches() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let overlay = dir.path().join("overlay");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&overlay).unwrap();
    std::fs::write(
        base.join("kustomization.yaml"),
        "resources: [app.yaml]\nconfigMapGenerator:\n  - name: cfg\n    literals: [A=1, B=x=y]\n",
    )
    .unwrap();
    std::fs::write(
        base.join("app.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  replicas: 2\n  \
         template:\n    spec:\n      containers:\n        - {name: a, image: i, resources: {limits: {memory: 1Mi}}}\n        - {name: b, image: j}\n",
    )
    .unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "namespace: ns\nresources: [../base]\nconfigMapGenerator:\n  - name: cfg\n    behavior: merge\n    envs: [extra.env]\npatches:\n  - path: p.yaml\n",
    )
    .unwrap();
    std::fs::write(overlay.join("extra.env"), "# comment\n\nA=2\nC=3\n").unwrap();
    std::fs::write(
        overlay.join("p.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  template:\n    spec:\n      containers:\n        - {name: a, resources: {requests: {memory: 1Mi}}}\n",
    )
    .unwrap();
    let objects = kustomize(&overlay);
    let cm = &objects
        .iter()
        .find(|(_, o)| o["kind"] == "ConfigMap")
        .unwrap()
        .1;
    assert_eq!(
        data_keys(cm).into_iter().collect::<Vec<_>>(),
        [("A", "2"), ("B", "x=y"), ("C", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    let app = &objects
        .iter()
        .find(|(_, o)| o["kind"] == "Deployment")
        .unwrap()
        .1;
    let containers = app["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(
        containers[0]["resources"]["limits"]["memory"].as_str(),
        Some("1Mi")
    );
    assert_eq!(
        containers[0]["resources"]["requests"]["memory"].as_str(),
        Some("1Mi")
    );
    assert_eq!(containers[1]["image"].as_str(), Some("j"));
    assert!(objects
        .iter()
        .all(|(_, o)| o["metadata"]["namespace"] == "ns"));
}
