//! Validation of user-provided CA material, with Kuma's rules and texts: the provided CA backend
//! (KUMA-FACTS §5 step 5) and the older root-only rules of `kumactl manage ca provided`
//! (reference doc 000).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::KeyUsage;

use super::Issuer;
use super::keys::{self, KeyPairError};
use crate::resources::Violation;

const NOT_CA: &str =
    "basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)";
const NO_KEY_CERT_SIGN: &str =
    "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)";
const HAS_DIGITAL_SIGNATURE: &str = "key usage extension 'digitalSignature' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)";
const HAS_KEY_AGREEMENT: &str = "key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)";
const HAS_KEY_ENCIPHERMENT: &str = "key usage extension 'keyEncipherment' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)";
const NOT_SELF_SIGNED: &str = "certificate must be self-signed (intermediate CAs are not allowed)";
const A_CHAIN: &str = "certificate must be a root CA (certificate chains are not allowed)";

/// Kuma's provided-CA check (KUMA-FACTS §5 step 5). The key must match the first certificate
/// (field `cert`, Go's `tls.X509KeyPair` texts, and nothing else is checked then); every
/// certificate of the chain must then be CA:TRUE with keyCertSign and without keyAgreement
/// (field `cert[i]`, violations accumulate per certificate, in order).
///
/// Beyond Kuma: when all of that passes, the pair must also work as an [`Issuer`] (its
/// subject reproducible in issued certificates), else a violation at `cert` says why.
pub fn validate_provided_ca(cert_pem: &[u8], key_pem: &[u8]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let chain = match keys::x509_key_pair(cert_pem, key_pem) {
        Ok(chain) => chain,
        Err(e) => {
            violations.push(not_a_key_pair(&e));
            return violations;
        }
    };
    for (i, der) in chain.certs.iter().enumerate() {
        let field = format!("cert[{i}]");
        let cert = match keys::parse_certificate(der) {
            Ok(cert) => cert,
            Err(e) => {
                violations.push(Violation::new(
                    field,
                    format!("not a valid x509 certificate: {e}"),
                ));
                return violations;
            }
        };
        let usage = key_usage(&cert);
        if !is_ca(&cert) {
            violations.push(Violation::new(field.clone(), NOT_CA));
        }
        if !usage.key_cert_sign() {
            violations.push(Violation::new(field.clone(), NO_KEY_CERT_SIGN));
        }
        if usage.key_agreement() {
            violations.push(Violation::new(field, HAS_KEY_AGREEMENT));
        }
    }
    if violations.is_empty() {
        violations.extend(unusable_as_issuer(cert_pem, key_pem));
    }
    violations
}

/// The root-only rules of `kumactl manage ca provided certificates add` (reference doc 000),
/// all at field `cert`: a valid key pair, a single certificate, self-signed (issuer = subject),
/// CA:TRUE, keyCertSign, and none of digitalSignature, keyAgreement, keyEncipherment.
/// Beyond Kuma, as for [`validate_provided_ca`]: the pair must work as an [`Issuer`].
pub fn validate_legacy_root(cert_pem: &[u8], key_pem: &[u8]) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut violate = |message: String| violations.push(Violation::new("cert", message));
    let chain = match keys::x509_key_pair(cert_pem, key_pem) {
        Ok(chain) => chain,
        Err(e) => {
            violate(not_a_key_pair(&e).message);
            return violations;
        }
    };
    let [der] = chain.certs.as_slice() else {
        violate(A_CHAIN.to_string());
        return violations;
    };
    let cert = match keys::parse_certificate(der) {
        Ok(cert) => cert,
        Err(e) => {
            violate(format!("not a valid x509 certificate: {e}"));
            return violations;
        }
    };
    // Kuma compares the names' string forms.
    if cert.issuer().to_string() != cert.subject().to_string() {
        violate(NOT_SELF_SIGNED.to_string());
    }
    let usage = key_usage(&cert);
    if !is_ca(&cert) {
        violate(NOT_CA.to_string());
    }
    if !usage.key_cert_sign() {
        violate(NO_KEY_CERT_SIGN.to_string());
    }
    if usage.digital_signature() {
        violate(HAS_DIGITAL_SIGNATURE.to_string());
    }
    if usage.key_agreement() {
        violate(HAS_KEY_AGREEMENT.to_string());
    }
    if usage.key_encipherment() {
        violate(HAS_KEY_ENCIPHERMENT.to_string());
    }
    if violations.is_empty() {
        violations.extend(unusable_as_issuer(cert_pem, key_pem));
    }
    violations
}

