//! `make bench`: performance figures, one `name: value unit` line each.
//!
//! - `csr_sign_raw[_rsa]_per_s`: the crypto the DP server does per request (token verify, CSR
//!   verify, leaf sign), in-process on every core, with a P-256 (or RSA-2048) CA.
//! - `csr_sign_e2e[_rsa]_per_s` and `..._p99_ms`: 64 concurrent clients with pre-built CSRs
//!   against the real `cp-lite` binary's gRPC+TLS DP server, token checked on every call. Each
//!   client has its own HTTP/2 connection, driven by its own task with `h2` (the gRPC framing
//!   is done by hand, requests are encoded once): the clients share the cores with the server,
//!   and a tonic `Channel` spends more than the server's non-crypto work per call. The figures
//!   cover [`MEASURE`] after [`WARM_UP`].
//! - `cp_view_push_1000_ms`: [`VIEW_AGENTS`] Dataplanes registered and as many WatchView
//!   streams open against the real binary, each over its own TLS connection as agents do;
//!   a TrafficPermission change gives every inbound a new rule. The time from the API write
//!   returning until the last stream received its new view, median of [`VIEW_ROUNDS`].
//! - `cp_rss_per_agent_kib`: cp-lite's VmRSS with those streams open minus before they
//!   connected, per stream.
//!
//! `bench <filter>` measures only the figures whose names contain `<filter>`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cp_lite::ca::Issuer;
use cp_lite::tokens::{self, DataplaneClaims, RevocationList, SigningKey, VerificationKey};
use cp_lite_api::v1::{SignCertificateRequest, SignCertificateResponse, View, WatchViewRequest};
use integration_tests::{CpLite, dp};
use prost::Message as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long each measurement runs.
const MEASURE: Duration = Duration::from_secs(3);
/// Rounds of (raw, end-to-end) measurements, back to back; the figures are their medians, and
/// the ratio is the median of each round's ratio, so that a load change on the machine between
/// the raw and the end-to-end measurement does not skew it.
const ROUNDS: usize = 3;
/// How long the end-to-end clients run before each measurement starts (connections, HPACK
/// tables and allocator warm).
const WARM_UP: Duration = Duration::from_millis(500);
/// Concurrent clients of the end-to-end measurement.
const CLIENTS: usize = 64;
/// Distinct pre-built CSRs, cycled through.
const CSRS: usize = 256;
/// Dataplanes, and view streams, of the view push measurement.
const VIEW_AGENTS: usize = 1000;
/// Services they serve: each serves `svc-<i mod VIEW_SERVICES>` and calls the next one, so an
/// outbound has `VIEW_AGENTS / VIEW_SERVICES` endpoints.
const VIEW_SERVICES: usize = 100;
/// Measured policy changes (after one unmeasured change).
const VIEW_ROUNDS: usize = 5;
/// How many streams connect at once.
const VIEW_CONNECT_BATCH: usize = 50;
/// How long a round may take before the bench gives up.
const VIEW_ROUND_TIMEOUT: Duration = Duration::from_secs(30);
/// The mesh of the view push measurement.
const VIEW_MESH: &str = "views";

