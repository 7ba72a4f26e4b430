//! The issuing CA and CSR signing, the control plane's hot path.
//!
//! Everything about the CA (key, issuer name, key id, leaf template) is prepared once in
//! [`Issuer::from_pem`]; [`Issuer::sign_csr`] then parses the CSR, checks it and signs a leaf
//! without touching PEM or the CA certificate again.

use std::net::IpAddr;
use std::time::Duration;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certification_request::{X509CertificationRequest, X509CertificationRequestInfo};
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::builtin::{add, backdate};
use super::{CaError, keys};

/// The largest CSR accepted, in bytes of DER. An ECDSA P-256 CSR is a few hundred bytes and an
/// RSA-8192 one about 2 KiB; anything bigger is not a dataplane's request.
pub const MAX_CSR_SIZE: usize = 16 * 1024;

/// How far a leaf's NotBefore is set before the signing time, so that a peer whose clock runs
/// a little behind the control plane's still accepts a fresh certificate.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(60);

/// Smallest and largest RSA modulus accepted in a CSR (aws-lc-rs verifies up to 8192 bits).
const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// DER of a basic constraints extension value with CA:FALSE (an empty SEQUENCE).
const BASIC_CONSTRAINTS_NOT_CA: [u8; 2] = [0x30, 0x00];
/// OID of the basic constraints extension.
const OID_BASIC_CONSTRAINTS: [u64; 4] = [2, 5, 29, 19];

/// An issuing CA, parsed and prepared once: its chain (first = the CA that signs) and key.
///
/// Cheap to share (`Send + Sync`, signing takes `&self`); keep one per mesh CA rather than
/// parsing PEM per request.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// Every leaf starts from this: empty subject, key usages, EKUs, CA:FALSE, AKI.
    template: CertificateParams,
    chain: Vec<Vec<u8>>,
}

/// A signed dataplane certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// NotBefore, UTC, whole seconds.
    pub not_before: OffsetDateTime,
    /// NotAfter, UTC, whole seconds.
    pub not_after: OffsetDateTime,
    /// The serial number in lowercase hex without leading zeros (as Go's `big.Int.Text(16)`).
    pub serial_hex: String,
}

/// Why a CSR was not signed. [`SignError::is_client_error`] tells the caller's fault (the CSR)
/// from the control plane's.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The CSR is bigger than [`MAX_CSR_SIZE`].
    #[error("csr: {size} bytes is over the limit of {MAX_CSR_SIZE} bytes")]
    TooLarge {
        /// Size of the CSR received.
        size: usize,
    },
    /// The bytes are not a DER PKCS#10 certification request.
    #[error("csr: not a valid PKCS#10 certification request: {0}")]
    Malformed(String),
    /// The CSR's key is neither ECDSA P-256 nor RSA of 2048 to 8192 bits.
    #[error("csr: unsupported public key: {0}")]
    UnsupportedKey(String),
    /// The CSR is signed with an algorithm not accepted for its key (e.g. SHA-1).
    #[error("csr: unsupported signature algorithm {0} for this key")]
    UnsupportedSignatureAlgorithm(String),
    /// The CSR's signature does not verify with its own key: no proof of possession.
    #[error("csr: signature does not verify with the requested public key")]
    BadSignature,
    /// The CSR has a subject; identities come from the control plane, not the request.
    #[error(
        "csr: subject must be empty, identities are decided by the control plane (got \"{0}\")"
    )]
    SubjectNotEmpty(String),
    /// The CSR asks for a URI SAN the dataplane is not entitled to.
    #[error("csr: requests identity \"{0}\" which this dataplane may not have")]
    ForeignIdentity(String),
    /// The CSR asks for a non-URI SAN (DNS, IP, email, ...); dataplanes only get URIs.
    #[error("csr: requests {kind} \"{value}\" which this dataplane may not have")]
    ForeignName {
        /// What kind of name, e.g. `DNS name`.
        kind: &'static str,
        /// The name as requested.
        value: String,
    },
    /// The caller passed no identity to certify (a control plane bug, never the CSR's fault).
    #[error("no identity to put in the certificate")]
    NoIdentities,
    /// An identity cannot be encoded in a certificate (not ASCII).
    #[error("identity {0:?} cannot be put in a certificate")]
    InvalidIdentity(String),
    /// NotBefore or NotAfter falls outside what a certificate can hold.
    #[error("certificate validity is out of range")]
    ValidityOutOfRange,
    /// The random serial number could not be drawn.
    #[error("could not draw a random serial number")]
    Random,
    /// Encoding or signing the certificate failed.
    #[error("signing the certificate failed")]
    Signing(#[source] rcgen::Error),
}