/// Why a pair that passed Kuma's rules still cannot sign leaves, if it cannot.
fn unusable_as_issuer(cert_pem: &[u8], key_pem: &[u8]) -> Option<Violation> {
    Issuer::from_pem(cert_pem, key_pem)
        .err()
        .map(|e| Violation::new("cert", e.to_string()))
}

fn not_a_key_pair(e: &KeyPairError) -> Violation {
    Violation::new("cert", format!("not a valid TLS key pair: {e}"))
}

/// Go's `IsCA`: a basic constraints extension with CA set. A duplicated extension counts as
/// absent (Go refuses such a certificate altogether).
fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// Go's `KeyUsage`: the extension's bits, none when it is absent or unreadable.
fn key_usage(cert: &X509Certificate<'_>) -> KeyUsage {
    match cert.key_usage() {
        Ok(Some(ku)) => *ku.value,
        _ => KeyUsage { flags: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::generate_builtin_root;
    use crate::ca::test_support::{TestCa, ca_params, signed_by};
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    use std::time::Duration;
    use time::OffsetDateTime;

    /// A self-signed RSA certificate from a bare template, as Kuma's tests make them.
    fn self_signed(edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0]));
        edit(&mut params);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn messages(v: &[Violation]) -> Vec<(&str, &str)> {
        v.iter()
            .map(|v| (v.field.as_str(), v.message.as_str()))
            .collect()
    }

    #[test]
    fn provided_accepts_a_builtin_root() {
        let pair = generate_builtin_root(
            "demo",
            2048,
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let v = validate_provided_ca(pair.cert_pem.as_bytes(), pair.key_pem.expose().as_bytes());
        assert_eq!(v, vec![]);
    }

    #[test]
    fn provided_key_pair_texts() {
        let v = validate_provided_ca(b"", b"");
        assert_eq!(
            messages(&v),
            vec![(
                "cert",
                "not a valid TLS key pair: tls: failed to find any PEM data in certificate input"
            )]
        );
        let v = validate_provided_ca(b"CERT", b"KEY");
        assert_eq!(
            messages(&v),
            vec![(
                "cert",
                "not a valid TLS key pair: tls: failed to find any PEM data in certificate input"
            )]
        );
        // "test", as in Kuma's `inline: dGVzdA==` case.
        let v = validate_provided_ca(b"test", b"test");
        assert_eq!(v.len(), 1);
        let (cert, _) = self_signed(|_| {});
        let v = validate_provided_ca(cert.as_bytes(), b"KEY");
        assert_eq!(
            messages(&v),
            vec![(
                "cert",
                "not a valid TLS key pair: tls: failed to find any PEM data in key input"
            )]
        );
        let (_, other_key) = self_signed(|_| {});
        let v = validate_provided_ca(cert.as_bytes(), other_key.as_bytes());
        assert_eq!(
            messages(&v),
            vec![(
                "cert",
                "not a valid TLS key pair: tls: private key does not match public key"
            )]
        );
    }

    #[test]
    fn provided_rules_per_certificate() {
        // Kuma's ca_cert_validator_test cases (KUMA-FACTS §9 case 38).
        let (cert, key) = self_signed(|_| {});
        assert_eq!(
            messages(&validate_provided_ca(cert.as_bytes(), key.as_bytes())),
            vec![("cert[0]", NOT_CA), ("cert[0]", NO_KEY_CERT_SIGN)]
        );
        let (cert, key) = self_signed(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
        assert_eq!(
            messages(&validate_provided_ca(cert.as_bytes(), key.as_bytes())),
            vec![("cert[0]", NO_KEY_CERT_SIGN)]
        );
        let (cert, key) = self_signed(|p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::KeyAgreement,
            ];
        });
        assert_eq!(
            messages(&validate_provided_ca(cert.as_bytes(), key.as_bytes())),
            vec![("cert[0]", HAS_KEY_AGREEMENT)]
        );
        let (cert, key) = self_signed(|p| {
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyAgreement,
                KeyUsagePurpose::KeyEncipherment,
            ];
        });
        assert_eq!(
            messages(&validate_provided_ca(cert.as_bytes(), key.as_bytes())),
            vec![
                ("cert[0]", NOT_CA),
                ("cert[0]", NO_KEY_CERT_SIGN),
                ("cert[0]", HAS_KEY_AGREEMENT)
            ]
        );
        // digitalSignature alone is fine for a provided CA.
        let (cert, key) = self_signed(|p| {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        });
        assert_eq!(
            validate_provided_ca(cert.as_bytes(), key.as_bytes()),
            vec![]
        );
    }

    #[test]
    fn provided_chain_checks_every_certificate_in_order() {
        let root = TestCa::root("root");
        let intermediate = root.issue_ca("intermediate", |_| {});
        let chain = format!("{}{}", intermediate.cert.pem(), root.cert.pem());
        let key = intermediate.key.serialize_pem();
        assert_eq!(
            validate_provided_ca(chain.as_bytes(), key.as_bytes()),
            vec![]
        );

        // The key of the root does not do: it must match the first certificate.
        let v = validate_provided_ca(chain.as_bytes(), root.key.serialize_pem().as_bytes());
        assert_eq!(
            messages(&v),
            vec![(
                "cert",
                "not a valid TLS key pair: tls: private key does not match public key"
            )]
        );

        // A non-CA second element is reported at its index, after the first one's problems.
        let leafish_key = KeyPair::generate().unwrap();
        let mut params = ca_params("not a ca");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::KeyAgreement];
        let not_ca = signed_by(&params, &leafish_key, &root);
        let bad_first = root.issue_ca("no-sign", |p| {
            p.key_usages = vec![KeyUsagePurpose::CrlSign];
        });
        let chain = format!(
            "{}{}{}",
            bad_first.cert.pem(),
            not_ca.pem(),
            root.cert.pem()
        );
        let v = validate_provided_ca(chain.as_bytes(), bad_first.key.serialize_pem().as_bytes());
        assert_eq!(
            messages(&v),
            vec![
                ("cert[0]", NO_KEY_CERT_SIGN),
                ("cert[1]", NOT_CA),
                ("cert[1]", NO_KEY_CERT_SIGN),
                ("cert[1]", HAS_KEY_AGREEMENT),
            ]
        );
    }

    #[test]
    fn provided_reports_an_unparsable_later_certificate() {
        let root = TestCa::root("root");
        let garbage = crate::ca::test_support::pem_block("CERTIFICATE", b"\x30\x03\x02\x01\x00");
        let chain = format!("{}{}", root.cert.pem(), garbage);
        let v = validate_provided_ca(chain.as_bytes(), root.key.serialize_pem().as_bytes());
        assert_eq!(
            messages(&v),
            vec![(
                "cert[1]",
                "not a valid x509 certificate: x509: malformed certificate"
            )]
        );
    }

    #[test]
    fn pairs_that_cannot_issue_are_refused() {
        // Two OUs: rcgen cannot write this subject back as the leaves' issuer.
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("ca.key");
        let cert_path = dir.path().join("ca.crt");
        crate::ca::test_support::openssl(
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
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                key_path.to_str().unwrap(),
                "-out",
                cert_path.to_str().unwrap(),
            ],
            b"",
        );
        let cert = std::fs::read(&cert_path).unwrap();
        let key = std::fs::read(&key_path).unwrap();
        for v in [
            validate_provided_ca(&cert, &key),
            validate_legacy_root(&cert, &key),
        ] {
            assert_eq!(v.len(), 1, "{v:?}");
            assert_eq!(v[0].field, "cert");
            assert!(
                v[0].message.starts_with(
                    "the issuing CA's subject cannot be reproduced exactly in issued certificates"
                ),
                "{v:?}"
            );
        }
    }

    #[test]
    fn legacy_accepts_a_proper_root() {
        let root = TestCa::root("root");
        let v = validate_legacy_root(
            root.cert.pem().as_bytes(),
            root.key.serialize_pem().as_bytes(),
        );
        assert_eq!(v, vec![]);
        let pair = generate_builtin_root(
            "demo",
            2048,
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let v = validate_legacy_root(pair.cert_pem.as_bytes(), pair.key_pem.expose().as_bytes());
        assert_eq!(v, vec![]);
    }

    #[test]
    fn legacy_rules_each_reported() {
        let root = TestCa::root("root");
        let check = |ca: &TestCa| {
            validate_legacy_root(ca.cert.pem().as_bytes(), ca.key.serialize_pem().as_bytes())
        };

        let intermediate = root.issue_ca("intermediate", |_| {});
        assert_eq!(
            messages(&check(&intermediate)),
            vec![("cert", NOT_SELF_SIGNED)]
        );

        let chain = format!("{}{}", intermediate.cert.pem(), root.cert.pem());
        let v = validate_legacy_root(
            chain.as_bytes(),
            intermediate.key.serialize_pem().as_bytes(),
        );
        assert_eq!(messages(&v), vec![("cert", A_CHAIN)]);

        for (usage, message) in [
            (KeyUsagePurpose::DigitalSignature, HAS_DIGITAL_SIGNATURE),
            (KeyUsagePurpose::KeyAgreement, HAS_KEY_AGREEMENT),
            (KeyUsagePurpose::KeyEncipherment, HAS_KEY_ENCIPHERMENT),
        ] {
            let ca = TestCa::root_with("root", |p| {
                p.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    usage,
                ];
            });
            assert_eq!(messages(&check(&ca)), vec![("cert", message)]);
        }

        let no_sign = TestCa::root_with("root", |p| p.key_usages = vec![KeyUsagePurpose::CrlSign]);
        assert_eq!(messages(&check(&no_sign)), vec![("cert", NO_KEY_CERT_SIGN)]);

        let not_ca = TestCa::root_with("root", |p| p.is_ca = IsCa::ExplicitNoCa);
        assert_eq!(messages(&check(&not_ca)), vec![("cert", NOT_CA)]);

        // Everything wrong at once, in Kuma's order.
        let all_wrong = root.issue_ca("leafish", |p| {
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyAgreement,
                KeyUsagePurpose::KeyEncipherment,
            ];
        });
        assert_eq!(
            messages(&check(&all_wrong)),
            vec![
                ("cert", NOT_SELF_SIGNED),
                ("cert", NOT_CA),
                ("cert", NO_KEY_CERT_SIGN),
                ("cert", HAS_DIGITAL_SIGNATURE),
                ("cert", HAS_KEY_AGREEMENT),
                ("cert", HAS_KEY_ENCIPHERMENT),
            ]
        );

        let other = TestCa::root("other");
        let v = validate_legacy_root(
            root.cert.pem().as_bytes(),
            other.key.serialize_pem().as_bytes(),
        );
        assert_eq!(
            messages(&v),
            vec![(
                "cert",
                "not a valid TLS key pair: tls: private key does not match public key"
            )]
        );
    }
}
