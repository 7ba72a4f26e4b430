//! The story `make demo` tells: a control plane and two apps (web calls backend) each behind
//! kuma-dp and Envoy, in a mesh with builtin mTLS. Step 0 starts everything; steps 1 to 6 show
//! the default deny, a TrafficPermission, the allowed request, the SPIFFE identities as openssl
//! sees them, a live certificate rotation, and `kumactl inspect dataplanes`.

use std::io::IsTerminal as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use integration_tests::http_get;
use tempfile::TempDir;

use crate::procs::{self, Handle, Supervisor, indent};
use crate::signals::{Interrupted, Signals};

/// The mesh of the demo.
const MESH: &str = "default";
/// The dataplane certificate lifetime (`dpCert.rotation.expiration`): short, so that a rotation
/// (at 4/5 of it) happens during the demo.
const CERT_LIFETIME: Duration = Duration::from_secs(20);
/// How long cp-lite may take to report its listeners.
const CP_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a kuma-dp may take to be ready (registered, certificate held, Envoy up).
const READY_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a change in cp-lite may take to reach the Envoys.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one short command (kumactl, openssl) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(100);
/// Pause between two requests while the certificates rotate.
const TRAFFIC_INTERVAL: Duration = Duration::from_millis(200);
/// How long traffic goes on after both certificates rotated.
const AFTER_ROTATION: Duration = Duration::from_secs(1);
/// kuma-dp's drain time on shutdown: the demo has no connections worth waiting for.
const DRAIN_TIME: &str = "1s";

/// A step that did not succeed.
#[derive(Debug)]
pub struct Failure {
    /// The step number, 0 for the set-up.
    pub step: u8,
    pub error: anyhow::Error,
}

/// The demo: its temp dir, its processes and the binaries it runs.
#[derive(Debug)]
pub struct Demo {
    signals: Signals,
    dir: TempDir,
    procs: Supervisor,
    bins: Binaries,
    style: Style,
}

#[derive(Debug)]
struct Binaries {
    cp_lite: PathBuf,
    kumactl: PathBuf,
    kuma_dp: PathBuf,
    demo_app: PathBuf,
    envoy: PathBuf,
}

/// What step 0 set up.
#[derive(Debug)]
struct Mesh {
    kumactl_config: PathBuf,
    backend: Side,
    web: Side,
}

/// One app behind its kuma-dp.
#[derive(Debug)]
struct Side {
    service: &'static str,
    /// The Dataplane's name.
    dataplane: String,
    app_port: u16,
    inbound_port: u16,
    /// The local port of its outbound to the other side's service.
    outbound_port: Option<u16>,
    envoy_admin_port: u16,
    readiness_port: u16,
    agent: Handle,
    /// The pid of its Envoy once ready: the same until the end, nothing restarts it.
    envoys: Vec<u32>,
}

/// The certificate an inbound listener presented.
#[derive(Debug, Clone)]
struct Presented {
    serial: String,
    /// The PEM, saved in the temp dir.
    file: PathBuf,
}

impl Demo {
    /// Finds the binaries and makes the temp dir.
    pub fn new(signals: Signals) -> Result<Demo> {
        let bins = Binaries::find()?;
        let dir = tempfile::Builder::new()
            .prefix("kuma-demo-")
            .tempdir()
            .context("creating the temp dir")?;
        std::fs::create_dir(dir.path().join("logs"))?;
        Ok(Demo {
            signals,
            dir,
            procs: Supervisor::default(),
            bins,
            style: Style::detect(),
        })
    }

