//! PEM reading: the blocks of a PEM input, and the certificates of a bundle.

use rustls_pki_types::pem::{PemObject, SectionKind};

use super::CaError;

/// One PEM block of a type we recognise, decoded.
pub(crate) struct Block {
    pub(crate) kind: SectionKind,
    pub(crate) der: Vec<u8>,
}

/// Every recognised PEM block of `input`, in order.
///
/// Blocks of unknown types are skipped. Reading stops at the first malformed block: Go's decoder
/// (whose error texts Kuma shows) also never returns a malformed block, so what follows is
/// treated as absent.
pub(crate) fn blocks(input: &[u8]) -> Vec<Block> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(input)
        .map_while(Result::ok)
        .map(|(kind, der)| Block { kind, der })
        .collect()
}

/// The PEM label of a block type, as Go prints it in its "skipped blocks" messages.
pub(crate) fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        _ => "UNKNOWN",
    }
}

/// Whether a block holds a private key (Go: the type ends in `PRIVATE KEY`).
pub(crate) fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey
    )
}

/// Parses every `CERTIFICATE` block of a PEM bundle, in order, and returns their DER.
///
/// Other block types are ignored. Fails on malformed PEM, on a block that is not an X.509
/// certificate, and when there is no certificate at all.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = item.map_err(|e| CaError::Pem(e.to_string()))?;
        if kind != SectionKind::Certificate {
            continue;
        }
        if let Err(reason) = super::keys::parse_certificate(&der) {
            return Err(CaError::InvalidCertificate {
                index: certs.len(),
                reason: reason.to_string(),
            });
        }
        certs.push(der);
    }
    if certs.is_empty() {
        return Err(CaError::NoCertificate);
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::test_support::{pem_block, self_signed_ca};

    #[test]
    fn bundle_keeps_order_and_skips_other_blocks() {
        let root = self_signed_ca("root");
        let other = self_signed_ca("other");
        let bundle = format!(
            "garbage before\n{}{}{}",
            root.cert.pem(),
            root.key.serialize_pem(),
            other.cert.pem()
        );
        let certs = certs_from_pem(bundle.as_bytes()).unwrap();
        assert_eq!(
            certs,
            vec![root.cert.der().to_vec(), other.cert.der().to_vec()]
        );
    }

    #[test]
    fn rejects_empty_and_non_certificates() {
        assert!(matches!(certs_from_pem(b""), Err(CaError::NoCertificate)));
        assert!(matches!(
            certs_from_pem(b"CERT"),
            Err(CaError::NoCertificate)
        ));
        let not_a_cert = pem_block("CERTIFICATE", b"\x30\x03\x02\x01\x00");
        let err = certs_from_pem(not_a_cert.as_bytes()).unwrap_err();
        assert!(
            matches!(err, CaError::InvalidCertificate { index: 0, .. }),
            "{err:?}"
        );
        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            certs_from_pem(truncated.as_bytes()),
            Err(CaError::Pem(_))
        ));
    }
}
