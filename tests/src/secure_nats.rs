//! Material for a locked-down nats-server: a private CA with server and client certificates
//! (and a second CA nobody trusts), operator-mode JWTs and `.creds` files signed with NKeys, and
//! server configuration files. Everything is generated per test in a temporary directory.

use std::path::{Path, PathBuf};

use base64::Engine;
use sf_sim::tls::{GeneratedCa, Purpose};

/// A file written into a test's temporary directory.
#[allow(clippy::expect_used)]
fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// A private CA, a server certificate for `127.0.0.1`/`localhost` and a client certificate
/// signed by it, and a server certificate signed by another CA (the "untrusted" case).
#[derive(Debug)]
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The other CA's certificate: clients trusting it do not trust `server_cert`.
    pub other_ca_file: PathBuf,
    /// A server certificate and key signed by the other CA.
    pub untrusted_server_cert: PathBuf,
    pub untrusted_server_key: PathBuf,
}

#[allow(clippy::expect_used)]
fn new_ca(name: &str) -> GeneratedCa {
    GeneratedCa::new(name).expect("test CA")
}

/// A leaf certificate for the loopback names, signed by `ca`: (certificate PEM, key PEM).
#[allow(clippy::expect_used)]
fn new_leaf(ca: &GeneratedCa, name: &str, purpose: Purpose) -> (String, String) {
    ca.leaf(
        name,
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        purpose,
    )
    .expect("signed leaf")
}

impl Pki {
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nats-pki-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let ca = new_ca("provisioning test CA");
        let other = new_ca("some other CA");
        let (server_cert, server_key) = new_leaf(&ca, "nats-server", Purpose::ServerAuth);
        let (client_cert, client_key) = new_leaf(&ca, "sf-bridge", Purpose::ClientAuth);
        let (untrusted_cert, untrusted_key) = new_leaf(&other, "impostor", Purpose::ServerAuth);
        Self {
            ca_file: write(d, "ca.pem", ca.cert_pem()),
            server_cert: write(d, "server.pem", &server_cert),
            server_key: write(d, "server-key.pem", &server_key),
            client_cert: write(d, "client.pem", &client_cert),
            client_key: write(d, "client-key.pem", &client_key),
            other_ca_file: write(d, "other-ca.pem", other.cert_pem()),
            untrusted_server_cert: write(d, "untrusted.pem", &untrusted_cert),
            untrusted_server_key: write(d, "untrusted-key.pem", &untrusted_key),
            _dir: dir,
        }
    }

    /// A server `tls {}` block with the trusted server certificate; `verify` requires client
    /// certificates signed by the CA (mutual TLS).
    pub fn server_tls_block(&self, verify: bool) -> String {
        tls_block(&self.server_cert, &self.server_key, &self.ca_file, verify)
    }

    /// A server `tls {}` block whose certificate clients of this CA do not trust.
    pub fn untrusted_server_tls_block(&self) -> String {
        tls_block(
            &self.untrusted_server_cert,
            &self.untrusted_server_key,
            &self.other_ca_file,
            false,
        )
    }
}

fn tls_block(cert: &Path, key: &Path, ca: &Path, verify: bool) -> String {
    format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {verify}\n  timeout: 5\n}}\n",
        quote(cert),
        quote(key),
        quote(ca)
    )
}

/// A path as a quoted nats-server configuration string.
pub fn quote(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).unwrap_or_default()
}

/// Writes a nats-server configuration file and returns the arguments that load it
/// (for [`crate::nats::NatsServer::start_with_args`]). The returned directory holds the file.
#[allow(clippy::expect_used)]
pub fn config_args(contents: &str) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::Builder::new()
        .prefix("nats-conf-")
        .tempdir()
        .expect("temp dir");
    let path = write(dir.path(), "nats.conf", contents);
    (dir, vec!["-c".to_owned(), path.display().to_string()])
}

