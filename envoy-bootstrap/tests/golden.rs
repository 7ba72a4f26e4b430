//! Golden files for the rendered Envoy config: any change to what Envoy receives shows up as a
//! diff under `tests/golden/`. `UPDATE_GOLDEN=1 cargo test -p envoy-bootstrap` rewrites them.
//!
//! Every rendering is also parsed back through the descriptor pool and compared with the typed
//! message, so the JSON is proven lossless.

#![allow(
    clippy::expect_used,
    reason = "test helpers abort the test on a setup failure"
)]

mod support;

use std::path::{Path, PathBuf};

use envoy_bootstrap::{
    MtlsMode, bootstrap, descriptor_pool, identity_secret, inbound_listener, local_app_cluster,
    mesh_ca_secret, outbound_cluster, outbound_listener, outbound_load_assignment,
    rbac_extension_config, render_json, to_json, to_json_value,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost_reflect::{DeserializeOptions, DynamicMessage, ReflectMessage, Value};
use support::{MESH, bootstrap_params, inbound, outbound, rules};

/// Placeholder PEMs: the goldens show where key material goes without holding any.
const FAKE_CHAIN: &str = "-----BEGIN CERTIFICATE-----\nFAKE-LEAF\n-----END CERTIFICATE-----\n\
                          -----BEGIN CERTIFICATE-----\nFAKE-INTERMEDIATE\n-----END CERTIFICATE-----\n";
const FAKE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nFAKE-KEY\n-----END PRIVATE KEY-----\n";
const FAKE_BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nFAKE-ROOT\n-----END CERTIFICATE-----\n";

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `actual` with the golden file byte for byte, or rewrites it under `UPDATE_GOLDEN=1`.
fn assert_golden(name: &str, actual: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run UPDATE_GOLDEN=1 cargo test -p envoy-bootstrap",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendering (UPDATE_GOLDEN=1 cargo test -p envoy-bootstrap \
         rewrites it after review)\n--- rendered:\n{actual}",
        path.display()
    );
}

