//! The DP server's own TLS certificate: a throwaway ECDSA P-256 CA that signs one server
//! certificate and is then forgotten, so nothing else can ever be signed with it.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::builtin::{add, backdate, go_key_id, go_string};
use super::{CaError, NOT_BEFORE_BACKDATE, SecretPem};

/// Common name of the throwaway CA.
pub const SERVER_CA_NAME: &str = "cp-lite DP server CA";

/// Validity of the CA and the server certificate: 10 years, as Kuma's self-signed defaults.
pub const SERVER_TLS_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Names always in the server certificate, so local agents can connect without configuration.
const ALWAYS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The DP server's TLS material: the CA agents trust, and the server certificate and key.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The CA certificate (one `CERTIFICATE` block); agents trust it.
    pub ca_cert_pem: String,
    /// The server certificate (one `CERTIFICATE` block).
    pub cert_pem: String,
    /// The server key, PEM `PRIVATE KEY` (PKCS#8, ECDSA P-256).
    pub key_pem: SecretPem,
}

/// A fresh ECDSA P-256 CA named [`SERVER_CA_NAME`] (kept only long enough to sign) and an
/// ECDSA P-256 server certificate it signs for `hostnames` (DNS names or IP addresses;
/// `localhost`, `127.0.0.1` and `::1` always included), EKU serverAuth, valid 10 years.
pub fn generate_server_tls(
    hostnames: &[String],
    now: OffsetDateTime,
) -> Result<ServerTls, CaError> {
    let not_before = backdate(now, NOT_BEFORE_BACKDATE)?;
    let not_after = add(now, SERVER_TLS_LIFETIME)?;

    let ca_key = KeyPair::generate().map_err(CaError::Generation)?;
    let mut ca_params = CertificateParams::default();
    ca_params.serial_number = Some(random_serial()?);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, go_string(SERVER_CA_NAME));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.key_identifier_method = go_key_id(&ca_key);
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(CaError::Generation)?;

    let server_key = KeyPair::generate().map_err(CaError::Generation)?;
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, go_string("cp-lite DP server"));
    params.subject_alt_names = subject_alt_names(hostnames)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params
        .signed_by(&server_key, &issuer)
        .map_err(CaError::Generation)?;
    // The CA key goes out of scope here and is never stored.
    drop(issuer);

    Ok(ServerTls {
        ca_cert_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: SecretPem::new(server_key.serialize_pem()),
    })
}

/// The SANs for `hostnames` plus the local names, without duplicates, in first-seen order.
fn subject_alt_names(hostnames: &[String]) -> Result<Vec<SanType>, CaError> {
    let mut sans: Vec<SanType> = Vec::new();
    let names = hostnames.iter().map(String::as_str).chain(ALWAYS);
    for name in names.map(str::trim).filter(|n| !n.is_empty()) {
        let unbracketed = name.trim_start_matches('[').trim_end_matches(']');
        let san = match unbracketed.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into().map_err(|_| CaError::InvalidHostname {
                hostname: name.to_string(),
            })?),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, CaError> {
    let serial = super::issuer::random_serial().map_err(|_| CaError::KeyGeneration)?;
    Ok(SerialNumber::from_slice(&serial.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::keys;
    use crate::ca::test_support::{openssl, temp_file};
    use time::macros::datetime;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;

    #[test]
    fn server_certificate_fields() {
        let now = datetime!(2026-01-02 03:04:05.6 UTC);
        let tls = generate_server_tls(
            &[
                "cp.example.com".to_string(),
                "10.1.2.3".to_string(),
                "localhost".to_string(),
            ],
            now,
        )
        .unwrap();
        assert!(
            tls.key_pem
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );

        let (_, ca_pem) = parse_x509_pem(tls.ca_cert_pem.as_bytes()).unwrap();
        let ca = ca_pem.parse_x509().unwrap();
        assert_eq!(ca.subject().to_string(), "CN=cp-lite DP server CA");
        assert!(ca.basic_constraints().unwrap().unwrap().value.ca);
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());

        let (_, cert_pem) = parse_x509_pem(tls.cert_pem.as_bytes()).unwrap();
        let cert = cert_pem.parse_x509().unwrap();
        assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![
                GeneralName::DNSName("cp.example.com"),
                GeneralName::IPAddress(&[10, 1, 2, 3]),
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!cert.is_ca());
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            datetime!(2026-01-02 03:03:05 UTC)
        );
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            datetime!(2035-12-31 03:04:05 UTC)
        );

        // The key is the certificate's.
        assert!(
            keys::x509_key_pair(tls.cert_pem.as_bytes(), tls.key_pem.expose().as_bytes()).is_ok()
        );
    }

    #[test]
    fn each_call_makes_a_new_ca() {
        let now = OffsetDateTime::now_utc();
        let a = generate_server_tls(&[], now).unwrap();
        let b = generate_server_tls(&[], now).unwrap();
        assert_ne!(a.ca_cert_pem, b.ca_cert_pem);
    }

    #[test]
    fn bad_hostnames_are_refused() {
        let err =
            generate_server_tls(&["h\u{f6}st".to_string()], OffsetDateTime::now_utc()).unwrap_err();
        assert!(matches!(err, CaError::InvalidHostname { .. }), "{err:?}");
    }

    #[test]
    fn openssl_verifies_the_server_certificate() {
        let tls = generate_server_tls(&["[::1]".to_string()], OffsetDateTime::now_utc()).unwrap();
        let (_dir, ca_file) = temp_file(tls.ca_cert_pem.as_bytes());
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                ca_file.to_str().unwrap(),
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "localhost",
            ],
            tls.cert_pem.as_bytes(),
        );
        assert!(out.contains("OK"), "{out}");
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                ca_file.to_str().unwrap(),
                "-verify_ip",
                "127.0.0.1",
            ],
            tls.cert_pem.as_bytes(),
        );
        assert!(out.contains("OK"), "{out}");
    }
}
