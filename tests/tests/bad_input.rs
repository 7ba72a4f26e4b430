//! Bad input through the real binaries: each is refused with a text naming the field and the
//! reason, and nothing stored changes.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use integration_tests::{CpLite, Kumactl, dp, p256_csr};

const MESH: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
  - name: ca-2
    type: builtin
";

const DATAPLANE: &str = "
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
";

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    cp: CpLite,
    kumactl: Kumactl,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = CpLite::start(&data).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    Fixture {
        _dir: dir,
        data,
        cp,
        kumactl,
    }
}

fn refused(kumactl: &Kumactl, yaml: &str, expected: &[&str]) {
    let out = kumactl
        .run_with_stdin(&["apply", "-f", "-"], Some(yaml))
        .unwrap();
    assert!(!out.success, "applied although invalid:\n{yaml}");
    for text in expected {
        assert!(
            out.all().contains(text),
            "missing {text:?} in:\n{}",
            out.all()
        );
    }
}

#[test]
fn invalid_yaml_unknown_kinds_and_invalid_meshes_are_refused_and_change_nothing() {
    let f = fixture();
    let before = f.kumactl.get_json(&["mesh", "default"]).unwrap();

    refused(&f.kumactl, "type: Mesh\nname: [default\n", &["line"]);
    refused(&f.kumactl, "type: Frobnicator\nname: x\n", &["Frobnicator"]);
    refused(
        &f.kumactl,
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-3\n  backends:\n  - name: ca-1\n    type: builtin\n",
        &["mtls.enabledBackend: has to be set to one of the backends in the mesh"],
    );
    refused(
        &f.kumactl,
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n  - name: ca-1\n    type: builtin\n",
        &[
            "mtls.backends[1].name",
            "\"ca-1\" name is already used for another backend",
        ],
    );
    refused(
        &f.kumactl,
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: 2e\n",
        &["mtls.dpcert.rotation.expiration: has to be a valid format"],
    );
    refused(
        &f.kumactl,
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: bulitin\n",
        &["mtls.backends[0].type: could not find installed plugin for this type"],
    );
    refused(
        &f.kumactl,
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: provided\n",
        &[
            "mtls.backends[0].conf.cert: has to be defined",
            "mtls.backends[0].conf.key: has to be defined",
        ],
    );
    refused(
        &f.kumactl,
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-2\n  backends:\n  - name: ca-1\n    type: builtin\n  - name: ca-2\n    type: builtin\n",
        &[
            "mtls.enabledBackend: Changing CA when mTLS is enabled is forbidden. Disable mTLS first and then change the CA",
        ],
    );
    refused(
        &f.kumactl,
        &format!("type: Mesh\nname: {}\n", "a".repeat(64)),
        &["name: cannot be longer than 63 characters"],
    );

    let after = f.kumactl.get_json(&["mesh", "default"]).unwrap();
    assert_eq!(before, after, "a refused apply changed the stored mesh");

    // The documented path to change the CA: disable, then enable the other backend.
    f.kumactl
        .apply("type: Mesh\nname: default\nmtls:\n  backends:\n  - name: ca-1\n    type: builtin\n  - name: ca-2\n    type: builtin\n")
        .unwrap();
    f.kumactl
        .apply("type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-2\n  backends:\n  - name: ca-1\n    type: builtin\n  - name: ca-2\n    type: builtin\n")
        .unwrap();
}

#[test]
fn a_secret_in_use_by_a_backend_cannot_be_deleted() {
    let f = fixture();
    let out = f
        .kumactl
        .run(&[
            "delete",
            "secret",
            "default.ca-builtin-cert-ca-1",
            "-m",
            "default",
        ])
        .unwrap();
    assert!(!out.success);
    assert!(
        out.all().contains(
            "The secret \"default.ca-builtin-cert-ca-1\" that you are trying to remove is currently in use in Mesh \"default\" in mTLS backend \"ca-1\""
        ),
        "{}",
        out.all()
    );
    f.kumactl
        .get_json(&["secret", "default.ca-builtin-cert-ca-1", "-m", "default"])
        .unwrap();
}

fn self_signed(ca: bool, usages: &[rcgen::KeyUsagePurpose]) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    params.is_ca = if ca {
        rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
    } else {
        rcgen::IsCa::ExplicitNoCa
    };
    params.key_usages = usages.to_vec();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn add_provided(f: &Fixture, cert: &str, key: &str) -> integration_tests::KumactlOutput {
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("ca.crt");
    let key_file = dir.path().join("ca.key");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    f.kumactl
        .run(&[
            "manage",
            "ca",
            "provided",
            "certificates",
            "add",
            "--mesh",
            "default",
            "--cert-file",
            cert_file.to_str().unwrap(),
            "--key-file",
            key_file.to_str().unwrap(),
        ])
        .unwrap()
}