impl SignError {
    /// Whether the CSR is at fault (gRPC InvalidArgument) rather than the control plane
    /// (Internal).
    pub fn is_client_error(&self) -> bool {
        match self {
            SignError::TooLarge { .. }
            | SignError::Malformed(_)
            | SignError::UnsupportedKey(_)
            | SignError::UnsupportedSignatureAlgorithm(_)
            | SignError::BadSignature
            | SignError::SubjectNotEmpty(_)
            | SignError::ForeignIdentity(_)
            | SignError::ForeignName { .. } => true,
            SignError::NoIdentities
            | SignError::InvalidIdentity(_)
            | SignError::ValidityOutOfRange
            | SignError::Random
            | SignError::Signing(_) => false,
        }
    }
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // rcgen's Issuer Debug elides the key; the chain is public.
        f.debug_struct("Issuer")
            .field("signer", &self.signer)
            .field("chain_len", &self.chain.len())
            .finish()
    }
}

impl Issuer {
    /// Parses an issuing CA: a PEM chain whose first certificate signs (intermediates allowed)
    /// and that certificate's private key (RSA, ECDSA P-256 or P-384; PKCS#1, PKCS#8 or SEC1).
    ///
    /// Also signs one probe certificate to prove that issued leaves carry the CA's subject byte
    /// for byte as their issuer and verify with the CA's key.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Issuer, CaError> {
        let keys::ChainAndKey { certs, key } =
            keys::x509_key_pair(cert_chain_pem, key_pem).map_err(CaError::KeyPair)?;
        let has_key_id = keys::parse_certificate(&certs[0])
            .map_err(CaError::KeyPair)?
            .iter_extensions()
            .any(|e| {
                matches!(
                    e.parsed_extension(),
                    ParsedExtension::SubjectKeyIdentifier(_)
                )
            });

        // rcgen takes the issuer name and key id (for the AKI) from the CA certificate.
        let signer =
            rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(certs[0].as_slice()), key)
                .map_err(|e| CaError::IssuerName(e.to_string()))?;

        let mut template = CertificateParams::default();
        template.distinguished_name = DistinguishedName::new();
        template.is_ca = IsCa::NoCa;
        template.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        template.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // CA:FALSE written by hand: rcgen's IsCa::ExplicitNoCa would add a subject key id,
        // which Kuma's leaves do not have.
        let mut not_ca = CustomExtension::from_oid_content(
            &OID_BASIC_CONSTRAINTS,
            BASIC_CONSTRAINTS_NOT_CA.to_vec(),
        );
        not_ca.set_criticality(true);
        template.custom_extensions = vec![not_ca];
        // As Go: an AKI naming the CA's subject key id when it has one.
        template.use_authority_key_identifier_extension = has_key_id;

        let issuer = Issuer {
            signer,
            template,
            chain: certs,
        };
        issuer.probe()?;
        Ok(issuer)
    }

    /// The CA chain as given (DER), the issuing CA first.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// Checks the CSR and signs a leaf for `identities` (from [`super::identities`]), valid
    /// from now − [`NOT_BEFORE_BACKDATE`] to now + `lifetime`.
    ///
    /// The CSR must be at most [`MAX_CSR_SIZE`] bytes, carry an ECDSA P-256 or RSA (2048 to
    /// 8192 bits) key, be signed by that key, have an empty subject and request no SAN outside
    /// `identities` (requesting none is fine). Everything else in it is ignored: the leaf's
    /// contents are decided here (KUMA-FACTS §6.1, with the CSR's key).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identities: &[String],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Leaf, SignError> {
        if csr_der.len() > MAX_CSR_SIZE {
            return Err(SignError::TooLarge {
                size: csr_der.len(),
            });
        }
        let csr = match X509CertificationRequest::from_der(csr_der) {
            Ok((rest, _)) if !rest.is_empty() => {
                return Err(SignError::Malformed(
                    "trailing bytes after the request".into(),
                ));
            }
            Ok((_, csr)) => csr,
            Err(e) => return Err(SignError::Malformed(parse_error(e))),
        };
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(SignError::Malformed(format!(
                "unknown version {}",
                info.version.0
            )));
        }
        let key = CsrKey::from_spki(&info.subject_pki)?;
        // Cheap checks before the signature verification.
        check_requested_names(info, identities)?;
        let algorithm = key.verification_algorithm(&csr)?;
        UnparsedPublicKey::new(algorithm, key.raw)
            .verify(info.raw, csr.signature_value.data.as_ref())
            .map_err(|_| SignError::BadSignature)?;
        self.issue(&key, identities, lifetime, now)
    }

    /// Signs a leaf for `key`.
    fn issue(
        &self,
        key: &impl PublicKeyData,
        identities: &[String],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<Leaf, SignError> {
        if identities.is_empty() {
            return Err(SignError::NoIdentities);
        }
        let mut params = self.template.clone();
        params.subject_alt_names = identities
            .iter()
            .map(|id| {
                Ia5String::try_from(id.as_str())
                    .map(SanType::URI)
                    .map_err(|_| SignError::InvalidIdentity(id.clone()))
            })
            .collect::<Result<_, _>>()?;
        let serial = random_serial()?;
        params.serial_number = Some(SerialNumber::from_slice(&serial.to_be_bytes()));
        params.not_before =
            backdate(now, NOT_BEFORE_BACKDATE).map_err(|_| SignError::ValidityOutOfRange)?;
        params.not_after = leaf_not_after(now, lifetime)?;
        let cert = params
            .signed_by(key, &self.signer)
            .map_err(SignError::Signing)?;
        Ok(Leaf {
            cert_der: cert.der().to_vec(),
            not_before: params.not_before,
            not_after: params.not_after,
            serial_hex: format!("{serial:x}"),
        })
    }

    /// Signs a throwaway leaf for the CA's own key and checks it: its issuer must be the CA's
    /// subject byte for byte (rcgen re-encodes names, and cannot reproduce every name) and its
    /// signature must verify with the CA certificate's key.
    fn probe(&self) -> Result<(), CaError> {
        let ca = keys::parse_certificate(&self.chain[0]).map_err(CaError::KeyPair)?;
        let probe = self
            .issue(
                self.signer.key(),
                &["spiffe://probe".to_string()],
                Duration::from_secs(60),
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| match e {
                SignError::Signing(e) => CaError::Generation(e),
                other => CaError::IssuerName(other.to_string()),
            })?;
        let leaf = keys::parse_certificate(&probe.cert_der).map_err(CaError::KeyPair)?;
        if leaf.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CaError::IssuerName(format!(
                "\"{}\" would be written differently",
                ca.subject()
            )));
        }
        leaf.verify_signature(Some(ca.public_key()))
            .map_err(|e| CaError::IssuerName(format!("a probe signature does not verify: {e}")))
    }
}

