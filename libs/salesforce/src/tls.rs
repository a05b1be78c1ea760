//! Extra CAs for Salesforce's TLS endpoints (`SF_CA_FILE`): trusted in addition to the roots the
//! clients already trust, never instead of them, so a proxy's or a simulator's CA can be added
//! without touching the system store. One [`http_client_builder`] makes the token and REST
//! clients of all three services; the Pub/Sub client adds the same CAs to its gRPC channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

use crate::settings::SalesforceSettings;

/// Why an `SF_CA_FILE` cannot be used. The file is checked at start so a wrong path or an empty
/// bundle stops the service with this line instead of failing every handshake later.
#[derive(Debug, Error)]
pub enum CaFileError {
    #[error("cannot be read ({path})")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("holds a certificate block that is not valid PEM ({path}): {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("holds no PEM certificate (-----BEGIN CERTIFICATE-----) ({path})")]
    NoCertificate { path: PathBuf },
    #[error("holds a certificate that cannot be a trust anchor ({path}): {reason}")]
    NotAnAnchor { path: PathBuf, reason: String },
}

/// The certificates of an `SF_CA_FILE`, checked. Cheap to clone, and one pointer wide: it sits
/// in every service's settings, which are moved into futures by value.
#[derive(Clone)]
pub struct ExtraRoots(Arc<Roots>);

struct Roots {
    path: PathBuf,
    /// The certificates alone, each re-encoded as PEM (what tonic takes).
    pem: String,
    der: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("path", &self.0.path)
            .field("certificates", &self.0.der.len())
            .finish()
    }
}

impl ExtraRoots {
    /// Reads a PEM bundle. Other blocks (a key by mistake, comments) are ignored; at least one
    /// certificate must be there, and each must be usable as a trust anchor.
    pub fn load(path: &Path) -> Result<Self, CaFileError> {
        let bytes = std::fs::read(path).map_err(|source| CaFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(path, &bytes)
    }

    fn from_pem(path: &Path, bytes: &[u8]) -> Result<Self, CaFileError> {
        let der = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CaFileError::Pem {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if der.is_empty() {
            return Err(CaFileError::NoCertificate {
                path: path.to_owned(),
            });
        }
        // The same check rustls makes when the root store is built, made here so that a
        // certificate it would silently skip is an error at start instead.
        let mut store = rustls::RootCertStore::empty();
        for cert in &der {
            store
                .add(cert.clone())
                .map_err(|e| CaFileError::NotAnAnchor {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
        }
        let pem = der.iter().map(|cert| pem_of(cert)).collect::<String>();
        Ok(Self(Arc::new(Roots {
            path: path.to_owned(),
            pem,
            der,
        })))
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    pub fn len(&self) -> usize {
        self.0.der.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.der.is_empty()
    }

    /// For the gRPC channel (tonic parses every certificate of the PEM).
    pub fn tonic_certificate(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(self.0.pem.as_bytes())
    }

    /// Adds the certificates to a reqwest client's roots (its built-in roots stay).
    pub fn add_to(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        for cert in &self.0.der {
            // `from_der` only stores the bytes: it cannot fail on a certificate checked above.
            if let Ok(cert) = reqwest::Certificate::from_der(cert.as_ref()) {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder
    }
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The HTTP client builder for Salesforce's token endpoint and REST API: `SF_CA_FILE`'s CAs
/// added to the built-in roots. Each service adds its own pool and timeout settings.
pub fn http_client_builder(settings: &SalesforceSettings) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder();
    match &settings.extra_roots {
        Some(roots) => roots.add_to(builder),
        None => builder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_bundle_keeps_every_certificate_and_ignores_other_blocks() {
        let (a, b) = (ca_pem(), ca_pem());
        let bundle = format!(
            "# two CAs\n{a}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{b}"
        );
        let roots = ExtraRoots::from_pem(Path::new("bundle.pem"), bundle.as_bytes()).unwrap();
        assert_eq!(roots.len(), 2);
        // Re-encoded, the certificates are byte for byte the input's PEM blocks.
        assert_eq!(roots.0.pem, format!("{a}{b}").replace("\r\n", "\n"));
        assert!(format!("{roots:?}").contains("certificates: 2"));
    }

    #[test]
    fn a_file_without_a_certificate_is_named() {
        let err =
            ExtraRoots::from_pem(Path::new("/etc/empty.pem"), b"not a certificate\n").unwrap_err();
        assert!(matches!(err, CaFileError::NoCertificate { .. }), "{err:?}");
        assert!(err.to_string().contains("/etc/empty.pem"), "{err}");
    }

    #[test]
    fn a_broken_certificate_block_is_an_error() {
        let err = ExtraRoots::from_pem(
            Path::new("broken.pem"),
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(matches!(err, CaFileError::Pem { .. }), "{err:?}");
        let err = ExtraRoots::from_pem(
            Path::new("junk.pem"),
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(matches!(err, CaFileError::NotAnAnchor { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let err = ExtraRoots::load(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(matches!(err, CaFileError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