fn main() -> Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let wanted = |names: &[&str]| names.iter().any(|n| n.contains(filter.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    sign_figures(&runtime, &dir.path().join("data"), &wanted)?;
    if wanted(&["cp_view_push_1000_ms", "cp_rss_per_agent_kib"]) {
        let (push_ms, rss_kib) = runtime.block_on(view_figures(&dir.path().join("views")))?;
        println!("cp_view_push_1000_ms: {push_ms:.1} ms");
        println!("cp_rss_per_agent_kib: {rss_kib:.1} KiB");
    }
    Ok(())
}

/// The CSR signing figures, per CA.
fn sign_figures(
    runtime: &tokio::runtime::Runtime,
    data: &std::path::Path,
    wanted: &dyn Fn(&[&str]) -> bool,
) -> Result<()> {
    let names = |suffix: &str| {
        [
            format!("csr_sign_raw{suffix}_per_s"),
            format!("csr_sign_e2e{suffix}_per_s"),
            format!("csr_sign_e2e{suffix}_p99_ms"),
            format!("csr_sign_e2e{suffix}_ratio"),
        ]
    };
    let cas: Vec<(&str, &str)> = [("", "p256"), ("_rsa", "rsa")]
        .into_iter()
        .filter(|(suffix, _)| wanted(&names(suffix).iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    if cas.is_empty() {
        return Ok(());
    }
    let csrs = Arc::new(build_csrs()?);
    let cp = CpLite::start_with_env(data, &[("KUMA_STORE_TYPE", "memory")])?;
    for (suffix, mesh) in cas {
        let ca = if suffix.is_empty() {
            p256_ca()?
        } else {
            rsa_ca()?
        };
        let raw = Raw::new(&ca)?;
        let mut e2e = runtime.block_on(EndToEnd::set_up(&cp, data, mesh, &ca, &csrs))?;
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let raw = raw.per_second(&csrs)?;
            let (rate, p99) = runtime.block_on(e2e.run())?;
            rounds.push([raw, rate, p99, rate / raw]);
        }
        let [raw, rate, p99, ratio] = [0, 1, 2, 3].map(|i| median(rounds.iter().map(|r| r[i])));
        println!("csr_sign_raw{suffix}_per_s: {raw:.0} signings/s");
        println!("csr_sign_e2e{suffix}_per_s: {rate:.0} signings/s");
        println!("csr_sign_e2e{suffix}_p99_ms: {p99:.2} ms");
        println!("csr_sign_e2e{suffix}_ratio: {ratio:.2} of raw");
    }
    Ok(())
}

/// The median of `values` (the upper one of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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

/// The crypto the DP server does per request, with one CA and one token.
struct Raw {
    issuer: Arc<Issuer>,
    token: Arc<String>,
    verification: VerificationKey,
    identities: Arc<Vec<String>>,
}

impl Raw {
    fn new(ca: &Ca) -> Result<Self> {
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
        Ok(Raw {
            issuer,
            token: Arc::new(token.as_str().to_string()),
            verification: signing_key.verification_key(),
            identities: Arc::new(vec![
                "spiffe://default/web".to_string(),
                "kuma://kuma.io/service/web".to_string(),
            ]),
        })
    }

    /// Token verify + CSR verify + leaf sign on every core for [`MEASURE`]: signings per
    /// second.
    fn per_second(&self, csrs: &Arc<Vec<Vec<u8>>>) -> Result<f64> {
        let Raw {
            issuer,
            token,
            verification,
            identities,
        } = self;
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
}

/// [`CLIENTS`] connected clients, each with its own connection, and the requests they send.
struct EndToEnd {
    clients: Vec<SignClient>,
    bodies: Arc<Vec<Bytes>>,
}

impl EndToEnd {
    /// Sets up mesh `mesh` with `ca` as its provided CA, registers `dp-1` and connects the clients.
    async fn set_up(
        cp: &CpLite,
        data: &std::path::Path,
        mesh: &str,
        ca: &Ca,
        csrs: &Arc<Vec<Vec<u8>>>,
    ) -> Result<Self> {
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

        let bodies: Arc<Vec<Bytes>> = Arc::new(
            csrs.iter()
                .map(|csr| grpc_frame(mesh, csr))
                .collect::<Result<_>>()?,
        );
        let template = RequestTemplate::new(&token)?;
        let tls = client_tls(data)?;
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            clients.push(SignClient::connect(&tls, cp.dp, template.clone()).await?);
        }
        Ok(EndToEnd { clients, bodies })
    }

    /// Runs the clients concurrently for [`WARM_UP`] then [`MEASURE`]; returns signings per
    /// second and the p99 latency in milliseconds, of the calls within the measurement.
    async fn run(&mut self) -> Result<(f64, f64)> {
        let window_start = Instant::now() + WARM_UP;
        let window_end = window_start + MEASURE;
        let mut tasks = tokio::task::JoinSet::new();
        for (n, mut client) in self.clients.drain(..).enumerate() {
            let bodies = self.bodies.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                let mut i = n;
                while Instant::now() < window_end {
                    let began = Instant::now();
                    client.sign(bodies[i % bodies.len()].clone()).await?;
                    let ended = Instant::now();
                    if began >= window_start && ended <= window_end {
                        latencies.push(ended - began);
                    }
                    i += CLIENTS;
                }
                anyhow::Ok((client, latencies))
            });
        }
        let mut latencies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (client, client_latencies) = joined??;
            self.clients.push(client);
            latencies.extend(client_latencies);
        }
        latencies.sort();
        let p99 = latencies
            .get(latencies.len() * 99 / 100)
            .copied()
            .unwrap_or_default();
        Ok((
            latencies.len() as f64 / MEASURE.as_secs_f64(),
            p99.as_secs_f64() * 1000.0,
        ))
    }
}

