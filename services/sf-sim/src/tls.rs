//! TLS on the three listeners (`SF_SIM_TLS`). Salesforce is reachable only over TLS, so this is
//! how the clients' TLS paths (extra CA, server name checks, ALPN) get exercised; plain HTTP stays
//! the default so tests that do not care keep their simpler setup.
//!
//! The certificate is either generated at start (a throw-away CA and a server certificate for
//! the public host, `localhost`, `127.0.0.1` and `::1`; the CA's PEM is what clients are told to
//! trust) or read from PEM files. The two HTTP listeners use rustls through tokio-rustls; the
//! gRPC listener uses tonic's own server TLS with the same certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::error::SimError;

/// A client that connects and never completes its handshake is dropped after this long, so it
/// holds no task or socket for good.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the listeners speak.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain HTTP and plaintext HTTP/2 (`http://` URLs).
    #[default]
    Off,
    /// A CA and a server certificate generated at start; the CA's PEM is written to `ca_out`
    /// when given (and is always [`crate::SfSim::ca_pem`]).
    Generate { ca_out: Option<PathBuf> },
    /// A server certificate (chain) and its key, PEM files.
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

impl TlsMode {
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }
}

/// The server's certificate and key, in PEM, as both TLS stacks take them.
pub(crate) struct ServerIdentity {
    pub cert_chain_pem: String,
    pub key_pem: String,
    /// The generated CA (none when the certificate was given).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity").finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// `None` for [`TlsMode::Off`].
    pub fn resolve(mode: &TlsMode, public_host: &str) -> Result<Option<Self>, SimError> {
        match mode {
            TlsMode::Off => Ok(None),
            TlsMode::Generate { ca_out } => {
                let identity = generate(public_host)?;
                if let (Some(path), Some(ca_pem)) = (ca_out, &identity.ca_pem) {
                    write_atomically(path, ca_pem)?;
                }
                Ok(Some(identity))
            }
            TlsMode::Files {
                cert_file,
                key_file,
            } => Ok(Some(Self {
                cert_chain_pem: read(cert_file)?,
                key_pem: read(key_file)?,
                ca_pem: None,
            })),
        }
    }

    /// The acceptor of the HTTP listeners: ALPN offers HTTP/2 and HTTP/1.1, as Salesforce's
    /// front ends do.
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SimError> {
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SimError::tls("the certificate PEM does not parse", e))?;
        if certs.is_empty() {
            return Err(SimError::Tls {
                step: "the certificate PEM holds no certificate".into(),
                source: None,
            });
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| SimError::tls("the key PEM holds no private key", e))?;
        // The provider is named rather than taken from the process default, which rustls cannot
        // pick when more than one provider is compiled in.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| SimError::tls("cannot build the server configuration", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| SimError::tls("certificate and key do not fit", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// tonic's server TLS for the Pub/Sub listener (tonic sets ALPN `h2` itself).
    pub fn grpc_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_chain_pem,
                &self.key_pem,
            ))
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path)
        .map_err(|e| SimError::tls(format!("cannot read {}", path.display()), e))
}

/// Written under a temporary name and renamed, so that a script waiting for the file never reads
/// half of it.
fn write_atomically(path: &Path, contents: &str) -> Result<(), SimError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, contents)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| SimError::tls(format!("cannot write the CA to {}", path.display()), e))
}

/// The names the server certificate is valid for: the host in the URLs sf-sim hands out, and
/// the loopback names a local client may use instead.
fn server_names(public_host: &str) -> Vec<String> {
    let mut names = vec![public_host.to_owned()];
    for local in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(local)) {
            names.push(local.to_owned());
        }
    }
    names
}

fn generate(public_host: &str) -> Result<ServerIdentity, SimError> {
    let failed = |e: rcgen::Error| SimError::tls("cannot generate a certificate", e);
    let ca = GeneratedCa::new("sf-sim test CA").map_err(failed)?;
    let (cert_chain_pem, key_pem) = ca
        .leaf(public_host, server_names(public_host), Purpose::ServerAuth)
        .map_err(|e| {
            SimError::tls(
                format!("cannot make a certificate for SF_SIM_PUBLIC_HOST {public_host:?}"),
                e,
            )
        })?;
    Ok(ServerIdentity {
        cert_chain_pem,
        key_pem,
        ca_pem: Some(ca.cert_pem().to_owned()),
    })
}

/// What a leaf certificate is for (its extended key usage).
pub use rcgen::ExtendedKeyUsagePurpose as Purpose;

/// A certificate authority made on the spot, for a stand-in's identity and the tests' private
/// PKI; its key never leaves the process.
pub struct GeneratedCa {
    cert_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl GeneratedCa {
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA certificate's PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A leaf certificate signed by this CA, valid for `names` (DNS names or IP addresses):
    /// (certificate PEM, key PEM).
    pub fn leaf(
        &self,
        common_name: &str,
        names: Vec<String>,
        purpose: Purpose,
    ) -> Result<(String, String), rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![purpose];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A TCP listener whose connections come out TLS-terminated, for `axum::serve`. Handshakes run
/// in tasks of their own: one slow or silent client must not hold up the others' accepts.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(what: &'static str, tcp: TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let local = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (sender, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                // Ends with the listener: axum drops it when the server shuts down.
                let accepted = tokio::select! {
                    () = sender.closed() => return,
                    accepted = tcp.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: accepting again at once would
                        // spin on the same error (axum's own listener does the same).
                        tracing::warn!(listener = what, error = %platform::error::Chain(&err), "Accept failed.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        // A client that does not trust the certificate ends here: expected in
                        // tests of exactly that, so not a warning.
                        Ok(Err(err)) => tracing::debug!(
                            listener = what, peer = %peer, error = %platform::error::Chain(&err),
                            "TLS handshake failed."
                        ),
                        Err(_) => tracing::debug!(
                            listener = what, peer = %peer, "TLS handshake timed out."
                        ),
                    }
                });
            }
        });
        Self { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends once this receiver is gone, so this is not reached;
            // a listener with nothing more to give waits like an idle one.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_public_host_and_loopback_once() {
        assert_eq!(
            server_names("sf-sim"),
            ["sf-sim", "localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(server_names("127.0.0.1"), ["127.0.0.1", "localhost", "::1"]);
    }

    #[test]
    fn a_generated_identity_makes_an_acceptor_and_writes_its_ca() {
        let dir = std::env::temp_dir().join(format!("sf-sim-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_out = dir.join("ca.pem");
        let identity = ServerIdentity::resolve(
            &TlsMode::Generate {
                ca_out: Some(ca_out.clone()),
            },
            "sf-sim",
        )
        .unwrap()
        .unwrap();
        let written = std::fs::read_to_string(&ca_out).unwrap();
        assert_eq!(Some(written.as_str()), identity.ca_pem.as_deref());
        assert!(
            written.starts_with("-----BEGIN CERTIFICATE-----"),
            "{written}"
        );
        identity.http_acceptor().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_key_that_is_not_one_is_an_error() {
        let generated = generate("localhost").unwrap();
        let bad = ServerIdentity {
            key_pem: "not a key".into(),
            ..generated
        };
        let Err(err) = bad.http_acceptor() else {
            panic!("a key PEM without a key was taken");
        };
        assert!(err.to_string().contains("no private key"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let err = ServerIdentity::resolve(
            &TlsMode::Files {
                cert_file: "/nonexistent/cert.pem".into(),
                key_file: "/nonexistent/key.pem".into(),
            },
            "localhost",
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
