//! `kumactl generate tls-certificate`: a self-signed key and certificate pair for an HTTPS server
//! or client, with the fields Kuma's kumactl puts in it (KUMA-FACTS 8.3).

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::cli::TlsCertificateArgs;
use super::error::KumactlError;

/// How far back the certificate's validity starts, for clock skew.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// Validity after `NotBefore`: Go's `10 * 365 * 24h`.
const VALIDITY: time::Duration = time::Duration::days(10 * 365);

/// What the certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertType {
    /// Extended key usage `clientAuth`.
    Client,
    /// Extended key usage `serverAuth`.
    Server,
}

/// The private key algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// RSA 2048, PEM `RSA PRIVATE KEY` (PKCS#1).
    Rsa,
    /// ECDSA P-256, PEM `EC PRIVATE KEY` (SEC1).
    Ecdsa,
}

/// A private key in PEM; `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    /// The PEM text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A generated key and self-signed certificate.
#[derive(Debug, Clone)]
pub struct KeyPairPem {
    /// PEM `CERTIFICATE`.
    pub cert_pem: String,
    /// PEM private key.
    pub key_pem: PrivateKeyPem,
}

/// The validated flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    /// Client or server.
    pub cert_type: CertType,
    /// Key algorithm.
    pub key_type: KeyType,
    /// DNS names and IP addresses, in flag order.
    pub hostnames: Vec<String>,
}

/// The SAN of a client certificate made with the older form `--type=client` and no hostname, as
/// Kuma 0.7 did (the reference docs still show that form).
const DEFAULT_CLIENT_HOSTNAME: &str = "localhost";

/// Checks the flags with Kuma's texts: required flags first (as cobra does), then the type, then
/// the key type, then that a hostname is left after dropping empty ones. The older form
/// `--type=client` without `--hostname` keeps working and names `localhost`.
pub fn validate(args: &TlsCertificateArgs) -> Result<CertificateRequest, KumactlError> {
    let older_client_form =
        args.hostnames.is_empty() && args.cert_type.as_deref() == Some("client");
    let mut missing = Vec::new();
    if args.hostnames.is_empty() && !older_client_form {
        missing.push("\"hostname\"");
    }
    if args.cert_type.is_none() {
        missing.push("\"type\"");
    }
    if !missing.is_empty() {
        return Err(KumactlError::InvalidArgs(format!(
            "required flag(s) {} not set",
            missing.join(", ")
        )));
    }
    let cert_type = match args.cert_type.as_deref().unwrap_or_default() {
        "client" => CertType::Client,
        "server" => CertType::Server,
        other => {
            return Err(KumactlError::InvalidArgs(format!(
                "invalid certificate type {other:?}"
            )));
        }
    };
    let key_type = match args.key_type.as_str() {
        "rsa" => KeyType::Rsa,
        "ecdsa" => KeyType::Ecdsa,
        other => {
            return Err(KumactlError::InvalidArgs(format!(
                "invalid key type {other:?}"
            )));
        }
    };
    if older_client_form {
        return Ok(CertificateRequest {
            cert_type,
            key_type,
            hostnames: vec![DEFAULT_CLIENT_HOSTNAME.to_owned()],
        });
    }
    let hostnames: Vec<String> = args
        .hostnames
        .iter()
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .collect();
    if hostnames.is_empty() {
        return Err(KumactlError::InvalidArgs(
            "at least one hostname must be given".to_owned(),
        ));
    }
    Ok(CertificateRequest {
        cert_type,
        key_type,
        hostnames,
    })
}

