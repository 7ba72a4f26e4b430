//! SDS `Secret` resources for the mesh identity and the mesh trust bundle, and the SDS
//! references to them that TLS contexts carry (KUMA-FACTS 7.1).

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, Secret, TlsCertificate, secret,
};

use crate::common::ads_config_source;

/// Prefix of the identity secret name; the full name is `identity_cert:secret:<mesh>`.
pub const IDENTITY_SECRET_PREFIX: &str = "identity_cert:secret:";
/// Prefix of the trust bundle secret name; the full name is `mesh_ca:secret:<mesh>`.
pub const MESH_CA_SECRET_PREFIX: &str = "mesh_ca:secret:";
/// Alias served with the identity, the name generic SDS clients ask for.
pub const IDENTITY_SECRET_ALIAS: &str = "default";
/// Alias served with the trust bundle, the name generic SDS clients ask for.
pub const MESH_CA_SECRET_ALIAS: &str = "ROOTCA";

/// `identity_cert:secret:<mesh>`.
pub fn identity_secret_name(mesh: &str) -> String {
    format!("{IDENTITY_SECRET_PREFIX}{mesh}")
}

/// `mesh_ca:secret:<mesh>`.
pub fn mesh_ca_secret_name(mesh: &str) -> String {
    format!("{MESH_CA_SECRET_PREFIX}{mesh}")
}

/// The identity as two secrets with the same content: `identity_cert:secret:<mesh>` and
/// `default`. `chain_pem` is the PEM chain, leaf first; `key_pem` the leaf's PEM private key.
///
/// The result holds the private key and its derived `Debug` prints it: never log it.
pub fn identity_secret(mesh: &str, chain_pem: &str, key_pem: &str) -> Vec<Secret> {
    let certificate = TlsCertificate {
        certificate_chain: Some(inline(chain_pem)),
        private_key: Some(inline(key_pem)),
        ..Default::default()
    };
    [identity_secret_name(mesh), IDENTITY_SECRET_ALIAS.to_owned()]
        .into_iter()
        .map(|name| Secret {
            name,
            r#type: Some(secret::Type::TlsCertificate(certificate.clone())),
        })
        .collect()
}

/// The mesh trust bundle as two secrets with the same content: `mesh_ca:secret:<mesh>` and
/// `ROOTCA`. `bundle_pem` holds every CA certificate of the mesh.
pub fn mesh_ca_secret(mesh: &str, bundle_pem: &str) -> Vec<Secret> {
    let validation = CertificateValidationContext {
        trusted_ca: Some(inline(bundle_pem)),
        ..Default::default()
    };
    [mesh_ca_secret_name(mesh), MESH_CA_SECRET_ALIAS.to_owned()]
        .into_iter()
        .map(|name| Secret {
            name,
            r#type: Some(secret::Type::ValidationContext(validation.clone())),
        })
        .collect()
}

/// A reference to a secret fetched over ADS, as TLS contexts carry it.
pub fn sds_secret_config(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(ads_config_source()),
    }
}

/// Inline PEM text. A string rather than bytes keeps the rendered JSON readable.
fn inline(pem: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineString(pem.to_owned())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::ApiVersion;

    use super::*;

    fn inline_text(source: &Option<DataSource>) -> Option<&str> {
        match source.as_ref()?.specifier.as_ref()? {
            Specifier::InlineString(text) => Some(text),
            _ => None,
        }
    }

    #[test]
    fn identity_is_served_under_its_name_and_the_default_alias() {
        let secrets = identity_secret("demo", "CHAIN", "KEY");
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["identity_cert:secret:demo", "default"]);
        for secret in &secrets {
            let Some(secret::Type::TlsCertificate(cert)) = &secret.r#type else {
                panic!("{} is not a TLS certificate", secret.name);
            };
            assert_eq!(inline_text(&cert.certificate_chain), Some("CHAIN"));
            assert_eq!(inline_text(&cert.private_key), Some("KEY"));
        }
    }

    #[test]
    fn trust_bundle_is_served_under_its_name_and_the_rootca_alias() {
        let secrets = mesh_ca_secret("demo", "BUNDLE");
        let names: Vec<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mesh_ca:secret:demo", "ROOTCA"]);
        for secret in &secrets {
            let Some(secret::Type::ValidationContext(validation)) = &secret.r#type else {
                panic!("{} is not a validation context", secret.name);
            };
            assert_eq!(inline_text(&validation.trusted_ca), Some("BUNDLE"));
        }
    }

    #[test]
    fn sds_reference_points_at_ads_without_a_fetch_timeout() {
        let config = sds_secret_config(identity_secret_name("demo"));
        assert_eq!(config.name, "identity_cert:secret:demo");
        let source = config.sds_config.unwrap_or_default();
        assert_eq!(
            source.initial_fetch_timeout.map(|d| (d.seconds, d.nanos)),
            Some((0, 0))
        );
        assert_eq!(source.resource_api_version, ApiVersion::V3 as i32);
    }
}