#[test]
fn provided_roots_that_break_a_rule_are_refused_with_kumas_format() {
    use rcgen::KeyUsagePurpose::*;
    let f = fixture();

    // An intermediate: signed by another CA.
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyCertSign, CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = rcgen::Issuer::new(root_params, &root_key);
    let int_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut int_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    int_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    int_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    int_params.key_usages = vec![KeyCertSign, CrlSign];
    let intermediate = int_params.signed_by(&int_key, &issuer).unwrap();
    let _ = root;
    let out = add_provided(&f, &intermediate.pem(), &int_key.serialize_pem());
    assert!(!out.success);
    assert!(
        out.all()
            .contains("Error: Could not add signing cert (Resource is not valid)"),
        "{}",
        out.all()
    );
    assert!(
        out.all()
            .contains("* cert: certificate must be self-signed (intermediate CAs are not allowed)"),
        "{}",
        out.all()
    );

    let cases: [(bool, Vec<rcgen::KeyUsagePurpose>, &str); 5] = [
        (
            false,
            vec![KeyCertSign],
            "* cert: basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)",
        ),
        (
            true,
            vec![CrlSign],
            "* cert: key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)",
        ),
        (
            true,
            vec![KeyCertSign, DigitalSignature],
            "* cert: key usage extension 'digitalSignature' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)",
        ),
        (
            true,
            vec![KeyCertSign, KeyAgreement],
            "* cert: key usage extension 'keyAgreement' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)",
        ),
        (
            true,
            vec![KeyCertSign, KeyEncipherment],
            "* cert: key usage extension 'keyEncipherment' must NOT be set (see X509-SVID: Appendix A. X.509 Field Reference)",
        ),
    ];
    for (ca, usages, expected) in cases {
        let (cert, key) = self_signed(ca, &usages);
        let out = add_provided(&f, &cert, &key);
        assert!(!out.success, "accepted: {expected}");
        assert!(
            out.all().contains(expected),
            "missing {expected:?} in {}",
            out.all()
        );
    }
    let list = f
        .kumactl
        .run(&[
            "manage",
            "ca",
            "provided",
            "certificates",
            "list",
            "--mesh",
            "default",
        ])
        .unwrap();
    assert!(list.success, "{}", list.all());

    // A valid root is accepted.
    let (cert, key) = self_signed(true, &[KeyCertSign, CrlSign]);
    let out = add_provided(&f, &cert, &key);
    assert!(out.success, "{}", out.all());
}

fn assert_status(
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    text: &str,
) {
    match result {
        Ok(value) => panic!("accepted, expected {text:?}: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().contains(text),
                "missing {text:?} in {:?}",
                status.message()
            );
        }
    }
}