/// The public key of a CSR, borrowed from it, in the form rcgen writes into the leaf.
struct CsrKey<'a> {
    /// The subjectPublicKey bits: a DER RSAPublicKey, or an uncompressed P-256 point.
    raw: &'a [u8],
    kind: CsrKeyKind,
}

#[derive(Clone, Copy)]
enum CsrKeyKind {
    Rsa,
    EcdsaP256,
}

impl<'a> CsrKey<'a> {
    /// Accepts ECDSA P-256 and RSA of 2048 to 8192 bits.
    fn from_spki(spki: &'a SubjectPublicKeyInfo<'a>) -> Result<Self, SignError> {
        let alg = &spki.algorithm.algorithm;
        let raw = spki.subject_public_key.data.as_ref();
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(curve) if curve == OID_EC_P256 => {}
                Some(curve) => {
                    return Err(SignError::UnsupportedKey(format!(
                        "ECDSA curve {} (only P-256 is accepted)",
                        curve.to_id_string()
                    )));
                }
                None => {
                    return Err(SignError::UnsupportedKey(
                        "ECDSA key without a named curve".into(),
                    ));
                }
            }
            // Uncompressed point: 0x04 || X || Y.
            if raw.len() != 65 || raw[0] != 0x04 {
                return Err(SignError::UnsupportedKey(
                    "ECDSA P-256 point is not in uncompressed form".into(),
                ));
            }
            Ok(CsrKey {
                raw,
                kind: CsrKeyKind::EcdsaP256,
            })
        } else if *alg == OID_PKCS1_RSAENCRYPTION {
            let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
                return Err(SignError::Malformed("unreadable RSA public key".into()));
            };
            let bits = bit_length(rsa.modulus);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(SignError::UnsupportedKey(format!(
                    "RSA key of {bits} bits ({MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted)"
                )));
            }
            Ok(CsrKey {
                raw,
                kind: CsrKeyKind::Rsa,
            })
        } else {
            Err(SignError::UnsupportedKey(format!(
                "key algorithm {} (ECDSA P-256 and RSA are accepted)",
                alg.to_id_string()
            )))
        }
    }

    /// The aws-lc-rs algorithm for the CSR's signature; SHA-1 and mismatched pairs are refused.
    fn verification_algorithm(
        &self,
        csr: &X509CertificationRequest<'_>,
    ) -> Result<&'static dyn VerificationAlgorithm, SignError> {
        let oid = &csr.signature_algorithm.algorithm;
        let found: Option<&'static dyn VerificationAlgorithm> = match self.kind {
            CsrKeyKind::EcdsaP256 if *oid == OID_SIG_ECDSA_WITH_SHA256 => {
                Some(&sig::ECDSA_P256_SHA256_ASN1)
            }
            CsrKeyKind::EcdsaP256 if *oid == OID_SIG_ECDSA_WITH_SHA384 => {
                Some(&sig::ECDSA_P256_SHA384_ASN1)
            }
            CsrKeyKind::Rsa if *oid == OID_PKCS1_SHA256WITHRSA => {
                Some(&sig::RSA_PKCS1_2048_8192_SHA256)
            }
            CsrKeyKind::Rsa if *oid == OID_PKCS1_SHA384WITHRSA => {
                Some(&sig::RSA_PKCS1_2048_8192_SHA384)
            }
            CsrKeyKind::Rsa if *oid == OID_PKCS1_SHA512WITHRSA => {
                Some(&sig::RSA_PKCS1_2048_8192_SHA512)
            }
            _ => None,
        };
        found.ok_or_else(|| SignError::UnsupportedSignatureAlgorithm(oid.to_id_string()))
    }
}