    /// Runs every step; stops at the first that fails.
    pub fn run(&mut self) -> Result<(), Failure> {
        println!(
            "{}",
            self.style.bold(
                "kuma-dp + cp-lite demo: two apps, web and backend, each behind kuma-dp and Envoy, \
                 in a mesh with builtin mTLS"
            )
        );
        let mesh = self.step(
            0,
            "Start cp-lite, a mesh with builtin mTLS, and web and backend behind kuma-dp + Envoy",
            Demo::start,
        )?;
        self.step(
            1,
            "A request web → backend is denied by default (mTLS on, no permission)",
            |demo| demo.denied(&mesh),
        )?;
        let applied = self.step(2, "Allow web → backend with a TrafficPermission", |demo| {
            demo.permit(&mesh)
        })?;
        self.step(3, "The same request is now allowed", |demo| {
            demo.allowed(&mesh, applied)
        })?;
        let certificates = self.step(
            4,
            "The SPIFFE identities of both sides, as openssl sees them",
            |demo| demo.identities(&mesh),
        )?;
        self.step(
            5,
            "A certificate rotation, live, while traffic flows",
            |demo| demo.rotation(&mesh, certificates),
        )?;
        self.step(6, "kumactl inspect dataplanes", |demo| demo.inspect(&mesh))?;
        Ok(())
    }

