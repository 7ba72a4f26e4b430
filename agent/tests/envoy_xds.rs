//! Real Envoy against the agent's xDS server, fed snapshots built from hand-written views: the
//! listeners, the ECDS permissions, the EDS cluster and its endpoints are accepted (no NACK),
//! traffic through the outbound reaches the inbound under mesh mTLS only when the permissions
//! allow it, a permission change reaches Envoy through ECDS alone, a STRICT → PERMISSIVE
//! change keeps established Kuma connections, and mTLS goes off and on again without a restart.
//!
//! One Envoy plays both sides: its outbound to `web` has its own inbound as endpoint, behind
//! which an echo server plays the application. Envoy is found through `ENVOY_BINARY` or
//! `<workspace>/.tools/envoy/envoy/_bin/envoy` (`.ci/install-deps`); a missing binary fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed setup step is a failed test"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cp_lite_api::v1::{
    ClientSelector, Endpoint, InboundPermissions, MtlsMode, MtlsView, OutboundView,
    PermissionAction, PermissionRule, View,
};
use envoy_bootstrap::{AdsProtocol, BootstrapParams, bootstrap_with_ads};
use kuma_dp::dataplane::DataplaneInfo;
use kuma_dp::envoy::{EnvoyArgs, EnvoyProcess, args};
use kuma_dp::metrics::Metrics;
use kuma_dp::state::{Identity, IdentityState, SecretString, XdsSnapshot};
use kuma_dp::xds;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Bound on every wait for Envoy to reach a state.
const WAIT: Duration = Duration::from_secs(20);
const MESH: &str = "default";

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A mesh CA and the identity `spiffe://default/web` it signed.
fn identity() -> IdentityState {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mesh CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "web");
    params.subject_alt_names = ["spiffe://default/web", "kuma://kuma.io/service/web"]
        .into_iter()
        .map(|uri| SanType::URI(uri.try_into().expect("URI SAN")))
        .collect();
    let leaf = params.signed_by(&key, &issuer).expect("leaf certificate");
    IdentityState::Ready(Arc::new(Identity {
        mesh: MESH.to_string(),
        chain_pem: leaf.pem(),
        key_pem: SecretString::new(key.serialize_pem()),
        trust_bundle_pem: ca.pem(),
        not_before: SystemTime::now(),
        not_after: SystemTime::now() + Duration::from_secs(3600),
        received_at: Instant::now(),
        serial_hex: "01".to_string(),
        backend: "ca-1".to_string(),
        generation: 1,
    }))
}

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rule(policy: &str, action: PermissionAction, service: &str) -> PermissionRule {
    PermissionRule {
        policy: policy.to_string(),
        action: action.into(),
        clients: vec![ClientSelector {
            tags: tags(&[("kuma.io/service", service)]),
        }],
    }
}

