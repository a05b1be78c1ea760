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
            "services/sf-sim/src/main.rs",
        ],
        "whmcs-sim" => vec![
            "libs/platform/src/telemetry.rs",
            "services/whmcs-sim/src/config.rs",
            "services/whmcs-sim/src/main.rs",
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

/// The image every pipeline container runs (`images:` in kustomization.yaml sets registry and tag).
const K8S_IMAGE: &str = "provisioning-pipeline";

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

/// Every Kubernetes object (a document with `kind`) under deploy/k8s, with its file.
fn k8s_objects() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files_under(&root().join("deploy/k8s"), &mut files);
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.get("kind").is_some() {
                objects.push((file.clone(), value));
            }
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

#[test]
fn k8s_containers_run_existing_binaries_with_variables_they_read() {
    let objects = k8s_objects();
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "ConfigMap")
        .map(|(_, o)| (kind_and_name(o).1, data_keys(o)))
        .collect();
    let secrets: BTreeMap<String, BTreeMap<String, String>> = objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Secret")
        .map(|(_, o)| (kind_and_name(o).1, data_keys(o)))
        .collect();
    let workspace = workspace_binaries();
    let image = image_binaries();
    let mut deployed = BTreeMap::new();
    for (file, object) in &objects {
        let Some(spec) = pod_spec(object) else {
            continue;
        };
        let (kind, name) = kind_and_name(object);
        let at = format!("{} {kind}/{name}", file.display());
        let volumes: BTreeMap<String, &Value> = spec
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap().to_owned(), v))
            .collect();
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
            assert!(
                workspace.contains(&binary),
                "{at}: {binary} is no workspace binary"
            );
            assert!(image.contains(&binary), "{at}: the image has no {binary}");
            let allowed = variables_read_by(&binary);
            // name -> value (None when it comes from a secret or the downward API)
            let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
            for from in container
                .get("envFrom")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let (source, map_name) = if let Some(r) = from.get("configMapRef") {
                    (&config_maps, r["name"].as_str().unwrap())
                } else if let Some(r) = from.get("secretRef") {
                    (&secrets, r["name"].as_str().unwrap())
                } else {
                    panic!("{at}: unknown envFrom {from:?}")
                };
                assert!(
                    from.get("prefix").is_none(),
                    "{at}: envFrom prefixes are not checked"
                );
                let data = source
                    .get(map_name)
                    .unwrap_or_else(|| panic!("{at}: envFrom {map_name}, which is not defined"));
                for (key, value) in data {
                    assert!(
                        allowed.contains(key),
                        "{at}: {map_name} sets {key}, which {binary} does not read"
                    );
                    env.insert(key.clone(), Some(value.clone()));
                }
            }
            for var in container
                .get("env")
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
            {
                let key = var["name"].as_str().unwrap().to_owned();
                assert!(
                    allowed.contains(&key),
                    "{at}: sets {key}, which {binary} does not read"
                );
                if let Some(secret) = var.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                    let secret_name = secret["name"].as_str().unwrap();
                    let secret_key = secret["key"].as_str().unwrap();
                    let optional = secret.get("optional").and_then(Value::as_bool) == Some(true);
                    let exists = secrets
                        .get(secret_name)
                        .is_some_and(|s| s.contains_key(secret_key));
                    assert!(
                        exists || optional,
                        "{at}: {key} from secret {secret_name}/{secret_key}, which is not defined"
                    );
                }
                env.insert(key, var.get("value").map(scalar));
            }
            for var in variables_required_by(&binary) {
                assert!(
                    env.contains_key(&var),
                    "{at}: {binary} requires {var}, which is not set"
                );
            }
            // Probes hit /health on the port the binary listens on.
            let (addr_var, default_addr) = listen_variables(&binary)[0];
            let listen_port = port_of_addr(
                env.get(addr_var)
                    .and_then(Option::as_deref)
                    .unwrap_or(default_addr),
            );
            let ports: BTreeMap<String, u16> = container
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
                .collect();
            assert!(
                ports.values().any(|p| *p == listen_port),
                "{at}: containerPort {ports:?} is not {addr_var}'s port {listen_port}"
            );
            // Readiness is /health; liveness (and start-up) is /livez, which never depends on
            // NATS, Salesforce or WHMCS (docs/contract.md §3), so their outage restarts nothing.
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
                let port = match &http["port"] {
                    Value::Number(n) => u16::try_from(n.as_u64().unwrap()).unwrap(),
                    Value::String(named) => *ports
                        .get(named)
                        .unwrap_or_else(|| panic!("{at}: {probe} names no container port {named}")),
                    other => panic!("{at}: {probe} port {other:?}"),
                };
                assert_eq!(
                    port, listen_port,
                    "{at}: {probe} must probe {addr_var}'s port"
                );
            }
            // Files handed over by path lie on a mounted volume; a secret volume holds the file.
            for (var, value) in &env {
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
                let volume = volumes[mount["name"].as_str().unwrap()];
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
            let replicas = object["spec"].get("replicas").and_then(Value::as_u64);
            deployed.insert(binary, (kind.clone(), replicas));
        }
    }
    for needed in ["sf-bridge", "provisioner", "sf-writer"] {
        assert!(deployed.contains_key(needed), "deploy/k8s runs no {needed}");
    }
    assert_eq!(
        deployed["sf-bridge"],
        ("Deployment".to_owned(), Some(2)),
        "sf-bridge runs two replicas, one active through its lease"
    );
}