/// The gRPC frame of a SignCertificate request for `dp-1` in `mesh`: built once per CSR, so
/// that the clients spend their time on the wire, not on encoding.
fn grpc_frame(mesh: &str, csr: &[u8]) -> Result<Bytes> {
    encode_frame(&SignCertificateRequest {
        dataplane: dp::dataplane(mesh, "dp-1"),
        csr_der: csr.to_vec(),
    })
}

/// `message` as one uncompressed gRPC frame.
fn encode_frame(message: &impl prost::Message) -> Result<Bytes> {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0); // not compressed
    frame.put_u32(u32::try_from(len)?);
    message.encode_raw(&mut frame);
    Ok(frame.freeze())
}

/// The TLS client configuration: the DP server's CA from the data directory, ALPN h2.
fn client_tls(data: &std::path::Path) -> Result<TlsConnector> {
    let pem = std::fs::read(data.join("dp-server-ca.pem")).context("dp-server-ca.pem")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The parts of a SignCertificate request that do not change between calls.
#[derive(Clone)]
struct RequestTemplate {
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl RequestTemplate {
    /// A SignCertificate call.
    fn new(token: &str) -> Result<Self> {
        Self::for_method(token, "SignCertificate")
    }

    /// A call of `method` of the DataplaneService.
    fn for_method(token: &str, method: &str) -> Result<Self> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(http::header::AUTHORIZATION, token.parse()?);
        Ok(RequestTemplate {
            uri: format!("https://localhost/kuma.dp.v1.DataplaneService/{method}").parse()?,
            headers,
        })
    }

    fn request(&self) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// One bench client: its own HTTP/2 connection over TLS, driven by the task that calls on it
/// (tonic's `Channel` adds a buffer task and a connection task, two hops per call, on the cores
/// the server needs).
struct SignClient {
    send: h2::client::SendRequest<Bytes>,
    connection: h2::client::Connection<TlsStream<TcpStream>, Bytes>,
    template: RequestTemplate,
}

impl SignClient {
    async fn connect(
        tls: &TlsConnector,
        address: std::net::SocketAddr,
        template: RequestTemplate,
    ) -> Result<Self> {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let stream = tls.connect(ServerName::try_from("localhost")?, tcp).await?;
        let (send, connection) = h2::client::handshake(stream).await?;
        Ok(SignClient {
            send,
            connection,
            template,
        })
    }

    /// One SignCertificate call with `body` (a gRPC frame); fails unless the server answers
    /// with status OK and a certificate chain.
    async fn sign(&mut self, body: Bytes) -> Result<()> {
        let SignClient {
            send,
            connection,
            template,
        } = self;
        let exchange = async {
            std::future::poll_fn(|cx| send.poll_ready(cx)).await?;
            let (response, mut stream) = send.send_request(template.request(), false)?;
            stream.send_data(body, true)?;
            let (head, mut body) = response.await?.into_parts();
            if head.status != http::StatusCode::OK {
                bail!("HTTP status {}", head.status);
            }
            let mut message = BytesMut::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                body.flow_control().release_capacity(chunk.len())?;
                message.extend_from_slice(&chunk);
            }
            let trailers = body.trailers().await?;
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| head.headers.get("grpc-status"));
            if status.is_none_or(|s| s != "0") {
                let message = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-message"))
                    .or_else(|| head.headers.get("grpc-message"));
                bail!("grpc-status {status:?}: {message:?}");
            }
            if message.len() < 5 || message[0] != 0 {
                bail!("malformed gRPC response frame");
            }
            let response = SignCertificateResponse::decode(&message[5..])?;
            if response.chain_der.is_empty() {
                bail!("empty certificate chain");
            }
            anyhow::Ok(())
        };
        tokio::select! {
            biased;
            result = exchange => result,
            ended = &mut *connection => {
                ended?;
                bail!("the server closed the connection")
            }
        }
    }
}

/// What the view clients saw of the current round.
#[derive(Debug, Default)]
struct ViewTally {
    /// The round whose views count: its TrafficPermission allows `client-<round>`.
    round: AtomicUsize,
    /// Streams that received the view of `round`.
    received: AtomicUsize,
    /// When the last of them arrived, in nanoseconds since `epoch`.
    last_arrival_ns: AtomicU64,
    /// First views (any round): how many streams are up.
    connected: AtomicUsize,
}

