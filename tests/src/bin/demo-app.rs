//! `demo-app`: the application `make demo` puts behind each kuma-dp.
//!
//! `GET /` answers `hello from <name>`. With `--upstream`, it answers by calling its upstream
//! (the local kuma-dp outbound listener) instead, and replies with what it got, or with status
//! 502 and `upstream refused: ...` / `upstream reset: ...` when the mesh does not let it through.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// How long a call to the upstream may take, connection included.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit status for bad configuration.
const EXIT_CONFIG: u8 = 64;

/// A tiny HTTP service for the mesh demo.
#[derive(Debug, Parser)]
#[command(name = "demo-app", version)]
struct Config {
    /// The service name this app answers with.
    #[arg(long, env = "DEMO_APP_NAME")]
    name: String,
    /// Address to listen on (HTTP/1.1).
    #[arg(long, env = "DEMO_APP_LISTEN")]
    listen: SocketAddr,
    /// Answer `GET /` by calling this address (the local outbound listener of the mesh).
    #[arg(long, env = "DEMO_APP_UPSTREAM")]
    upstream: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("demo-app: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-app: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Accepts connections until the process is stopped.
async fn serve(config: Config) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    println!(
        "{} listening on {}{}",
        config.name,
        listener.local_addr()?,
        config
            .upstream
            .map(|u| format!(", upstream {u}"))
            .unwrap_or_default()
    );
    let app = Arc::new(App {
        name: config.name,
        upstream: config.upstream,
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let app = app.clone();
                async move { app.handle(request).await }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

/// What the app answers with.
#[derive(Debug)]
struct App {
    name: String,
    upstream: Option<SocketAddr>,
}

impl App {
    async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, body) = match (request.uri().path(), self.upstream) {
            ("/", None) => (StatusCode::OK, format!("hello from {}", self.name)),
            ("/", Some(upstream)) => self.call(upstream).await,
            _ => (StatusCode::NOT_FOUND, "not found".to_string()),
        };
        println!("GET {} -> {} {body}", request.uri(), status.as_u16());
        Ok(Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(format!("{body}\n"))))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
    }

    /// Calls `GET /` on the upstream over a fresh connection.
    async fn call(&self, upstream: SocketAddr) -> (StatusCode, String) {
        match tokio::time::timeout(UPSTREAM_TIMEOUT, fetch(upstream)).await {
            Ok(Ok((status, body))) if status.is_success() => (
                StatusCode::OK,
                format!("{} got: {}", self.name, body.trim_end()),
            ),
            Ok(Ok((status, body))) => (
                StatusCode::BAD_GATEWAY,
                format!("upstream answered {}: {}", status.as_u16(), body.trim_end()),
            ),
            Ok(Err(Failure::Refused(e))) => (
                StatusCode::BAD_GATEWAY,
                format!("upstream refused: {upstream}: {e}"),
            ),
            Ok(Err(Failure::Reset(e))) => (
                StatusCode::BAD_GATEWAY,
                format!("upstream reset: {upstream}: {}", causes(&e)),
            ),
            Err(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("upstream timed out: {upstream} after {UPSTREAM_TIMEOUT:?}"),
            ),
        }
    }
}

/// Why a call to the upstream failed.
#[derive(Debug)]
enum Failure {
    /// No connection: nothing listens there.
    Refused(std::io::Error),
    /// The connection was accepted, then closed or reset before a response.
    Reset(hyper::Error),
}

async fn fetch(upstream: SocketAddr) -> Result<(StatusCode, String), Failure> {
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(Failure::Refused)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Failure::Reset)?;
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", upstream.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap_or_default();
    let response = sender.send_request(request).await.map_err(Failure::Reset)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(Failure::Reset)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An error and its causes, `: `-joined.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
