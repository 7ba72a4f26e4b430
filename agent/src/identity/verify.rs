//! Checks a signed certificate before it is served: the leaf is for our key, names exactly the
//! identities the control plane announced, is not a CA, has not expired, and chains (through any
//! intermediates) to a root of the mesh trust bundle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cp_lite_api::v1::SignCertificateResponse;
use rcgen::KeyPair;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Why a returned certificate is refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The reply holds no certificate.
    #[error("the control plane returned no certificate")]
    EmptyChain,
    /// Neither the reply nor the view holds a root.
    #[error("the control plane returned no trust bundle")]
    EmptyBundle,
    /// A certificate does not parse.
    #[error("{what} cannot be parsed: {reason}")]
    Parse {
        /// Which certificate (e.g. "certificate 1 of the chain").
        what: String,
        /// The parser's error.
        reason: String,
    },
    /// The leaf is for another key than the one the agent generated.
    #[error("the returned certificate is not for the key of the request")]
    KeyMismatch,
    /// The leaf names other identities than announced.
    #[error("the returned certificate names {got:?}, expected {expected:?}")]
    Identities {
        /// URI SANs of the leaf.
        got: Vec<String>,
        /// The view's identities.
        expected: Vec<String>,
    },
    /// The leaf is a CA certificate.
    #[error("the returned leaf certificate is a CA")]
    LeafIsCa,
    /// The leaf has already expired.
    #[error("the returned certificate expired at Unix time {not_after}")]
    Expired {
        /// NotAfter, Unix seconds.
        not_after: i64,
    },
    /// The chain does not verify up to a root of the trust bundle.
    #[error("the returned certificate does not chain to the mesh trust bundle: {0}")]
    Untrusted(String),
}

/// A verified certificate chain, ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM of every root of the reply's trust bundle (the view's when the reply has none).
    pub trust_bundle_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Lowercase hex serial of the leaf, without leading zeros.
    pub serial_hex: String,
}

/// Verifies `reply` for the request made with `key` and `identities`, at wall time `now`.
/// `view_roots` (the view's trust bundle) also count as roots: the reply and the view can be
/// one CA change apart.
pub fn verify_reply(
    reply: &SignCertificateResponse,
    key: &KeyPair,
    identities: &[String],
    view_roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<Verified, VerifyError> {
    if reply.chain_der.is_empty() {
        return Err(VerifyError::EmptyChain);
    }
    let bundle = if reply.trust_bundle_der.is_empty() {
        view_roots
    } else {
        &reply.trust_bundle_der
    };
    if bundle.is_empty() {
        return Err(VerifyError::EmptyBundle);
    }
    let chain = reply
        .chain_der
        .iter()
        .enumerate()
        .map(|(i, der)| parse(der, || format!("certificate {} of the chain", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let roots = reply
        .trust_bundle_der
        .iter()
        .chain(view_roots)
        .enumerate()
        .map(|(i, der)| parse(der, || format!("root {} of the trust bundle", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;

    let leaf = &chain[0];
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(VerifyError::KeyMismatch);
    }
    if leaf.is_ca() {
        return Err(VerifyError::LeafIsCa);
    }
    let mut got = uri_sans(leaf)?;
    let mut expected = identities.to_vec();
    got.sort();
    expected.sort();
    if got != expected {
        return Err(VerifyError::Identities { got, expected });
    }
    let not_after = leaf.validity().not_after.timestamp();
    if unix(now) >= not_after {
        return Err(VerifyError::Expired { not_after });
    }
    verify_chain(
        &chain,
        &roots,
        &reply.chain_der,
        reply.trust_bundle_der.iter().chain(view_roots),
    )?;

    Ok(Verified {
        chain_pem: reply.chain_der.iter().map(|der| pem(der)).collect(),
        trust_bundle_pem: bundle.iter().map(|der| pem(der)).collect(),
        not_before: system_time(leaf.validity().not_before.timestamp()),
        not_after: system_time(not_after),
        serial_hex: format!("{:x}", leaf.serial),
    })
}

fn parse<'a>(der: &'a [u8], what: impl Fn() -> String) -> Result<X509Certificate<'a>, VerifyError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(VerifyError::Parse {
            what: what(),
            reason: "trailing bytes".into(),
        }),
        Err(e) => Err(VerifyError::Parse {
            what: what(),
            reason: e.to_string(),
        }),
    }
}

/// Every certificate is signed by the next one, each issuer a CA; the last one is a root of
/// the bundle or is signed by one.
fn verify_chain<'a>(
    chain: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    chain_der: &[Vec<u8>],
    root_der: impl Iterator<Item = &'a Vec<u8>>,
) -> Result<(), VerifyError> {
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if !parent.is_ca() {
            return Err(VerifyError::Untrusted(format!(
                "certificate {} of the chain is not a CA",
                i + 2
            )));
        }
        signed_by(child, parent)
            .map_err(|reason| VerifyError::Untrusted(format!("certificate {}: {reason}", i + 1)))?;
    }
    let root_der: Vec<&Vec<u8>> = root_der.collect();
    let last_der = &chain_der[chain.len() - 1];
    if root_der.contains(&last_der) {
        return Ok(());
    }
    let last = &chain[chain.len() - 1];
    let anchored = roots
        .iter()
        .filter(|root| root.is_ca())
        .any(|root| signed_by(last, root).is_ok());
    if anchored {
        Ok(())
    } else {
        Err(VerifyError::Untrusted(format!(
            "no root of the bundle issued \"{}\"",
            last.issuer()
        )))
    }
}

