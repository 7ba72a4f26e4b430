//! `make bench`: performance figures, one `name: value unit` line each.
//!
//! - `csr_sign_raw[_rsa]_per_s`: the crypto the DP server does per request (token verify, CSR
//!   verify, leaf sign), in-process on every core, with a P-256 (or RSA-2048) CA.
//! - `csr_sign_e2e[_rsa]_per_s` and `..._p99_ms`: 64 concurrent clients with pre-built CSRs
//!   against the real `cp-lite` binary's gRPC+TLS DP server, token checked on every call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cp_lite::ca::Issuer;
use cp_lite::tokens::{self, DataplaneClaims, RevocationList, SigningKey};
use integration_tests::{CpLite, dp};
use time::OffsetDateTime;

/// How long each measurement runs.
const MEASURE: Duration = Duration::from_secs(5);
/// Concurrent clients of the end-to-end measurement.
const CLIENTS: usize = 64;
/// Distinct pre-built CSRs, cycled through.
const CSRS: usize = 256;

fn main() -> Result<()> {
    let csrs = Arc::new(build_csrs()?);
    let p256 = p256_ca()?;
    let rsa = rsa_ca()?;

    let raw = raw_per_second(&p256, &csrs)?;
    println!("csr_sign_raw_per_s: {raw:.0} signings/s");
    let raw_rsa = raw_per_second(&rsa, &csrs)?;
    println!("csr_sign_raw_rsa_per_s: {raw_rsa:.0} signings/s");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let cp = CpLite::start_with_env(&data, &[("KUMA_STORE_TYPE", "memory")])?;
    runtime.block_on(async {
        let (rate, p99) = end_to_end(&cp, &data, "p256", &p256, &csrs).await?;
        println!("csr_sign_e2e_per_s: {rate:.0} signings/s");
        println!("csr_sign_e2e_p99_ms: {p99:.2} ms");
        println!("csr_sign_e2e_ratio: {:.2} of raw", rate / raw);
        let (rate, p99) = end_to_end(&cp, &data, "rsa", &rsa, &csrs).await?;
        println!("csr_sign_e2e_rsa_per_s: {rate:.0} signings/s");
        println!("csr_sign_e2e_rsa_p99_ms: {p99:.2} ms");
        println!("csr_sign_e2e_rsa_ratio: {:.2} of raw", rate / raw_rsa);
        anyhow::Ok(())
    })?;
    Ok(())
}

/// A CA certificate and key in PEM.
struct Ca {
    cert_pem: String,
    key_pem: String,
}

fn p256_ca() -> Result<Ca> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench P-256 CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn rsa_ca() -> Result<Ca> {
    let pair = cp_lite::ca::generate_builtin_root(
        "bench",
        2048,
        Duration::from_secs(3600),
        OffsetDateTime::now_utc(),
    )?;
    Ok(Ca {
        cert_pem: pair.cert_pem.clone(),
        key_pem: pair.key_pem.expose().to_string(),
    })
}

fn build_csrs() -> Result<Vec<Vec<u8>>> {
    (0..CSRS)
        .map(|_| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            Ok(params.serialize_request(&key)?.der().to_vec())
        })
        .collect()
}

