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

    use anyhow::{Context, Result};
    use cp_lite_api::v1::dataplane_service_client::DataplaneServiceClient;
    use cp_lite_api::v1::{
        DataplaneRef, RegisterRequest, ReportCertificateRequest, SignCertificateRequest,
        SignCertificateResponse,
    };
    use tonic::Request;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};

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
}