impl PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.raw
    }

    /// rcgen writes the leaf's SubjectPublicKeyInfo algorithm from this: rsaEncryption, or
    /// id-ecPublicKey with prime256v1.
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.kind {
            CsrKeyKind::Rsa => &PKCS_RSA_SHA256,
            CsrKeyKind::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
        }
    }
}

/// Refuses a subject, and any requested SAN outside `identities`.
fn check_requested_names(
    info: &X509CertificationRequestInfo<'_>,
    identities: &[String],
) -> Result<(), SignError> {
    if info.subject.iter().next().is_some() {
        return Err(SignError::SubjectNotEmpty(info.subject.to_string()));
    }
    // Every extension request attribute counts, not only the first one.
    let extensions = info
        .iter_attributes()
        .flat_map(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(request) => request.extensions.as_slice(),
            _ => &[],
        });
    for ext in extensions {
        if ext.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
            continue;
        }
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            return Err(SignError::Malformed(
                "unreadable subjectAltName extension request".into(),
            ));
        };
        for name in &san.general_names {
            check_requested_name(name, identities)?;
        }
    }
    Ok(())
}

fn check_requested_name(name: &GeneralName<'_>, identities: &[String]) -> Result<(), SignError> {
    let foreign = |kind: &'static str, value: String| Err(SignError::ForeignName { kind, value });
    match name {
        GeneralName::URI(uri) if identities.iter().any(|id| id == uri) => Ok(()),
        GeneralName::URI(uri) => Err(SignError::ForeignIdentity(uri.to_string())),
        GeneralName::DNSName(dns) => foreign("DNS name", dns.to_string()),
        GeneralName::RFC822Name(email) => foreign("email address", email.to_string()),
        GeneralName::IPAddress(bytes) => foreign("IP address", ip_text(bytes)),
        GeneralName::OtherName(oid, _) => foreign("otherName", oid.to_id_string()),
        GeneralName::RegisteredID(oid) => foreign("registeredID", oid.to_id_string()),
        GeneralName::DirectoryName(dn) => foreign("directoryName", dn.to_string()),
        GeneralName::X400Address(_) => foreign("x400Address", String::new()),
        GeneralName::EDIPartyName(_) => foreign("ediPartyName", String::new()),
        GeneralName::Invalid(..) => Err(SignError::Malformed(
            "invalid name in the subjectAltName extension request".into(),
        )),
    }
}

/// An IP SAN as text; hex when it is neither 4 nor 16 bytes.
fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()).to_string(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// Number of significant bits of a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    let be = match be.iter().position(|&b| b != 0) {
        Some(first) => &be[first..],
        None => return 0,
    };
    be.len() * 8 - be[0].leading_zeros() as usize
}

/// A serial number uniform in [1, 2^128 − 1], as Kuma draws them.
pub(crate) fn random_serial() -> Result<u128, SignError> {
    loop {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SignError::Random)?;
        let serial = u128::from_be_bytes(bytes);
        if serial != 0 {
            return Ok(serial);
        }
    }
}

/// The text of an x509-parser error.
fn parse_error(e: x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e.to_string(),
        x509_parser::nom::Err::Incomplete(_) => "truncated input".to_string(),
    }
}