    /// The last lines of every process's log, for a failure report.
    pub fn log_tails(&self) -> String {
        self.procs
            .log_tails(20)
            .into_iter()
            .map(|(name, path, tail)| {
                format!(
                    "--- {name} ({}), last lines:\n{}",
                    path.display(),
                    indent(&tail, "  ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every process and removes the temp dir; `Err` names what survived.
    pub fn finish(mut self) -> Result<()> {
        println!();
        let report = self.procs.stop(&self.signals);
        let dir = self.dir.path().to_path_buf();
        let removed = self.dir.close();
        println!(
            "Stopped {} processes in {:.1} s{}; removed {}",
            report.stopped,
            report.took.as_secs_f64(),
            if report.killed.is_empty() {
                String::new()
            } else {
                format!(" (SIGKILL: {})", report.killed.join(", "))
            },
            dir.display()
        );
        removed.with_context(|| format!("removing {}", dir.display()))?;
        ensure!(
            report.left.is_empty(),
            "processes left running: {}",
            report.left.join(", ")
        );
        Ok(())
    }

    fn step<T>(
        &mut self,
        number: u8,
        title: &str,
        body: impl FnOnce(&mut Demo) -> Result<T>,
    ) -> Result<T, Failure> {
        println!("\n{}", self.style.bold(&format!("{number}. {title}")));
        let started = Instant::now();
        let result = self
            .signals
            .check()
            .map_err(anyhow::Error::from)
            .and_then(|()| body(self));
        match result {
            Ok(value) => {
                println!(
                    "   ✓ step {number} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                Ok(value)
            }
            Err(error) => Err(Failure {
                step: number,
                error,
            }),
        }
    }

    /// Step 0: cp-lite, kumactl, the mesh, two apps and two kuma-dp with Envoy.
    fn start(&mut self) -> Result<Mesh> {
        let started = Instant::now();
        let dir = self.dir.path().to_path_buf();
        say(&format!("work dir {} (removed at the end)", dir.display()));

        let data = dir.join("cp-lite");
        let mut cp = Command::new(&self.bins.cp_lite);
        cp.arg("run")
            .env("KUMA_API_SERVER_HTTP_PORT", "0")
            .env("KUMA_API_SERVER_HTTP_INTERFACE", "127.0.0.1")
            .env("KUMA_DP_SERVER_PORT", "0")
            .env("KUMA_DP_SERVER_INTERFACE", "127.0.0.1")
            .env("KUMA_ADMIN_SERVER_LOCAL_PORT", "0")
            .env("KUMA_GENERAL_WORK_DIR", &data)
            .env("KUMA_STORE_TYPE", "embedded")
            .env("NO_COLOR", "1");
        let cp_log = dir.join("logs/cp-lite.log");
        self.procs.spawn("cp-lite", cp, cp_log.clone())?;
        let (api, dp) = self
            .wait_for(CP_START_TIMEOUT, || Ok(cp_addresses(&cp_log)))?
            .context("cp-lite did not report its listeners in time")?;
        say(&format!(
            "cp-lite: API server http://{api}, DP server https://{dp}, embedded store in {}",
            data.display()
        ));

        let kumactl_config = dir.join("kumactl.yaml");
        let api_url = format!("http://{api}");
        command(&format!(
            "kumactl config control-planes add --name demo --address {api_url}"
        ));
        let out = self.kumactl(
            &kumactl_config,
            &[
                "config",
                "control-planes",
                "add",
                "--name",
                "demo",
                "--address",
                &api_url,
            ],
            None,
        )?;
        output(&stdout(&out));
        say(&format!(
            "(kumactl uses {}, not ~/.kumactl)",
            kumactl_config.display()
        ));

        let mesh_yaml = mesh_yaml();
        command("kumactl apply -f - <<EOF");
        output(&format!("{}EOF", mesh_yaml));
        let out = self.kumactl(&kumactl_config, &["apply", "-f", "-"], Some(&mesh_yaml))?;
        output(&stdout(&out));

        for name in ["backend-1", "web-1"] {
            let args = [
                "generate",
                "dataplane-token",
                "--name",
                name,
                "--mesh",
                MESH,
                "--valid-for",
                "1h",
            ];
            command(&format!("kumactl {} > {name}.token", args.join(" ")));
            let out = self.kumactl(&kumactl_config, &args, None)?;
            std::fs::write(dir.join(format!("{name}.token")), &out.stdout)?;
        }

        let mut backend = self.start_side("backend", None, dp)?;
        let mut web = self.start_side("web", Some(free_port()?), dp)?;
        println!();
        say(&format!(
            "{:<8} demo-app 127.0.0.1:{} ← kuma-dp backend-1: inbound 127.0.0.1:{} (mTLS)",
            "backend", backend.app_port, backend.inbound_port
        ));
        say(&format!(
            "{:<8} demo-app 127.0.0.1:{} ← kuma-dp web-1: inbound 127.0.0.1:{} (mTLS), \
             outbound 127.0.0.1:{} → backend",
            "web",
            web.app_port,
            web.inbound_port,
            web.outbound_port.unwrap_or_default()
        ));

        for side in [&backend, &web] {
            let port = side.readiness_port;
            self.wait_for(READY_TIMEOUT, || {
                Ok((http_get(port, "/ready").map(|(status, _)| status) == Some(200)).then_some(()))
            })?
            .with_context(|| {
                format!(
                    "kuma-dp {} was not ready within {READY_TIMEOUT:?}; its last lines:\n{}",
                    side.dataplane,
                    indent(&self.procs.log_tail(side.agent, 15), "    ")
                )
            })?;
        }
        let mut envoys = Vec::new();
        for side in [&mut backend, &mut web] {
            side.envoys = self.envoy_pids(side);
            envoys.push(format!("{} pid {}", side.dataplane, join(&side.envoys)));
        }
        say(&format!(
            "both dataplanes are ready after {:.1} s (Envoy: {})",
            started.elapsed().as_secs_f64(),
            envoys.join(", ")
        ));
        Ok(Mesh {
            kumactl_config,
            backend,
            web,
        })
    }

    /// Starts the app and the kuma-dp of one side.
    fn start_side(
        &mut self,
        service: &'static str,
        outbound_port: Option<u16>,
        dp: SocketAddr,
    ) -> Result<Side> {
        let dir = self.dir.path().to_path_buf();
        let dataplane = format!("{service}-1");
        let app_port = free_port()?;
        let inbound_port = free_port()?;
        let envoy_admin_port = free_port()?;
        let readiness_port = free_port()?;
        let mut app = Command::new(&self.bins.demo_app);
        app.args([
            "--name",
            service,
            "--listen",
            &format!("127.0.0.1:{app_port}"),
        ]);
        let upstream = outbound_port
            .map(|port| format!(" --upstream 127.0.0.1:{port}"))
            .unwrap_or_default();
        if let Some(port) = outbound_port {
            app.args(["--upstream", &format!("127.0.0.1:{port}")]);
        }
        println!();
        command(&format!(
            "demo-app --name {service} --listen 127.0.0.1:{app_port}{upstream} &"
        ));
        self.procs.spawn(
            &format!("demo-app {service}"),
            app,
            dir.join(format!("logs/{service}-app.log")),
        )?;

        let dataplane_file = dir.join(format!("{dataplane}.yaml"));
        let yaml = dataplane_yaml(&dataplane, service, inbound_port, app_port, outbound_port);
        std::fs::write(&dataplane_file, &yaml)?;
        command(&format!("cat {dataplane}.yaml"));
        output(&yaml);
        let mut command_line = Command::new(&self.bins.kuma_dp);
        command_line
            .arg("run")
            .arg("--cp-address")
            .arg(format!("https://{dp}"))
            .arg("--ca-cert-file")
            .arg(dir.join("cp-lite/dp-server-ca.pem"))
            .arg("--dataplane-file")
            .arg(&dataplane_file)
            .arg("--dataplane-token-file")
            .arg(dir.join(format!("{dataplane}.token")))
            .arg("--binary-path")
            .arg(&self.bins.envoy)
            .arg("--work-dir")
            .arg(dir.join(format!("{dataplane}.work")))
            .arg("--admin-port")
            .arg(envoy_admin_port.to_string())
            .arg("--concurrency")
            .arg("1")
            .arg("--drain-time")
            .arg(DRAIN_TIME)
            .arg("--envoy-log-level")
            .arg("warning")
            .env("KUMA_READINESS_PORT", readiness_port.to_string())
            .env("NO_COLOR", "1");
        command(&format!(
            "kuma-dp run --cp-address https://{dp} --ca-cert-file cp-lite/dp-server-ca.pem \\\n       \
             --dataplane-file {dataplane}.yaml --dataplane-token-file {dataplane}.token \\\n       \
             --admin-port {envoy_admin_port} --drain-time {DRAIN_TIME} &"
        ));
        let agent = self.procs.spawn(
            &format!("kuma-dp {dataplane}"),
            command_line,
            dir.join(format!("logs/{dataplane}-kuma-dp.log")),
        )?;
        Ok(Side {
            service,
            dataplane,
            app_port,
            inbound_port,
            outbound_port,
            envoy_admin_port,
            readiness_port,
            agent,
            envoys: Vec::new(),
        })
    }

    /// Step 1: web's outbound reaches backend's Envoy, whose RBAC refuses the connection.
    fn denied(&mut self, mesh: &Mesh) -> Result<()> {
        let (web, backend) = (&mesh.web, &mesh.backend);
        let outbound = web.outbound_port.context("web has an outbound")?;
        let endpoint = format!("::127.0.0.1:{}::", backend.inbound_port);
        let routed = self.wait_for(PROPAGATION_TIMEOUT, || {
            let listening = TcpStream::connect(("127.0.0.1", outbound)).is_ok();
            let clusters = http_get(web.envoy_admin_port, "/clusters")
                .map(|(_, body)| body)
                .unwrap_or_default();
            Ok((listening && clusters.contains(&endpoint)).then_some(()))
        })?;
        if routed.is_none() {
            let listeners = http_get(web.envoy_admin_port, "/listeners")
                .map(|(_, body)| body)
                .unwrap_or_default();
            bail!(
                "web's Envoy has no outbound listener on 127.0.0.1:{outbound} with backend's \
                 endpoint 127.0.0.1:{} after {PROPAGATION_TIMEOUT:?}; its listeners:\n{}",
                backend.inbound_port,
                indent(listeners.trim(), "    ")
            );
        }
        say(&format!(
            "web's Envoy: outbound listener 127.0.0.1:{outbound} → backend at 127.0.0.1:{}",
            backend.inbound_port
        ));

        command(&format!("curl http://127.0.0.1:{}/", web.app_port));
        let mut last = None;
        let denied = self.wait_for(PROPAGATION_TIMEOUT, || {
            let response = http_get(web.app_port, "/");
            let denials = rbac_counter(backend.envoy_admin_port, "denied");
            last = Some((response.clone(), denials));
            match response {
                Some((200, body)) => Err(anyhow!(
                    "web → backend was allowed without a permission: {}",
                    body.trim()
                )),
                Some((502, body)) if body.starts_with("upstream reset") && denials > 0 => {
                    Ok(Some((body, denials)))
                }
                _ => Ok(None),
            }
        })?;
        let Some((body, denials)) = denied else {
            bail!(
                "no denial by backend's RBAC within {PROPAGATION_TIMEOUT:?}; last response and \
                 denial count: {last:?}"
            );
        };
        output(&format!("502 {}", body.trim()));
        say(&format!(
            "backend's Envoy refused the connection: rbac.denied = {denials}"
        ));
        Ok(())
    }

    /// Step 2: `kumactl apply` of a TrafficPermission web → backend.
    fn permit(&mut self, mesh: &Mesh) -> Result<Instant> {
        let yaml = traffic_permission_yaml();
        command("kumactl apply -f - <<EOF");
        output(&format!("{yaml}EOF"));
        let out = self.kumactl(&mesh.kumactl_config, &["apply", "-f", "-"], Some(&yaml))?;
        let applied = Instant::now();
        output(&stdout(&out));
        Ok(applied)
    }

    /// Step 3: the request goes through once the permission reached backend's Envoy.
    fn allowed(&mut self, mesh: &Mesh, applied: Instant) -> Result<()> {
        let (web, backend) = (&mesh.web, &mesh.backend);
        command(&format!("curl http://127.0.0.1:{}/", web.app_port));
        let mut last = None;
        let allowed = self.wait_for(PROPAGATION_TIMEOUT, || {
            let response = http_get(web.app_port, "/");
            last = response.clone();
            Ok(response.filter(|(status, _)| *status == 200))
        })?;
        let Some((_, body)) = allowed else {
            bail!(
                "web → backend still fails {PROPAGATION_TIMEOUT:?} after the TrafficPermission; \
                 last response: {last:?}"
            );
        };
        let took = applied.elapsed();
        output(&format!("200 {}", body.trim()));
        for side in [web, backend] {
            let now = self.envoy_pids(side);
            ensure!(
                now == side.envoys,
                "{}'s Envoy was restarted: pid {} at the start, {} now",
                side.dataplane,
                join(&side.envoys),
                join(&now)
            );
        }
        ensure!(
            body.contains("hello from backend"),
            "web answered 200 without backend's answer: {body}"
        );
        say(&format!(
            "allowed {:.2} s after the apply, without an Envoy restart (backend's Envoy: \
             rbac.allowed = {})",
            took.as_secs_f64(),
            rbac_counter(backend.envoy_admin_port, "allowed")
        ));
        Ok(())
    }

    /// Step 4: each inbound listener presents its dataplane's certificate; openssl shows the
    /// SPIFFE ID and verifies it against the mesh CA.
    fn identities(&mut self, mesh: &Mesh) -> Result<[Presented; 2]> {
        let secret = format!("{MESH}.ca-builtin-cert-ca-1");
        let out = self.kumactl(
            &mesh.kumactl_config,
            &["get", "secret", &secret, "-m", MESH, "-o", "json"],
            None,
        )?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing the CA secret")?;
        let ca = base64::engine::general_purpose::STANDARD
            .decode(json["data"].as_str().context("the CA secret has no data")?)
            .context("decoding the CA secret")?;
        std::fs::write(self.dir.path().join("ca.pem"), ca)?;
        say(&format!(
            "the mesh CA, from the secret {secret} (kumactl get secret {secret} -m {MESH}), \
             saved as ca.pem"
        ));
        let backend = self.identity(&mesh.backend)?;
        let web = self.identity(&mesh.web)?;
        Ok([backend, web])
    }

    fn identity(&mut self, side: &Side) -> Result<Presented> {
        let port = side.inbound_port;
        println!();
        command(&format!(
            "openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null \\\n       \
             | openssl x509 -noout -subject -ext subjectAltName -serial -enddate"
        ));
        let pem = self.presented(port)?;
        let file = self.dir.path().join(format!("{}.pem", side.dataplane));
        std::fs::write(&file, &pem)?;
        let text = self.openssl(
            &[
                "x509",
                "-noout",
                "-subject",
                "-ext",
                "subjectAltName",
                "-serial",
                "-enddate",
            ],
            Some(pem.as_bytes()),
        )?;
        output(text.trim_end());
        let spiffe = format!("URI:spiffe://{MESH}/{}", side.service);
        ensure!(
            text.contains(&spiffe),
            "{}'s certificate has no {spiffe}:\n{text}",
            side.dataplane
        );
        let serial = serial(&text).context("openssl printed no serial")?;
        let name = format!("{}.pem", side.dataplane);
        command(&format!("openssl verify -CAfile ca.pem {name}"));
        let verified = self.openssl(&["verify", "-CAfile", "ca.pem", &name], None)?;
        output(verified.trim_end());
        ensure!(
            verified.contains(": OK"),
            "{name} does not verify against the mesh CA: {verified}"
        );
        Ok(Presented { serial, file })
    }

    /// Step 5: both certificates are replaced before they expire, in the same Envoy processes,
    /// while web keeps calling backend.
    fn rotation(&mut self, mesh: &Mesh, certificates: [Presented; 2]) -> Result<()> {
        let sides = [&mesh.backend, &mesh.web];
        let envoys: Vec<Vec<u32>> = sides.iter().map(|side| side.envoys.clone()).collect();
        say(&format!(
            "dpCert lifetime {}s: each kuma-dp gets a new certificate at 4/5 of it and hands it to \
             its Envoy over SDS; web calls backend every {} ms meanwhile",
            CERT_LIFETIME.as_secs(),
            TRAFFIC_INTERVAL.as_millis()
        ));
        let started = Instant::now();
        let deadline = started + CERT_LIFETIME + Duration::from_secs(5);
        let mut current: Vec<Option<Presented>> = vec![None, None];
        let (mut requests, mut failures) = (0u32, Vec::new());
        // Until both rotated, then [`AFTER_ROTATION`] more of traffic on the new certificates.
        let mut rotated: Option<Instant> = None;
        while rotated.is_none_or(|at| at.elapsed() < AFTER_ROTATION) {
            self.alive()?;
            if rotated.is_none() && Instant::now() >= deadline {
                bail!(
                    "no new certificate for {} within the {}s lifetime",
                    sides
                        .iter()
                        .zip(&current)
                        .filter(|(_, c)| c.is_none())
                        .map(|(side, _)| side.dataplane.as_str())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    CERT_LIFETIME.as_secs()
                );
            }
            requests += 1;
            match http_get(mesh.web.app_port, "/") {
                Some((200, _)) => {}
                other => failures.push(other),
            }
            for (i, side) in sides.iter().enumerate() {
                if current[i].is_some() {
                    continue;
                }
                let old = &certificates[i];
                let pem = self.presented(side.inbound_port)?;
                let text = self.openssl(&["x509", "-noout", "-serial"], Some(pem.as_bytes()))?;
                let serial = serial(&text).context("openssl printed no serial")?;
                if serial == old.serial {
                    continue;
                }
                let old_file = old.file.to_string_lossy().into_owned();
                let still_valid =
                    self.openssl_status(&["x509", "-noout", "-checkend", "0", "-in", &old_file])?;
                ensure!(
                    still_valid,
                    "{}'s certificate {} expired before it was replaced",
                    side.dataplane,
                    old.serial
                );
                say(&format!(
                    "+{:>4.1} s  {}: serial {} → {} (the old certificate was still valid)",
                    started.elapsed().as_secs_f64(),
                    side.dataplane,
                    old.serial,
                    serial
                ));
                current[i] = Some(Presented {
                    serial,
                    file: old.file.clone(),
                });
            }
            if rotated.is_none() && current.iter().all(Option::is_some) {
                rotated = Some(Instant::now());
            }
            std::thread::sleep(TRAFFIC_INTERVAL);
        }
        let after: Vec<Vec<u32>> = sides.iter().map(|side| self.envoy_pids(side)).collect();
        ensure!(
            after == envoys,
            "Envoy was restarted: pids {envoys:?} at the start, {after:?} now"
        );
        say(&format!(
            "the same Envoy processes serve the new certificates ({})",
            sides
                .iter()
                .zip(&after)
                .map(|(side, pids)| format!("{} pid {}", side.dataplane, join(pids)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        ensure!(
            failures.is_empty(),
            "{} of {requests} requests web → backend failed during the rotation; first: {:?}",
            failures.len(),
            failures.first()
        );
        say(&format!(
            "{requests} requests web → backend during and after the rotation: all answered 200"
        ));
        Ok(())
    }

    /// Step 6: `kumactl inspect dataplanes` lists both dataplanes.
    fn inspect(&mut self, mesh: &Mesh) -> Result<()> {
        command("kumactl inspect dataplanes");
        let out = self.kumactl(&mesh.kumactl_config, &["inspect", "dataplanes"], None)?;
        let text = stdout(&out);
        output(text.trim_end());
        for side in [&mesh.backend, &mesh.web] {
            ensure!(
                text.lines().any(|line| line.contains(&side.dataplane)),
                "{} is missing from kumactl inspect dataplanes",
                side.dataplane
            );
        }
        Ok(())
    }

    /// Polls `check` every [`POLL`] until it returns `Some`, for at most `timeout`; `Ok(None)`
    /// on timeout. Fails at once on a stop signal or when a process of the demo exited.
    fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<T>>,
    ) -> Result<Option<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.alive()?;
            if let Some(value) = check()? {
                return Ok(Some(value));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails on a stop signal or when a process of the demo exited.
    fn alive(&mut self) -> Result<()> {
        self.signals.check()?;
        self.procs.check()
    }

    /// The pids of the Envoy running under a side's kuma-dp.
    fn envoy_pids(&mut self, side: &Side) -> Vec<u32> {
        self.procs
            .descendants(side.agent)
            .into_iter()
            .filter(|p| p.name == "envoy")
            .map(|p| p.pid)
            .collect()
    }

    /// Runs kumactl with the demo's config file; fails with its output when it fails.
    fn kumactl(&self, config: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut command = Command::new(&self.bins.kumactl);
        command.arg("--config-file").arg(config).args(args);
        let out = procs::run(
            command,
            stdin.map(str::as_bytes),
            COMMAND_TIMEOUT,
            &self.signals,
        )?;
        ensure!(
            out.status.success(),
            "kumactl {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// Runs openssl in the temp dir; its stdout, or an error with its output when it fails.
    fn openssl(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let out = self.openssl_output(args, stdin)?;
        ensure!(
            out.status.success(),
            "openssl {} failed: {}{}",
            args.join(" "),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout(&out))
    }

    /// Runs openssl in the temp dir; whether it succeeded.
    fn openssl_status(&self, args: &[&str]) -> Result<bool> {
        Ok(self.openssl_output(args, None)?.status.success())
    }

    fn openssl_output(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output> {
        let mut command = Command::new("openssl");
        command.args(args).current_dir(self.dir.path());
        procs::run(command, stdin, COMMAND_TIMEOUT, &self.signals).map_err(|error| {
            if error.is::<Interrupted>() {
                error
            } else {
                error.context("running openssl (`make demo` installs it)")
            }
        })
    }

    /// The certificate presented on 127.0.0.1:`port`, read by `openssl s_client`. A STRICT
    /// inbound listener asks for a client certificate too, which s_client does not have: the
    /// handshake fails after the server's certificate arrived.
    fn presented(&self, port: u16) -> Result<String> {
        let out = self.openssl_output(
            &["s_client", "-connect", &format!("127.0.0.1:{port}")],
            None,
        )?;
        let text = stdout(&out);
        let begin = "-----BEGIN CERTIFICATE-----";
        let end = "-----END CERTIFICATE-----";
        let start = text.find(begin);
        let stop = start.and_then(|s| text[s..].find(end).map(|e| s + e + end.len()));
        match (start, stop) {
            (Some(start), Some(stop)) => Ok(format!("{}\n", &text[start..stop])),
            _ => bail!(
                "no certificate presented on 127.0.0.1:{port}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }
}

impl Binaries {
    /// The workspace binaries next to this one, and Envoy from `$ENVOY_BINARY` or `.tools/`.
    fn find() -> Result<Binaries> {
        let exe = std::env::current_exe().context("locating the demo binary")?;
        let dir = exe.parent().context("the demo binary's directory")?;
        let workspace = |name: &str| {
            let path = dir.join(name);
            ensure!(
                path.exists(),
                "{} is missing: run `cargo build --workspace --bins` first (`make demo` does)",
                path.display()
            );
            Ok(path)
        };
        let envoy = match std::env::var_os("ENVOY_BINARY") {
            Some(path) => PathBuf::from(path),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/envoy/envoy/_bin/envoy"),
        };
        ensure!(
            envoy.exists(),
            "Envoy is missing at {}: run `.ci/install-deps` (`make demo` does)",
            envoy.display()
        );
        Ok(Binaries {
            cp_lite: workspace("cp-lite")?,
            kumactl: workspace("kumactl")?,
            kuma_dp: workspace("kuma-dp")?,
            demo_app: workspace("demo-app")?,
            envoy,
        })
    }
}

/// Bold headings on a terminal, unless `NO_COLOR` is set.
#[derive(Debug, Clone, Copy)]
struct Style {
    bold: bool,
}

impl Style {
    fn detect() -> Style {
        Style {
            bold: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn bold(self, text: &str) -> String {
        if self.bold {
            format!("\x1b[1m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

fn mesh_yaml() -> String {
    format!(
        "type: Mesh\n\
         name: {MESH}\n\
         mtls:\n\
         \x20 enabledBackend: ca-1\n\
         \x20 backends:\n\
         \x20 - name: ca-1\n\
         \x20   type: builtin\n\
         \x20   dpCert:\n\
         \x20     rotation:\n\
         \x20       expiration: {}s\n",
        CERT_LIFETIME.as_secs()
    )
}

fn dataplane_yaml(
    name: &str,
    service: &str,
    inbound_port: u16,
    app_port: u16,
    outbound_port: Option<u16>,
) -> String {
    let mut yaml = format!(
        "type: Dataplane\n\
         mesh: {MESH}\n\
         name: {name}\n\
         networking:\n\
         \x20 address: 127.0.0.1\n\
         \x20 inbound:\n\
         \x20 - port: {inbound_port}\n\
         \x20   servicePort: {app_port}\n\
         \x20   tags:\n\
         \x20     kuma.io/service: {service}\n"
    );
    if let Some(port) = outbound_port {
        yaml.push_str(&format!(
            "\x20 outbound:\n\
             \x20 - port: {port}\n\
             \x20   tags:\n\
             \x20     kuma.io/service: backend\n"
        ));
    }
    yaml
}

fn traffic_permission_yaml() -> String {
    format!(
        "type: TrafficPermission\n\
         mesh: {MESH}\n\
         name: web-to-backend\n\
         sources:\n\
         - match:\n\
         \x20   kuma.io/service: web\n\
         destinations:\n\
         - match:\n\
         \x20   kuma.io/service: backend\n"
    )
}

/// The API and DP server addresses cp-lite logged (`listening server="..." address=...`).
fn cp_addresses(log: &Path) -> Option<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string(log).ok()?;
    let find = |server: &str| {
        text.lines()
            .filter(|l| l.contains("listening") && l.contains(&format!("server=\"{server}\"")))
            .find_map(|l| {
                l.split("address=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    };
    Some((find("API server")?, find("DP server")?))
}

/// The sum of the RBAC counters `<prefix>rbac.<name>` in an Envoy's `/stats`.
fn rbac_counter(admin_port: u16, name: &str) -> u64 {
    let suffix = format!("rbac.{name}");
    http_get(admin_port, "/stats?filter=rbac")
        .map(|(_, body)| body)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(stat, _)| {
            stat.ends_with(&suffix)
                && !stat.ends_with(&format!("shadow_{name}"))
                && !stat.contains("shadow")
        })
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// The `serial=` line of `openssl x509 -serial`.
fn serial(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("serial="))
        .map(str::to_string)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn join(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "none".to_string();
    }
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line of the story.
fn say(text: &str) {
    println!("   {text}");
}

/// A command, as one would type it.
fn command(text: &str) {
    println!("   $ {text}");
}

/// What a command printed.
fn output(text: &str) {
    if !text.trim().is_empty() {
        println!("{}", indent(text.trim_end(), "     "));
    }
}
