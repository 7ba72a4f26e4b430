//! The builtin CA: a per-mesh RSA root generated once, exactly as Kuma's builtin CA makes it
//! (KUMA-FACTS §4).

use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyIdMethod,
    KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::{CaError, CaPair, SecretPem};

/// RSA size used when the mesh asks for 0 bits (Kuma's default).
pub const DEFAULT_RSA_BITS: u32 = 2048;

/// How far a CA's NotBefore is set in the past (Kuma: 10 s), so that a slightly slow clock
/// elsewhere still accepts it.
const CA_NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(10);

/// Generates the root of a builtin mesh CA (KUMA-FACTS §4): an RSA key of `rsa_bits` (0 means
/// 2048; aws-lc-rs generates 2048, 3072, 4096 and 8192), serial 0, subject
/// `O=Kuma, OU=Mesh, CN=<mesh>`, SAN `spiffe://<mesh>`, NotBefore now − 10 s, NotAfter
/// now + `lifetime`, CA:TRUE, key usage keyCertSign|cRLSign, a subject key id, SHA256-RSA.
/// The key is PEM `RSA PRIVATE KEY` (PKCS#1), as Kuma stores it.
pub fn generate_builtin_root(
    mesh: &str,
    rsa_bits: u32,
    lifetime: Duration,
    now: OffsetDateTime,
) -> Result<CaPair, CaError> {
    let size = match rsa_bits {
        0 | DEFAULT_RSA_BITS => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        8192 => KeySize::Rsa8192,
        other => return Err(CaError::UnsupportedRsaBits(other)),
    };
    let rsa = RsaKeyPair::generate(size).map_err(|_| CaError::KeyGeneration)?;
    let pkcs8 = rsa.as_der().map_err(|_| CaError::KeyGeneration)?;
    let pkcs1 = pkcs8_to_pkcs1(pkcs8.as_ref())?;
    let key = KeyPair::from_der_and_sign_algo(
        &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_ref())),
        &PKCS_RSA_SHA256,
    )
    .map_err(CaError::Generation)?;

    let mut params = CertificateParams::default();
    params.serial_number = Some(SerialNumber::from_slice(&[0]));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, go_string("Kuma"));
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, go_string("Mesh"));
    params
        .distinguished_name
        .push(DnType::CommonName, go_string(mesh));
    let uri = format!("spiffe://{mesh}");
    params.subject_alt_names = vec![SanType::URI(
        uri.clone()
            .try_into()
            .map_err(|_| CaError::InvalidIdentity { identity: uri })?,
    )];
    params.not_before = backdate(now, CA_NOT_BEFORE_BACKDATE)?;
    params.not_after = add(now, lifetime)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.key_identifier_method = go_key_id(&key);
    let cert = params.self_signed(&key).map_err(CaError::Generation)?;

    Ok(CaPair {
        cert_pem: cert.pem(),
        key_pem: SecretPem::new(encode_pem("RSA PRIVATE KEY", &pkcs1)?),
    })
}

/// A name attribute encoded as Go encodes it: PrintableString when the text allows it,
/// UTF8String otherwise.
pub(crate) fn go_string(s: &str) -> DnValue {
    match s.try_into() {
        Ok(printable) => DnValue::PrintableString(printable),
        Err(_) => DnValue::Utf8String(s.to_string()),
    }
}

/// Go's subject key id for CA certificates: SHA-1 of the subjectPublicKey bits (RFC 5280
/// 4.2.1.2, method 1).
pub(crate) fn go_key_id(key: &impl PublicKeyData) -> KeyIdMethod {
    let hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key.der_bytes());
    KeyIdMethod::PreSpecified(hash.as_ref().to_vec())
}

/// `now − by`, in UTC, truncated to seconds.
pub(crate) fn backdate(now: OffsetDateTime, by: Duration) -> Result<OffsetDateTime, CaError> {
    let by = time::Duration::try_from(by).map_err(|_| CaError::ValidityOutOfRange)?;
    truncate(now.checked_sub(by).ok_or(CaError::ValidityOutOfRange)?)
}

/// `now + lifetime`, in UTC, truncated to seconds.
pub(crate) fn add(now: OffsetDateTime, lifetime: Duration) -> Result<OffsetDateTime, CaError> {
    let lifetime = time::Duration::try_from(lifetime).map_err(|_| CaError::ValidityOutOfRange)?;
    truncate(
        now.checked_add(lifetime)
            .ok_or(CaError::ValidityOutOfRange)?,
    )
}

