//! Meshes in both mTLS schemas and both YAML forms, through the real kumactl and cp-lite: CA
//! secrets are created once, have Kuma's fields, and survive a restart unchanged.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use integration_tests::{CpLite, Kumactl, openssl};

const UNIVERSAL_CURRENT: &str = "
type: Mesh
name: m1
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert:
      rotation:
        expiration: 1d
    conf:
      caCert:
        RSAbits: 2048
        expiration: 10y
";

const KUBERNETES_CURRENT: &str = "
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: m2
spec:
  mtls:
    enabledBackend: ca-1
    backends:
    - name: ca-1
      type: builtin
";

const UNIVERSAL_LEGACY: &str = "
type: Mesh
name: m3
mtls:
  enabled: true
  ca:
    builtin: {}
";

const KUBERNETES_LEGACY: &str = "
apiVersion: kuma.io/v1alpha1
kind: Mesh
metadata:
  name: m4
spec:
  mtls:
    enabled: true
    ca:
      builtin: {}
";

fn secret_data(kumactl: &Kumactl, mesh: &str, name: &str) -> String {
    let secret = kumactl
        .get_json(&["secret", name, "-m", mesh])
        .unwrap_or_else(|e| panic!("secret {name} of mesh {mesh}: {e}"));
    secret["data"].as_str().expect("secret data").to_string()
}

fn decode(data: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .expect("base64 secret data")
}

#[test]
fn both_schemas_and_forms_create_builtin_cas_that_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();

    for yaml in [
        UNIVERSAL_CURRENT,
        KUBERNETES_CURRENT,
        UNIVERSAL_LEGACY,
        KUBERNETES_LEGACY,
    ] {
        kumactl.apply(yaml).unwrap();
    }
    let expected = [
        ("m1", "ca-1"),
        ("m2", "ca-1"),
        ("m3", "builtin"),
        ("m4", "builtin"),
    ];
    let mut before = Vec::new();
    for (mesh, backend) in expected {
        let json = kumactl.get_json(&["mesh", mesh]).unwrap();
        assert_eq!(json["type"], "Mesh");
        assert_eq!(json["name"], mesh);
        assert_eq!(json["mtls"]["enabledBackend"], backend, "{json}");
        let cert = secret_data(&kumactl, mesh, &format!("{mesh}.ca-builtin-cert-{backend}"));
        let key = secret_data(&kumactl, mesh, &format!("{mesh}.ca-builtin-key-{backend}"));
        before.push((mesh, backend, cert, key));
    }

    // Kuma's root certificate fields, read by openssl.
    let (mesh, _, cert, key) = &before[0];
    let cert_path = dir.path().join("root.pem");
    std::fs::write(&cert_path, decode(cert)).unwrap();
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        cert_path.to_str().unwrap(),
        "-noout",
        "-text",
    ])
    .unwrap();
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("Subject: O = Kuma, OU = Mesh, CN = {mesh}")),
        "{text}"
    );
    assert!(text.contains(&format!("URI:spiffe://{mesh}")), "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(
        String::from_utf8(decode(key))
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );

    // Applying again and restarting changes nothing.
    kumactl.apply(UNIVERSAL_CURRENT).unwrap();
    cp.restart().unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    for (mesh, backend, cert, key) in &before {
        assert_eq!(
            &secret_data(&kumactl, mesh, &format!("{mesh}.ca-builtin-cert-{backend}")),
            cert,
            "CA certificate of {mesh} changed"
        );
        assert_eq!(
            &secret_data(&kumactl, mesh, &format!("{mesh}.ca-builtin-key-{backend}")),
            key,
            "CA key of {mesh} changed"
        );
    }
    let meshes = kumactl.get_json(&["meshes"]).unwrap();
    assert_eq!(meshes["total"], 4, "{meshes}");
    cp.stop().unwrap();
}

#[test]
fn table_output_lists_meshes_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(UNIVERSAL_CURRENT).unwrap();
    let out = kumactl.run(&["get", "meshes"]).unwrap();
    assert!(out.success, "{}", out.all());
    assert!(out.stdout.contains("NAME"), "{}", out.stdout);
    assert!(out.stdout.contains("m1"), "{}", out.stdout);
    assert!(out.stdout.contains("builtin/ca-1"), "{}", out.stdout);
    let out = kumactl.run(&["get", "secrets", "-m", "m1"]).unwrap();
    assert!(
        out.stdout.contains("m1.ca-builtin-cert-ca-1"),
        "{}",
        out.stdout
    );
    let out = kumactl.run(&["delete", "mesh", "m1"]).unwrap();
    assert!(out.success, "{}", out.all());
    assert!(out.stdout.contains("deleted Mesh \"m1\""), "{}", out.stdout);
    let out = kumactl.run(&["get", "mesh", "m1"]).unwrap();
    assert!(!out.success);
}