fn signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> Result<(), String> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(format!(
            "issuer \"{}\" is not \"{}\"",
            child.issuer(),
            parent.subject()
        ));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|e| format!("bad signature: {e}"))
}

fn uri_sans(cert: &X509Certificate<'_>) -> Result<Vec<String>, VerifyError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| VerifyError::Parse {
            what: "the subjectAltName of the returned certificate".into(),
            reason: e.to_string(),
        })?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// One PEM `CERTIFICATE` block.
pub fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Unix seconds of `time` (negative before 1970).
pub fn unix(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyUsagePurpose, SanType,
        SerialNumber,
    };
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use time::OffsetDateTime;

    use super::*;

    /// A test mesh CA that signs leaves like cp-lite does.
    pub(crate) struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pub(crate) root_der: Vec<u8>,
    }

    impl TestCa {
        pub(crate) fn new(name: &str) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            TestCa {
                root_der: cert.der().to_vec(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A leaf for `public_key` naming `identities`, valid from `now − 10 s` for `lifetime`.
        pub(crate) fn sign(
            &self,
            public_key: &impl rcgen::PublicKeyData,
            identities: &[String],
            now: SystemTime,
            lifetime: Duration,
        ) -> Vec<u8> {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = identities
                .iter()
                .map(|id| SanType::URI(id.as_str().try_into().unwrap()))
                .collect();
            params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
            let now = OffsetDateTime::from(now);
            params.not_before = now - Duration::from_secs(10);
            params.not_after = now + lifetime;
            params.use_authority_key_identifier_extension = true;
            params
                .signed_by(public_key, &self.issuer)
                .unwrap()
                .der()
                .to_vec()
        }

        /// Signs a CSR as cp-lite does: the CSR only proves the key.
        pub(crate) fn sign_csr(
            &self,
            csr_der: &[u8],
            identities: &[String],
            now: SystemTime,
            lifetime: Duration,
        ) -> Vec<u8> {
            let csr =
                rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
            self.sign(&csr.public_key, identities, now, lifetime)
        }
    }

    fn ids() -> Vec<String> {
        vec![
            "spiffe://default/web".to_string(),
            "kuma://kuma.io/service/web".to_string(),
        ]
    }

    fn reply(ca: &TestCa, leaf: Vec<u8>) -> SignCertificateResponse {
        SignCertificateResponse {
            chain_der: vec![leaf],
            trust_bundle_der: vec![ca.root_der.clone()],
            backend: "ca-1".into(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn accepts_a_good_leaf() {
        let ca = TestCa::new("mesh CA");
        let key = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let leaf = ca.sign(&key, &ids(), now, HOUR);
        let verified = verify_reply(&reply(&ca, leaf.clone()), &key, &ids(), &[], now).unwrap();
        assert_eq!(
            CertificateDer::from_pem_slice(verified.chain_pem.as_bytes())
                .unwrap()
                .as_ref(),
            leaf.as_slice()
        );
        assert_eq!(
            CertificateDer::from_pem_slice(verified.trust_bundle_pem.as_bytes())
                .unwrap()
                .as_ref(),
            ca.root_der.as_slice()
        );
        assert_eq!(unix(verified.not_after), unix(now) + 3600);
        assert_eq!(unix(verified.not_before), unix(now) - 10);
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(verified.serial_hex, format!("{:x}", cert.serial));
    }

    #[test]
    fn rejects_a_leaf_for_another_key() {
        let ca = TestCa::new("mesh CA");
        let ours = KeyPair::generate().unwrap();
        let theirs = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let leaf = ca.sign(&theirs, &ids(), now, HOUR);
        let err = verify_reply(&reply(&ca, leaf), &ours, &ids(), &[], now).unwrap_err();
        assert!(matches!(err, VerifyError::KeyMismatch), "{err}");
    }

    #[test]
    fn rejects_an_expired_leaf() {
        let ca = TestCa::new("mesh CA");
        let key = KeyPair::generate().unwrap();
        let issued = SystemTime::now() - 2 * HOUR;
        let leaf = ca.sign(&key, &ids(), issued, HOUR);
        let err =
            verify_reply(&reply(&ca, leaf), &key, &ids(), &[], SystemTime::now()).unwrap_err();
        assert!(matches!(err, VerifyError::Expired { .. }), "{err}");
    }

    #[test]
    fn rejects_a_wrong_spiffe_id() {
        let ca = TestCa::new("mesh CA");
        let key = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let wrong = vec![
            "spiffe://default/admin".to_string(),
            "kuma://kuma.io/service/web".to_string(),
        ];
        let leaf = ca.sign(&key, &wrong, now, HOUR);
        let err = verify_reply(&reply(&ca, leaf), &key, &ids(), &[], now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the returned certificate names [\"kuma://kuma.io/service/web\", \"spiffe://default/admin\"], expected [\"kuma://kuma.io/service/web\", \"spiffe://default/web\"]"
        );
    }

    #[test]
    fn rejects_a_leaf_of_another_ca() {
        let ca = TestCa::new("mesh CA");
        let other = TestCa::new("other CA");
        let key = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let leaf = other.sign(&key, &ids(), now, HOUR);
        let err = verify_reply(&reply(&ca, leaf.clone()), &key, &ids(), &[], now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the returned certificate does not chain to the mesh trust bundle: no root of the bundle issued \"CN=other CA\""
        );

        // A root announced by the view counts (the view can be ahead of the reply).
        let verified = verify_reply(
            &reply(&ca, leaf),
            &key,
            &ids(),
            std::slice::from_ref(&other.root_der),
            now,
        );
        assert!(verified.is_ok());
    }

    #[test]
    fn rejects_empty_replies() {
        let ca = TestCa::new("mesh CA");
        let key = KeyPair::generate().unwrap();
        let now = SystemTime::now();
        let mut empty = reply(&ca, Vec::new());
        empty.chain_der.clear();
        let err = verify_reply(&empty, &key, &ids(), &[], now).unwrap_err();
        assert!(matches!(err, VerifyError::EmptyChain));
        let mut no_bundle = reply(&ca, ca.sign(&key, &ids(), now, HOUR));
        no_bundle.trust_bundle_der.clear();
        let err = verify_reply(&no_bundle, &key, &ids(), &[], now).unwrap_err();
        assert!(matches!(err, VerifyError::EmptyBundle));
        let mut garbage = reply(&ca, b"garbage".to_vec());
        garbage.chain_der[0] = b"garbage".to_vec();
        let err = verify_reply(&garbage, &key, &ids(), &[], now).unwrap_err();
        assert!(matches!(err, VerifyError::Parse { .. }), "{err}");
    }
}
