//! Test fixtures for the CA module: CAs, chains and keys generated with rcgen and aws-lc-rs, and
//! a runner for the `openssl` command line as an independent checker.

use std::io::Write;
use std::process::{Command, Stdio};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, SignatureAlgorithm,
};

/// A CA made for a test: certificate, key and the parameters it was made from.
pub(crate) struct TestCa {
    pub(crate) cert: Certificate,
    pub(crate) key: KeyPair,
    pub(crate) params: CertificateParams,
}

impl TestCa {
    /// A self-signed ECDSA P-256 root.
    pub(crate) fn root(name: &str) -> TestCa {
        Self::root_with(name, |_| {})
    }

    /// A self-signed ECDSA P-256 root, its parameters edited first.
    pub(crate) fn root_with(name: &str, edit: impl FnOnce(&mut CertificateParams)) -> TestCa {
        self_signed_ca_edit(name, &PKCS_ECDSA_P256_SHA256, edit)
    }

    /// A self-signed RSA-2048 root.
    pub(crate) fn rsa_root(name: &str) -> TestCa {
        self_signed_ca_edit(name, &PKCS_RSA_SHA256, |_| {})
    }

    /// A CA (ECDSA P-256) signed by this one, its parameters edited first.
    pub(crate) fn issue_ca(&self, name: &str, edit: impl FnOnce(&mut CertificateParams)) -> TestCa {
        self.issue_ca_with(name, &PKCS_ECDSA_P256_SHA256, edit)
    }

    /// A CA with a key of `alg` signed by this one, its parameters edited first.
    pub(crate) fn issue_ca_with(
        &self,
        name: &str,
        alg: &'static SignatureAlgorithm,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> TestCa {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = ca_params(name);
        params.use_authority_key_identifier_extension = true;
        edit(&mut params);
        let cert = signed_by(&params, &key, self);
        TestCa { cert, key, params }
    }
}

/// Parameters of a CA named `name`: CA:TRUE, keyCertSign|cRLSign.
pub(crate) fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Test");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    params
}

/// A certificate for `key` with `params`, signed by `ca`.
pub(crate) fn signed_by(params: &CertificateParams, key: &KeyPair, ca: &TestCa) -> Certificate {
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    params.signed_by(key, &issuer).unwrap()
}

/// A self-signed ECDSA P-256 CA.
pub(crate) fn self_signed_ca(name: &str) -> TestCa {
    self_signed_ca_with(name, &PKCS_ECDSA_P256_SHA256)
}

/// A self-signed CA with a key of `alg`.
pub(crate) fn self_signed_ca_with(name: &str, alg: &'static SignatureAlgorithm) -> TestCa {
    self_signed_ca_edit(name, alg, |_| {})
}

fn self_signed_ca_edit(
    name: &str,
    alg: &'static SignatureAlgorithm,
    edit: impl FnOnce(&mut CertificateParams),
) -> TestCa {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = ca_params(name);
    edit(&mut params);
    let cert = params.self_signed(&key).unwrap();
    TestCa { cert, key, params }
}

/// A PEM block of `label` around `der`.
pub(crate) fn pem_block(label: &str, der: &[u8]) -> String {
    crate::ca::builtin::encode_pem(label, der).unwrap()
}

/// An RSA key as PEM `RSA PRIVATE KEY` (PKCS#1).
pub(crate) fn pkcs1_pem(key: &KeyPair) -> String {
    let pkcs1 = crate::ca::builtin::pkcs8_to_pkcs1(key.serialized_der()).unwrap();
    pem_block("RSA PRIVATE KEY", &pkcs1)
}

/// An ECDSA key as PEM `EC PRIVATE KEY` (SEC1, with the curve), converted by openssl.
pub(crate) fn sec1_pem(key: &KeyPair) -> String {
    let sec1 = openssl(&["ec"], key.serialize_pem().as_bytes());
    assert!(sec1.contains("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
    sec1
}

/// Runs `openssl <args>` with `stdin`, returns stdout and stderr; panics when it fails.
pub(crate) fn openssl(args: &[&str], stdin: &[u8]) -> String {
    let (ok, output) = openssl_status(args, stdin);
    assert!(ok, "openssl {args:?} failed:\n{output}");
    output
}

/// Runs `openssl <args>` with `stdin`; returns whether it succeeded and its stdout + stderr.
pub(crate) fn openssl_status(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl command line is installed");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A file in a fresh temporary directory holding `contents`; the directory lives as long as
/// the returned guard.
pub(crate) fn temp_file(contents: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file.pem");
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}
