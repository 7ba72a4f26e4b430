//! `make bench`, agent figures: the real cp-lite, kuma-dp and Envoy 1.40, one `name: value unit`
//! line each.
//!
//! - `first_cert_ms`: kuma-dp started → first certificate held (its `certificate issued` log
//!   line), median of [`STARTS`] starts.
//! - `envoy_ready_ms`: kuma-dp started → its `/ready` answers 200 (Envoy ready), median.
//! - `agent_rss_idle_kib`: the agent's resident memory, idle, with Envoy connected.
//! - `sds_push_p99_ms`: a new certificate pushed → Envoy's ACK, over the rotations of a mesh
//!   with 1 s certificates (the agent's `ACK ... latency_us` debug lines for secrets).
//! - `policy_propagation_p99_ms`: `kumactl apply` of a TrafficPermission started → Envoy holds
//!   the new RBAC rules of the inbound (its ECDS `config_reload` counter moved), over
//!   [`POLICY_CHANGES`] changes that alternate the allowed source.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use integration_tests::{CpLite, KumaDp, KumaDpOptions, Kumactl, eventually, free_port};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Agent starts measured for the start-up figures.
const STARTS: usize = 5;
/// How long rotations are observed for `sds_push_p99_ms`.
const ROTATIONS_WINDOW: Duration = Duration::from_secs(30);
/// Permission changes measured for `policy_propagation_p99_ms`.
const POLICY_CHANGES: usize = 40;

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = CpLite::start(&dir.path().join("data"))?;
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url())?;
    kumactl.apply(&mesh("default", "1h"))?;
    kumactl.apply(&mesh("rotating", "1s"))?;

    let mut first_cert = Vec::new();
    let mut envoy_ready = Vec::new();
    let mut rss = 0;
    for start in 0..STARTS {
        let options = options(
            &cp,
            &kumactl,
            dir.path(),
            "default",
            &format!("web-{start}"),
        )?;
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let agent = KumaDp::start(&options)?;
        eventually(Duration::from_secs(30), || {
            (agent.ready_status() == Some(200)).then_some(())
        })
        .with_context(|| format!("agent not ready: {}", agent.logs_text()))?;
        envoy_ready.push(started.elapsed());
        first_cert.push(first_certificate_after(&agent.logs_text(), started_wall)?);
        if start == 0 {
            std::thread::sleep(Duration::from_secs(2));
            rss = rss_kib(agent.pid().context("agent pid")?)?;
        }
    }
    println!("first_cert_ms: {:.1} ms", median_ms(&mut first_cert));
    println!("envoy_ready_ms: {:.1} ms", median_ms(&mut envoy_ready));
    println!("agent_rss_idle_kib: {rss} KiB");

    let backend = options(&cp, &kumactl, dir.path(), "default", "backend")?;
    let agent = KumaDp::start(&backend)?;
    agent.wait_ready(Duration::from_secs(30))?;
    let p99 = policy_propagation_p99(&kumactl, &agent)?;
    println!("policy_propagation_p99_ms: {p99:.1} ms");
    drop(agent);

    let mut options = options(&cp, &kumactl, dir.path(), "rotating", "web-rotating")?;
    options.env.push((
        "KUMA_DP_LOG_FILTER".to_string(),
        "info,kuma_dp::xds=debug".to_string(),
    ));
    let agent = KumaDp::start(&options)?;
    std::thread::sleep(ROTATIONS_WINDOW);
    let logs = agent.logs_text();
    let mut latencies: Vec<f64> = logs
        .lines()
        .filter(|l| l.contains("ACK") && l.contains("Secret") && l.contains("latency_us="))
        .filter_map(|l| {
            l.split("latency_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|us| us / 1000.0)
        .collect();
    let rotations = logs.matches("certificate issued").count();
    if latencies.len() < 10 {
        bail!(
            "only {} secret ACKs in {ROTATIONS_WINDOW:?}",
            latencies.len()
        );
    }
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!("sds_push_p99_ms: {p99:.2} ms");
    println!(
        "sds_push_samples: {} pushes ({rotations} certificates)",
        latencies.len()
    );
    Ok(())
}

/// Applies TrafficPermissions for `backend` with alternating sources and times each until
/// Envoy reloaded the inbound's RBAC configuration.
fn policy_propagation_p99(kumactl: &Kumactl, agent: &KumaDp) -> Result<f64> {
    let mut samples = Vec::with_capacity(POLICY_CHANGES);
    let mut reloads = rbac_reloads(agent).context("Envoy stats")?;
    for change in 0..POLICY_CHANGES {
        let started = Instant::now();
        kumactl.apply(&format!(
            "type: TrafficPermission\nmesh: default\nname: to-backend\nsources:\n- match:\n    kuma.io/service: client-{change}\ndestinations:\n- match:\n    kuma.io/service: backend\n"
        ))?;
        // Polled every 2 ms: `eventually`'s 50 ms step would dominate the figure.
        let now = loop {
            if let Some(now) = rbac_reloads(agent).filter(|&n| n > reloads) {
                break now;
            }
            if started.elapsed() > Duration::from_secs(5) {
                bail!("change {change} never reached Envoy");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        reloads = now;
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[(samples.len() * 99 / 100).min(samples.len() - 1)])
}

/// The sum of Envoy's ECDS `config_reload` counters.
fn rbac_reloads(agent: &KumaDp) -> Option<u64> {
    let (status, body) =
        integration_tests::http_get(agent.admin_port, "/stats?filter=config_reload")?;
    (status == 200).then(|| {
        body.lines()
            .filter(|l| {
                l.starts_with("extension_config_discovery.") && l.contains("config_reload:")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    })
}

fn mesh(name: &str, lifetime: &str) -> String {
    format!(
        "type: Mesh\nname: {name}\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n    dpCert:\n      rotation:\n        expiration: {lifetime}\n"
    )
}

fn options(
    cp: &CpLite,
    kumactl: &Kumactl,
    dir: &std::path::Path,
    mesh: &str,
    name: &str,
) -> Result<KumaDpOptions> {
    let out = kumactl.run(&[
        "generate",
        "dataplane-token",
        "--name",
        name,
        "--mesh",
        mesh,
        "--valid-for",
        "1h",
    ])?;
    if !out.success {
        bail!("token: {}", out.all());
    }
    let token_file = dir.join(format!("{name}.token"));
    std::fs::write(&token_file, out.stdout)?;
    Ok(KumaDpOptions {
        cp_data_dir: cp.data_dir.clone(),
        cp_dp_address: cp.dp,
        dataplane_yaml: format!(
            "type: Dataplane\nmesh: {mesh}\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: {}\n    servicePort: {}\n    tags:\n      kuma.io/service: {name}\n",
            free_port(),
            free_port()
        ),
        token_file,
        work_dir: dir.join(format!("{name}-work")),
        args: Vec::new(),
        env: Vec::new(),
    })
}

/// Time from `started` to the timestamp of the first `certificate issued` line.
fn first_certificate_after(logs: &str, started: SystemTime) -> Result<Duration> {
    let line = logs
        .lines()
        .find(|l| l.contains("certificate issued"))
        .context("no `certificate issued` line")?;
    let stamp = line.split_whitespace().next().context("no timestamp")?;
    let issued =
        OffsetDateTime::parse(stamp, &Rfc3339).with_context(|| format!("timestamp {stamp:?}"))?;
    let started = OffsetDateTime::from(started);
    let elapsed = issued - started;
    Ok(Duration::try_from(elapsed)?)
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
