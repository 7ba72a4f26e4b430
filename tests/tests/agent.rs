//! kuma-dp end to end: the real cp-lite, the real kuma-dp and real Envoy 1.40 on loopback.
//! Certificates are checked with openssl, rotation and restarts through Envoy's admin `/certs`.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use integration_tests::{CpLite, KumaDp, KumaDpOptions, Kumactl, eventually, free_port, openssl};

/// Generous: the first start compiles nothing, but Envoy and the CA take a moment on 2 cores.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn mesh(lifetime: &str) -> String {
    format!(
        "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: {lifetime}\n"
    )
}

fn dataplane(name: &str, inbound_port: u16, app_port: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound_port}\n    servicePort: {app_port}\n    tags:\n      kuma.io/service: web\n"
    )
}

/// A control plane with a mesh, a token file and the options of one agent.
struct Mesh {
    dir: tempfile::TempDir,
    cp: CpLite,
    kumactl: Kumactl,
    token_file: PathBuf,
    inbound_port: u16,
}

impl Mesh {
    fn new(lifetime: &str, cp_env: &[(&str, &str)]) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let cp = CpLite::start_with_env(&dir.path().join("data"), cp_env).unwrap();
        let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
        kumactl.apply(&mesh(lifetime)).unwrap();
        let token_file = dir.path().join("token");
        let token = Self::token(&kumactl);
        std::fs::write(&token_file, token).unwrap();
        Mesh {
            dir,
            cp,
            kumactl,
            token_file,
            inbound_port: free_port(),
        }
    }

    fn token(kumactl: &Kumactl) -> String {
        let out = kumactl
            .run(&[
                "generate",
                "dataplane-token",
                "--name",
                "web-1",
                "--mesh",
                "default",
                "--valid-for",
                "1h",
            ])
            .unwrap();
        assert!(out.success, "{}", out.all());
        out.stdout
    }

    fn options(&self) -> KumaDpOptions {
        KumaDpOptions {
            cp_data_dir: self.cp.data_dir.clone(),
            cp_dp_address: self.cp.dp,
            dataplane_yaml: dataplane("web-1", self.inbound_port, free_port()),
            token_file: self.token_file.clone(),
            work_dir: self.dir.path().join("work"),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn root_pem(&self) -> PathBuf {
        let secret = self
            .kumactl
            .get_json(&["secret", "default.ca-builtin-cert-ca-1", "-m", "default"])
            .unwrap();
        let pem = base64::engine::general_purpose::STANDARD
            .decode(secret["data"].as_str().unwrap())
            .unwrap();
        let path = self.dir.path().join("root.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }
}

/// The certificate Envoy presents on 127.0.0.1:`port`, in PEM, read by `openssl s_client`.
fn presented_certificate(port: u16) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")?
        + start
        + "-----END CERTIFICATE-----".len();
    Some(format!("{}\n", &text[start..end]))
}

fn one_serial(agent: &KumaDp) -> Option<String> {
    let serials = agent.envoy_cert_serials();
    (serials.len() == 1).then(|| serials[0].clone())
}

fn metric(agent: &KumaDp, name: &str) -> Option<f64> {
    agent
        .metrics()?
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[test]
fn envoy_presents_a_spiffe_certificate_that_openssl_verifies() {
    let mesh = Mesh::new("1h", &[]);
    let agent = KumaDp::start(&mesh.options()).unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();

    let pem = eventually(Duration::from_secs(10), || {
        presented_certificate(mesh.inbound_port)
    })
    .expect("the inbound listener presents a certificate");
    let leaf = mesh.dir.path().join("leaf.pem");
    std::fs::write(&leaf, &pem).unwrap();
    let (ok, text) = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-text"]).unwrap();
    assert!(ok, "{text}");
    assert!(text.contains("URI:spiffe://default/web"), "{text}");
    let root = mesh.root_pem();
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ])
    .unwrap();
    assert!(ok && text.contains(": OK"), "{text}");

    // A plaintext client is refused by the STRICT listener.
    let plaintext =
        std::net::TcpStream::connect(("127.0.0.1", mesh.inbound_port)).and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut buf = [0u8; 64];
            s.read(&mut buf)
        });
    assert!(
        matches!(plaintext, Ok(0) | Err(_)),
        "plaintext got an answer: {plaintext:?}"
    );

    // kumactl shows what the agent reported.
    let reported = eventually(Duration::from_secs(10), || {
        let out = mesh.kumactl.run(&["inspect", "dataplanes"]).ok()?;
        let row = out
            .stdout
            .lines()
            .find(|l| l.contains("web-1"))?
            .to_string();
        row.contains("ca-1").then_some(row)
    });
    assert!(
        reported.is_some(),
        "inspect dataplanes shows no certificate"
    );
}

