//! Harness for the integration tests: starts the real `cp-lite` binary on loopback with a temp
//! data directory, drives it with the real `kumactl`, and polls with bounded loops.
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`); `make test`
//! builds them first with `cargo build --workspace --bins`.

// A test harness: a broken invariant here is a test failure, reported by the panic.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub mod procfs;

/// How long a started control plane may take to report its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a workspace binary built next to the running test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, the bench binary from target/<profile>/.
    let mut dir = exe.parent().expect("executable directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `cp-lite run` process with its data directory.
#[derive(Debug)]
pub struct CpLite {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub dp: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Extra environment given at start, kept for restarts.
    env: Vec<(String, String)>,
}

impl CpLite {
    /// Starts cp-lite with the embedded store in `data_dir`, every port picked by the system.
    pub fn start(data_dir: &Path) -> Result<CpLite> {
        Self::start_with_env(data_dir, &[])
    }

    /// Like [`CpLite::start`], with extra `KUMA_*` variables.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> Result<CpLite> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut command = Command::new(binary("cp-lite"));
        command
            .arg("run")
            .env("KUMA_API_SERVER_HTTP_PORT", "0")
            .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
            .env("KUMA_DP_SERVER_PORT", "0")
            .env("KUMA_DP_SERVER_INTERFACE", "127.0.0.1")
            .env("KUMA_ADMIN_SERVER_LOCAL_PORT", "0")
            .env("KUMA_GENERAL_WORK_DIR", data_dir)
            .env("KUMA_STORE_TYPE", "embedded")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning cp-lite")?;
        let logs = capture(&mut child);
        let mut cp = CpLite {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            api: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            dp: SocketAddr::from(([0, 0, 0, 0], 0)),
            logs,
            env,
        };
        let addresses = eventually(START_TIMEOUT, || {
            if let Some(child) = cp.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Some(Err(anyhow!("cp-lite exited with {status}")));
            }
            let logs = cp.logs.lock().expect("log lock");
            let find = |server: &str| {
                logs.iter()
                    .filter(|l| {
                        l.contains("listening") && l.contains(&format!("server=\"{server}\""))
                    })
                    .find_map(|l| {
                        l.split("address=")
                            .nth(1)?
                            .split_whitespace()
                            .next()?
                            .parse()
                            .ok()
                    })
            };
            Some(Ok((
                find("API server")?,
                find("admin server")?,
                find("DP server")?,
            )))
        });
        match addresses {
            Some(Ok((api, admin, dp))) => {
                cp.api = api;
                cp.admin = admin;
                cp.dp = dp;
                Ok(cp)
            }
            Some(Err(e)) => bail!("{e}; logs:\n{}", cp.logs_text()),
            None => bail!("cp-lite did not start in time; logs:\n{}", cp.logs_text()),
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The base URL of the API server.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The base URL of the admin server.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Everything cp-lite printed so far.
    pub fn logs_text(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// Stops the process with SIGTERM and waits for it (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let exited = eventually(Duration::from_secs(10), || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cp-lite did not stop on SIGTERM within 10 s");
        }
        Ok(())
    }

    /// Stops and starts again on the same data directory (new ports).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let started = CpLite::start_with_env(&self.data_dir, &env)?;
        *self = started;
        Ok(())
    }
}

impl Drop for CpLite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kumactl` bound to one control plane through its own config file.
#[derive(Debug)]
pub struct Kumactl {
    config_file: PathBuf,
}

/// What one `kumactl` run printed.
#[derive(Debug)]
pub struct KumactlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl KumactlOutput {
    /// stdout and stderr together, for error-text assertions.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Kumactl {
    /// Configures a kumactl config file in `dir` pointing at `api_url`.
    pub fn configure(dir: &Path, api_url: &str) -> Result<Kumactl> {
        let kumactl = Kumactl {
            config_file: dir.join("kumactl-config"),
        };
        let out = kumactl.run(&[
            "config",
            "control-planes",
            "add",
            "--name",
            "test",
            "--address",
            api_url,
            "--overwrite",
        ])?;
        if !out.success {
            bail!("kumactl config control-planes add failed: {}", out.all());
        }
        Ok(kumactl)
    }

    /// kumactl with an empty config file in `dir`, for commands that need no control plane.
    pub fn unconfigured(dir: &Path) -> Kumactl {
        Kumactl {
            config_file: dir.join("kumactl-config"),
        }
    }

    /// Runs kumactl with `args`.
    pub fn run(&self, args: &[&str]) -> Result<KumactlOutput> {
        self.run_with_stdin(args, None)
    }

