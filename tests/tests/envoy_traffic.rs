//! Mesh traffic end to end: the real cp-lite, two real kuma-dp with real Envoy, and two small
//! HTTP apps on loopback. `web` calls `backend` through its outbound; the request crosses the
//! mesh in mTLS and is authorized by `backend`'s inbound: denied by default, allowed by a
//! TrafficPermission, denied again once it is deleted; then the same with a
//! MeshTrafficPermission whose action changes from Allow to Deny.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use integration_tests::{CpLite, KumaDp, KumaDpOptions, Kumactl, eventually, free_port, http_get};

/// Generous: Envoy and the CA take a moment on 2 shared cores.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a policy change may take to reach Envoy.
const POLICY_TIMEOUT: Duration = Duration::from_secs(15);

const MESH: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
";

const TRAFFIC_PERMISSION: &str = "
type: TrafficPermission
mesh: default
name: web-to-backend
sources:
- match:
    kuma.io/service: web
destinations:
- match:
    kuma.io/service: backend
";

fn mesh_traffic_permission(action: &str) -> String {
    format!(
        "
type: MeshTrafficPermission
mesh: default
name: backend-from-web
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: MeshService
      name: web
    default:
      action: {action}
"
    )
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `name`; returns its port.
fn app(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    port
}

fn dataplane(name: &str, service: &str, inbound: u16, app: u16, outbound: &str) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  \
         inbound:\n  - port: {inbound}\n    servicePort: {app}\n    tags:\n      \
         kuma.io/service: {service}\n{outbound}"
    )
}

/// Starts the agent of Dataplane `name`, with its own token and work dir under `dir`.
fn agent(cp: &CpLite, kumactl: &Kumactl, dir: &Path, name: &str, yaml: String) -> KumaDp {
    let token = kumactl
        .dataplane_token(&["--name", name, "--mesh", "default", "--valid-for", "1h"])
        .unwrap();
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, token).unwrap();
    KumaDp::start(&KumaDpOptions {
        cp_data_dir: cp.data_dir.clone(),
        cp_dp_address: cp.dp,
        dataplane_yaml: yaml,
        token_file,
        work_dir: dir.join(name),
        args: Vec::new(),
        env: Vec::new(),
    })
    .unwrap()
}

/// One of the agent's Envoy's stats, from its admin `/stats`.
fn envoy_stat(agent: &KumaDp, name: &str) -> Option<u64> {
    let (200, body) = http_get(agent.admin_port, "/stats")? else {
        return None;
    };
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(": ")?
            .trim()
            .parse()
            .ok()
    })
}

/// The agent's count of configurations Envoy rejected.
fn nacks(agent: &KumaDp) -> Option<f64> {
    agent
        .metrics()?
        .lines()
        .find(|line| line.starts_with("kuma_dp_xds_nacks_total"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// A request from web to backend through web's outbound: the body, or `None` when the
/// connection is closed without an answer.
fn call(port: u16) -> Option<String> {
    match http_get(port, "/") {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

#[test]
fn traffic_permissions_decide_who_reaches_a_service() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();

    let backend_inbound = free_port();
    let web_outbound = free_port();
    let backend = agent(
        &cp,
        &kumactl,
        dir.path(),
        "backend-1",
        dataplane("backend-1", "backend", backend_inbound, app("backend"), ""),
    );
    let web = agent(
        &cp,
        &kumactl,
        dir.path(),
        "web-1",
        dataplane(
            "web-1",
            "web",
            free_port(),
            app("web"),
            &format!(
                "  outbound:\n  - port: {web_outbound}\n    tags:\n      kuma.io/service: backend\n"
            ),
        ),
    );
    backend.wait_ready(READY_TIMEOUT).unwrap();
    web.wait_ready(READY_TIMEOUT).unwrap();

    // web's Envoy knows backend's endpoint; backend's inbound denies web by default.
    let endpoint = eventually(READY_TIMEOUT, || {
        (envoy_stat(&web, "cluster.backend.membership_total")? == 1).then_some(())
    });
    assert!(
        endpoint.is_some(),
        "no endpoint for backend:\n{}",
        web.logs_text()
    );
    let denied = format!("inbound_127_0_0_1_{backend_inbound}.rbac.denied");
    assert_eq!(call(web_outbound), None, "allowed without a permission");
    let counted = eventually(POLICY_TIMEOUT, || {
        (envoy_stat(&backend, &denied)? >= 1).then_some(())
    });
    assert!(counted.is_some(), "the denial is not backend's RBAC");

    // A TrafficPermission web → backend allows the request.
    kumactl.apply(TRAFFIC_PERMISSION).unwrap();
    let allowed = eventually(POLICY_TIMEOUT, || call(web_outbound));
    assert_eq!(allowed.as_deref(), Some("backend"));

    // Deleted: denied again.
    let out = kumactl
        .run(&[
            "delete",
            "traffic-permission",
            "web-to-backend",
            "--mesh",
            "default",
        ])
        .unwrap();
    assert!(out.success, "{}", out.all());
    let denied_again = eventually(POLICY_TIMEOUT, || {
        call(web_outbound).is_none().then_some(())
    });
    assert!(denied_again.is_some(), "still allowed after the deletion");

    // A MeshTrafficPermission: Allow, then Deny.
    kumactl.apply(&mesh_traffic_permission("Allow")).unwrap();
    let allowed = eventually(POLICY_TIMEOUT, || call(web_outbound));
    assert_eq!(allowed.as_deref(), Some("backend"));
    kumactl.apply(&mesh_traffic_permission("Deny")).unwrap();
    let denied = eventually(POLICY_TIMEOUT, || {
        call(web_outbound).is_none().then_some(())
    });
    assert!(
        denied.is_some(),
        "still allowed after the MeshTrafficPermission denies"
    );

    // Every configuration was accepted, and the permissions never touched a listener.
    assert_eq!(nacks(&web), Some(0.0));
    assert_eq!(nacks(&backend), Some(0.0));
    assert_eq!(
        envoy_stat(&backend, "listener_manager.listener_modified"),
        Some(0)
    );
}