#[test]
fn k8s_references_resolve() {
    let objects = k8s_objects();
    let names: BTreeSet<(String, String)> = objects.iter().map(|(_, o)| kind_and_name(o)).collect();
    for (file, object) in &objects {
        let (kind, name) = kind_and_name(object);
        if kind == "HorizontalPodAutoscaler" || kind == "PodDisruptionBudget" {
            let target = if kind == "HorizontalPodAutoscaler" {
                let target = &object["spec"]["scaleTargetRef"];
                (
                    target["kind"].as_str().unwrap().to_owned(),
                    target["name"].as_str().unwrap().to_owned(),
                )
            } else {
                ("Deployment".to_owned(), name.clone())
            };
            assert!(
                names.contains(&target),
                "{}: {kind}/{name} targets {target:?}, which is not defined",
                file.display()
            );
        }
        if kind == "Kustomization" {
            let dir = file.parent().unwrap();
            for resource in string_list(object.get("resources")) {
                assert!(
                    dir.join(&resource).exists(),
                    "{}: resource {resource} does not exist",
                    file.display()
                );
            }
        }
    }
}

/// Default stream and bucket names, from libs/messages (the services' defaults).
fn default_resource_names() -> Vec<String> {
    let source = read("libs/messages/src/subjects.rs");
    let mut names = Vec::new();
    for module in ["pub mod streams {", "pub mod buckets {"] {
        let start = source.find(module).unwrap();
        let body = &source[start..start + source[start..].find("\n}").unwrap()];
        names.extend(
            body.lines()
                .filter(|l| l.trim_start().starts_with("pub const"))
                .filter_map(|l| l.split('"').nth(1))
                .map(str::to_owned),
        );
    }
    names
}

#[test]
fn nats_cluster_and_jetstream_resources_are_replicated() {
    let values: Value = serde_norway::from_str(&read("deploy/k8s/nats/values.yaml")).unwrap();
    assert_eq!(values["config"]["cluster"]["enabled"].as_bool(), Some(true));
    assert_eq!(values["config"]["cluster"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        values["config"]["jetstream"]["enabled"].as_bool(),
        Some(true)
    );
    assert_eq!(
        values["config"]["jetstream"]["fileStore"]["enabled"].as_bool(),
        Some(true)
    );
    let setup = read("deploy/k8s/nats/jetstream-setup.yaml");
    let names = default_resource_names();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            setup.contains(&format!("stream {name} "))
                || setup.contains(&format!("bucket {name} ")),
            "jetstream-setup.yaml does not create {name}"
        );
    }
    assert!(setup.contains("--replicas 3"));
}
