//! Mesh traffic end to end: real apps, each behind the real kuma-dp and Envoy 1.40, talking
//! through the mesh on loopback. Permissions, endpoints, the mTLS mode and mTLS itself change
//! at runtime; none of it restarts Envoy.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::{CpLite, KumaDp, KumaDpOptions, Kumactl, eventually, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a change may take to reach Envoy before a test gives up.
const PROPAGATION: Duration = Duration::from_secs(15);
/// How long one exchange waits for an answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);

/// A line-echo application: every line it reads is answered with `<name>: <line>`.
struct App {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
}

impl App {
    fn start(name: &str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (app_name, app_stop) = (name.to_string(), stop.clone());
        std::thread::spawn(move || {
            while !app_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = app_name.clone();
                        std::thread::spawn(move || echo(stream, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        App {
            name: name.to_string(),
            port,
            stop,
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        if writeln!(writer, "{name}: {line}").is_err() {
            return;
        }
    }
}

/// One client connection kept open across changes.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16) -> Option<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(EXCHANGE_TIMEOUT)).ok()?;
        Some(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one line and returns the answer; `None` when the connection was refused, reset or
    /// closed, or nothing came back in time.
    fn exchange(&mut self, line: &str) -> Option<String> {
        writeln!(self.reader.get_mut(), "{line}").ok()?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(n) if n > 0 => Some(answer.trim_end().to_string()),
            _ => None,
        }
    }
}

/// One exchange on a fresh connection to 127.0.0.1:`port`.
fn exchange(port: u16) -> Option<String> {
    Connection::open(port)?.exchange("ping")
}

/// Waits until fresh connections to `port` are answered (`Some(answer)`) or refused (`None`).
#[track_caller]
fn eventually_answered(port: u16) -> String {
    match eventually(PROPAGATION, || exchange(port)) {
        Some(answer) => answer,
        None => panic!("127.0.0.1:{port} never answered"),
    }
}

#[track_caller]
fn eventually_refused(port: u16) {
    let refused = eventually(PROPAGATION, || exchange(port).is_none().then_some(()));
    assert!(refused.is_some(), "127.0.0.1:{port} still answers");
}

/// Checks that fresh connections stay refused for a while (a denial is not a propagation lag).
#[track_caller]
fn stays_refused(port: u16) {
    for _ in 0..3 {
        assert_eq!(exchange(port), None, "127.0.0.1:{port} answered");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mesh_yaml(mtls: Option<&str>) -> String {
    let mut yaml = "type: Mesh\nname: default\n".to_string();
    if let Some(mode) = mtls {
        yaml.push_str(&format!(
            "mtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    mode: {mode}\n    dpCert:\n      rotation:\n        expiration: 1h\n"
        ));
    }
    yaml
}

fn traffic_permission(name: &str, source: &str, destination: &str) -> String {
    format!(
        "type: TrafficPermission\nmesh: default\nname: {name}\nsources:\n- match:\n    kuma.io/service: {source}\ndestinations:\n- match:\n    kuma.io/service: {destination}\n"
    )
}

/// A control plane, a mesh, and the agents started on it.
struct Mesh {
    dir: tempfile::TempDir,
    cp: CpLite,
    kumactl: Kumactl,
}

/// One Dataplane: its app, its agent, and its ports.
struct Member {
    app: App,
    agent: KumaDp,
    inbound_port: u16,
    /// The local port of its outbound, if it has one.
    outbound_port: Option<u16>,
}

impl Member {
    fn envoy_pid(&self) -> u32 {
        self.agent.envoy_pid().expect("Envoy runs")
    }
}

impl Mesh {
    fn new(mtls: Option<&str>) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let cp = CpLite::start(&dir.path().join("data")).unwrap();
        let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
        kumactl.apply(&mesh_yaml(mtls)).unwrap();
        Mesh { dir, cp, kumactl }
    }

    fn apply(&self, yaml: &str) {
        self.kumactl.apply(yaml).unwrap();
    }

    fn delete(&self, kind: &str, name: &str) {
        let out = self
            .kumactl
            .run(&["delete", kind, name, "--mesh", "default"])
            .unwrap();
        assert!(out.success, "{}", out.all());
    }

    fn token_file(&self, name: &str) -> PathBuf {
        let token = self
            .kumactl
            .dataplane_token(&["--name", name, "--mesh", "default", "--valid-for", "1h"])
            .unwrap();
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, token).unwrap();
        path
    }

    /// Starts an app of `service` behind an agent named `name`, with an outbound to
    /// `upstream` when given, and waits until it is ready.
    fn member(&self, name: &str, service: &str, upstream: Option<&str>) -> Member {
        let app = App::start(name);
        let inbound_port = free_port();
        let outbound_port = upstream.map(|_| free_port());
        let mut yaml = format!(
            "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {inbound_port}\n    servicePort: {}\n    tags:\n      kuma.io/service: {service}\n",
            app.port
        );
        if let (Some(upstream), Some(port)) = (upstream, outbound_port) {
            yaml.push_str(&format!(
                "  outbound:\n  - port: {port}\n    tags:\n      kuma.io/service: {upstream}\n"
            ));
        }
        let options = KumaDpOptions {
            cp_data_dir: self.cp.data_dir.clone(),
            cp_dp_address: self.cp.dp,
            dataplane_yaml: yaml,
            token_file: self.token_file(name),
            work_dir: self.dir.path().join(format!("{name}-work")),
            args: Vec::new(),
            env: Vec::new(),
        };
        let agent = KumaDp::start(&options).unwrap();
        agent.wait_ready(READY_TIMEOUT).unwrap();
        Member {
            app,
            agent,
            inbound_port,
            outbound_port,
        }
    }

    /// A `web` (outbound to `backend`) and one `backend`.
    fn web_and_backend(&self) -> (Member, Member) {
        let backend = self.member("backend-1", "backend", None);
        let web = self.member("web-1", "web", Some("backend"));
        (web, backend)
    }
}

#[test]
fn traffic_is_denied_until_a_traffic_permission_allows_it() {
    let mesh = Mesh::new(Some("STRICT"));
    let (web, backend) = mesh.web_and_backend();
    let outbound = web.outbound_port.unwrap();
    let envoys = (web.envoy_pid(), backend.envoy_pid());

    // mTLS on and no permission: denied.
    stays_refused(outbound);

    mesh.apply(&traffic_permission("web-to-backend", "web", "backend"));
    let answer = eventually_answered(outbound);
    assert_eq!(answer, format!("{}: ping", backend.app.name));

    // A connection that stays allowed survives a change of the rules (the TrafficPermission is
    // replaced by a MeshTrafficPermission that still allows web) and the listener drain time.
    let mut held = Connection::open(outbound).unwrap();
    assert_eq!(held.exchange("one").unwrap(), "backend-1: one");
    mesh.apply(
        "type: MeshTrafficPermission\nmesh: default\nname: allow-web\nspec:\n  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n  - targetRef:\n      kind: MeshService\n      name: web\n    default:\n      action: Allow\n",
    );
    mesh.delete("traffic-permission", "web-to-backend");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(held.exchange("two").unwrap(), "backend-1: two");
    assert_eq!(eventually_answered(outbound), "backend-1: ping");

    // Nothing allows any more: new connections are denied.
    mesh.delete("meshtrafficpermission", "allow-web");
    eventually_refused(outbound);
    stays_refused(outbound);

    assert_eq!((web.envoy_pid(), backend.envoy_pid()), envoys);
}

#[test]
fn mesh_traffic_permission_rules_follow_kuma_precedence() {
    let mesh = Mesh::new(Some("STRICT"));
    let (web, _backend) = mesh.web_and_backend();
    let outbound = web.outbound_port.unwrap();

    // Everyone may reach everything...
    mesh.apply(
        "type: MeshTrafficPermission\nmesh: default\nname: allow-all\nspec:\n  targetRef:\n    kind: Mesh\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Allow\n",
    );
    assert_eq!(eventually_answered(outbound), "backend-1: ping");

    // ...but a policy on backend itself is more specific, and it denies web.
    mesh.apply(
        "type: MeshTrafficPermission\nmesh: default\nname: deny-web\nspec:\n  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n  - targetRef:\n      kind: MeshService\n      name: web\n    default:\n      action: Deny\n",
    );
    eventually_refused(outbound);
    stays_refused(outbound);

    // AllowWithShadowDeny lets the traffic through.
    mesh.apply(
        "type: MeshTrafficPermission\nmesh: default\nname: deny-web\nspec:\n  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n  - targetRef:\n      kind: MeshService\n      name: web\n    default:\n      action: AllowWithShadowDeny\n",
    );
    assert_eq!(eventually_answered(outbound), "backend-1: ping");

    // A MeshTrafficPermission replaces the TrafficPermissions of the inbound it selects: with
    // only a Deny there, the TrafficPermission that allows web does not help.
    mesh.apply(&traffic_permission("web-to-backend", "web", "backend"));
    mesh.delete("meshtrafficpermission", "allow-all");
    mesh.apply(
        "type: MeshTrafficPermission\nmesh: default\nname: deny-web\nspec:\n  targetRef:\n    kind: MeshService\n    name: backend\n  from:\n  - targetRef:\n      kind: Mesh\n    default:\n      action: Deny\n",
    );
    eventually_refused(outbound);
    mesh.delete("meshtrafficpermission", "deny-web");
    assert_eq!(eventually_answered(outbound), "backend-1: ping");
}

#[test]
fn permissive_accepts_plaintext_where_strict_refuses_it() {
    let mesh = Mesh::new(Some("STRICT"));
    let (web, backend) = mesh.web_and_backend();
    let outbound = web.outbound_port.unwrap();
    let envoys = (web.envoy_pid(), backend.envoy_pid());
    mesh.apply(&traffic_permission("web-to-backend", "web", "backend"));
    assert_eq!(eventually_answered(outbound), "backend-1: ping");

    // STRICT: a plaintext client straight to backend's inbound is refused.
    stays_refused(backend.inbound_port);

    // The mesh connection survives the switch to PERMISSIVE.
    let mut held = Connection::open(outbound).unwrap();
    assert_eq!(held.exchange("one").unwrap(), "backend-1: one");
    mesh.apply(&mesh_yaml(Some("PERMISSIVE")));
    assert_eq!(
        eventually_answered(backend.inbound_port),
        "backend-1: ping",
        "PERMISSIVE accepts plaintext"
    );
    assert_eq!(eventually_answered(outbound), "backend-1: ping");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(held.exchange("two").unwrap(), "backend-1: two");

    // Permissions still apply to mesh traffic in PERMISSIVE mode.
    mesh.delete("traffic-permission", "web-to-backend");
    eventually_refused(outbound);

    // And back to STRICT: plaintext refused again.
    mesh.apply(&mesh_yaml(Some("STRICT")));
    eventually_refused(backend.inbound_port);
    assert_eq!((web.envoy_pid(), backend.envoy_pid()), envoys);
}

#[test]
fn mtls_is_turned_on_and_off_at_runtime_without_restarting_envoy() {
    let mesh = Mesh::new(None);
    let (web, backend) = mesh.web_and_backend();
    let outbound = web.outbound_port.unwrap();
    let envoys = (web.envoy_pid(), backend.envoy_pid());

    // mTLS off: no authorization, plaintext everywhere.
    assert_eq!(eventually_answered(outbound), "backend-1: ping");
    assert_eq!(eventually_answered(backend.inbound_port), "backend-1: ping");

    // mTLS on: plaintext refused, mesh traffic denied until permitted.
    mesh.apply(&mesh_yaml(Some("STRICT")));
    eventually_refused(backend.inbound_port);
    eventually_refused(outbound);
    mesh.apply(&traffic_permission("web-to-backend", "web", "backend"));
    assert_eq!(eventually_answered(outbound), "backend-1: ping");
    stays_refused(backend.inbound_port);

    // mTLS off again: plaintext works, the permission no longer matters.
    mesh.apply(&mesh_yaml(None));
    assert_eq!(eventually_answered(backend.inbound_port), "backend-1: ping");
    mesh.delete("traffic-permission", "web-to-backend");
    assert_eq!(eventually_answered(outbound), "backend-1: ping");

    assert_eq!((web.envoy_pid(), backend.envoy_pid()), envoys);
}

#[test]
fn two_agents_of_one_service_both_receive_traffic() {
    let mesh = Mesh::new(Some("STRICT"));
    mesh.apply(&traffic_permission("web-to-backend", "web", "backend"));
    let (web, _first) = mesh.web_and_backend();
    let outbound = web.outbound_port.unwrap();
    assert_eq!(eventually_answered(outbound), "backend-1: ping");

    let _second = mesh.member("backend-2", "backend", None);
    let both = eventually(PROPAGATION, || {
        let seen: std::collections::BTreeSet<String> = (0..20)
            .filter_map(|_| exchange(outbound))
            .map(|answer| answer.split(':').next().unwrap_or_default().to_string())
            .collect();
        (seen.len() == 2).then_some(seen)
    });
    assert!(
        both.is_some(),
        "connections through web's outbound never reached both backends"
    );

    // A deleted Dataplane stops being an endpoint.
    mesh.delete("dataplane", "backend-2");
    let only_first = eventually(PROPAGATION, || {
        (0..10)
            .map(|_| exchange(outbound))
            .all(|answer| answer.as_deref() == Some("backend-1: ping"))
            .then_some(())
    });
    assert!(only_first.is_some(), "backend-2 still receives traffic");
}
