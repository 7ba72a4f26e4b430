//! Real Envoy (`envoy --mode validate`) accepts every generated config: the bootstrap itself,
//! and the inbound and outbound listeners, clusters, endpoints, RBAC filters and secrets placed
//! into a static bootstrap (Envoy validates only a bootstrap; served over ADS they would escape
//! the check). The ECDS and EDS references are validated as served, and once more with the
//! resources they fetch put in their place.
//!
//! Envoy is found through `ENVOY_BINARY` or `<workspace>/.tools/envoy/envoy/_bin/envoy`
//! (`.ci/install-deps` installs it); a missing binary fails the tests, it never skips them.

#![allow(
    clippy::expect_used,
    reason = "test helpers abort the test on a setup failure"
)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use envoy_bootstrap::{
    AdsProtocol, MtlsMode, PermissionRule, bootstrap, bootstrap_with_ads, identity_secret,
    inbound_listener, local_app_cluster, mesh_ca_secret, network_rbac, outbound_cluster,
    outbound_listener, outbound_load_assignment, render_json, to_envoy_any,
};
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use support::{MESH, bootstrap_params, inbound, outbound, rules};

fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("ENVOY_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/envoy/envoy/_bin/envoy")
        });
    assert!(
        path.is_file(),
        "Envoy not found at {}: run .ci/install-deps (installs Envoy 1.40.0 into .tools/envoy) \
         or set ENVOY_BINARY",
        path.display()
    );
    path
}

/// Writes the rendered bootstrap as `bootstrap.yaml` and runs `envoy --mode validate` on it.
/// Returns Envoy's output on success; deprecated fields count as failure (Envoy only warns).
fn envoy_validate(bootstrap: &Bootstrap) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bootstrap.yaml");
    std::fs::write(&path, render_json(bootstrap).expect("render")).expect("write bootstrap");
    let output = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "--config-path"])
        .arg(&path)
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(format!(
            "envoy --mode validate failed ({}):\n{text}",
            output.status
        ));
    }
    if text.to_ascii_lowercase().contains("deprecated") {
        return Err(format!("Envoy reports deprecated fields:\n{text}"));
    }
    Ok(text)
}

fn assert_valid(bootstrap: &Bootstrap) {
    if let Err(report) = envoy_validate(bootstrap) {
        panic!("{report}");
    }
}

/// The agent's bootstrap plus, as static resources, one inbound per mode with its local
/// cluster, and outbounds with and without mTLS with their EDS clusters, as the agent serves
/// them.
fn with_inbounds(mut bootstrap: Bootstrap) -> Bootstrap {
    let inbounds = [
        inbound(10001, None),
        inbound(10002, Some(MtlsMode::Strict)),
        inbound(10003, Some(MtlsMode::Permissive)),
    ];
    let outbounds = [
        outbound(20001, "backend", &[], Some(MtlsMode::Strict)),
        outbound(
            20002,
            "backend",
            &[("version", "v2")],
            Some(MtlsMode::Permissive),
        ),
        outbound(20003, "plain", &[], None),
    ];
    let resources = bootstrap.static_resources.get_or_insert_default();
    for params in &inbounds {
        resources.listeners.push(inbound_listener(params));
        resources.clusters.push(local_app_cluster(params));
    }
    for params in &outbounds {
        resources.listeners.push(outbound_listener(params));
        resources.clusters.push(outbound_cluster(params));
    }
    bootstrap
}

/// Puts in place of every ECDS filter the RBAC it would fetch, and in place of every EDS
/// cluster a static one holding the endpoints it would fetch.
fn with_fetched_resources(mut bootstrap: Bootstrap, rules: &[PermissionRule]) -> Bootstrap {
    let resources = bootstrap.static_resources.get_or_insert_default();
    for listener in &mut resources.listeners {
        let name = listener.name.clone();
        for chain in &mut listener.filter_chains {
            for filter in &mut chain.filters {
                if let Some(filter::ConfigType::ConfigDiscovery(_)) = filter.config_type {
                    filter.name = "envoy.filters.network.rbac".to_owned();
                    filter.config_type = Some(filter::ConfigType::TypedConfig(to_envoy_any(
                        &network_rbac(MESH, &name, rules),
                    )));
                }
            }
        }
    }
    let outbounds = [
        outbound(20001, "backend", &[], Some(MtlsMode::Strict)),
        outbound(
            20002,
            "backend",
            &[("version", "v2")],
            Some(MtlsMode::Permissive),
        ),
        outbound(20003, "plain", &[], None),
    ];
    for cluster in &mut resources.clusters {
        let Some(params) = outbounds.iter().find(|p| p.cluster_name() == cluster.name) else {
            continue;
        };
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static.into()));
        cluster.eds_cluster_config = None;
        cluster.load_assignment = Some(outbound_load_assignment(params));
    }
    bootstrap
}

/// A mesh CA and a workload certificate `spiffe://<mesh>/web` it signed, as PEM
/// (chain, key, bundle).
fn mesh_identity() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("leaf key");
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    leaf_params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{MESH}/web").try_into().expect("URI SAN"),
    )];
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    (leaf.pem(), leaf_key.serialize_pem(), ca.pem())
}

/// Drops the `sds_config` of every SDS reference of a TLS context, so Envoy reads the secrets
/// from the bootstrap's static secrets in validate mode.
fn static_secret_refs(common: &mut CommonTlsContext) {
    for config in &mut common.tls_certificate_sds_secret_configs {
        config.sds_config = None;
    }
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        common.validation_context_type.as_mut()
    else {
        panic!("no combined validation context");
    };
    if let Some(config) = combined.validation_context_sds_secret_config.as_mut() {
        config.sds_config = None;
    }
}

