//! Dataplane tokens and certificates end to end: a token from the real kumactl is checked with
//! openssl against the signing key's public half, and a leaf signed over the real gRPC+TLS DP
//! server passes `openssl verify` against the mesh CA.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use integration_tests::{CpLite, Kumactl, dp, openssl, p256_csr};

const MESH: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
";

pub const DATAPLANE: &str = "
type: Dataplane
mesh: default
name: dp-1
networking:
  address: 127.0.0.1
  inbound:
  - port: 10001
    servicePort: 8080
    tags:
      kuma.io/service: web
      version: v1
";

fn b64url(part: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url")
}

#[test]
fn token_signature_verifies_with_openssl_and_claims_are_kumas() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    let token = kumactl
        .dataplane_token(&[
            "--name",
            "dp-1",
            "--mesh",
            "default",
            "--tag",
            "kuma.io/service=web,web-api",
            "--valid-for",
            "24h",
        ])
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: serde_json::Value = serde_json::from_slice(&b64url(parts[0])).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], "1");
    let claims: serde_json::Value = serde_json::from_slice(&b64url(parts[1])).unwrap();
    assert_eq!(claims["Name"], "dp-1");
    assert_eq!(claims["Mesh"], "default");
    assert_eq!(
        claims["Tags"]["kuma.io/service"],
        serde_json::json!(["web", "web-api"])
    );
    assert_eq!(claims["Type"], "");
    assert_eq!(claims["Workload"], "");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(claims["nbf"].as_i64().unwrap(), iat);
    assert_eq!(
        exp - iat,
        24 * 3600 + 5,
        "exp = now + validFor, iat = now - 5s"
    );
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);

    // The signing key is a Secret of the mesh; openssl checks the RS256 signature with its
    // public half.
    let secret = kumactl
        .get_json(&[
            "secret",
            "dataplane-token-signing-key-default-1",
            "-m",
            "default",
        ])
        .unwrap();
    let key_pem = base64::engine::general_purpose::STANDARD
        .decode(secret["data"].as_str().unwrap())
        .unwrap();
    assert!(String::from_utf8_lossy(&key_pem).contains("BEGIN RSA PRIVATE KEY"));
    let key = dir.path().join("signing-key.pem");
    let public = dir.path().join("signing-key.pub.pem");
    let signed = dir.path().join("signed.txt");
    let signature = dir.path().join("signature.bin");
    std::fs::write(&key, key_pem).unwrap();
    std::fs::write(&signed, format!("{}.{}", parts[0], parts[1])).unwrap();
    std::fs::write(&signature, b64url(parts[2])).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ok, text) = openssl(&[
        "pkey",
        "-in",
        &path(&key),
        "-pubout",
        "-out",
        &path(&public),
    ])
    .unwrap();
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &path(&public),
        "-signature",
        &path(&signature),
        &path(&signed),
    ])
    .unwrap();
    assert!(ok && text.contains("Verified OK"), "{text}");

    // A tampered payload does not verify.
    std::fs::write(&signed, format!("{}.{}x", parts[0], parts[1])).unwrap();
    let (ok, _) = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &path(&public),
        "-signature",
        &path(&signature),
        &path(&signed),
    ])
    .unwrap();
    assert!(!ok);
}

#[test]
fn admin_server_issues_tokens_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let token = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}/tokens", cp.admin_url()))
            .json(&serde_json::json!({"name": "dp-1", "mesh": "default"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    });
    assert_eq!(token.split('.').count(), 3, "{token}");
}