/// Proves the JSON lossless: every field of the message (through `Any` payloads) is known to
/// the descriptor pool, so rendering dropped nothing; and the JSON parses back strictly into a
/// message that renders identically. (Typed equality would be too strict: `Any` payloads are
/// bytes, and prost and prost-reflect order fields differently.)
fn assert_lossless<M: prost::Message + prost::Name + Default>(message: &M, json: &str) {
    let pool = descriptor_pool().expect("descriptor pool");
    let descriptor = pool
        .get_message_by_name(&M::full_name())
        .expect("type in pool");
    let decoded = DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
        .expect("decode against the descriptor");
    assert_all_fields_known(&decoded);

    let mut deserializer = serde_json::Deserializer::from_str(json);
    let parsed = DynamicMessage::deserialize_with_options(
        descriptor,
        &mut deserializer,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .expect("rendered JSON parses against the descriptor");
    let parsed: M = parsed
        .transcode_to()
        .expect("transcode to the typed message");
    assert_eq!(
        to_json(&parsed).expect("render again"),
        json,
        "{} JSON round trip",
        M::full_name()
    );
}

fn assert_all_fields_known(message: &DynamicMessage) {
    let name = message.descriptor().full_name().to_owned();
    assert!(
        message.unknown_fields().next().is_none(),
        "{name} has fields the descriptors lack"
    );
    if name == "google.protobuf.Any" {
        let field = |f: &str| {
            message
                .get_field_by_name(f)
                .expect("Any field")
                .into_owned()
        };
        let type_url = field("type_url");
        let type_name = type_url
            .as_str()
            .and_then(|u| u.rsplit('/').next())
            .expect("type URL");
        let payload = field("value");
        let descriptor = descriptor_pool()
            .expect("descriptor pool")
            .get_message_by_name(type_name)
            .unwrap_or_else(|| panic!("{type_name} is not in the descriptor pool"));
        let inner =
            DynamicMessage::decode(descriptor, payload.as_bytes().expect("Any value").clone())
                .expect("decode Any payload");
        assert_all_fields_known(&inner);
        return;
    }
    for (_, value) in message.fields() {
        assert_value_known(value);
    }
}

fn assert_value_known(value: &Value) {
    match value {
        Value::Message(message) => assert_all_fields_known(message),
        Value::List(items) => items.iter().for_each(assert_value_known),
        Value::Map(entries) => entries.values().for_each(assert_value_known),
        _ => {}
    }
}

#[test]
fn bootstrap_golden() {
    let b = bootstrap(&bootstrap_params(PathBuf::from("/run/kuma-dp/xds.sock")));
    let json = render_json(&b).expect("render");
    assert_lossless(&b, &json);
    assert_golden("bootstrap.json", &json);
}

#[test]
fn strict_inbound_listener_golden() {
    let listener = inbound_listener(&inbound(10001, Some(MtlsMode::Strict)));
    let json = to_json(&listener).expect("render");
    assert_lossless(&listener, &json);
    assert_golden("inbound-strict.json", &json);
}

#[test]
fn permissive_inbound_listener_golden() {
    let listener = inbound_listener(&inbound(10001, Some(MtlsMode::Permissive)));
    let json = to_json(&listener).expect("render");
    assert_lossless(&listener, &json);
    assert_golden("inbound-permissive.json", &json);
}

#[test]
fn plaintext_inbound_listener_golden() {
    let listener = inbound_listener(&inbound(10001, None));
    let json = to_json(&listener).expect("render");
    assert_lossless(&listener, &json);
    assert_golden("inbound-plaintext.json", &json);
}

#[test]
fn local_app_cluster_golden() {
    let cluster = local_app_cluster(&inbound(10001, Some(MtlsMode::Strict)));
    let json = to_json(&cluster).expect("render");
    assert_lossless(&cluster, &json);
    assert_golden("app-cluster.json", &json);
}

#[test]
fn secrets_golden() {
    let secrets: Vec<Secret> = identity_secret(MESH, FAKE_CHAIN, FAKE_KEY)
        .into_iter()
        .chain(mesh_ca_secret(MESH, FAKE_BUNDLE))
        .collect();
    let mut rendered = Vec::new();
    for secret in &secrets {
        assert_lossless(secret, &to_json(secret).expect("render"));
        rendered.push(to_json_value(secret).expect("render"));
    }
    let mut json = serde_json::to_string_pretty(&rendered).expect("serialize");
    json.push('\n');
    assert_golden("secrets.json", &json);
}

/// Renders `message`, proves the rendering lossless and compares it with `name`.
fn assert_message_golden<M: prost::Message + prost::Name + Default>(name: &str, message: &M) {
    let json = to_json(message).expect("render");
    assert_lossless(message, &json);
    assert_golden(name, &json);
}

#[test]
fn rbac_golden() {
    let listener = inbound(10001, Some(MtlsMode::Strict)).listener_name();
    assert_message_golden(
        "rbac.json",
        &rbac_extension_config(MESH, &listener, &rules()),
    );
    assert_message_golden(
        "rbac-deny-all.json",
        &rbac_extension_config(MESH, &listener, &[]),
    );
}

#[test]
fn outbound_golden() {
    let plain = outbound(20001, "backend", &[], Some(MtlsMode::Strict));
    assert_message_golden("outbound-listener.json", &outbound_listener(&plain));
    assert_message_golden("outbound-cluster.json", &outbound_cluster(&plain));
    assert_message_golden("outbound-endpoints.json", &outbound_load_assignment(&plain));
    let subset = outbound(
        20002,
        "backend",
        &[("version", "v2")],
        Some(MtlsMode::Strict),
    );
    assert_message_golden("outbound-cluster-subset.json", &outbound_cluster(&subset));
    let plaintext = outbound(20001, "backend", &[], None);
    assert_message_golden(
        "outbound-cluster-plaintext.json",
        &outbound_cluster(&plaintext),
    );
}