#[test]
fn certificates_rotate_at_four_fifths_in_the_same_envoy() {
    let mesh = Mesh::new("10s", &[]);
    let agent = KumaDp::start(&mesh.options()).unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();
    let first =
        eventually(Duration::from_secs(10), || one_serial(&agent)).expect("a first certificate");
    let seen_first = Instant::now();
    let envoy = agent.envoy_pid().expect("Envoy runs");

    let second = eventually(Duration::from_secs(12), || {
        one_serial(&agent).filter(|serial| *serial != first)
    })
    .expect("the certificate rotates");
    let after = seen_first.elapsed();
    // Issued at t0, rotated at t0 + 8..8.8 s; first seen a little after t0.
    assert!(
        after >= Duration::from_millis(6500) && after <= Duration::from_millis(9000),
        "rotated after {after:?}"
    );
    assert_eq!(
        agent.envoy_pid(),
        Some(envoy),
        "the same Envoy process serves the new certificate"
    );
    assert_ne!(second, first);
    assert!(metric(&agent, "kuma_dp_certificate_rotations_total{result=\"ok\"}").unwrap() >= 2.0);
}

#[test]
fn a_killed_envoy_is_restarted_with_the_same_certificate() {
    let mesh = Mesh::new("1h", &[]);
    let agent = KumaDp::start(&mesh.options()).unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();
    let serial = eventually(Duration::from_secs(10), || one_serial(&agent)).unwrap();
    let envoy = agent.envoy_pid().unwrap();
    let issued = metric(&agent, "kuma_dp_certificate_rotations_total{result=\"ok\"}").unwrap();

    std::process::Command::new("kill")
        .args(["-9", &envoy.to_string()])
        .status()
        .unwrap();
    let restarted = eventually(READY_TIMEOUT, || {
        agent.envoy_pid().filter(|pid| *pid != envoy)
    })
    .expect("Envoy is restarted");
    agent.wait_ready(READY_TIMEOUT).unwrap();
    let served = eventually(Duration::from_secs(10), || one_serial(&agent)).unwrap();
    assert_eq!(
        served, serial,
        "the restarted Envoy serves the certificate in memory"
    );
    assert_ne!(restarted, envoy);
    assert_eq!(
        metric(&agent, "kuma_dp_certificate_rotations_total{result=\"ok\"}").unwrap(),
        issued,
        "no new signing"
    );
    assert_eq!(metric(&agent, "kuma_dp_envoy_restarts_total").unwrap(), 1.0);
}