/// An operator, a system account and an application account with JetStream enabled through its
/// JWT limits, for a server in operator mode with a memory resolver; users are issued by the
/// application account with [`Operator::user_creds`].
pub struct Operator {
    dir: tempfile::TempDir,
    operator_jwt: String,
    system: nkeys::KeyPair,
    system_jwt: String,
    account: nkeys::KeyPair,
    account_jwt: String,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("account", &self.account.public_key())
            .finish_non_exhaustive()
    }
}

/// A JWT as nats-server reads it: `ed25519-nkey` header, claims signed by the issuer's NKey.
#[allow(clippy::expect_used)]
fn encode_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        // A unique id; nats-server does not check how it was derived.
        "jti": nkeys::KeyPair::new_user().public_key(),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let signature = issuer.sign(signing_input.as_bytes()).expect("sign JWT");
    format!("{signing_input}.{}", b64.encode(signature))
}

/// Unlimited account limits; `jetstream` adds storage limits, which is what enables JetStream
/// for an account in operator mode.
fn account_claims(jetstream: bool) -> serde_json::Value {
    let mut limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for (k, v) in [
            ("mem_storage", -1),
            ("disk_storage", -1),
            ("streams", -1),
            ("consumer", -1),
        ] {
            limits[k] = serde_json::json!(v);
        }
    }
    serde_json::json!({
        "limits": limits,
        "default_permissions": {"pub": {}, "sub": {}},
        "type": "account",
        "version": 2,
    })
}

impl Operator {
    #[allow(clippy::expect_used)]
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nats-operator-")
            .tempdir()
            .expect("temp dir");
        let operator = nkeys::KeyPair::new_operator();
        let operator_jwt = encode_jwt(
            &operator,
            &operator.public_key(),
            "test-operator",
            serde_json::json!({"type": "operator", "version": 2}),
        );
        // The system account, and the one the services' users belong to (with JetStream).
        let new_account = |name: &str, jetstream: bool| {
            let account = nkeys::KeyPair::new_account();
            let jwt = encode_jwt(
                &operator,
                &account.public_key(),
                name,
                account_claims(jetstream),
            );
            (account, jwt)
        };
        let (system, system_jwt) = new_account("SYS", false);
        let (account, account_jwt) = new_account("PROVISIONING", true);
        Self {
            dir,
            operator_jwt,
            system,
            system_jwt,
            account,
            account_jwt,
        }
    }

    /// The server configuration lines for operator mode (operator JWT file, system account,
    /// memory resolver with both account JWTs preloaded).
    pub fn server_config(&self) -> String {
        let operator_file = write(self.dir.path(), "operator.jwt", &self.operator_jwt);
        format!(
            "operator: {}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {acc}: \"{acc_jwt}\"\n}}\n",
            quote(&operator_file),
            sys = self.system.public_key(),
            sys_jwt = self.system_jwt,
            acc = self.account.public_key(),
            acc_jwt = self.account_jwt,
        )
    }

    /// A `.creds` file for a new user of the application account (no permission limits).
    #[allow(clippy::expect_used)]
    pub fn user_creds(&self, name: &str) -> PathBuf {
        let user = nkeys::KeyPair::new_user();
        let jwt = encode_jwt(
            &self.account,
            &user.public_key(),
            name,
            serde_json::json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        );
        let seed = user.seed().expect("user seed");
        write(
            self.dir.path(),
            &format!("{name}.creds"),
            &format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
                 *************************************************************\n"
            ),
        )
    }

    /// A `.creds` file whose user was issued by an account the server does not know.
    #[allow(clippy::expect_used)]
    pub fn foreign_user_creds(&self, name: &str) -> PathBuf {
        let stranger = Self::generate();
        let path = stranger.user_creds(name);
        let contents = std::fs::read_to_string(&path).expect("read creds");
        write(self.dir.path(), &format!("{name}.creds"), &contents)
    }
}