/// Generates the key and the self-signed certificate: random 128-bit serial, empty subject,
/// NotBefore = now − 5 min, NotAfter = NotBefore + 10 years, CA:TRUE, KU
/// keyEncipherment|digitalSignature|keyCertSign, EKU serverAuth or clientAuth, IP SANs for IP
/// addresses and DNS SANs for everything else.
pub fn generate(
    request: &CertificateRequest,
    now: OffsetDateTime,
) -> Result<KeyPairPem, KumactlError> {
    let fail = |reason: String| KumactlError::Certificate(reason);
    let (signing_key, key_pem) = generate_key(request.key_type)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|error| fail(format!("failed to generate serial number: {error}")))?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = now - BACKDATE;
    params.not_after = params.not_before + VALIDITY;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    params.extended_key_usages = vec![match request.cert_type {
        CertType::Server => ExtendedKeyUsagePurpose::ServerAuth,
        CertType::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    for host in &request.hostnames {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|error| fail(format!("invalid hostname {host:?}: {error}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    let cert = params
        .self_signed(&signing_key)
        .map_err(|error| fail(format!("failed to generate TLS certificate: {error}")))?;
    Ok(KeyPairPem {
        cert_pem: cert.pem(),
        key_pem,
    })
}

/// A fresh key as an rcgen signer and as PEM in the traditional (non-PKCS#8) encoding.
fn generate_key(key_type: KeyType) -> Result<(rcgen::KeyPair, PrivateKeyPem), KumactlError> {
    let fail =
        |reason: String| KumactlError::Certificate(format!("failed to generate TLS key: {reason}"));
    let (pkcs8, label, traditional_der) = match key_type {
        KeyType::Rsa => {
            let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|error| fail(error.to_string()))?;
            let pkcs8: Pkcs8V1Der<'static> =
                key.as_der().map_err(|error| fail(error.to_string()))?;
            // The PKCS#8 wrapper of an RSA key holds the PKCS#1 `RSAPrivateKey` as is.
            let pkcs1 = pkcs8::PrivateKeyInfo::try_from(pkcs8.as_ref())
                .map_err(|error| fail(error.to_string()))?
                .private_key
                .to_vec();
            (pkcs8.as_ref().to_vec(), "RSA PRIVATE KEY", pkcs1)
        }
        KeyType::Ecdsa => {
            let key = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            )
            .map_err(|error| fail(error.to_string()))?;
            let pkcs8 = key.to_pkcs8v1().map_err(|error| fail(error.to_string()))?;
            // RFC 5915 `ECPrivateKey` with the curve parameters, as Go's MarshalECPrivateKey
            // writes it, so `openssl ec` reads it without extra hints.
            let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'static> = key
                .private_key()
                .as_der()
                .map_err(|error| fail(error.to_string()))?;
            (
                pkcs8.as_ref().to_vec(),
                "EC PRIVATE KEY",
                sec1.as_ref().to_vec(),
            )
        }
    };
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    let algorithm = match key_type {
        KeyType::Rsa => &rcgen::PKCS_RSA_SHA256,
        KeyType::Ecdsa => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, algorithm)
        .map_err(|error| fail(error.to_string()))?;
    let pem = pkcs8::der::pem::encode_string(label, pkcs8::LineEnding::LF, &traditional_der)
        .map_err(|error| fail(error.to_string()))?;
    Ok((signer, PrivateKeyPem(pem)))
}

/// Runs the command: generates the pair, writes the key (mode 0400) and the certificate (mode
/// 0600) or prints them for `-`, then reports where they were saved.
pub fn run(
    args: &TlsCertificateArgs,
    now: OffsetDateTime,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let request = validate(args)?;
    let pair = generate(&request, now)?;
    if args.key_file == "-" {
        out.write_all(pair.key_pem.expose().as_bytes())?;
    } else {
        write_file(&args.key_file, pair.key_pem.expose(), 0o400).map_err(KumactlError::WriteKey)?;
    }
    if args.cert_file == "-" {
        out.write_all(pair.cert_pem.as_bytes())?;
    } else {
        write_file(&args.cert_file, &pair.cert_pem, 0o600).map_err(KumactlError::WriteCert)?;
    }
    if args.key_file != "-" && args.cert_file != "-" {
        writeln!(out, "Private key saved in {}", args.key_file)?;
        writeln!(out, "Certificate saved in {}", args.cert_file)?;
    }
    Ok(())
}

/// Writes a file like Go's `os.WriteFile`: created with `mode`, truncated if it exists.
fn write_file(path: &str, contents: &str, mode: u32) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command as Process;
    use x509_parser::extensions::GeneralName;

    fn args(flags: &[&str]) -> TlsCertificateArgs {
        use clap::Parser;
        let cli = crate::kumactl::cli::Cli::try_parse_from(
            ["kumactl", "generate", "tls-certificate"]
                .into_iter()
                .chain(flags.iter().copied()),
        )
        .unwrap();
        match cli.command {
            crate::kumactl::cli::Command::Generate(
                crate::kumactl::cli::GenerateCommand::TlsCertificate(args),
            ) => args,
            other => panic!("{other:?}"),
        }
    }

    fn error(flags: &[&str]) -> String {
        validate(&args(flags)).unwrap_err().to_string()
    }

    #[test]
    fn flag_errors_use_kumas_texts() {
        assert_eq!(
            error(&[]),
            "required flag(s) \"hostname\", \"type\" not set"
        );
        assert_eq!(
            error(&["--type", "server"]),
            "required flag(s) \"hostname\" not set"
        );
        assert_eq!(
            error(&["--type", "peer", "--hostname", "x"]),
            "invalid certificate type \"peer\""
        );
        assert_eq!(
            error(&["--type", "server", "--hostname", "x", "--key-type", "dsa"]),
            "invalid key type \"dsa\""
        );
        assert_eq!(
            error(&["--type", "server", "--hostname", ""]),
            "at least one hostname must be given"
        );
    }

    #[test]
    fn older_client_form_without_hostname_still_works() {
        // Reference doc 004: `kumactl generate tls-certificate --cert-file=.. --key-file=.. --type=client`.
        let request = validate(&args(&["--type=client", "--key-file=k", "--cert-file=c"])).unwrap();
        assert_eq!(
            request,
            CertificateRequest {
                cert_type: CertType::Client,
                key_type: KeyType::Rsa,
                hostnames: vec!["localhost".to_owned()],
            }
        );
    }

    #[test]
    fn server_certificate_fields() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let request = CertificateRequest {
            cert_type: CertType::Server,
            key_type: KeyType::Rsa,
            hostnames: vec!["kuma1.internal".into(), "10.1.2.3".into(), "::1".into()],
        };
        let pair = generate(&request, now).unwrap();
        assert!(
            pair.key_pem
                .expose()
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        assert_eq!(format!("{:?}", pair.key_pem), "PrivateKeyPem(<redacted>)");

        let (_, pem) = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(cert.subject().iter_attributes().count(), 0, "empty subject");
        assert_eq!(cert.issuer().iter_attributes().count(), 0);
        assert_eq!(
            cert.validity().not_before.to_datetime(),
            now - time::Duration::minutes(5)
        );
        assert_eq!(
            cert.validity().not_after.to_datetime(),
            now - time::Duration::minutes(5) + time::Duration::days(3650)
        );
        let constraints = cert.basic_constraints().unwrap().unwrap();
        assert!(constraints.value.ca);
        let usage = cert.key_usage().unwrap().unwrap().value;
        assert!(usage.key_encipherment() && usage.digital_signature() && usage.key_cert_sign());
        assert!(!usage.key_agreement() && !usage.crl_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.critical,
            "the SAN is critical when the subject is empty"
        );
        assert_eq!(
            san.value.general_names,
            [
                GeneralName::DNSName("kuma1.internal"),
                GeneralName::IPAddress(&[10, 1, 2, 3]),
                GeneralName::IPAddress(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            ]
        );
        assert!(cert.serial.bits() <= 128);
        // Self-signed: the signature verifies with the certificate's own key.
        cert.verify_signature(None).unwrap();
    }

    #[test]
    fn ecdsa_client_certificate_checked_with_openssl() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key.pem");
        let cert_file = dir.path().join("cert.pem");
        let key_arg = key_file.to_str().unwrap();
        let cert_arg = cert_file.to_str().unwrap();
        let mut out = Vec::new();
        run(
            &args(&[
                "--type=client",
                "--hostname=dataplane-1",
                "--key-type=ecdsa",
                "--key-file",
                key_arg,
                "--cert-file",
                cert_arg,
            ]),
            OffsetDateTime::now_utc(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("Private key saved in {key_arg}\nCertificate saved in {cert_arg}\n")
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(
            std::fs::metadata(&cert_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            std::fs::read_to_string(&key_file)
                .unwrap()
                .starts_with("-----BEGIN EC PRIVATE KEY-----\n")
        );

        let text = Process::new("openssl")
            .args(["x509", "-noout", "-text", "-in", cert_arg])
            .output()
            .unwrap();
        assert!(
            text.status.success(),
            "{}",
            String::from_utf8_lossy(&text.stderr)
        );
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(
            text.contains("Digital Signature, Key Encipherment, Certificate Sign"),
            "{text}"
        );
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("DNS:dataplane-1"), "{text}");
        assert!(text.contains("ASN1 OID: prime256v1"), "{text}");

        // openssl reads the SEC1 key on its own and agrees it belongs to the certificate.
        let key_pub = Process::new("openssl")
            .args(["pkey", "-pubout", "-in", key_arg])
            .output()
            .unwrap();
        assert!(
            key_pub.status.success(),
            "{}",
            String::from_utf8_lossy(&key_pub.stderr)
        );
        let cert_pub = Process::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in", cert_arg])
            .output()
            .unwrap();
        assert_eq!(key_pub.stdout, cert_pub.stdout);
    }

    #[test]
    fn rsa_key_is_pkcs1_that_openssl_reads() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("k.pem");
        let request = CertificateRequest {
            cert_type: CertType::Server,
            key_type: KeyType::Rsa,
            hostnames: vec!["localhost".into()],
        };
        let pair = generate(&request, OffsetDateTime::now_utc()).unwrap();
        std::fs::write(&key_file, pair.key_pem.expose()).unwrap();
        let check = Process::new("openssl")
            .args(["rsa", "-check", "-noout", "-in", key_file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let cert_file = dir.path().join("c.pem");
        std::fs::write(&cert_file, &pair.cert_pem).unwrap();
        let text = Process::new("openssl")
            .args([
                "x509",
                "-noout",
                "-text",
                "-in",
                cert_file.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    }

    #[test]
    fn dash_prints_to_stdout_without_the_saved_lines() {
        let mut out = Vec::new();
        run(
            &args(&[
                "--type=server",
                "--hostname=localhost",
                "--key-type=ecdsa",
                "--key-file=-",
                "--cert-file=-",
            ]),
            OffsetDateTime::now_utc(),
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("-----BEGIN EC PRIVATE KEY-----\n"), "{out}");
        assert!(out.contains("-----BEGIN CERTIFICATE-----\n"), "{out}");
        assert!(!out.contains("saved in"), "{out}");
    }
}