#[test]
fn the_agent_rides_out_a_control_plane_outage_across_a_rotation_point() {
    let dp_port = free_port().to_string();
    let mut mesh = Mesh::new("20s", &[("KUMA_DP_SERVER_PORT", &dp_port)]);
    let agent = KumaDp::start(&mesh.options()).unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();
    let first = eventually(Duration::from_secs(10), || one_serial(&agent)).unwrap();
    let issued_at = Instant::now();

    mesh.cp.stop().unwrap();
    // Past the rotation point (16 s) the agent keeps serving what it has, and keeps retrying.
    std::thread::sleep(Duration::from_secs(17).saturating_sub(issued_at.elapsed()));
    assert_eq!(agent.ready_status(), Some(200), "{}", agent.logs_text());
    assert_eq!(one_serial(&agent), Some(first.clone()));

    mesh.cp.restart().unwrap();
    let renewed = eventually(
        Duration::from_secs(20).saturating_sub(issued_at.elapsed()),
        || one_serial(&agent).filter(|serial| *serial != first),
    );
    assert!(
        renewed.is_some(),
        "no new certificate before expiry; logs:\n{}",
        agent.logs_text()
    );
    assert!(
        metric(
            &agent,
            "kuma_dp_certificate_rotations_total{result=\"error\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}

#[test]
fn a_replaced_token_is_used_and_a_revoked_one_is_reported() {
    let mesh = Mesh::new("4s", &[]);
    let agent = KumaDp::start(&mesh.options()).unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();

    // Revoke the token the agent uses.
    let token = std::fs::read_to_string(&mesh.token_file).unwrap();
    let claims = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    let revoked = base64::engine::general_purpose::STANDARD.encode(claims["jti"].as_str().unwrap());
    mesh.kumactl
        .apply(&format!(
            "type: Secret\nmesh: default\nname: dataplane-token-revocations-default\ndata: {revoked}\n"
        ))
        .unwrap();
    let reported = eventually(Duration::from_secs(15), || {
        agent.logs_text().contains("token is revoked").then_some(())
    });
    assert!(
        reported.is_some(),
        "no clear error for the revoked token; logs:\n{}",
        agent.logs_text()
    );

    // A new token in the same file is picked up without a restart: rotations go on.
    let pid = agent.pid();
    std::fs::write(&mesh.token_file, Mesh::token(&mesh.kumactl)).unwrap();
    let ok_before = metric(&agent, "kuma_dp_certificate_rotations_total{result=\"ok\"}").unwrap();
    let resumed = eventually(Duration::from_secs(20), || {
        (metric(&agent, "kuma_dp_certificate_rotations_total{result=\"ok\"}")? > ok_before)
            .then_some(())
    });
    assert!(
        resumed.is_some(),
        "no certificate with the new token; logs:\n{}",
        agent.logs_text()
    );
    assert_eq!(agent.pid(), pid);
    assert!(
        !agent.logs_text().contains(token.trim()),
        "the token reached the logs"
    );
}

/// Every PEM private key in the files under `dir` (not following links).
/// PEM files holding a private key under `dir`, written since `since` when given. Files over
/// 1 MiB are binaries or stores, not PEM files, and are skipped.
fn private_keys_under(dir: &Path, since: Option<SystemTime>, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let (Ok(kind), Ok(meta)) = (entry.file_type(), entry.metadata()) else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            private_keys_under(&path, since, found);
            continue;
        }
        let recent = since.is_none_or(|since| meta.modified().is_ok_and(|m| m >= since));
        if kind.is_file()
            && recent
            && meta.len() <= 1 << 20
            && let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(11).any(|w| w == b"PRIVATE KEY")
        {
            found.push(path);
        }
    }
}

#[test]
fn no_dataplane_key_reaches_the_disk() {
    let started = SystemTime::now();
    let mesh = Mesh::new("1h", &[]);
    let options = mesh.options();
    let mut agent = KumaDp::start(&options).unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();
    let pem = eventually(Duration::from_secs(10), || {
        presented_certificate(mesh.inbound_port)
    })
    .unwrap();
    let leaf = mesh.dir.path().join("leaf.pem");
    std::fs::write(&leaf, &pem).unwrap();
    let (_, leaf_public) =
        openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-pubkey"]).unwrap();

    agent.signal("TERM");
    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        agent.logs_text()
    );

    // The work dir holds no key at all; wherever keys exist (the control plane keeps its CA
    // and server keys in its data dir), none is the dataplane's.
    let mut in_work_dir = Vec::new();
    private_keys_under(&options.work_dir, None, &mut in_work_dir);
    assert!(in_work_dir.is_empty(), "{in_work_dir:?}");
    let mut keys = Vec::new();
    private_keys_under(mesh.dir.path(), None, &mut keys);
    // Anything written anywhere in the temp dir while the agent ran.
    private_keys_under(&std::env::temp_dir(), Some(started), &mut keys);
    for key in keys {
        let (ok, public) = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]).unwrap();
        if ok {
            assert_ne!(
                public.trim(),
                leaf_public.trim(),
                "the dataplane key is on disk at {}",
                key.display()
            );
        }
    }
    let logs = agent.logs_text();
    assert!(!logs.contains("PRIVATE KEY"), "a key reached the logs");
}
