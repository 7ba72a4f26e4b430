//! `kumactl manage ca provided certificates add|list|delete`: the legacy API for uploading the
//! root CA of a provided CA (`/meshes/{mesh}/ca/provided/certificates`).

use std::io::Write;
use std::path::Path;

use reqwest::Method;
use serde::Deserialize;
use time::OffsetDateTime;

use super::client::ApiClient;
use super::error::KumactlError;
use super::table;

/// One signing certificate as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SigningCert {
    /// Its id.
    pub id: String,
    /// PEM certificate.
    pub cert: String,
}

#[derive(Debug, Deserialize)]
struct SigningCertList {
    #[serde(default)]
    items: Vec<SigningCert>,
}

fn certificates_path(mesh: &str) -> Vec<String> {
    ["meshes", mesh, "ca", "provided", "certificates"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn read(path: &Path) -> Result<String, KumactlError> {
    std::fs::read_to_string(path).map_err(|source| KumactlError::ReadFile {
        path: path.to_owned(),
        source,
    })
}

/// `add`: uploads the certificate and key, prints `added certificate "<id>"`.
pub async fn add(
    client: &ApiClient,
    mesh: &str,
    cert_file: &Path,
    key_file: &Path,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let body = serde_json::json!({"cert": read(cert_file)?, "key": read(key_file)?});
    let reply = client
        .call(Method::POST, &certificates_path(mesh), Some(&body))
        .await?;
    let added: SigningCert =
        serde_json::from_str(&reply.body).map_err(|error| KumactlError::InvalidResponse {
            url: reply.url.clone(),
            reason: error.to_string(),
        })?;
    writeln!(out, "added certificate {:?}", added.id)?;
    Ok(())
}

/// `delete`: removes a certificate, prints `removed certificate "<id>"`.
pub async fn delete(
    client: &ApiClient,
    mesh: &str,
    id: &str,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let mut path = certificates_path(mesh);
    path.push(id.to_owned());
    client.call(Method::DELETE, &path, None).await?;
    writeln!(out, "removed certificate {id:?}")?;
    Ok(())
}

/// `list`: prints Kuma's table of the mesh's signing certificates.
pub async fn list(client: &ApiClient, mesh: &str, out: &mut dyn Write) -> Result<(), KumactlError> {
    let reply = client
        .call(Method::GET, &certificates_path(mesh), None)
        .await?;
    let list: SigningCertList =
        serde_json::from_str(&reply.body).map_err(|error| KumactlError::InvalidResponse {
            url: reply.url.clone(),
            reason: error.to_string(),
        })?;
    out.write_all(certificates_table(&list.items)?.as_bytes())?;
    Ok(())
}

/// `ID  COMMON NAME  SERIAL NUMBER  NOT VALID BEFORE  NOT VALID AFTER  SHA-1 FINGERPRINT`, with
/// Go's time format (`2019-12-04 17:34:55 +0000 UTC`) as in Kuma.
pub fn certificates_table(certs: &[SigningCert]) -> Result<String, KumactlError> {
    let mut rows = Vec::new();
    for signing_cert in certs {
        let bad = |reason: String| KumactlError::BadCertificate {
            id: signing_cert.id.clone(),
            reason,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(signing_cert.cert.as_bytes())
            .map_err(|error| bad(error.to_string()))?;
        let cert = pem.parse_x509().map_err(|error| bad(error.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let fingerprint =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &pem.contents);
        rows.push(vec![
            signing_cert.id.clone(),
            common_name,
            cert.serial.to_string(),
            go_time(cert.validity().not_before.to_datetime()),
            go_time(cert.validity().not_after.to_datetime()),
            fingerprint
                .as_ref()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        ]);
    }
    Ok(table::render(
        &[
            "ID",
            "COMMON NAME",
            "SERIAL NUMBER",
            "NOT VALID BEFORE",
            "NOT VALID AFTER",
            "SHA-1 FINGERPRINT",
        ],
        &rows,
    ))
}

/// Go's default `time.Time` rendering for a UTC time.
fn go_time(time: OffsetDateTime) -> String {
    format!("{} +0000 UTC", table::date(Some(time)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_certificates_like_kuma() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "default");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0]));
        params.not_before = time::macros::datetime!(2019-12-04 17:34:55 UTC);
        params.not_after = time::macros::datetime!(2029-12-01 17:35:05 UTC);
        let cert = params.self_signed(&key).unwrap();
        let fingerprint: String =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert.der())
                .as_ref()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
        let certs = [
            SigningCert {
                id: "1234".into(),
                cert: cert.pem(),
            },
            SigningCert {
                id: "4321".into(),
                cert: cert.pem(),
            },
        ];
        assert_eq!(
            certificates_table(&certs).unwrap(),
            format!(
                "ID     COMMON NAME   SERIAL NUMBER   NOT VALID BEFORE                NOT VALID AFTER                 SHA-1 FINGERPRINT\n\
                 1234   default       0               2019-12-04 17:34:55 +0000 UTC   2029-12-01 17:35:05 +0000 UTC   {fingerprint}\n\
                 4321   default       0               2019-12-04 17:34:55 +0000 UTC   2029-12-01 17:35:05 +0000 UTC   {fingerprint}\n"
            )
        );
    }

    #[test]
    fn garbage_certificates_are_named() {
        let error = certificates_table(&[SigningCert {
            id: "x".into(),
            cert: "nope".into(),
        }])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("could not parse certificate \"x\": "),
            "{error}"
        );
    }
}
