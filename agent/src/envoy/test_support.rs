//! Test helpers: the real Envoy binary, a minimal real Envoy, a fake Envoy admin API, and a
//! bounded polling helper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{AdminClient, EnvoyArgs, EnvoyProcess, admin_address_path, args};

/// How long [`eventually`] polls before failing the test. Generous: the machine is shared.
const EVENTUALLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The real Envoy: `$ENVOY_BINARY`, else `<workspace>/.tools/envoy/envoy/_bin/envoy`. Fails the
/// test when neither exists; tests never skip for a missing Envoy.
pub(crate) fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BINARY") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ENVOY_BINARY={} does not exist",
            path.display()
        );
        return path;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/envoy/envoy/_bin/envoy");
    assert!(
        path.is_file(),
        "Envoy not found at {}: run .ci/install-deps or set ENVOY_BINARY",
        path.display()
    );
    path
}

/// Polls `check` until it returns true, failing the test after [`EVENTUALLY_TIMEOUT`].
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + EVENTUALLY_TIMEOUT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process with this id exists (a zombie counts).
pub(crate) fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A self-signed certificate made for one test.
#[derive(Debug, Clone)]
pub(crate) struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lower-case hex, as Envoy's `/certs` prints serials.
    pub serial_hex: String,
}

impl TestCert {
    pub(crate) fn generate() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["envoy.test".to_string()]).unwrap();
        // A random serial with a non-zero first byte, so there is one way to print it.
        let mut serial: [u8; 16] = rand::random();
        serial[0] = serial[0].max(0x10) & 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_hex: serial.iter().map(|byte| format!("{byte:02x}")).collect(),
        }
    }
}

/// Bootstrap of a minimal Envoy: admin on 127.0.0.1:0 only. The TLS listener is passed with
/// `--config-yaml` (see [`tls_listener_yaml`]) so no private key is written to disk.
pub(crate) const ADMIN_ONLY_BOOTSTRAP: &str = r#"
node: {id: test.envoy, cluster: test}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
"#;

/// A bootstrap fragment with one TLS listener (echo filter) on 127.0.0.1:0 serving `cert`.
pub(crate) fn tls_listener_yaml(cert: &TestCert) -> String {
    let json = serde_json::json!({
        "static_resources": {"listeners": [{
            "name": "inbound:tls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "traffic_direction": "INBOUND",
            "filter_chains": [{
                "filters": [{
                    "name": "envoy.filters.network.echo",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}
                }],
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {"tls_certificates": [{
                            "certificate_chain": {"inline_string": cert.cert_pem},
                            "private_key": {"inline_string": cert.key_pem}
                        }]}
                    }
                }
            }]
        }]}
    });
    json.to_string()
}

/// Writes the admin-only bootstrap to `dir` and returns Envoy's arguments: kuma-dp's, with
/// `--admin-address-path`, then `--config-yaml` adding a TLS listener serving `cert`.
pub(crate) fn test_envoy_args(dir: &Path, cert: &TestCert) -> Vec<std::ffi::OsString> {
    let config_path = dir.join("bootstrap.yaml");
    std::fs::write(&config_path, ADMIN_ONLY_BOOTSTRAP).unwrap();
    let mut envoy_args = args(&EnvoyArgs {
        config_path,
        drain_time: Duration::from_secs(1),
        log_level: "error".to_string(),
        component_log_level: None,
        concurrency: 1,
        admin_address_path: Some(admin_address_path(dir)),
    });
    envoy_args.push("--config-yaml".into());
    envoy_args.push(tls_listener_yaml(cert).into());
    envoy_args
}

/// A real Envoy started for one test, with its work dir and admin client.
#[derive(Debug)]
pub(crate) struct RunningEnvoy {
    pub process: EnvoyProcess,
    pub admin: AdminClient,
    pub cert: TestCert,
    /// Envoy's work dir, removed when the test is done with it.
    _dir: tempfile::TempDir,
}

impl RunningEnvoy {
    /// Starts Envoy and waits until it wrote its admin address.
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = TestCert::generate();
        let process =
            EnvoyProcess::spawn(&envoy_binary(), &test_envoy_args(dir.path(), &cert)).unwrap();
        let address_file = admin_address_path(dir.path());
        eventually("Envoy admin address file", || async {
            std::fs::read_to_string(&address_file).is_ok_and(|text| text.contains(':'))
        })
        .await;
        let admin = AdminClient::for_port(0, &address_file);
        RunningEnvoy {
            process,
            admin,
            cert,
            _dir: dir,
        }
    }
}

/// A fake Envoy admin API: answers every request with one status and body (changeable), and
/// records `"<METHOD> <path?query>"` of each request.
#[derive(Debug, Clone)]
pub(crate) struct FakeAdmin {
    pub address: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeAdmin {
    pub(crate) async fn start(status: u16, body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeAdmin {
            address: listener.local_addr().unwrap(),
            answer: Arc::new(Mutex::new((status, body.to_string()))),
            requests: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move {
                            let target = request
                                .uri()
                                .path_and_query()
                                .map(|target| target.as_str().to_string())
                                .unwrap_or_default();
                            server
                                .requests
                                .lock()
                                .unwrap()
                                .push(format!("{} {target}", request.method()));
                            let (status, body) = server.answer.lock().unwrap().clone();
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    /// Changes the answer to every later request.
    pub(crate) fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_string());
    }

    /// The requests received so far.
    pub(crate) fn paths(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}