/// An echo server on 127.0.0.1, standing for the application behind the inbound.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let port = listener.local_addr().expect("echo address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Sends one line on `stream` and reads the echo; `None` when the connection is closed.
async fn round_trip(stream: &mut TcpStream) -> Option<String> {
    stream.write_all(b"ping\n").await.ok()?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// One Envoy served by the agent's xDS server.
struct Setup {
    _dir: tempfile::TempDir,
    _envoy: EnvoyProcess,
    shutdown: CancellationToken,
    snapshots: watch::Sender<Arc<XdsSnapshot>>,
    version: u64,
    dataplane: DataplaneInfo,
    identity: IdentityState,
    admin_port: u16,
    inbound_port: u16,
    outbound_port: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Setup {
    async fn start(protocol: AdsProtocol) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let app_port = echo_server().await;
        let inbound_port = free_port();
        let dataplane = DataplaneInfo::from_json(&format!(
            r#"{{"mesh": "{MESH}", "name": "web-1", "networking": {{"address": "127.0.0.1",
               "inbound": [{{"port": {inbound_port}, "servicePort": {app_port},
                             "tags": {{"kuma.io/service": "web"}}}}]}}}}"#
        ))
        .expect("dataplane");
        let identity = identity();
        let empty = View {
            mtls: Some(MtlsView::default()),
            ..View::default()
        };
        let first = xds::build_snapshot(1, &dataplane, &identity, Some(&empty));
        let (snapshots, receiver) = watch::channel(Arc::new(first));

        let socket = dir.path().join("xds.sock");
        let listener = xds::bind(&socket).expect("bind the xDS socket");
        let shutdown = CancellationToken::new();
        tokio::spawn(xds::serve(
            listener,
            receiver,
            Arc::new(Metrics::new()),
            shutdown.clone(),
        ));

        let admin_port = free_port();
        let bootstrap = bootstrap_with_ads(
            &BootstrapParams {
                node_id: format!("{MESH}.web-1"),
                service: "web".to_string(),
                admin_port,
                xds_socket: socket,
                agent_version: "test".to_string(),
            },
            protocol,
        );
        let config_path = dir.path().join("bootstrap.pb");
        std::fs::write(&config_path, prost::Message::encode_to_vec(&bootstrap))
            .expect("write the bootstrap");
        let envoy = EnvoyProcess::spawn(
            &envoy_binary(),
            &args(&EnvoyArgs {
                config_path,
                drain_time: Duration::from_secs(1),
                log_level: "warning".to_string(),
                component_log_level: None,
                concurrency: 1,
                admin_address_path: None,
            }),
        )
        .expect("start Envoy");
        Setup {
            _dir: dir,
            _envoy: envoy,
            shutdown,
            snapshots,
            version: 1,
            dataplane,
            identity,
            admin_port,
            inbound_port,
            outbound_port: free_port(),
        }
    }

    /// A view of a STRICT or PERMISSIVE mesh with `rules` on the inbound and one outbound to
    /// `web` whose endpoints are the inbound and `extra` ports.
    fn view(&self, mode: MtlsMode, rules: Vec<PermissionRule>, extra: &[u16]) -> View {
        let endpoint = |port: u16| Endpoint {
            address: "127.0.0.1".to_string(),
            port: u32::from(port),
            tags: tags(&[("kuma.io/service", "web")]),
        };
        View {
            version: self.version + 1,
            mtls: Some(MtlsView {
                mode: mode.into(),
                ..MtlsView::default()
            }),
            inbounds: vec![InboundPermissions {
                port: u32::from(self.inbound_port),
                address: "127.0.0.1".to_string(),
                rules,
            }],
            outbounds: vec![OutboundView {
                port: u32::from(self.outbound_port),
                address: String::new(),
                tags: tags(&[("kuma.io/service", "web")]),
                endpoints: std::iter::once(self.inbound_port)
                    .chain(extra.iter().copied())
                    .map(endpoint)
                    .collect(),
            }],
        }
    }

    fn publish(&mut self, view: &View) {
        self.version += 1;
        let snapshot =
            xds::build_snapshot(self.version, &self.dataplane, &self.identity, Some(view));
        self.snapshots.send_replace(Arc::new(snapshot));
    }

    async fn admin(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        if chunked {
            dechunk(body)
        } else {
            Some(body.to_string())
        }
    }

    /// Every counter and gauge, by name.
    async fn stats(&self) -> HashMap<String, u64> {
        let body = self.admin("/stats").await.unwrap_or_default();
        body.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    async fn stat(&self, name: &str) -> u64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    /// Waits until `check` holds on the stats.
    async fn until_stats(&self, what: &str, check: impl Fn(&HashMap<String, u64>) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.stats().await;
            if check(&stats) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}; stats:\n{stats:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Envoy rejected nothing it was sent.
    async fn assert_no_rejection(&self) {
        let stats = self.stats().await;
        for (name, value) in &stats {
            let rejected = name.ends_with(".update_rejected")
                || (name.starts_with("extension_config_discovery.")
                    && name.ends_with(".config_fail"));
            assert!(!rejected || *value == 0, "{name} = {value}");
        }
        assert!(stats.contains_key("listener_manager.lds.update_rejected"));
        assert!(stats.contains_key("cluster_manager.cds.update_rejected"));
    }

    /// A connection to the outbound listener that got an echo back through the mesh.
    async fn connected(&self) -> Option<TcpStream> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.outbound_port))
            .await
            .ok()?;
        (round_trip(&mut stream).await.as_deref() == Some("ping\n")).then_some(stream)
    }

    async fn until_connected(&self) -> TcpStream {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(stream) = self.connected().await {
                return stream;
            }
            assert!(
                Instant::now() < deadline,
                "no echo through the outbound; stats:\n{:#?}",
                self.stats().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn mesh_traffic(protocol: AdsProtocol) {
    let mut setup = Setup::start(protocol).await;
    let inbound = format!("inbound:127.0.0.1:{}", setup.inbound_port);
    let outbound = format!("outbound:127.0.0.1:{}", setup.outbound_port);
    let rbac = format!("rbac:{inbound}");
    let stat_prefix = format!("inbound_127_0_0_1_{}.", setup.inbound_port);

    // STRICT, no rules: everything is served, and every mesh connection is denied.
    let view = setup.view(MtlsMode::Strict, Vec::new(), &[]);
    setup.publish(&view);
    setup
        .until_stats("two active listeners", |s| {
            s.get("listener_manager.total_listeners_active") == Some(&2)
                && s.get("cluster.web.membership_total") == Some(&1)
        })
        .await;
    let dump = setup.admin("/config_dump?include_eds").await.unwrap();
    for name in [&inbound, &outbound, &rbac] {
        assert!(dump.contains(&format!("\"{name}\"")), "{name} missing");
    }
    assert!(dump.contains("type.googleapis.com/envoy.admin.v3.EcdsConfigDump"));
    assert!(
        dump.contains("\"cluster_name\": \"web\""),
        "no endpoints for web"
    );
    setup.assert_no_rejection().await;

    let denied_before = setup.stat(&format!("{stat_prefix}rbac.denied")).await;
    assert!(setup.connected().await.is_none(), "allowed without rules");
    setup
        .until_stats("a denial", |s| {
            s.get(&format!("{stat_prefix}rbac.denied"))
                .copied()
                .unwrap_or(0)
                > denied_before
        })
        .await;

    // A rule allowing web: an ECDS update, no listener update.
    let modified = setup.stat("listener_manager.listener_modified").await;
    let lds_updates = setup.stat("listener_manager.lds.update_success").await;
    let allow = rule("TrafficPermission/web", PermissionAction::Allow, "web");
    let view = setup.view(MtlsMode::Strict, vec![allow.clone()], &[]);
    setup.publish(&view);
    let mut kept = setup.until_connected().await;
    assert_eq!(
        setup.stat("listener_manager.listener_modified").await,
        modified
    );
    assert_eq!(
        setup.stat("listener_manager.lds.update_success").await,
        lds_updates
    );

    // A change that still allows web: the open connection stays.
    let reloads = |s: &HashMap<String, u64>| -> u64 {
        s.iter()
            .filter(|(name, _)| {
                name.starts_with("extension_config_discovery.") && name.ends_with(".config_reload")
            })
            .map(|(_, value)| *value)
            .sum()
    };
    let reloaded = reloads(&setup.stats().await);
    let deny_legacy = rule(
        "MeshTrafficPermission/no-legacy",
        PermissionAction::Deny,
        "legacy",
    );
    let view = setup.view(
        MtlsMode::Strict,
        vec![deny_legacy.clone(), allow.clone()],
        &[],
    );
    setup.publish(&view);
    setup
        .until_stats("a new ECDS config", |s| reloads(s) > reloaded)
        .await;
    assert_eq!(round_trip(&mut kept).await.as_deref(), Some("ping\n"));

    // Denying web again closes new connections, still without a listener update.
    let deny_web = rule(
        "MeshTrafficPermission/no-web",
        PermissionAction::Deny,
        "web",
    );
    let view = setup.view(MtlsMode::Strict, vec![deny_web, allow.clone()], &[]);
    setup.publish(&view);
    let deadline = Instant::now() + WAIT;
    while setup.connected().await.is_some() {
        assert!(Instant::now() < deadline, "still allowed after the deny");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        setup.stat("listener_manager.listener_modified").await,
        modified
    );

    // Endpoints change: EDS only, the cluster stays.
    let cds_updates = setup.stat("cluster_manager.cds.update_success").await;
    let view = setup.view(MtlsMode::Strict, vec![allow.clone()], &[free_port()]);
    setup.publish(&view);
    setup
        .until_stats("two endpoints", |s| {
            s.get("cluster.web.membership_total") == Some(&2)
        })
        .await;
    assert_eq!(
        setup.stat("cluster_manager.cds.update_success").await,
        cds_updates
    );
    let mut kept = setup.until_connected().await;

    // STRICT: plaintext to the inbound is refused.
    let mut plaintext = TcpStream::connect(("127.0.0.1", setup.inbound_port))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut plaintext).await, None);

    // PERMISSIVE: an in-place filter-chain update. The Kuma chain is unchanged, so the open
    // connection outlives the drain of the chains that went; plaintext now reaches the app.
    let view = setup.view(MtlsMode::Permissive, vec![allow], &[]);
    setup.publish(&view);
    setup
        .until_stats("the mode change applied and drained", |s| {
            s.get("listener_manager.listener_in_place_updated").copied() == Some(1)
                && s.get("listener_manager.total_filter_chains_draining") == Some(&0)
                && s.get("cluster.web.membership_total") == Some(&1)
        })
        .await;
    assert_eq!(round_trip(&mut kept).await.as_deref(), Some("ping\n"));
    let mut plaintext = TcpStream::connect(("127.0.0.1", setup.inbound_port))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut plaintext).await.as_deref(), Some("ping\n"));
    setup.until_connected().await;

    // mTLS off at runtime: the clusters change (no TLS) while their endpoints do not, and the
    // listeners lose their permissions. Then on again.
    let mtls_on = std::mem::replace(&mut setup.identity, IdentityState::Disabled);
    let mut off = setup.view(MtlsMode::Strict, Vec::new(), &[]);
    off.mtls = None;
    off.inbounds.clear();
    setup.publish(&off);
    setup
        .until_stats("plaintext clusters", |s| {
            s.get("cluster_manager.cluster_modified")
                .copied()
                .unwrap_or(0)
                >= 1
                && s.get("cluster_manager.warming_clusters") == Some(&0)
        })
        .await;
    setup.until_connected().await;
    let mut plaintext = TcpStream::connect(("127.0.0.1", setup.inbound_port))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut plaintext).await.as_deref(), Some("ping\n"));
    setup.identity = mtls_on;
    let view = setup.view(
        MtlsMode::Strict,
        vec![rule(
            "TrafficPermission/web",
            PermissionAction::Allow,
            "web",
        )],
        &[],
    );
    setup.publish(&view);
    setup
        .until_stats("mTLS clusters", |s| {
            s.get("cluster_manager.cluster_modified")
                .copied()
                .unwrap_or(0)
                >= 2
                && s.get("cluster_manager.warming_clusters") == Some(&0)
        })
        .await;
    setup.until_connected().await;
    let mut plaintext = TcpStream::connect(("127.0.0.1", setup.inbound_port))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut plaintext).await, None);
    setup.assert_no_rejection().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_traffic_over_delta_ads() {
    mesh_traffic(AdsProtocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_traffic_over_state_of_the_world_ads() {
    mesh_traffic(AdsProtocol::StateOfTheWorld).await;
}