/// The view push figures: (median push time in ms, RSS per stream in KiB).
async fn view_figures(data: &std::path::Path) -> Result<(f64, f64)> {
    let cp = CpLite::start(data)?;
    let pid = cp.pid().context("cp-lite pid")?;
    let http = reqwest::Client::new();
    let api = cp.api_url();
    put(
        &http,
        format!("{api}/meshes/{VIEW_MESH}"),
        serde_json::json!({"type": "Mesh", "name": VIEW_MESH, "mtls": {"enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    )
    .await?;
    let mut writes = tokio::task::JoinSet::new();
    for chunk in (0..VIEW_AGENTS)
        .collect::<Vec<_>>()
        .chunks(VIEW_CONNECT_BATCH)
    {
        for &i in chunk {
            let (http, api) = (http.clone(), api.clone());
            writes.spawn(async move {
                put(
                    &http,
                    format!("{api}/meshes/{VIEW_MESH}/dataplanes/dp-{i}"),
                    view_dataplane(i),
                )
                .await
            });
        }
        while let Some(done) = writes.join_next().await {
            done??;
        }
    }
    let response = http
        .post(format!("{api}/tokens/dataplane"))
        .json(&serde_json::json!({"mesh": VIEW_MESH, "validFor": "1h"}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("token: {} {}", response.status(), response.text().await?);
    }
    let token = response.text().await?;
    let tls = client_tls(data)?;
    let template = RequestTemplate::for_method(&token, "WatchView")?;
    let epoch = Instant::now();
    let tally = Arc::new(ViewTally::default());

    // One stream first, so that the snapshot is built and the baseline holds it.
    let warm = tokio::spawn(watch_views(
        tls.clone(),
        cp.dp,
        template.clone(),
        encode_frame(&WatchViewRequest {
            dataplane: dp::dataplane(VIEW_MESH, "dp-0"),
        })?,
        tally.clone(),
        epoch,
    ));
    wait_for(|| tally.connected.load(Ordering::SeqCst) >= 1, &warm).await?;
    warm.abort();
    tally.connected.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = vm_rss_kib(pid)?;

    let mut clients = tokio::task::JoinSet::new();
    for chunk in (0..VIEW_AGENTS)
        .collect::<Vec<_>>()
        .chunks(VIEW_CONNECT_BATCH)
    {
        for &i in chunk {
            let body = encode_frame(&WatchViewRequest {
                dataplane: dp::dataplane(VIEW_MESH, &format!("dp-{i}")),
            })?;
            clients.spawn(watch_views(
                tls.clone(),
                cp.dp,
                template.clone(),
                body,
                tally.clone(),
                epoch,
            ));
        }
        let target = clients.len();
        wait_for_all(
            || tally.connected.load(Ordering::SeqCst) >= target,
            &mut clients,
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = vm_rss_kib(pid)?;
    let rss_per_agent = (after - before) / VIEW_AGENTS as f64;

    let mut pushes = Vec::with_capacity(VIEW_ROUNDS);
    for round in 1..=VIEW_ROUNDS + 1 {
        tally.received.store(0, Ordering::SeqCst);
        tally.last_arrival_ns.store(0, Ordering::SeqCst);
        tally.round.store(round, Ordering::SeqCst);
        put(
            &http,
            format!("{api}/meshes/{VIEW_MESH}/traffic-permissions/bench"),
            serde_json::json!({"type": "TrafficPermission", "mesh": VIEW_MESH, "name": "bench",
                "sources": [{"match": {"kuma.io/service": format!("client-{round}")}}],
                "destinations": [{"match": {"kuma.io/service": "*"}}]}),
        )
        .await?;
        let written = epoch.elapsed();
        wait_for_all(
            || tally.received.load(Ordering::SeqCst) >= VIEW_AGENTS,
            &mut clients,
        )
        .await?;
        let last = Duration::from_nanos(tally.last_arrival_ns.load(Ordering::SeqCst));
        // The first change is a warm-up (policy layer, allocator).
        if round > 1 {
            pushes.push(last.saturating_sub(written).as_secs_f64() * 1000.0);
        }
        // Let the streams settle before the next change.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    clients.abort_all();
    Ok((median(pushes.into_iter()), rss_per_agent))
}

/// Dataplane `dp-<i>`: serves `svc-<i mod VIEW_SERVICES>` and calls the next service.
fn view_dataplane(i: usize) -> serde_json::Value {
    let service = i % VIEW_SERVICES;
    serde_json::json!({"type": "Dataplane", "mesh": VIEW_MESH, "name": format!("dp-{i}"),
    "networking": {
        "address": format!("10.0.{}.{}", i / 250, i % 250 + 1),
        "inbound": [{"port": 8080, "servicePort": 80,
            "tags": {"kuma.io/service": format!("svc-{service}"), "version": "v1"}}],
        "outbound": [{"port": 10001,
            "tags": {"kuma.io/service": format!("svc-{}", (service + 1) % VIEW_SERVICES)}}]
    }})
}

async fn put(http: &reqwest::Client, url: String, body: serde_json::Value) -> Result<()> {
    let response = http.put(&url).json(&body).send().await?;
    if !response.status().is_success() {
        bail!(
            "PUT {url}: {} {}",
            response.status(),
            response.text().await?
        );
    }
    Ok(())
}

/// Polls `done` until it holds, failing when `task` ends first or after [`VIEW_ROUND_TIMEOUT`].
async fn wait_for(
    done: impl Fn() -> bool,
    task: &tokio::task::JoinHandle<Result<()>>,
) -> Result<()> {
    let deadline = Instant::now() + VIEW_ROUND_TIMEOUT;
    while !done() {
        if task.is_finished() {
            bail!("the view client ended early");
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for views");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Polls `done` until it holds, failing with the first client that ends or after
/// [`VIEW_ROUND_TIMEOUT`].
async fn wait_for_all(
    done: impl Fn() -> bool,
    clients: &mut tokio::task::JoinSet<Result<()>>,
) -> Result<()> {
    let deadline = Instant::now() + VIEW_ROUND_TIMEOUT;
    while !done() {
        if let Some(ended) = clients.try_join_next() {
            ended??;
            bail!("a view client ended early");
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for views");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// VmRSS of process `pid`, KiB.
fn vm_rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?;
    Ok(kib)
}

/// One agent's view stream over its own TLS connection, driven by this task (h2 directly, the
/// gRPC framing by hand). Every view is decoded; the one carrying the current round's rule is
/// counted with its arrival time. Runs until the stream fails or the task is aborted.
async fn watch_views(
    tls: TlsConnector,
    address: std::net::SocketAddr,
    template: RequestTemplate,
    body: Bytes,
    tally: Arc<ViewTally>,
    epoch: Instant,
) -> Result<()> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let stream = tls.connect(ServerName::try_from("localhost")?, tcp).await?;
    let (mut send, mut connection) = h2::client::handshake(stream).await?;
    let (response, mut request) = send.send_request(template.request(), false)?;
    request.send_data(body, true)?;
    let response = tokio::select! {
        response = response => response?,
        ended = &mut connection => {
            ended?;
            bail!("the server closed the connection")
        }
    };
    if response.status() != http::StatusCode::OK {
        bail!("HTTP status {}", response.status());
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    let mut first = true;
    loop {
        let chunk = tokio::select! {
            chunk = body.data() => chunk,
            ended = &mut connection => {
                ended?;
                bail!("the server closed the connection")
            }
        };
        let Some(chunk) = chunk else {
            bail!("the view stream ended: {:?}", body.trailers().await?);
        };
        let chunk = chunk?;
        let arrival = epoch.elapsed();
        body.flow_control().release_capacity(chunk.len())?;
        pending.extend_from_slice(&chunk);
        while pending.len() >= 5 {
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending.len() < 5 + len {
                break;
            }
            pending.advance(5);
            let view = View::decode(pending.split_to(len))?;
            if first {
                first = false;
                tally.connected.fetch_add(1, Ordering::SeqCst);
            }
            let round = tally.round.load(Ordering::SeqCst);
            let allowed = view
                .inbounds
                .first()
                .and_then(|i| i.rules.first())
                .and_then(|r| r.clients.first())
                .and_then(|c| c.tags.get("kuma.io/service"));
            if round > 0 && allowed.is_some_and(|s| *s == format!("client-{round}")) {
                let nanos = u64::try_from(arrival.as_nanos())?;
                tally.last_arrival_ns.fetch_max(nanos, Ordering::SeqCst);
                tally.received.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