/// Token verify + CSR verify + leaf sign on every core for [`MEASURE`].
fn raw_per_second(ca: &Ca, csrs: &Arc<Vec<Vec<u8>>>) -> Result<f64> {
    let issuer = Arc::new(Issuer::from_pem(
        ca.cert_pem.as_bytes(),
        ca.key_pem.as_bytes(),
    )?);
    let signing_key = SigningKey::generate()?;
    let claims = DataplaneClaims {
        name: "dp-1".to_string(),
        mesh: "default".to_string(),
        ..DataplaneClaims::default()
    };
    let token = tokens::issue(
        &signing_key,
        1,
        &claims,
        Duration::from_secs(3600),
        OffsetDateTime::now_utc(),
    )?;
    let token = Arc::new(token.as_str().to_string());
    let verification = signing_key.verification_key();
    let identities = Arc::new(vec![
        "spiffe://default/web".to_string(),
        "kuma://kuma.io/service/web".to_string(),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let mut handles = Vec::new();
    for t in 0..threads {
        let (issuer, token, verification, identities, csrs, stop, count) = (
            issuer.clone(),
            token.clone(),
            verification.clone(),
            identities.clone(),
            csrs.clone(),
            stop.clone(),
            count.clone(),
        );
        handles.push(std::thread::spawn(move || -> Result<()> {
            let revoked = RevocationList::empty();
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let now = OffsetDateTime::now_utc();
                let keys = |kid: u32| (kid == 1).then(|| verification.clone());
                tokens::verify(&token, "default", &keys, &revoked, now, false)?;
                issuer.sign_csr(
                    &csrs[i % csrs.len()],
                    &identities,
                    Duration::from_secs(3600),
                    now,
                )?;
                count.fetch_add(1, Ordering::Relaxed);
                i += threads;
            }
            Ok(())
        }));
    }
    let start = Instant::now();
    std::thread::sleep(MEASURE);
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Sets up mesh `mesh` with `ca` as its provided CA, then runs [`CLIENTS`] concurrent clients
/// for [`MEASURE`]; returns signings per second and the p99 latency in milliseconds.
async fn end_to_end(
    cp: &CpLite,
    data: &std::path::Path,
    mesh: &str,
    ca: &Ca,
    csrs: &Arc<Vec<Vec<u8>>>,
) -> Result<(f64, f64)> {
    let http = reqwest::Client::new();
    let api = cp.api_url();
    let put = |url: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let response = http.put(&url).json(&body).send().await?;
            if !response.status().is_success() {
                bail!(
                    "PUT {url}: {} {}",
                    response.status(),
                    response.text().await?
                );
            }
            anyhow::Ok(())
        }
    };
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    put(
        format!("{api}/meshes/{mesh}"),
        serde_json::json!({"type": "Mesh", "name": mesh}),
    )
    .await?;
    put(
        format!("{api}/meshes/{mesh}/secrets/ca-cert"),
        serde_json::json!({"type": "Secret", "mesh": mesh, "name": "ca-cert", "data": b64(&ca.cert_pem)}),
    )
    .await?;
    put(
        format!("{api}/meshes/{mesh}/secrets/ca-key"),
        serde_json::json!({"type": "Secret", "mesh": mesh, "name": "ca-key", "data": b64(&ca.key_pem)}),
    )
    .await?;
    put(
        format!("{api}/meshes/{mesh}"),
        serde_json::json!({"type": "Mesh", "name": mesh, "mtls": {"enabledBackend": "ca-1", "backends": [
            {"name": "ca-1", "type": "provided", "conf": {"cert": {"secret": "ca-cert"}, "key": {"secret": "ca-key"}}}
        ]}}),
    )
    .await?;
    let response = http
        .post(format!("{api}/tokens/dataplane"))
        .json(&serde_json::json!({"name": "dp-1", "mesh": mesh, "validFor": "1h"}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("token: {} {}", response.status(), response.text().await?);
    }
    let token = Arc::new(response.text().await?);
    let dataplane = format!(
        "type: Dataplane\nmesh: {mesh}\nname: dp-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - port: 10001\n    servicePort: 8080\n    tags:\n      kuma.io/service: web\n"
    );
    let mut client = dp::connect(data, cp.dp).await?;
    dp::register(&mut client, &token, mesh, "dp-1", &dataplane).await?;
    dp::sign(&mut client, &token, mesh, "dp-1", csrs[0].clone())
        .await
        .context("first signing")?;

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(dp::connect(data, cp.dp).await?);
    }
    let deadline = Instant::now() + MEASURE;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, mut client) in clients.into_iter().enumerate() {
        let (token, csrs, mesh) = (token.clone(), csrs.clone(), mesh.to_string());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = n;
            while Instant::now() < deadline {
                let began = Instant::now();
                dp::sign(
                    &mut client,
                    &token,
                    &mesh,
                    "dp-1",
                    csrs[i % csrs.len()].clone(),
                )
                .await?;
                latencies.push(began.elapsed());
                i += CLIENTS;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    Ok((
        latencies.len() as f64 / elapsed.as_secs_f64(),
        p99.as_secs_f64() * 1000.0,
    ))
}