/// [`static_secret_refs`] for every downstream TLS context of the listener.
fn with_static_secret_refs(mut listener: Listener) -> Listener {
    for chain in &mut listener.filter_chains {
        let Some(socket) = chain.transport_socket.as_mut() else {
            continue;
        };
        let Some(ConfigType::TypedConfig(any)) = socket.config_type.as_mut() else {
            panic!("transport socket without typed config");
        };
        let mut context =
            DownstreamTlsContext::decode(any.value.as_slice()).expect("downstream TLS context");
        static_secret_refs(
            context
                .common_tls_context
                .as_mut()
                .expect("common TLS context"),
        );
        *any = to_envoy_any(&context);
    }
    listener
}

/// [`static_secret_refs`] for the upstream TLS context of the cluster, if it has one.
fn with_static_upstream_secret_refs(mut cluster: Cluster) -> Cluster {
    let Some(socket) = cluster.transport_socket.as_mut() else {
        return cluster;
    };
    let Some(ConfigType::TypedConfig(any)) = socket.config_type.as_mut() else {
        panic!("transport socket without typed config");
    };
    let mut context =
        UpstreamTlsContext::decode(any.value.as_slice()).expect("upstream TLS context");
    static_secret_refs(
        context
            .common_tls_context
            .as_mut()
            .expect("common TLS context"),
    );
    *any = to_envoy_any(&context);
    cluster
}

/// The resources of `bootstrap` with the secrets inline, so Envoy parses the secrets too (and
/// initializes static clusters: validate mode has no ADS to fetch them from).
fn with_inline_secrets(
    mut bootstrap: Bootstrap,
    chain_pem: &str,
    key_pem: &str,
    bundle_pem: &str,
) -> Bootstrap {
    let resources = bootstrap.static_resources.get_or_insert_default();
    resources.listeners = std::mem::take(&mut resources.listeners)
        .into_iter()
        .map(with_static_secret_refs)
        .collect();
    resources.clusters = std::mem::take(&mut resources.clusters)
        .into_iter()
        .map(with_static_upstream_secret_refs)
        .collect();
    resources.secrets = identity_secret(MESH, chain_pem, key_pem)
        .into_iter()
        .chain(mesh_ca_secret(MESH, bundle_pem))
        .collect();
    bootstrap
}

#[test]
fn bootstrap_passes_envoy_validate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut params = bootstrap_params(dir.path().join("xds.sock"));
    params.admin_port = 0;
    let output = envoy_validate(&bootstrap(&params)).unwrap_or_else(|report| panic!("{report}"));
    assert!(!output.contains("[warning]"), "Envoy warns:\n{output}");
    assert_valid(&bootstrap_with_ads(&params, AdsProtocol::StateOfTheWorld));
}

/// The agent's bootstrap with every listener and cluster as served.
fn served() -> Bootstrap {
    with_inbounds(bootstrap(&bootstrap_params(PathBuf::from("/tmp/xds.sock"))))
}

#[test]
fn resources_as_served_pass_envoy_validate() {
    let served = served();
    assert_eq!(
        served.static_resources.as_ref().map(|r| r.listeners.len()),
        Some(6)
    );
    assert_valid(&served);
}

#[test]
fn fetched_rbac_and_endpoints_pass_envoy_validate() {
    let (chain, key, bundle) = mesh_identity();
    for rules in [rules(), Vec::new()] {
        let fetched = with_fetched_resources(served(), &rules);
        assert_valid(&with_inline_secrets(fetched, &chain, &key, &bundle));
    }
}

#[test]
fn envoy_validate_rejects_an_invalid_rbac_filter() {
    // Proves the check above reaches the RBAC filters: a policy without principals is invalid.
    let (chain, key, bundle) = mesh_identity();
    let mut bootstrap =
        with_inline_secrets(with_fetched_resources(served(), &[]), &chain, &key, &bundle);
    let resources = bootstrap.static_resources.get_or_insert_default();
    let listener = resources
        .listeners
        .iter_mut()
        .find(|l| l.name == "inbound:127.0.0.1:10002")
        .expect("the STRICT inbound");
    let mut rbac = network_rbac(MESH, "broken", &rules());
    for policy in rbac.rules.get_or_insert_default().policies.values_mut() {
        policy.principals.clear();
    }
    listener.filter_chains[0].filters[0].config_type =
        Some(filter::ConfigType::TypedConfig(to_envoy_any(&rbac)));
    let report = envoy_validate(&bootstrap).expect_err("Envoy accepted an invalid RBAC filter");
    assert!(report.contains("Principals"), "{report}");
}

#[test]
fn resources_with_inline_secrets_pass_envoy_validate() {
    let (chain, key, bundle) = mesh_identity();
    assert_valid(&with_inline_secrets(served(), &chain, &key, &bundle));
}

#[test]
fn envoy_validate_rejects_a_broken_certificate() {
    // Proves the inline-secret check above reaches the certificates.
    let (_, key, bundle) = mesh_identity();
    let broken = "-----BEGIN CERTIFICATE-----\nFAKE\n-----END CERTIFICATE-----\n";
    let result = envoy_validate(&with_inline_secrets(served(), broken, &key, &bundle));
    let report = result.expect_err("Envoy accepted a broken certificate");
    assert!(
        report.contains("Failed to load certificate chain"),
        "{report}"
    );
}
