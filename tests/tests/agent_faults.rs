//! kuma-dp faced with bad input and faults: each gets a clear message and a sensible exit status
//! or retry.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{
    CpLite, KumaDp, KumaDpOptions, Kumactl, binary, envoy_binary, eventually, free_port,
};

const DATAPLANE: &str = "type: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags:\n      kuma.io/service: web\n";

/// Runs `kuma-dp run` with `args` to completion (it must exit by itself within 20 s).
fn run_to_exit(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(binary("kuma-dp"))
        .arg("run")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = eventually(Duration::from_secs(20), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status.unwrap_or_else(|| panic!("kuma-dp did not exit: {text}"));
    (status.code().unwrap_or(-1), text)
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_tokens_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let dataplane = write(dir.path(), "dp.yaml", DATAPLANE);
    let envoy = envoy_binary();
    let envoy = envoy.to_str().unwrap();
    let base = [
        "--cp-address",
        "https://127.0.0.1:1",
        "--dataplane-file",
        &dataplane,
        "--binary-path",
        envoy,
    ];
    let cases = [
        (write(dir.path(), "empty", ""), "is empty"),
        (
            write(dir.path(), "segments", "aGVsbG8.d29ybGQ"),
            "not valid JWT token. Can't parse it.",
        ),
        (
            write(dir.path(), "breaks", "eyJhbGciOiJSUzI1NiJ9\n.e30.c2ln"),
            "Token shouldn't contain line breaks within the token, only at the start or end",
        ),
        (
            dir.path().join("missing").to_str().unwrap().to_string(),
            "could not read file",
        ),
    ];
    for (token_file, expected) in cases {
        let mut args = base.to_vec();
        args.extend(["--dataplane-token-file", &token_file]);
        let (code, text) = run_to_exit(&args);
        assert_ne!(code, 0, "{text}");
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        assert!(text.contains("dataplane token is invalid"), "{text}");
    }
}

#[test]
fn a_missing_or_wrong_envoy_and_an_unusable_work_dir_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let dataplane = write(dir.path(), "dp.yaml", DATAPLANE);
    let token = write(dir.path(), "token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
    let missing = dir.path().join("no-envoy-here");
    let (code, text) = run_to_exit(&[
        "--cp-address",
        "https://127.0.0.1:1",
        "--dataplane-file",
        &dataplane,
        "--dataplane-token-file",
        &token,
        "--binary-path",
        missing.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("could not find envoy executable"), "{text}");

    let fake = write(
        dir.path(),
        "fake-envoy",
        "#!/bin/sh\necho 'version: not-an-envoy'\n",
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, text) = run_to_exit(&[
        "--cp-address",
        "https://127.0.0.1:1",
        "--dataplane-file",
        &dataplane,
        "--dataplane-token-file",
        &token,
        "--binary-path",
        &fake,
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("wrong Envoy build format"), "{text}");

    let envoy = envoy_binary();
    let (code, text) = run_to_exit(&[
        "--cp-address",
        "https://127.0.0.1:1",
        "--dataplane-file",
        &dataplane,
        "--dataplane-token-file",
        &token,
        "--binary-path",
        envoy.to_str().unwrap(),
        "--work-dir",
        "/dev/null/work",
    ]);
    assert_ne!(code, 0);
    assert!(
        text.contains("work dir /dev/null/work is not usable"),
        "{text}"
    );
}

#[test]
fn an_unreachable_or_untrusted_control_plane_is_named_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply("type: Mesh\nname: default\n").unwrap();
    let out = kumactl
        .run(&[
            "generate",
            "dataplane-token",
            "--mesh",
            "default",
            "--valid-for",
            "1h",
        ])
        .unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, out.stdout).unwrap();
    let options = |address: std::net::SocketAddr, ca: &Path| KumaDpOptions {
        cp_data_dir: ca.to_path_buf(),
        cp_dp_address: address,
        dataplane_yaml: DATAPLANE.to_string(),
        token_file: token_file.clone(),
        work_dir: dir.path().join(format!("work-{}", address.port())),
        args: Vec::new(),
        env: Vec::new(),
    };

    // Nothing listens there: one clear line naming the address, and the agent keeps retrying.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let agent = KumaDp::start(&options(closed, &cp.data_dir)).unwrap();
    let named = eventually(Duration::from_secs(15), || {
        agent
            .logs_text()
            .contains(&closed.to_string())
            .then_some(())
    });
    assert!(named.is_some(), "{}", agent.logs_text());
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.pid().is_some());
    assert_eq!(
        agent.ready_status(),
        None,
        "nothing serves readiness before the first config"
    );

    // A CA that did not sign the DP server's certificate: the message points at --ca-cert-file.
    let other = tempfile::tempdir().unwrap();
    let other_cp = CpLite::start(&other.path().join("data")).unwrap();
    let agent = KumaDp::start(&options(cp.dp, &other_cp.data_dir)).unwrap();
    let told = eventually(Duration::from_secs(15), || {
        agent.logs_text().contains("--ca-cert-file").then_some(())
    });
    assert!(told.is_some(), "{}", agent.logs_text());
}