    /// Runs kumactl with `args`, feeding `stdin`.
    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<KumactlOutput> {
        let mut command = Command::new(binary("kumactl"));
        command
            .arg("--config-file")
            .arg(&self.config_file)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning kumactl")?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("kumactl stdin")?;
            pipe.write_all(input.as_bytes())?;
        }
        let output: Output = child.wait_with_output()?;
        Ok(KumactlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Applies a YAML document given on stdin; fails with kumactl's output when it is refused.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let out = self.run_with_stdin(&["apply", "-f", "-"], Some(yaml))?;
        if !out.success {
            bail!("kumactl apply failed: {}", out.all());
        }
        Ok(())
    }

    /// `kumactl generate dataplane-token <args>`: the token, printed without a newline.
    pub fn dataplane_token(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["generate", "dataplane-token"];
        all.extend_from_slice(args);
        let out = self.run(&all)?;
        if !out.success {
            bail!("kumactl generate dataplane-token failed: {}", out.all());
        }
        if out.stdout.ends_with('\n') {
            bail!("the token is printed with a newline");
        }
        Ok(out.stdout)
    }

    /// `kumactl get ... -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.run(&all)?;
        if !out.success {
            bail!("kumactl get failed: {}", out.all());
        }
        serde_json::from_str(&out.stdout).with_context(|| format!("parsing: {}", out.stdout))
    }
}

/// The Envoy binary: `$ENVOY_BINARY`, else the one `.ci/install-deps` installs into
/// `.tools/envoy`. A missing Envoy fails the test: `make test` installs it.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BINARY") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/envoy/envoy/_bin/envoy");
    assert!(
        path.exists(),
        "Envoy is missing at {}: run `.ci/install-deps` (`make test` does)",
        path.display()
    );
    path
}

/// A DER PKCS#10 request for a fresh P-256 key with an empty subject and the given URI SANs.
pub fn p256_csr(sans: &[&str]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = sans
        .iter()
        .map(|s| rcgen::SanType::URI(s.to_string().try_into().expect("an IA5 URI")))
        .collect();
    params.serialize_request(&key).expect("CSR").der().to_vec()
}

/// A TCP port that was free a moment ago, on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// A running `kuma-dp run` with its work dir.
#[derive(Debug)]
pub struct KumaDp {
    child: Option<Child>,
    pub work_dir: PathBuf,
    /// The readiness port (`KUMA_READINESS_PORT`).
    pub readiness_port: u16,
    /// Envoy's admin port (`--admin-port`).
    pub admin_port: u16,
    logs: Arc<Mutex<Vec<String>>>,
}

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct KumaDpOptions {
    pub cp_data_dir: PathBuf,
    pub cp_dp_address: SocketAddr,
    pub dataplane_yaml: String,
    pub token_file: PathBuf,
    pub work_dir: PathBuf,
    /// Extra flags.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

impl KumaDp {
    /// Starts kuma-dp against the control plane with real Envoy; returns at once.
    pub fn start(options: &KumaDpOptions) -> Result<KumaDp> {
        let dataplane_file = options.work_dir.with_extension("dataplane.yaml");
        std::fs::write(&dataplane_file, &options.dataplane_yaml)?;
        let readiness_port = free_port();
        let admin_port = free_port();
        let mut command = Command::new(binary("kuma-dp"));
        command
            .arg("run")
            .arg("--cp-address")
            .arg(format!("https://{}", options.cp_dp_address))
            .arg("--ca-cert-file")
            .arg(options.cp_data_dir.join("dp-server-ca.pem"))
            .arg("--dataplane-file")
            .arg(&dataplane_file)
            .arg("--dataplane-token-file")
            .arg(&options.token_file)
            .arg("--binary-path")
            .arg(envoy_binary())
            .arg("--work-dir")
            .arg(&options.work_dir)
            .arg("--admin-port")
            .arg(admin_port.to_string())
            .arg("--concurrency")
            .arg("1")
            .arg("--drain-time")
            .arg("1s")
            .arg("--envoy-log-level")
            .arg("warning")
            .args(&options.args)
            .env("KUMA_READINESS_PORT", readiness_port.to_string())
            .env("NO_COLOR", "1")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning kuma-dp")?;
        let logs = capture(&mut child);
        Ok(KumaDp {
            child: Some(child),
            work_dir: options.work_dir.clone(),
            readiness_port,
            admin_port,
            logs,
        })
    }

    /// The process id of the agent.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The pid of the agent's Envoy child, if one runs.
    pub fn envoy_pid(&self) -> Option<u32> {
        let pid = self.pid()?;
        let out = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Everything the agent (and Envoy) printed so far.
    pub fn logs_text(&self) -> String {
        self.logs.lock().expect("log lock").join("\n")
    }

    /// `GET /ready` of the agent: the status code, or `None` when nothing answers.
    pub fn ready_status(&self) -> Option<u16> {
        http_get(self.readiness_port, "/ready").map(|(status, _)| status)
    }

    /// `GET /metrics` of the agent.
    pub fn metrics(&self) -> Option<String> {
        http_get(self.readiness_port, "/metrics").map(|(_, body)| body)
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        eventually(timeout, || (self.ready_status() == Some(200)).then_some(()))
            .with_context(|| format!("kuma-dp not ready; logs:\n{}", self.logs_text()))
    }

    /// Serial numbers (lower-case hex, sorted, each once) of the certificates Envoy serves
    /// (`/certs` lists them per TLS context, and every mTLS chain and cluster has its own).
    pub fn envoy_cert_serials(&self) -> Vec<String> {
        let Some((200, body)) = http_get(self.admin_port, "/certs") else {
            return Vec::new();
        };
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut serials: Vec<String> = json["certificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["cert_chain"].as_array().into_iter().flatten())
            .filter_map(|c| c["serial_number"].as_str().map(str::to_lowercase))
            .collect();
        serials.sort();
        serials.dedup();
        serials
    }

    /// Sends `signal` (e.g. "TERM") to the agent.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .status();
        }
    }

    /// Waits for the agent to exit, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = eventually(timeout, || child.try_wait().ok().flatten())?;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }
}

impl Drop for KumaDp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM twice: the second cuts the drain, so Envoy is stopped by the agent.
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            std::thread::sleep(Duration::from_millis(100));
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            if eventually(Duration::from_secs(10), || child.try_wait().ok().flatten()).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Collects a child's stdout and stderr lines.
fn capture(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let logs = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                logs.lock().expect("log lock").push(line);
            }
        });
    }
    logs
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`: status and body, or `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some((status, body))
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

