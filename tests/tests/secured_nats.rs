//! Secured NATS: every authentication of the contract against a nats-server configured for it
//! (user and password, token, an operator-mode `.creds` file, TLS with a private CA, mutual TLS),
//! the fail-fast refusals (wrong password, untrusted certificate, missing credentials file), and
//! the whole pipeline with each service as its own NATS user holding only the permissions of
//! deploy/nats/permissions.conf.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use platform::config::Env;
use platform::nats::{NatsError, NatsSettings, Refusal};
use sf_sim::SfSim;
use support::{seed_client_missing_order, seed_good_order, status_of, Simulators};
use testkit::nats::NatsServer;
use testkit::process::ChildProcess;
use testkit::secure_nats::{config_args, Operator, Pki};
use whmcs_sim::WhmcsSim;

mod support;

/// A refused connection must stop a service well within this.
const FAIL_FAST: Duration = Duration::from_secs(15);
const PIPELINE_WAIT: Duration = Duration::from_secs(90);

fn settings(pairs: &[(&str, &str)]) -> NatsSettings {
    NatsSettings::from_env(&Env::from_pairs(pairs.iter().copied())).expect("NATS settings")
}

/// Connects with `settings` and makes a JetStream round trip: creates a stream, publishes to it
/// and reads the message back, so the connection is authenticated and JetStream usable.
async fn jetstream_round_trip(settings: &NatsSettings, label: &str) {
    let client = tokio::time::timeout(
        Duration::from_secs(10),
        platform::nats::connect(settings, "secured-nats-test"),
    )
    .await
    .unwrap_or_else(|_| panic!("{label}: connect timed out"))
    .unwrap_or_else(|e| panic!("{label}: {}", platform::error::Chain(&e)));
    let js = jetstream::new(client);
    let stream = platform::nats::ensure_stream(
        &js,
        jetstream::stream::Config {
            name: "SECURED_TEST".to_owned(),
            subjects: vec!["secured.test.>".to_owned()],
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{label}: {}", platform::error::Chain(&e)));
    let ack = js
        .publish("secured.test.1", label.as_bytes().to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap_or_else(|e| panic!("{label}: publish not acknowledged: {e}"));
    let stored = stream.get_raw_message(ack.sequence).await.unwrap();
    assert_eq!(stored.payload.as_ref(), label.as_bytes(), "{label}");
}

/// A connection that must be refused: the error is permanent and names the refusal.
async fn expect_refused(settings: &NatsSettings, refusal: Refusal, label: &str) {
    let started = Instant::now();
    let result = tokio::time::timeout(
        FAIL_FAST,
        platform::nats::connect(settings, "secured-nats-test"),
    )
    .await
    .unwrap_or_else(|_| panic!("{label}: connect did not fail within {FAIL_FAST:?}"));
    let err = result.err().unwrap_or_else(|| panic!("{label}: connected"));
    assert!(
        matches!(&err, NatsError::Refused { refusal: r, .. } if *r == refusal),
        "{label}: {}",
        platform::error::Chain(&err)
    );
    assert!(!err.is_transient(), "{label}");
    assert!(started.elapsed() < FAIL_FAST, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_and_token() {
    let (_conf, args) =
        config_args("authorization { users: [ { user: svc, password: \"s3cret pass\" } ] }\n");
    let server = NatsServer::start_with_args(args).await;
    let url = server.url();
    jetstream_round_trip(
        &settings(&[
            ("NATS_URL", &url),
            ("NATS_USER", "svc"),
            ("NATS_PASSWORD", "s3cret pass"),
        ]),
        "user and password",
    )
    .await;
    expect_refused(
        &settings(&[
            ("NATS_URL", &url),
            ("NATS_USER", "svc"),
            ("NATS_PASSWORD", "wrong"),
        ]),
        Refusal::Authentication,
        "wrong password",
    )
    .await;
    expect_refused(
        &settings(&[("NATS_URL", &url)]),
        Refusal::Authentication,
        "no credentials",
    )
    .await;

    let (_conf, args) = config_args("authorization { token: \"t0ken-value\" }\n");
    let server = NatsServer::start_with_args(args).await;
    let url = server.url();
    jetstream_round_trip(
        &settings(&[("NATS_URL", &url), ("NATS_TOKEN", "t0ken-value")]),
        "token",
    )
    .await;
    expect_refused(
        &settings(&[("NATS_URL", &url), ("NATS_TOKEN", "other")]),
        Refusal::Authentication,
        "wrong token",
    )
    .await;
}

#[test]
fn secrets_stay_out_of_debug_and_client_certificates_come_in_pairs() {
    let pki = Pki::generate();
    let s = settings(&[
        ("NATS_USER", "svc"),
        ("NATS_PASSWORD", "pa55-visible?"),
        ("NATS_TOKEN", "tok-visible?"),
    ]);
    let debug = format!("{s:?}");
    assert!(
        !debug.contains("pa55-visible?") && !debug.contains("tok-visible?"),
        "{debug}"
    );
    assert!(debug.contains("<redacted>"), "{debug}");

    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let err = NatsSettings::from_env(&Env::from_pairs([("NATS_TLS_CERT_FILE", cert.as_str())]))
        .unwrap_err();
    assert_eq!(err.variable, "NATS_TLS_KEY_FILE", "{err}");
    let err = NatsSettings::from_env(&Env::from_pairs([("NATS_TLS_KEY_FILE", key.as_str())]))
        .unwrap_err();
    assert_eq!(err.variable, "NATS_TLS_CERT_FILE", "{err}");
    let both = settings(&[("NATS_TLS_CERT_FILE", &cert), ("NATS_TLS_KEY_FILE", &key)]);
    let client = both.tls_client_cert.expect("client certificate");
    assert_eq!(client.cert_file, pki.client_cert);
    assert_eq!(client.key_file, pki.client_key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_mutual_tls() {
    let pki = Pki::generate();
    let ca = pki.ca_file.display().to_string();
    let other_ca = pki.other_ca_file.display().to_string();
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();

    let (_conf, args) = config_args(&pki.server_tls_block(false));
    let server = NatsServer::start_with_args(args).await;
    let url = server.url();
    jetstream_round_trip(
        &settings(&[("NATS_URL", &url), ("NATS_TLS_CA_FILE", &ca)]),
        "TLS",
    )
    .await;
    expect_refused(
        &settings(&[("NATS_URL", &url), ("NATS_TLS_CA_FILE", &other_ca)]),
        Refusal::Tls,
        "server certificate of an untrusted CA",
    )
    .await;

    let (_conf, args) = config_args(&pki.server_tls_block(true));
    let server = NatsServer::start_with_args(args).await;
    let url = server.url();
    jetstream_round_trip(
        &settings(&[
            ("NATS_URL", &url),
            ("NATS_TLS_CA_FILE", &ca),
            ("NATS_TLS_CERT_FILE", &cert),
            ("NATS_TLS_KEY_FILE", &key),
        ]),
        "mutual TLS",
    )
    .await;
    expect_refused(
        &settings(&[("NATS_URL", &url), ("NATS_TLS_CA_FILE", &ca)]),
        Refusal::Tls,
        "mutual TLS without a client certificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_mode_credentials_file() {
    let operator = Operator::generate();
    let (_conf, args) = config_args(&operator.server_config());
    let server = NatsServer::start_with_args(args).await;
    let url = server.url();
    let creds = operator.user_creds("svc");
    jetstream_round_trip(
        &settings(&[
            ("NATS_URL", &url),
            ("NATS_CREDS_FILE", &creds.display().to_string()),
        ]),
        "credentials file",
    )
    .await;
    let foreign = operator.foreign_user_creds("stranger");
    expect_refused(
        &settings(&[
            ("NATS_URL", &url),
            ("NATS_CREDS_FILE", &foreign.display().to_string()),
        ]),
        Refusal::Authentication,
        "user of an unknown account",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// The services as processes.

/// The environment every service needs besides NATS: the simulators' endpoints for the
/// pipeline, or endpoints on a closed port for the runs that stop before contacting them.
fn service_env(
    service: &str,
    sf: Option<&SfSim>,
    whmcs: Option<&WhmcsSim>,
    nats: &[(&str, String)],
) -> HashMap<String, String> {
    const CLOSED: &str = "http://127.0.0.1:9";
    let mut env = vec![
        ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    env.extend(sf.map_or_else(
        || {
            let config = testkit::sim::sf_config();
            testkit::stack::salesforce_login(CLOSED.to_owned(), &config.client_id, &config.username)
        },
        testkit::sim::sf_env,
    ));
    match service {
        "sf-bridge" => env.extend(sf.map_or_else(
            || {
                vec![
                    ("SF_PUBSUB_ENDPOINT", CLOSED.to_owned()),
                    ("SF_EVENTS_REPLAY", "ALL".to_owned()),
                ]
            },
            testkit::sim::pubsub_env,
        )),
        "provisioner" => {
            env.extend(whmcs.map_or_else(
                || {
                    vec![
                        ("WHMCS_API_URL", format!("{CLOSED}/includes/api.php")),
                        ("WHMCS_API_IDENTIFIER", "id".to_owned()),
                        ("WHMCS_API_SECRET", "secret".to_owned()),
                    ]
                },
                testkit::sim::whmcs_env,
            ));
            env.push(("PROVISIONER_SHUTDOWN_GRACE_SECS", "5".to_owned()));
        }
        "sf-writer" => env.push(("SF_WRITER_SHUTDOWN_GRACE_SECS", "5".to_owned())),
        _ => {}
    }
    testkit::stack::env(
        env.into_iter()
            .chain(nats.iter().map(|(k, v)| (*k, v.clone()))),
    )
}

/// Runs `binary` until it exits (at most `limit`): its status and output (stdout then stderr).
async fn run_to_exit(
    binary: &Path,
    env: &HashMap<String, String>,
    args: &[&str],
    limit: Duration,
) -> (ExitStatus, String) {
    let mut command = tokio::process::Command::new(binary);
    command.env_clear();
    for key in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    command.envs(env).args(args).kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} {args:?} did not exit within {limit:?}",
                binary.display()
            )
        })
        .expect("run binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// Error-level lines the service itself logged (JSON), leaving out the NATS client library's
/// own diagnostics (target `async_nats`).
fn own_error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["level"] == "ERROR"
                    && !v["target"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("async_nats")
            })
        })
        .map(str::to_owned)
        .collect()
}

/// A service whose connection is refused exits with status 1 and one error line saying why.
fn assert_refused_exit(service: &str, status: ExitStatus, log: &str, cause: &str) {
    assert_eq!(status.code(), Some(1), "{service} exit status:\n{log}");
    let errors = own_error_lines(log);
    assert_eq!(errors.len(), 1, "{service}: one error line:\n{log}");
    assert!(errors[0].contains(cause), "{service}: {cause:?} in:\n{log}");
    eprintln!("{service}: {}", errors[0]);
    assert!(
        !log.contains("wrong-password"),
        "{service} logged the password:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_services_stop_at_once_with_one_line() {
    let services = ["sf-bridge", "provisioner", "sf-writer"];
    let binaries = testkit::process::workspace_binaries(&services);
    let pki = Pki::generate();
    let mut conf = String::from("authorization { users: [ { user: svc, password: right } ] }\n");
    conf.push_str(&pki.untrusted_server_tls_block());
    let (_conf, args) = config_args(&conf);
    let server = NatsServer::start_with_args(args).await;
    let operator_server_conf = Operator::generate();
    let (_conf2, args2) = config_args(&operator_server_conf.server_config());
    let plain_auth = NatsServer::start_with_args(args2).await;

    for (service, binary) in services.iter().zip(&binaries) {
        // The server's certificate is signed by a CA we do not trust.
        let env = service_env(
            service,
            None,
            None,
            &[
                ("NATS_URL", server.url()),
                ("NATS_USER", "svc".to_owned()),
                ("NATS_PASSWORD", "right".to_owned()),
                ("NATS_TLS_CA_FILE", pki.ca_file.display().to_string()),
            ],
        );
        let started = Instant::now();
        let (status, log) = run_to_exit(binary, &env, &[], FAIL_FAST).await;
        assert_refused_exit(service, status, &log, "TLS handshake failed");
        eprintln!(
            "{service}: untrusted certificate, exit after {:?}",
            started.elapsed()
        );

        // A wrong password (an operator-mode server refuses any user and password).
        let env = service_env(
            service,
            None,
            None,
            &[
                ("NATS_URL", plain_auth.url()),
                ("NATS_USER", "svc".to_owned()),
                ("NATS_PASSWORD", "wrong-password".to_owned()),
            ],
        );
        let (status, log) = run_to_exit(binary, &env, &[], FAIL_FAST).await;
        assert_refused_exit(service, status, &log, "authentication failed");

        // A credentials file that is not there: a configuration error naming the variable.
        let env = service_env(
            service,
            None,
            None,
            &[
                ("NATS_URL", plain_auth.url()),
                ("NATS_CREDS_FILE", "/nonexistent/svc.creds".to_owned()),
            ],
        );
        let (status, log) = run_to_exit(binary, &env, &[], FAIL_FAST).await;
        assert_eq!(status.code(), Some(2), "{service}:\n{log}");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "{service}: one line:\n{log}");
        assert!(
            lines[0].contains("NATS_CREDS_FILE") && lines[0].contains("/nonexistent/svc.creds"),
            "{service}:\n{log}"
        );
    }
}

/// NATS is down when the service starts (it starts degraded, as always); when it comes up and
/// refuses the service's password, the service stops instead of retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_starting_degraded_stops_the_service() {
    let binaries = testkit::process::workspace_binaries(&["sf-writer"]);
    let (_conf, args) =
        config_args("authorization { users: [ { user: svc, password: right } ] }\n");
    let mut server = NatsServer::start_with_args(args).await;
    server.kill();
    let env = service_env(
        "sf-writer",
        None,
        None,
        &[
            ("NATS_URL", server.url()),
            ("NATS_USER", "svc".to_owned()),
            ("NATS_PASSWORD", "wrong-password".to_owned()),
        ],
    );
    let mut service = ChildProcess::spawn(binaries[0].to_str().unwrap(), &env);
    // Started and waiting for NATS (the unreachable server is transient).
    testkit::wait::until("sf-writer waiting for NATS", FAIL_FAST, || {
        let log = service.log();
        async move { log.contains("NATS unreachable").then_some(()) }
    })
    .await;
    assert!(!service.has_exited(), "{}", service.log());
    server.restart().await;
    testkit::wait::until("sf-writer to stop", FAIL_FAST, || {
        let exited = service.has_exited();
        async move { exited.then_some(()) }
    })
    .await;
    let log = service.log();
    let errors = own_error_lines(&log);
    assert_eq!(errors.len(), 1, "one error line:\n{log}");
    assert!(errors[0].contains("authentication failed"), "{log}");
    assert!(!log.contains("wrong-password"), "{log}");
}

/// The same in process: the connection returns while the server is down (transient), and the
/// refusal handler receives the server's later refusal (a TLS one here) instead of the client
/// retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_handler_hears_of_a_refusal_after_connect_returned() {
    let pki = Pki::generate();
    let (_conf, args) = config_args(&pki.untrusted_server_tls_block());
    let mut server = NatsServer::start_with_args(args).await;
    server.kill();
    let ca = pki.ca_file.display().to_string();
    let url = server.url();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler: platform::nats::RefusalHandler = std::sync::Arc::new(move |err: &NatsError| {
        let refusal = match err {
            NatsError::Refused { refusal, .. } => format!("{refusal:?}"),
            other => format!("not a refusal: {other}"),
        };
        let _ = tx.send(refusal);
    });
    let client = platform::nats::connect_with_refusal_handler(
        &settings(&[("NATS_URL", &url), ("NATS_TLS_CA_FILE", &ca)]),
        "secured-nats-test",
        handler,
    )
    .await
    .expect("an unreachable server is not an error");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .is_err(),
        "no refusal while the server is down"
    );
    server.restart().await;
    let heard = tokio::time::timeout(FAIL_FAST, rx.recv())
        .await
        .expect("the refusal within seconds")
        .expect("handler called");
    assert_eq!(heard, "Tls");
    drop(client);
}

// ---------------------------------------------------------------------------------------------
// provctl

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provctl_connects_with_tls_and_with_a_credentials_file() {
    let binaries = testkit::process::workspace_binaries(&["provctl"]);
    let provctl = &binaries[0];
    let pki = Pki::generate();

    let (_conf, args) = config_args(&pki.server_tls_block(true));
    let server = NatsServer::start_with_args(args).await;
    let tls_env: HashMap<String, String> = [
        ("NATS_URL", server.url()),
        ("NATS_TLS_CA_FILE", pki.ca_file.display().to_string()),
        ("NATS_TLS_CERT_FILE", pki.client_cert.display().to_string()),
        ("NATS_TLS_KEY_FILE", pki.client_key.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let (status, out) = run_to_exit(provctl, &tls_env, &["--json", "status"], FAIL_FAST).await;
    assert!(status.success(), "provctl over mutual TLS:\n{out}");
    serde_json::from_str::<serde_json::Value>(out.trim()).unwrap_or_else(|e| panic!("{e}:\n{out}"));

    let mut untrusted = tls_env.clone();
    untrusted.insert(
        "NATS_TLS_CA_FILE".to_owned(),
        pki.other_ca_file.display().to_string(),
    );
    let (status, out) = run_to_exit(provctl, &untrusted, &["--json", "status"], FAIL_FAST).await;
    assert!(!status.success(), "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(out.contains("TLS handshake failed"), "{out}");

    let operator = Operator::generate();
    let (_conf, args) = config_args(&operator.server_config());
    let server = NatsServer::start_with_args(args).await;
    let creds_env: HashMap<String, String> = [
        ("NATS_URL", server.url()),
        (
            "NATS_CREDS_FILE",
            operator.user_creds("provctl").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let (status, out) = run_to_exit(provctl, &creds_env, &["--json", "status"], FAIL_FAST).await;
    assert!(status.success(), "provctl with a credentials file:\n{out}");
    serde_json::from_str::<serde_json::Value>(out.trim()).unwrap_or_else(|e| panic!("{e}:\n{out}"));
}

// ---------------------------------------------------------------------------------------------
// The pipeline with least-privilege users.

fn permissions_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/permissions.conf")
}

/// A server configuration with one user per service (and provctl) holding its permission set
/// from deploy/nats/permissions.conf, plus an unrestricted `admin` for the test's checks.
fn least_privilege_config() -> (tempfile::TempDir, Vec<String>) {
    let (dir, args) = config_args(
        "include ./permissions.conf\n\
         authorization { users: [\n\
           { user: sf-bridge, password: bridge-pw, permissions: $SF_BRIDGE_PERMISSIONS }\n\
           { user: provisioner, password: provisioner-pw, permissions: $PROVISIONER_PERMISSIONS }\n\
           { user: sf-writer, password: writer-pw, permissions: $SF_WRITER_PERMISSIONS }\n\
           { user: provctl, password: provctl-pw, permissions: $PROVCTL_PERMISSIONS }\n\
           { user: portal, password: portal-pw, permissions: $STATUS_CLIENT_PERMISSIONS }\n\
           { user: admin, password: admin-pw }\n\
         ] }\n",
    );
    // nats-server resolves an include relative to the including file.
    std::fs::copy(permissions_file(), dir.path().join("permissions.conf")).expect("copy");
    (dir, args)
}

#[test]
fn the_deployment_doc_points_to_every_permission_set() {
    let file = std::fs::read_to_string(permissions_file()).expect("permissions.conf");
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deployment.md"),
    )
    .expect("deployment.md");
    let sets: Vec<&str> = file
        .lines()
        .filter_map(|l| l.split_once(" = {").map(|(name, _)| name.trim()))
        .collect();
    assert_eq!(
        sets,
        [
            "SF_BRIDGE_PERMISSIONS",
            "PROVISIONER_PERMISSIONS",
            "SF_WRITER_PERMISSIONS",
            "PROVCTL_PERMISSIONS",
            "STATUS_CLIENT_PERMISSIONS"
        ],
        "one set per service, provctl and status clients, as the pipeline test uses them"
    );
    assert!(doc.contains("deploy/nats/permissions.conf"));
    for set in sets {
        assert!(doc.contains(set), "docs/deployment.md does not name {set}");
    }
}

fn server_log(server: &NatsServer) -> String {
    std::fs::read_to_string(server.store_dir().join("nats-server.log")).unwrap_or_default()
}

/// The server's permission refusals: "Permissions Violation for Publish to ..." (2.9) or
/// "Publish Violation - User ..., Subject ..." (2.10 and later), and the subscribe variants.
fn violations(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("Violation") && !l.contains("Authorization Violation"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_with_least_privilege_users() {
    let names = ["sf-bridge", "provisioner", "sf-writer", "provctl"];
    let binaries = testkit::process::workspace_binaries(&names);
    let (_conf, args) = least_privilege_config();
    let server = NatsServer::start_with_args(args).await;
    let sims = Simulators::start().await;
    let (sf, whmcs) = (&sims.sf, &sims.whmcs);

    // An order that provisions and one that fails at mapping (no WHMCS client).
    let good = seed_good_order(sf, whmcs, "Acme Ltd");
    let bad = seed_client_missing_order(sf);

    let password = |s: &str| match s {
        "sf-bridge" => "bridge-pw",
        "provisioner" => "provisioner-pw",
        "sf-writer" => "writer-pw",
        _ => "provctl-pw",
    };
    let nats_env = |s: &str| {
        vec![
            ("NATS_URL", server.url()),
            ("NATS_USER", s.to_owned()),
            ("NATS_PASSWORD", password(s).to_owned()),
        ]
    };
    // The provisioner's listener on a known port, for the status API's long poll.
    let provisioner_port = testkit::nats::free_port();
    let provisioner_http = format!("127.0.0.1:{provisioner_port}");
    let mut services: Vec<ChildProcess> = names[..3]
        .iter()
        .zip(&binaries)
        .map(|(name, binary)| {
            let mut nats = nats_env(name);
            if *name == "provisioner" {
                nats.push(("HTTP_ADDR", provisioner_http.clone()));
            }
            let env = service_env(name, Some(sf), Some(whmcs), &nats);
            ChildProcess::spawn(binary.to_str().unwrap(), &env)
        })
        .collect();

    sf.state().approve_order(&good).expect("approve good");
    sf.state().approve_order(&bad).expect("approve bad");
    let deadline = Instant::now() + PIPELINE_WAIT;
    loop {
        if status_of(sf, &good).as_deref() == Some("Activated")
            && status_of(sf, &bad).as_deref() == Some("Failed")
        {
            break;
        }
        let exited = services.iter_mut().any(ChildProcess::has_exited);
        if exited || Instant::now() > deadline {
            let logs: Vec<String> = services.iter().map(ChildProcess::log).collect();
            panic!(
                "orders not final (exited: {exited}; good {:?}, bad {:?}); violations {:#?}\n{}",
                status_of(sf, &good),
                status_of(sf, &bad),
                violations(&server_log(&server)),
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The status API with the provisioner's own rights: a long poll (the journal watch) and
    // the NATS service, asked by a client holding only the status clients' set.
    let answer = testkit::stack::http_get(
        provisioner_port,
        &format!("/orders/{good}?wait=5"),
        Duration::from_secs(15),
    )
    .await
    .expect("a long poll answer");
    let long_poll: serde_json::Value =
        serde_json::from_str(&testkit::stack::ok_body(&answer).expect("200")).expect("status body");
    assert_eq!(long_poll["state"], "activated", "{long_poll}");
    let portal =
        async_nats::ConnectOptions::with_user_and_password("portal".into(), "portal-pw".into())
            .connect(server.url())
            .await
            .expect("portal");
    let reply = portal
        .request(format!("provisioning.status.{bad}"), "".into())
        .await
        .expect("status over NATS");
    let status: serde_json::Value = serde_json::from_slice(&reply.payload).expect("status body");
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["error_code"], "CLIENT_MISSING", "{status}");
    let ping = portal
        .request("$SRV.PING.provisioning-status", "".into())
        .await
        .expect("service discovery");
    assert!(String::from_utf8_lossy(&ping.payload).contains("provisioning-status"));

    // Bodies no service can use: the provisioner and sf-writer dead-letter them (with their
    // own users' rights), and provctl shows and replays one.
    let admin = admin_context(&server).await;
    for subject in [
        "provisioning.requested.801000000000009AAA",
        "sf.order.update.801000000000009AAA",
    ] {
        admin
            .publish(subject, "{\"not\": \"a request\"}".into())
            .await
            .unwrap()
            .await
            .expect("garbage stored");
    }
    let dead_letters = |at_least: u64| {
        let admin = admin.clone();
        async move {
            let mut stream = admin.get_stream("PROVISIONING_DEADLETTER").await.ok()?;
            let count = stream.info().await.ok()?.state.messages;
            (count >= at_least).then_some(())
        }
    };
    testkit::wait::until("two dead letters", PIPELINE_WAIT, || dead_letters(2)).await;
    let provisioner_letter = admin
        .get_stream("PROVISIONING_DEADLETTER")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("provisioning.deadletter.provisioner")
        .await
        .expect("the provisioner's dead letter")
        .sequence
        .to_string();

    // provctl reads the pipeline's state, replays a dead letter and moves the cursor, with its
    // own user.
    let provctl_env: HashMap<String, String> = nats_env("provctl")
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    for args in [
        vec!["--json", "status"],
        vec!["--json", "order", good.as_str()],
        vec!["--json", "order", bad.as_str()],
        vec!["--json", "orders"],
        vec!["--json", "orders", "--state", "failed", "--since", "1h"],
        vec!["--json", "deadletter", "list"],
        vec!["--json", "deadletter", "show", provisioner_letter.as_str()],
        vec![
            "--json",
            "deadletter",
            "replay",
            provisioner_letter.as_str(),
        ],
    ] {
        let (status, out) = run_to_exit(&binaries[3], &provctl_env, &args, FAIL_FAST).await;
        assert!(status.success(), "provctl {args:?}:\n{out}");
    }
    // With fresh dead letters, `status --check` asks for attention (exit 3), with provctl's
    // own rights.
    let args = ["--json", "status", "--check"];
    let (status, out) = run_to_exit(&binaries[3], &provctl_env, &args, FAIL_FAST).await;
    assert_eq!(status.code(), Some(3), "provctl {args:?}:\n{out}");
    assert!(out.contains("dead_letters"), "{out}");
    // The replayed body reached the provisioner, which set it aside again.
    testkit::wait::until("the replay dead-lettered", PIPELINE_WAIT, || {
        dead_letters(3)
    })
    .await;

    for service in &mut services {
        let status = service.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "a service did not stop cleanly: {status:?}"
        );
    }
    // With the bridge stopped (its lease released), provctl may move the cursor.
    let args = ["--json", "cursor", "set", "--latest"];
    let (status, out) = run_to_exit(&binaries[3], &provctl_env, &args, FAIL_FAST).await;
    assert!(status.success(), "provctl {args:?}:\n{out}");

    let log = server_log(&server);
    assert!(
        violations(&log).is_empty(),
        "permissions violations in the pipeline:\n{:#?}",
        violations(&log)
    );

    forbidden_actions_are_refused(&server, &nats_env).await;
}

/// A JetStream context whose requests give up after 2 s: a request the server refuses for lack
/// of permission gets no answer at all.
fn refused_quickly(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client)
}

/// Whether `action` failed or got no answer within 10 s.
async fn refused<T, E>(action: impl std::future::Future<Output = Result<T, E>>) -> bool {
    !matches!(
        tokio::time::timeout(Duration::from_secs(10), action).await,
        Ok(Ok(_))
    )
}

/// Messages in the status updates stream, as the admin user sees them.
async fn stored_updates(admin: &jetstream::Context) -> u64 {
    admin
        .get_stream("SF_ORDER_UPDATES")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

/// A JetStream context of the configuration's `admin` user, who may do anything.
async fn admin_context(server: &NatsServer) -> jetstream::Context {
    jetstream::new(
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw".into())
            .connect(server.url())
            .await
            .expect("admin"),
    )
}

/// What a service may not do is refused by the server (and logged as a violation).
async fn forbidden_actions_are_refused(
    server: &NatsServer,
    nats_env: &dyn Fn(&str) -> Vec<(&'static str, String)>,
) {
    let connect = |user: &str| {
        let pairs = nats_env(user);
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            platform::nats::connect(&settings(&pairs), "forbidden-test")
                .await
                .expect("connect")
        }
    };
    let admin = admin_context(server).await;
    let updates_before = stored_updates(&admin).await;

    // sf-bridge publishing a status update (the provisioner's subject).
    let bridge = refused_quickly(connect("sf-bridge").await);
    assert!(
        refused(async {
            bridge
                .publish("sf.order.update.801000000000001AAA", "{}".into())
                .await?
                .await
        })
        .await,
        "sf-bridge could publish to sf.order.update"
    );

    // The provisioner deleting a stream.
    let provisioner = refused_quickly(connect("provisioner").await);
    assert!(
        refused(provisioner.delete_stream("PROVISIONING_REQUESTS")).await,
        "the provisioner could delete a stream"
    );

    // provctl creating a stream.
    let provctl = refused_quickly(connect("provctl").await);
    assert!(
        refused(provctl.create_stream(jetstream::stream::Config {
            name: "ROGUE".to_owned(),
            subjects: vec!["rogue.>".to_owned()],
            ..Default::default()
        }))
        .await,
        "provctl could create a stream"
    );

    // Nothing changed, and the server says why.
    assert!(admin.get_stream("PROVISIONING_REQUESTS").await.is_ok());
    assert!(admin.get_stream("ROGUE").await.is_err());
    let updates_after = stored_updates(&admin).await;
    assert_eq!(updates_before, updates_after, "a status update got through");
    let log = server_log(server);
    let found = violations(&log);
    eprintln!("refused as expected:\n{}", found.join("\n"));
    for subject in [
        "sf.order.update.801000000000001AAA",
        "$JS.API.STREAM.DELETE.PROVISIONING_REQUESTS",
        "$JS.API.STREAM.CREATE.ROGUE",
    ] {
        assert!(
            found.iter().any(|l| l.contains(subject)),
            "no violation logged for {subject}:\n{found:#?}"
        );
    }
}