/// NotAfter of a leaf: `now + lifetime`, rounded UP to whole seconds. X.509 encodes seconds, and
/// rounding down would make the certificate shorter than the mesh's `dpCert` lifetime, so an
/// agent rotating at 4/5 of what it received would rotate early.
fn leaf_not_after(now: OffsetDateTime, lifetime: Duration) -> Result<OffsetDateTime, SignError> {
    let exact = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|lifetime| now.checked_add(lifetime))
        .ok_or(SignError::ValidityOutOfRange)?;
    let rounded = if exact.nanosecond() == 0 {
        exact
    } else {
        exact
            .checked_add(time::Duration::SECOND)
            .ok_or(SignError::ValidityOutOfRange)?
    };
    add(rounded, Duration::ZERO).map_err(|_| SignError::ValidityOutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_builtin_root;
    use crate::ca::test_support::{TestCa, openssl, openssl_status, pem_block, temp_file};
    use rcgen::{PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
    use time::macros::datetime;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::oid_registry::{OID_SIG_ECDSA_WITH_SHA384, OID_X509_EXT_BASIC_CONSTRAINTS};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A CSR for `key` with an empty subject, requesting `sans`.
    fn csr(key: &KeyPair, sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.serialize_request(key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn issuer_of(ca: &TestCa) -> Issuer {
        Issuer::from_pem(ca.cert.pem().as_bytes(), ca.key.serialize_pem().as_bytes()).unwrap()
    }

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        keys::parse_certificate(der).unwrap()
    }

    fn subject_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
                _ => None,
            })
    }

    fn leaf_pem(leaf: &Leaf) -> String {
        pem_block("CERTIFICATE", &leaf.cert_der)
    }

    #[test]
    fn issuer_is_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Issuer>();
    }

    #[test]
    fn leaf_has_kumas_fields() {
        let ca = TestCa::root("mesh-ca");
        let issuer = issuer_of(&ca);
        let dp_key = KeyPair::generate().unwrap();
        let identities = ids(&[
            "spiffe://default/web",
            "spiffe://default/web-api",
            "kuma://kuma.io/service/web",
            "kuma://kuma.io/service/web-api",
            "kuma://version/v1",
        ]);
        let now = datetime!(2026-05-06 07:08:09.5 UTC);
        let leaf = issuer
            .sign_csr(&csr(&dp_key, vec![]), &identities, DAY, now)
            .unwrap();

        assert_eq!(leaf.not_before, datetime!(2026-05-06 07:07:09 UTC));
        // Rounded up: the certificate is never shorter than the configured lifetime.
        assert_eq!(leaf.not_after, datetime!(2026-05-07 07:08:10 UTC));
        let cert = parse(&leaf.cert_der);
        assert_eq!(cert.version().0, 2, "X.509 v3");
        assert_eq!(cert.validity().not_before.to_datetime(), leaf.not_before);
        assert_eq!(cert.validity().not_after.to_datetime(), leaf.not_after);

        // Serial: positive, at most 128 bits, reported in hex.
        let serial = cert.serial.to_str_radix(16);
        assert_eq!(serial, leaf.serial_hex);
        assert!(cert.serial.bits() <= 128 && cert.serial.bits() > 0);

        // Issuer = the CA's subject, byte for byte; empty subject.
        let ca_cert = parse(ca.cert.der());
        assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
        assert_eq!(cert.subject().iter().count(), 0);

        // Critical SAN with exactly the identities, in order.
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(san.critical);
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => *u,
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(uris, identities);

        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(
            ku.value.digital_signature() && ku.value.key_encipherment() && ku.value.key_agreement()
        );
        assert_eq!(ku.value.flags.count_ones(), 3);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.any && !eku.code_signing && !eku.email_protection && eku.other.is_empty());
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && !bc.value.ca);
        assert!(
            cert.get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS)
                .unwrap()
                .is_some()
        );

        // AKI = the CA's SKI; no SKI on the leaf.
        let aki = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|k| k.0)
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(Some(aki), subject_key_id(&ca_cert));
        assert_eq!(subject_key_id(&cert), None);

        // The CSR's key, signed by the CA's key with ECDSA-SHA256.
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            dp_key.public_key_raw()
        );
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn serials_are_random() {
        let ca = TestCa::root("mesh-ca");
        let issuer = issuer_of(&ca);
        let request = csr(&KeyPair::generate().unwrap(), vec![]);
        let now = OffsetDateTime::now_utc();
        let a = issuer
            .sign_csr(&request, &ids(&["spiffe://m/a"]), DAY, now)
            .unwrap();
        let b = issuer
            .sign_csr(&request, &ids(&["spiffe://m/a"]), DAY, now)
            .unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
        assert_ne!(a.cert_der, b.cert_der);
    }

    #[test]
    fn builtin_rsa_root_signs_rsa_and_ecdsa_requests() {
        let root =
            generate_builtin_root("default", 2048, 10 * 365 * DAY, OffsetDateTime::now_utc())
                .unwrap();
        let issuer =
            Issuer::from_pem(root.cert_pem.as_bytes(), root.key_pem.expose().as_bytes()).unwrap();
        let (_, root_der) = x509_parser::pem::parse_x509_pem(root.cert_pem.as_bytes()).unwrap();
        let root_cert = parse(&root_der.contents);
        let identities = ids(&["spiffe://default/web", "kuma://kuma.io/service/web"]);
        for key in [
            KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap(),
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        ] {
            let request = csr(&key, vec![uri("spiffe://default/web")]);
            let leaf = issuer
                .sign_csr(&request, &identities, DAY, OffsetDateTime::now_utc())
                .unwrap();
            let cert = parse(&leaf.cert_der);
            assert_eq!(cert.signature_algorithm.algorithm, OID_PKCS1_SHA256WITHRSA);
            assert_eq!(
                cert.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw()
            );
            cert.verify_signature(Some(root_cert.public_key())).unwrap();

            let (_dir, ca_file) = temp_file(root.cert_pem.as_bytes());
            let out = openssl(
                &[
                    "verify",
                    "-CAfile",
                    ca_file.to_str().unwrap(),
                    "-purpose",
                    "sslclient",
                ],
                leaf_pem(&leaf).as_bytes(),
            );
            assert!(out.contains("OK"), "{out}");
        }
    }

    #[test]
    fn p384_ca_signs_with_sha384() {
        let ca = crate::ca::test_support::self_signed_ca_with("p384", &PKCS_ECDSA_P384_SHA384);
        let issuer = issuer_of(&ca);
        let leaf = issuer
            .sign_csr(
                &csr(&KeyPair::generate().unwrap(), vec![]),
                &ids(&["spiffe://m/a"]),
                DAY,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let cert = parse(&leaf.cert_der);
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA384
        );
        cert.verify_signature(Some(parse(ca.cert.der()).public_key()))
            .unwrap();
    }

    #[test]
    fn intermediate_signs_and_openssl_verifies_the_chain() {
        let root = TestCa::rsa_root("root");
        let intermediate = root.issue_ca("intermediate", |_| {});
        let chain = format!("{}{}", intermediate.cert.pem(), root.cert.pem());
        // The key as SEC1 `EC PRIVATE KEY`, as openssl users often have it.
        let key = crate::ca::test_support::sec1_pem(&intermediate.key);
        let issuer = Issuer::from_pem(chain.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(
            issuer.chain_der(),
            &[intermediate.cert.der().to_vec(), root.cert.der().to_vec()]
        );

        let identities = ids(&["spiffe://default/backend", "kuma://kuma.io/service/backend"]);
        let leaf = issuer
            .sign_csr(
                &csr(
                    &KeyPair::generate().unwrap(),
                    vec![uri("spiffe://default/backend")],
                ),
                &identities,
                DAY,
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let cert = parse(&leaf.cert_der);
        assert_eq!(
            cert.issuer().as_raw(),
            parse(intermediate.cert.der()).subject().as_raw()
        );

        let bundle = format!("{}{}", root.cert.pem(), intermediate.cert.pem());
        let (_dir, bundle_file) = temp_file(bundle.as_bytes());
        let bundle_path = bundle_file.to_str().unwrap();
        for purpose in ["sslclient", "sslserver"] {
            let out = openssl(
                &["verify", "-CAfile", bundle_path, "-purpose", purpose],
                leaf_pem(&leaf).as_bytes(),
            );
            assert!(out.contains("OK"), "{out}");
        }
        // The root alone does not vouch for it: the intermediate is really in the path.
        let (_root_dir, root_file) = temp_file(root.cert.pem().as_bytes());
        let (ok, out) = openssl_status(
            &["verify", "-CAfile", root_file.to_str().unwrap()],
            leaf_pem(&leaf).as_bytes(),
        );
        assert!(!ok, "{out}");

        let text = openssl(&["x509", "-noout", "-text"], leaf_pem(&leaf).as_bytes());
        for needle in [
            "X509v3 Subject Alternative Name: critical\n                URI:spiffe://default/backend, URI:kuma://kuma.io/service/backend\n",
            "X509v3 Key Usage: critical\n                Digital Signature, Key Encipherment, Key Agreement\n",
            "X509v3 Extended Key Usage: \n                TLS Web Server Authentication, TLS Web Client Authentication\n",
            "X509v3 Basic Constraints: critical\n                CA:FALSE\n",
            "X509v3 Authority Key Identifier:",
            "Subject: \n",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(!text.contains("Subject Key Identifier"), "{text}");
    }

    #[test]
    fn openssl_made_cas_are_usable() {
        // With openssl's default subject key id, and without any: the leaf's AKI follows.
        for (extra, has_key_id) in [
            (&[][..], true),
            (
                &[
                    "-addext",
                    "subjectKeyIdentifier=none",
                    "-addext",
                    "authorityKeyIdentifier=none",
                ][..],
                false,
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let key_path = dir.path().join("ca.key");
            let cert_path = dir.path().join("ca.crt");
            let mut args = vec![
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/C=US/O=Example Corp/CN=Example Root",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                key_path.to_str().unwrap(),
                "-out",
                cert_path.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            openssl(&args, b"");
            let cert_pem = std::fs::read(&cert_path).unwrap();
            let key_pem = std::fs::read(&key_path).unwrap();
            assert_eq!(crate::ca::validate_provided_ca(&cert_pem, &key_pem), vec![]);
            let issuer = Issuer::from_pem(&cert_pem, &key_pem).unwrap();
            let leaf = issuer
                .sign_csr(
                    &csr(&KeyPair::generate().unwrap(), vec![]),
                    &ids(&["spiffe://m/a"]),
                    DAY,
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
            let ca = parse(issuer.chain_der()[0].as_slice());
            assert_eq!(subject_key_id(&ca).is_some(), has_key_id);
            let cert = parse(&leaf.cert_der);
            let aki = cert
                .iter_extensions()
                .find_map(|e| match e.parsed_extension() {
                    ParsedExtension::AuthorityKeyIdentifier(aki) => {
                        aki.key_identifier.as_ref().map(|k| k.0)
                    }
                    _ => None,
                });
            assert_eq!(aki, subject_key_id(&ca));
            let out = openssl(
                &["verify", "-CAfile", cert_path.to_str().unwrap()],
                leaf_pem(&leaf).as_bytes(),
            );
            assert!(out.contains("OK"), "{out}");
        }
    }

    #[test]
    fn ca_names_rcgen_cannot_reproduce_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("ca.key");
        let cert_path = dir.path().join("ca.crt");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/O=Test/OU=a/OU=b/CN=two units",
                "-keyout",
                key_path.to_str().unwrap(),
                "-out",
                cert_path.to_str().unwrap(),
            ],
            b"",
        );
        let err = Issuer::from_pem(
            &std::fs::read(&cert_path).unwrap(),
            &std::fs::read(&key_path).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, CaError::IssuerName(_)), "{err:?}");
    }

    #[test]
    fn from_pem_refuses_a_foreign_key() {
        let ca = TestCa::root("a");
        let other = TestCa::root("b");
        let err = Issuer::from_pem(
            ca.cert.pem().as_bytes(),
            other.key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a valid TLS key pair: tls: private key does not match public key"
        );
    }

    #[test]
    fn requested_identities_must_be_entitled() {
        let issuer = issuer_of(&TestCa::root("ca"));
        let key = KeyPair::generate().unwrap();
        let identities = ids(&["spiffe://default/web", "kuma://kuma.io/service/web"]);
        let now = OffsetDateTime::now_utc();
        let sign = |sans: Vec<SanType>| issuer.sign_csr(&csr(&key, sans), &identities, DAY, now);

        // A subset, or nothing, is fine: the leaf gets every identity either way.
        for sans in [vec![], vec![uri("kuma://kuma.io/service/web")]] {
            let leaf = sign(sans).unwrap();
            let cert = parse(&leaf.cert_der);
            let san = cert.subject_alternative_name().unwrap().unwrap();
            assert_eq!(san.value.general_names.len(), 2);
        }

        let err = sign(vec![
            uri("spiffe://default/web"),
            uri("spiffe://default/admin"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: requests identity \"spiffe://default/admin\" which this dataplane may not have"
        );
        assert!(err.is_client_error());

        let cases = [
            (
                SanType::DnsName("web.default".try_into().unwrap()),
                "csr: requests DNS name \"web.default\" which this dataplane may not have",
            ),
            (
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                "csr: requests IP address \"10.0.0.1\" which this dataplane may not have",
            ),
            (
                SanType::IpAddress("::1".parse().unwrap()),
                "csr: requests IP address \"::1\" which this dataplane may not have",
            ),
            (
                SanType::Rfc822Name("a@b.c".try_into().unwrap()),
                "csr: requests email address \"a@b.c\" which this dataplane may not have",
            ),
            (
                SanType::OtherName((vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3], "x".into())),
                "csr: requests otherName \"1.3.6.1.4.1.311.20.2.3\" which this dataplane may not have",
            ),
        ];
        for (san, message) in cases {
            let err = sign(vec![uri("spiffe://default/web"), san]).unwrap_err();
            assert_eq!(err.to_string(), message);
            assert!(err.is_client_error());
        }
    }

    #[test]
    fn subject_must_be_empty() {
        let issuer = issuer_of(&TestCa::root("ca"));
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "admin");
        let request = params.serialize_request(&key).unwrap().der().to_vec();
        let err = issuer
            .sign_csr(
                &request,
                &ids(&["spiffe://m/a"]),
                DAY,
                OffsetDateTime::now_utc(),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: subject must be empty, identities are decided by the control plane (got \"CN=admin\")"
        );
        assert!(err.is_client_error());
    }

    #[test]
    fn proof_of_possession_is_required() {
        let issuer = issuer_of(&TestCa::root("ca"));
        let mut request = csr(&KeyPair::generate().unwrap(), vec![]);
        // Flip a bit in the signature (the last bytes of the DER).
        let last = request.len() - 1;
        request[last] ^= 0x01;
        let err = issuer
            .sign_csr(
                &request,
                &ids(&["spiffe://m/a"]),
                DAY,
                OffsetDateTime::now_utc(),
            )
            .unwrap_err();
        assert!(matches!(err, SignError::BadSignature), "{err:?}");
        assert!(err.is_client_error());

        // A CSR whose public key was swapped for another one after signing.
        let key_a = KeyPair::generate().unwrap();
        let key_b = KeyPair::generate().unwrap();
        let mut request = csr(&key_a, vec![]);
        let at = request
            .windows(key_a.public_key_raw().len())
            .position(|w| w == key_a.public_key_raw())
            .unwrap();
        request[at..at + key_b.public_key_raw().len()].copy_from_slice(key_b.public_key_raw());
        let err = issuer
            .sign_csr(
                &request,
                &ids(&["spiffe://m/a"]),
                DAY,
                OffsetDateTime::now_utc(),
            )
            .unwrap_err();
        assert!(matches!(err, SignError::BadSignature), "{err:?}");
    }

    #[test]
    fn malformed_and_oversized_requests() {
        let issuer = issuer_of(&TestCa::root("ca"));
        let now = OffsetDateTime::now_utc();
        let identities = ids(&["spiffe://m/a"]);

        let err = issuer
            .sign_csr(&vec![0x30; MAX_CSR_SIZE + 1], &identities, DAY, now)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: 16385 bytes is over the limit of 16384 bytes"
        );
        assert!(err.is_client_error());

        for garbage in [&b""[..], b"\x30\x03\x02\x01\x00", b"not a csr"] {
            let err = issuer.sign_csr(garbage, &identities, DAY, now).unwrap_err();
            assert!(matches!(err, SignError::Malformed(_)), "{err:?}");
            assert!(err.is_client_error());
        }

        let mut trailing = csr(&KeyPair::generate().unwrap(), vec![]);
        trailing.push(0);
        let err = issuer
            .sign_csr(&trailing, &identities, DAY, now)
            .unwrap_err();
        assert!(matches!(err, SignError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn only_p256_and_large_enough_rsa_keys() {
        let issuer = issuer_of(&TestCa::root("ca"));
        let now = OffsetDateTime::now_utc();
        let identities = ids(&["spiffe://m/a"]);

        let p384 = csr(
            &KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            vec![],
        );
        let err = issuer.sign_csr(&p384, &identities, DAY, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: unsupported public key: ECDSA curve 1.3.132.0.34 (only P-256 is accepted)"
        );
        assert!(err.is_client_error());

        let ed = csr(&KeyPair::generate_for(&PKCS_ED25519).unwrap(), vec![]);
        let err = issuer.sign_csr(&ed, &identities, DAY, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: unsupported public key: key algorithm 1.3.101.112 (ECDSA P-256 and RSA are accepted)"
        );

        let rsa1024 = openssl_csr(&["-newkey", "rsa:1024"]);
        let err = issuer
            .sign_csr(&rsa1024, &identities, DAY, now)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: unsupported public key: RSA key of 1024 bits (2048 to 8192 bits are accepted)"
        );

        let sha1 = openssl_csr(&[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-sha1",
        ]);
        let err = issuer.sign_csr(&sha1, &identities, DAY, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "csr: unsupported signature algorithm 1.2.840.10045.4.1 for this key"
        );
        assert!(err.is_client_error());

        // openssl's own P-256 and RSA requests are accepted.
        for args in [
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            &["-newkey", "rsa:3072"][..],
        ] {
            let request = openssl_csr(args);
            issuer
                .sign_csr(&request, &identities, DAY, now)
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    /// A DER CSR with an empty subject made by `openssl req` with `args`.
    fn openssl_csr(args: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("req.der");
        let key = dir.path().join("req.key");
        let mut all = vec!["req", "-new", "-nodes", "-subj", "/", "-outform", "DER"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            out.to_str().unwrap(),
        ]);
        openssl(&all, b"");
        std::fs::read(out).unwrap()
    }

    #[test]
    fn control_plane_errors_are_not_client_errors() {
        let issuer = issuer_of(&TestCa::root("ca"));
        let request = csr(&KeyPair::generate().unwrap(), vec![]);
        let now = OffsetDateTime::now_utc();
        let err = issuer.sign_csr(&request, &[], DAY, now).unwrap_err();
        assert!(matches!(err, SignError::NoIdentities));
        assert!(!err.is_client_error());
        let err = issuer
            .sign_csr(&request, &ids(&["spiffe://m/caf\u{e9}"]), DAY, now)
            .unwrap_err();
        assert!(matches!(err, SignError::InvalidIdentity(_)));
        assert!(!err.is_client_error());
        let err = issuer
            .sign_csr(&request, &ids(&["spiffe://m/a"]), Duration::MAX, now)
            .unwrap_err();
        assert!(matches!(err, SignError::ValidityOutOfRange));
        assert!(!err.is_client_error());
    }

    #[test]
    fn debug_shows_no_key() {
        let ca = TestCa::root("ca");
        let issuer = issuer_of(&ca);
        let shown = format!("{issuer:?}");
        assert!(shown.contains("[elided]"), "{shown}");
        assert!(!shown.contains("serialized_der: ["), "{shown}");
    }
}