/// UTC, whole seconds, and within what X.509 can encode (years 1950..=9999).
fn truncate(t: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    let t = t.to_offset(time::UtcOffset::UTC);
    if !(1950..=9999).contains(&t.year()) {
        return Err(CaError::ValidityOutOfRange);
    }
    t.replace_nanosecond(0)
        .map_err(|_| CaError::ValidityOutOfRange)
}

/// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`.
pub(crate) fn pkcs8_to_pkcs1(pkcs8: &[u8]) -> Result<Vec<u8>, CaError> {
    let info = pkcs8::PrivateKeyInfo::try_from(pkcs8).map_err(|_| CaError::KeyGeneration)?;
    Ok(info.private_key.to_vec())
}

/// PEM text of one block with LF line endings.
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> Result<String, CaError> {
    pkcs1::pem::encode_string(label, pkcs1::LineEnding::LF, der)
        .map_err(|e| CaError::Pem(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::test_support::openssl;
    use time::macros::datetime;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{ParsedExtension, parse_x509_pem};

    const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    #[test]
    fn root_has_kumas_fields() {
        let now = datetime!(2026-03-04 05:06:07.890 UTC);
        let pair = generate_builtin_root("default", 0, TEN_YEARS, now).unwrap();
        assert!(pair.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(
            pair.key_pem
                .expose()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );

        let (_, pem) = parse_x509_pem(pair.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.raw_serial(), &[0]);
        assert_eq!(cert.subject().to_string(), "O=Kuma, OU=Mesh, CN=default");
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            datetime!(2026-03-04 05:05:57 UTC)
        );
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            datetime!(2036-03-01 05:06:07 UTC)
        );
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, None);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert_eq!(ku.flags, 0b110_0000, "only keyCertSign and cRLSign");
        assert!(cert.extended_key_usage().unwrap().is_none());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("spiffe://default")]
        );
        let ski = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let spk = &cert.public_key().subject_public_key.data;
        let expected = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, spk);
        assert_eq!(ski, expected.as_ref());
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA
        );
        match cert.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => {
                let modulus = rsa.modulus.strip_prefix(&[0]).unwrap_or(rsa.modulus);
                assert_eq!(modulus.len() * 8, 2048);
            }
            other => panic!("not RSA: {other:?}"),
        }
        cert.verify_signature(None).unwrap();

        // The PKCS#1 key is the certificate's key.
        let pair_check = crate::ca::keys::x509_key_pair(
            pair.cert_pem.as_bytes(),
            pair.key_pem.expose().as_bytes(),
        );
        assert!(pair_check.is_ok());
    }

    #[test]
    fn lifetime_and_size_are_configurable() {
        let now = datetime!(2026-03-04 05:06:07 UTC);
        let pair = generate_builtin_root("demo", 3072, Duration::from_secs(60), now).unwrap();
        let (_, pem) = parse_x509_pem(pair.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            datetime!(2026-03-04 05:07:07 UTC)
        );
        assert_eq!(cert.public_key().parsed().unwrap().key_size(), 3072);

        assert!(matches!(
            generate_builtin_root("demo", 1024, TEN_YEARS, now),
            Err(CaError::UnsupportedRsaBits(1024))
        ));
    }

    #[test]
    fn openssl_reads_the_root() {
        let now = OffsetDateTime::now_utc();
        let pair = generate_builtin_root("default", 2048, TEN_YEARS, now).unwrap();
        let text = openssl(&["x509", "-noout", "-text"], pair.cert_pem.as_bytes());
        for needle in [
            "Serial Number: 0 (0x0)",
            "Signature Algorithm: sha256WithRSAEncryption",
            "Issuer: O = Kuma, OU = Mesh, CN = default",
            "Subject: O = Kuma, OU = Mesh, CN = default",
            "Public-Key: (2048 bit)",
            "X509v3 Basic Constraints: critical\n                CA:TRUE\n",
            "X509v3 Key Usage: critical\n                Certificate Sign, CRL Sign\n",
            "X509v3 Subject Key Identifier:",
            "URI:spiffe://default",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(!text.contains("Authority Key Identifier"), "{text}");
        let key_text = openssl(
            &["rsa", "-noout", "-check"],
            pair.key_pem.expose().as_bytes(),
        );
        assert!(key_text.contains("RSA key ok"), "{key_text}");
    }
}
