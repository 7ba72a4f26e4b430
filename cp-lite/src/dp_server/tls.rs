//! The DP server's TLS identity: loaded from the configured files, or generated on first run and
//! kept in the work directory so that agents can keep trusting it across restarts.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tracing::info;

use super::DpServerError;
use crate::ca;

/// The generated server certificate, in the work directory.
pub const CERT_FILE_NAME: &str = "dp-server.crt";
/// The generated server key (mode 0600), in the work directory.
pub const KEY_FILE_NAME: &str = "dp-server.key";
/// The CA that signed the generated server certificate, for agents to trust (`--ca-cert-file`).
pub const CA_FILE_NAME: &str = "dp-server-ca.pem";

/// Loads the DP server certificate from files, or generates one on first run and persists it in
/// the work dir (`dp-server.crt`, `dp-server.key` 0600) and writes the CA to
/// `<work dir>/dp-server-ca.pem`. A generated certificate names localhost, the loopback
/// addresses, the machine's host name and `hostnames` (the advertised host name). TLS 1.2 and
/// 1.3, ALPN `h2`.
pub fn load_or_generate(
    work_dir: &Path,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    hostnames: &[String],
) -> Result<Arc<ServerConfig>, DpServerError> {
    let (cert_chain, key) = match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => {
            (read_cert_chain(cert_file)?, read_private_key(key_file)?)
        }
        (None, None) => generated_identity(work_dir, hostnames)?,
        _ => return Err(DpServerError::IncompleteTlsFiles),
    };
    server_config(cert_chain, key)
}

/// Builds the rustls configuration: aws-lc-rs, TLS ≥ 1.2, no client certificates (agents
/// authenticate with tokens), ALPN `h2` (gRPC).
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, DpServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(DpServerError::TlsConfig)?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(DpServerError::TlsConfig)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Reuses the certificate generated on an earlier run, or generates and persists a new one.
fn generated_identity(
    work_dir: &Path,
    extra_hostnames: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), DpServerError> {
    let cert_path = work_dir.join(CERT_FILE_NAME);
    let key_path = work_dir.join(KEY_FILE_NAME);
    if cert_path.exists() && key_path.exists() {
        return Ok((read_cert_chain(&cert_path)?, read_private_key(&key_path)?));
    }

    let mut hostnames = extra_hostnames.to_vec();
    if let Some(hostname) = machine_hostname() {
        hostnames.push(hostname);
    }
    let generated = ca::generate_server_tls(&hostnames, OffsetDateTime::now_utc())
        .map_err(DpServerError::GenerateTls)?;
    fs::create_dir_all(work_dir).map_err(|source| DpServerError::WriteTlsFile {
        path: work_dir.to_path_buf(),
        source,
    })?;
    // Key first: a crash between the writes leaves no certificate, so the next run regenerates.
    write_file(&key_path, generated.key_pem.expose().as_bytes(), 0o600)?;
    write_file(&cert_path, generated.cert_pem.as_bytes(), 0o644)?;
    write_file(
        &work_dir.join(CA_FILE_NAME),
        generated.ca_cert_pem.as_bytes(),
        0o644,
    )?;
    info!(cert = ?cert_path, ca = ?work_dir.join(CA_FILE_NAME), "generated the DP server certificate");

    Ok((
        read_cert_chain(&cert_path)?,
        parse_private_key(generated.key_pem.expose().as_bytes(), &key_path)?,
    ))
}

/// The machine's host name, so that agents can reach the server by it.
fn machine_hostname() -> Option<String> {
    let from_kernel = fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let name = from_kernel.or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Writes `data` to `path` with `mode`, replacing it atomically (temporary file then rename), so
/// a reader never sees half a key.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), DpServerError> {
    use std::os::unix::fs::OpenOptionsExt;

    let error = |source| DpServerError::WriteTlsFile {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover from an interrupted run could have a laxer mode: start afresh.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(error)?;
    file.write_all(data).map_err(error)?;
    file.sync_all().map_err(error)?;
    fs::rename(&tmp, path).map_err(error)
}

/// Reads every certificate of a PEM file, leaf first.
fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, DpServerError> {
    const WHAT: &str = "DP server TLS certificate";
    let pem = fs::read(path).map_err(|source| DpServerError::ReadTlsFile {
        what: WHAT,
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| DpServerError::InvalidTlsFile {
        what: WHAT,
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid("no CERTIFICATE PEM block found".to_string()));
    }
    Ok(chain)
}

/// Reads a PEM private key (PKCS#1, PKCS#8 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, DpServerError> {
    let pem = fs::read(path).map_err(|source| DpServerError::ReadTlsFile {
        what: "DP server TLS key",
        path: path.to_path_buf(),
        source,
    })?;
    parse_private_key(&pem, path)
}

fn parse_private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, DpServerError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| DpServerError::InvalidTlsFile {
        what: "DP server TLS key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        load_or_generate(dir.path(), None, None, &[]).unwrap();
        let cert = fs::read(dir.path().join(CERT_FILE_NAME)).unwrap();
        let key_mode = fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);

        // The certificate is signed by the CA written next to it and names this machine.
        let ca_pem = fs::read(dir.path().join(CA_FILE_NAME)).unwrap();
        let ca_der = CertificateDer::from_pem_slice(&ca_pem).unwrap();
        let leaf_der = CertificateDer::from_pem_slice(&cert).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        let sans: Vec<String> = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(sans.contains(&"DNSName(localhost)".to_string()), "{sans:?}");
        if let Some(hostname) = machine_hostname() {
            assert!(sans.contains(&format!("DNSName({hostname})")), "{sans:?}");
        }

        load_or_generate(dir.path(), None, None, &[]).unwrap();
        assert_eq!(fs::read(dir.path().join(CERT_FILE_NAME)).unwrap(), cert);
    }

    #[test]
    fn loads_given_files() {
        let dir = tempfile::tempdir().unwrap();
        let generated =
            ca::generate_server_tls(&["cp.example".to_string()], OffsetDateTime::now_utc())
                .unwrap();
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        fs::write(&cert_file, &generated.cert_pem).unwrap();
        fs::write(&key_file, generated.key_pem.expose()).unwrap();
        let config = load_or_generate(dir.path(), Some(&cert_file), Some(&key_file), &[]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        // Nothing is generated when files are given.
        assert!(!dir.path().join(CERT_FILE_NAME).exists());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crt");
        let key_file = dir.path().join("key.pem");
        fs::write(&key_file, "not a key").unwrap();
        let err = load_or_generate(dir.path(), Some(&missing), Some(&key_file), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("could not read DP server TLS certificate file {missing:?}")
        );

        let cert_file = dir.path().join("cert.pem");
        fs::write(&cert_file, "garbage").unwrap();
        let err = load_or_generate(dir.path(), Some(&cert_file), Some(&key_file), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "DP server TLS certificate file {cert_file:?} is not valid: no CERTIFICATE PEM block found"
            )
        );

        let err = load_or_generate(dir.path(), Some(&cert_file), None, &[]).unwrap_err();
        assert!(matches!(err, DpServerError::IncompleteTlsFiles));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let one = ca::generate_server_tls(&[], now).unwrap();
        let other = ca::generate_server_tls(&[], now).unwrap();
        let cert_file = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        fs::write(&cert_file, &one.cert_pem).unwrap();
        fs::write(&key_file, other.key_pem.expose()).unwrap();
        let err = load_or_generate(dir.path(), Some(&cert_file), Some(&key_file), &[]).unwrap_err();
        assert!(matches!(err, DpServerError::TlsConfig(_)), "{err:?}");
    }
}