#[test]
fn bad_tokens_and_csrs_are_refused_over_grpc() {
    let f = fixture();
    f.kumactl
        .apply("type: Mesh\nname: other\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n")
        .unwrap();
    let good = f
        .kumactl
        .dataplane_token(&["--mesh", "default", "--valid-for", "1h"])
        .unwrap();
    let foreign = f
        .kumactl
        .dataplane_token(&["--mesh", "other", "--valid-for", "1h"])
        .unwrap();
    let wrong_name = f
        .kumactl
        .dataplane_token(&["--mesh", "default", "--name", "dp-2", "--valid-for", "1h"])
        .unwrap();
    let wrong_tag = f
        .kumactl
        .dataplane_token(&[
            "--mesh",
            "default",
            "--tag",
            "kuma.io/service=backend",
            "--valid-for",
            "1h",
        ])
        .unwrap();
    let short = f
        .kumactl
        .dataplane_token(&["--mesh", "default", "--valid-for", "1s"])
        .unwrap();
    let revoked = f
        .kumactl
        .dataplane_token(&["--mesh", "default", "--valid-for", "1h"])
        .unwrap();
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[1])
        .unwrap();
    let forged = String::from_utf8(payload)
        .unwrap()
        .replace("\"Mesh\":\"default\"", "\"Mesh\":\"other\"");
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
    let tampered = parts.join(".");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = dp::connect(&f.data, f.cp.dp).await.unwrap();
        dp::register(&mut client, &good, "default", "dp-1", DATAPLANE).await.unwrap();

        let unauthenticated = tonic::Code::Unauthenticated;
        assert_status(
            dp::sign(&mut client, "this-is-not-valid-jwt-token", "default", "dp-1", p256_csr(&[])).await,
            unauthenticated,
            "token is malformed: token contains an invalid number of segments",
        );
        assert_status(
            dp::sign(&mut client, &tampered, "default", "dp-1", p256_csr(&[])).await,
            unauthenticated,
            "token signature is invalid: crypto/rsa: verification error",
        );
        assert_status(
            dp::sign(&mut client, &foreign, "default", "dp-1", p256_csr(&[])).await,
            unauthenticated,
            "token signature is invalid",
        );
        assert_status(
            dp::sign(&mut client, &wrong_name, "default", "dp-1", p256_csr(&[])).await,
            unauthenticated,
            "proxy name from requestor: dp-1 is different than in token: dp-2",
        );
        assert_status(
            dp::sign(&mut client, &wrong_tag, "default", "dp-1", p256_csr(&[])).await,
            unauthenticated,
            "dataplane contains tag \"kuma.io/service\" with value \"web\" which is not allowed with this token. Allowed values in token are [\"backend\"]",
        );

        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_status(
            dp::sign(&mut client, &short, "default", "dp-1", p256_csr(&[])).await,
            unauthenticated,
            "token is expired",
        );

        // Revocation: the token's jti goes into the mesh's revocation list secret.
        let claims = revoked.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap(),
        )
        .unwrap();
        dp::sign(&mut client, &revoked, "default", "dp-1", p256_csr(&[])).await.unwrap();
        let list = base64::engine::general_purpose::STANDARD.encode(claims["jti"].as_str().unwrap());
        f.kumactl
            .apply(&format!(
                "type: Secret\nmesh: default\nname: dataplane-token-revocations-default\ndata: {list}\n"
            ))
            .unwrap();
        // Bounded: the change reaches the DP server's snapshot within a few polls.
        let mut revoked_result = None;
        for _ in 0..100 {
            let result = dp::sign(&mut client, &revoked, "default", "dp-1", p256_csr(&[])).await;
            if result.is_err() {
                revoked_result = Some(result);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let revoked_result = revoked_result.expect("the revoked token is refused");
        assert_status(revoked_result, unauthenticated, "token is revoked");

        // CSRs: malformed, asking for a foreign identity, oversized.
        assert_status(
            dp::sign(&mut client, &good, "default", "dp-1", b"not a csr".to_vec()).await,
            tonic::Code::InvalidArgument,
            "csr",
        );
        assert_status(
            dp::sign(&mut client, &good, "default", "dp-1", p256_csr(&["spiffe://default/admin"])).await,
            tonic::Code::InvalidArgument,
            "spiffe://default/admin",
        );
        let huge = vec![0u8; 200 * 1024];
        let result = dp::sign(&mut client, &good, "default", "dp-1", huge).await;
        assert!(result.is_err(), "an oversized request was accepted");

        // A CSR asking for exactly its own identity is fine.
        dp::sign(&mut client, &good, "default", "dp-1", p256_csr(&["spiffe://default/web"]))
            .await
            .unwrap();
    });
}

#[test]
fn oversized_and_unparseable_http_bodies_are_refused() {
    let f = fixture();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/meshes/huge", f.cp.api_url());
        // The server answers 413 from the Content-Length alone, before reading the body (and
        // may close the connection while a client is still sending), so this request announces
        // 2 MiB and sends none of it.
        let address = f.cp.api;
        let status_line = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(
                stream,
                "PUT /meshes/huge HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                2 << 20
            )
            .unwrap();
            let mut response = [0u8; 64];
            let n = stream.read(&mut response).unwrap();
            String::from_utf8_lossy(&response[..n]).into_owned()
        })
        .await
        .unwrap();
        assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
        let response = client
            .put(&url)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let response = client
            .post(format!("{}/tokens/dataplane", f.cp.api_url()))
            .header("content-type", "application/json")
            .body("not-valid-json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let response = client
            .post(format!("{}/tokens/dataplane", f.cp.api_url()))
            .json(&serde_json::json!({"mesh": ""}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["causes"][0]["field"], "mesh", "{problem}");
        assert_eq!(
            problem["causes"][0]["message"], "cannot be empty",
            "{problem}"
        );
    });
    let meshes = f.kumactl.get_json(&["meshes"]).unwrap();
    assert_eq!(meshes["total"], 1, "{meshes}");
}