#[test]
fn a_signed_leaf_passes_openssl_verify_against_the_mesh_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = CpLite::start(&data).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    let token = kumactl
        .dataplane_token(&["--name", "dp-1", "--mesh", "default", "--valid-for", "1h"])
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(async {
        let mut client = dp::connect(&data, cp.dp).await.unwrap();
        dp::register(&mut client, &token, "default", "dp-1", DATAPLANE)
            .await
            .unwrap();
        dp::sign(&mut client, &token, "default", "dp-1", p256_csr(&[]))
            .await
            .unwrap()
    });
    assert_eq!(response.backend, "ca-1");
    assert_eq!(response.trust_bundle_der.len(), 1);

    let pem = |der: &[u8]| {
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let leaf = dir.path().join("leaf.pem");
    let root = dir.path().join("root.pem");
    std::fs::write(&leaf, pem(&response.chain_der[0])).unwrap();
    std::fs::write(&root, pem(&response.trust_bundle_der[0])).unwrap();
    let (ok, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]).unwrap();
    assert!(ok, "{text}");
    for expected in [
        "URI:spiffe://default/web",
        "URI:kuma://kuma.io/service/web",
        "URI:kuma://version/v1",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "CA:FALSE",
        "ASN1 OID: prime256v1",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ])
    .unwrap();
    assert!(ok && text.contains("OK"), "{text}");

    // The trust bundle is the mesh's stored builtin root.
    let stored = kumactl
        .get_json(&["secret", "default.ca-builtin-cert-ca-1", "-m", "default"])
        .unwrap();
    let stored_pem = base64::engine::general_purpose::STANDARD
        .decode(stored["data"].as_str().unwrap())
        .unwrap();
    let (_, stored_der) = x509_parser::pem::parse_x509_pem(&stored_pem).unwrap();
    assert_eq!(stored_der.contents, response.trust_bundle_der[0]);
}

#[test]
fn inspect_dataplanes_shows_the_reported_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = CpLite::start(&data).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    let token = kumactl
        .dataplane_token(&["--mesh", "default", "--valid-for", "1h"])
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = dp::connect(&data, cp.dp).await.unwrap();
        dp::register(&mut client, &token, "default", "dp-1", DATAPLANE)
            .await
            .unwrap();
        let report = cp_lite_api::v1::ReportCertificateRequest {
            dataplane: dp::dataplane("default", "dp-1"),
            // 2030-01-02 03:04:05 UTC
            expiration_unix: 1_893_553_445,
            generated_unix: 1_893_550_000,
            regenerations: 3,
            backend: "ca-1".to_string(),
        };
        dp::report(&mut client, &token, report).await.unwrap();
    });
    let out = kumactl.run(&["inspect", "dataplanes"]).unwrap();
    assert!(out.success, "{}", out.all());
    for expected in [
        "CERT EXPIRATION",
        "CERT REGENERATIONS",
        "dp-1",
        "2030-01-02 03:04:05",
        "ca-1",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stdout
        );
    }
    let row = out.stdout.lines().find(|l| l.contains("dp-1")).unwrap();
    assert!(row.split_whitespace().any(|cell| cell == "3"), "{row}");
    let json = kumactl
        .run(&["inspect", "dataplanes", "-o", "json"])
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let mtls = &json["items"][0]["dataplaneInsight"]["mTLS"];
    assert_eq!(mtls["certificateRegenerations"], 3, "{json}");
    assert_eq!(mtls["issuedBackend"], "ca-1", "{json}");
}

#[test]
fn without_dataplane_tokens_any_agent_is_served_and_a_warning_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = CpLite::start_with_env(
        &data,
        &[("KUMA_ADMIN_SERVER_APIS_DATAPLANE_TOKEN_ENABLED", "false")],
    )
    .unwrap();
    assert!(
        cp.logs_text().contains("dataplane tokens are NOT checked"),
        "{}",
        cp.logs_text()
    );
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(async {
        let mut client = dp::connect(&data, cp.dp).await.unwrap();
        dp::register(&mut client, "", "default", "dp-1", DATAPLANE)
            .await
            .unwrap();
        dp::sign(&mut client, "", "default", "dp-1", p256_csr(&[]))
            .await
            .unwrap()
    });
    assert_eq!(response.backend, "ca-1");
}

#[test]
fn kumactl_generates_self_signed_tls_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let kumactl = Kumactl::unconfigured(dir.path());
    let out = kumactl
        .run(&[
            "generate",
            "tls-certificate",
            "--type",
            "server",
            "--hostname",
            "cp.example.com,127.0.0.1",
            "--cert-file",
            cert.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
        ])
        .unwrap();
    assert!(out.success, "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("Private key saved in {}", key.display())),
        "{}",
        out.stdout
    );
    let (ok, text) = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("DNS:cp.example.com"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    let (ok, text) = openssl(&["rsa", "-in", key.to_str().unwrap(), "-check", "-noout"]).unwrap();
    assert!(ok && text.contains("RSA key ok"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o400
    );

    let out = kumactl
        .run(&[
            "generate",
            "tls-certificate",
            "--type",
            "nope",
            "--hostname",
            "x",
        ])
        .unwrap();
    assert!(!out.success);
    assert!(
        out.all().contains("invalid certificate type \"nope\""),
        "{}",
        out.all()
    );
}