/// Runs `openssl` with `args`, returning stdout+stderr and whether it succeeded.
pub fn openssl(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// A gRPC client of the DP server, trusting the CA cp-lite wrote to its data directory.
pub mod dp {
    use std::path::Path;

    use std::time::Duration;

    use anyhow::{Context, Result, anyhow};
    use cp_lite_api::v1::dataplane_service_client::DataplaneServiceClient;
    use cp_lite_api::v1::{
        DataplaneRef, RegisterRequest, ReportCertificateRequest, SignCertificateRequest,
        SignCertificateResponse, View, WatchViewRequest,
    };
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    use tonic::{Request, Streaming};

    /// A connected client.
    pub type Client = DataplaneServiceClient<Channel>;

    /// Connects to the DP server at `address` over TLS, verifying it with `dp-server-ca.pem`.
    pub async fn connect(data_dir: &Path, address: std::net::SocketAddr) -> Result<Client> {
        let ca = std::fs::read(data_dir.join("dp-server-ca.pem")).context("dp-server-ca.pem")?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{address}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(DataplaneServiceClient::new(channel))
    }

    /// `message` with the token in the `authorization` metadata.
    pub fn with_token<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = token.parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Names a Dataplane.
    pub fn dataplane(mesh: &str, name: &str) -> Option<DataplaneRef> {
        Some(DataplaneRef {
            mesh: mesh.to_string(),
            name: name.to_string(),
        })
    }

    /// Registers a Dataplane from its YAML.
    pub async fn register(
        client: &mut Client,
        token: &str,
        mesh: &str,
        name: &str,
        yaml: &str,
    ) -> Result<(), tonic::Status> {
        let request = RegisterRequest {
            dataplane: dataplane(mesh, name),
            resource: yaml.to_string(),
            agent_version: "test".to_string(),
        };
        client
            .register(with_token(request, token))
            .await
            .map(|_| ())
    }

    /// Sends a CSR for signing.
    pub async fn sign(
        client: &mut Client,
        token: &str,
        mesh: &str,
        name: &str,
        csr_der: Vec<u8>,
    ) -> Result<SignCertificateResponse, tonic::Status> {
        let request = SignCertificateRequest {
            dataplane: dataplane(mesh, name),
            csr_der,
        };
        client
            .sign_certificate(with_token(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Reports the certificate an agent serves.
    pub async fn report(
        client: &mut Client,
        token: &str,
        report: ReportCertificateRequest,
    ) -> Result<(), tonic::Status> {
        client
            .report_certificate(with_token(report, token))
            .await
            .map(|_| ())
    }

    /// Opens the view stream of a Dataplane.
    pub async fn watch_view(
        client: &mut Client,
        token: &str,
        mesh: &str,
        name: &str,
    ) -> Result<Streaming<View>, tonic::Status> {
        let request = WatchViewRequest {
            dataplane: dataplane(mesh, name),
        };
        client
            .watch_view(with_token(request, token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The next view of `stream`; an error when the stream ends or nothing comes within
    /// `timeout`.
    pub async fn next_view(stream: &mut Streaming<View>, timeout: Duration) -> Result<View> {
        match tokio::time::timeout(timeout, stream.message()).await {
            Ok(Ok(Some(view))) => Ok(view),
            Ok(Ok(None)) => Err(anyhow!("the view stream ended")),
            Ok(Err(status)) => Err(anyhow!("the view stream failed: {status}")),
            Err(_) => Err(anyhow!("no view within {timeout:?}")),
        }
    }
}
