//! RSA key pairs for the JWT bearer flow, generated once per test process (2048-bit generation
//! is slow in debug builds) and written to a temporary directory for binaries that want paths.

use std::path::PathBuf;
use std::sync::OnceLock;

use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// A key pair in PEM form, and the same PEMs as files.
#[derive(Debug, Clone)]
pub struct TestKeys {
    /// PKCS#8 `-----BEGIN PRIVATE KEY-----`.
    pub private_pem: String,
    /// SPKI `-----BEGIN PUBLIC KEY-----`.
    pub public_pem: String,
    pub private_key_path: PathBuf,
    pub public_key_path: PathBuf,
}

/// The process-wide test key pair.
pub fn test_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| generate("test"))
}

/// A fresh key pair (e.g. to test that a foreign key is rejected).
#[allow(clippy::expect_used)]
pub fn generate(label: &str) -> TestKeys {
    let mut rng = rand_core06::OsRng;
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("generate RSA key");
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .expect("encode private key")
        .to_string();
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("encode public key");
    let dir = tempfile::Builder::new()
        .prefix("testkeys-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let private_key_path = dir.join(format!("{label}.key.pem"));
    let public_key_path = dir.join(format!("{label}.pub.pem"));
    std::fs::write(&private_key_path, &private_pem).expect("write private key");
    std::fs::write(&public_key_path, &public_pem).expect("write public key");
    TestKeys {
        private_pem,
        public_pem,
        private_key_path,
        public_key_path,
    }
}
