//! Who may write (and read Secrets): for now only local callers (Kuma's `localhostIsAdmin`),
//! checked the way Kuma does so that a browser on the same machine cannot be used to reach the
//! API (no forwarding headers, a loopback `Host`, no cross-site fetch).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::warn;

use super::problem::Problem;

/// Headers a proxy adds; a request carrying one is not treated as local (Kuma).
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The caller of a request, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    /// Kuma's localhost admin: may write and may read Secrets (CA keys, signing keys).
    pub(crate) admin: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        Ok(Caller {
            admin: peer.is_some_and(|peer| is_local_admin(peer, &parts.headers)),
        })
    }
}

/// 403 for a caller that is not the local admin.
pub(crate) fn access_denied() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "Access Denied",
        "only local callers (loopback address and Host) may do this",
    )
}

/// Middleware: reads pass, writes (anything but GET/HEAD/OPTIONS) need a local caller.
pub(crate) async fn local_writes_only(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    match peer {
        Some(peer) if is_local_admin(peer, req.headers()) => next.run(req).await,
        _ => {
            warn!(?peer, method = %req.method(), path = %req.uri().path(), "write refused: not a local caller");
            access_denied().into_response()
        }
    }
}

/// Kuma's `localhostIsAdmin` rule: a loopback peer, no forwarding headers, a loopback `Host`,
/// `Sec-Fetch-Site` empty/`same-origin`/`none`, and any `Origin` the loopback host itself.
pub(crate) fn is_local_admin(peer: SocketAddr, headers: &HeaderMap) -> bool {
    if !peer.ip().to_canonical().is_loopback() {
        return false;
    }
    if FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return false;
    }
    let host = match headers.get(header::HOST).map(|h| h.to_str()) {
        None => None,
        Some(Ok(host)) if is_loopback_authority(host) => Some(host),
        Some(_) => return false,
    };
    match headers.get("sec-fetch-site").map(|h| h.to_str()) {
        None | Some(Ok("" | "same-origin" | "none")) => {}
        Some(_) => return false,
    }
    match headers.get(header::ORIGIN).map(|h| h.to_str()) {
        None => true,
        Some(Ok(origin)) => {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            match (authority, host) {
                (Some(authority), Some(host)) => {
                    authority.eq_ignore_ascii_case(host) && is_loopback_authority(authority)
                }
                _ => false,
            }
        }
        Some(Err(_)) => false,
    }
}

/// Whether `host[:port]` names this machine: `localhost` or a loopback IP.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, port)) if port.is_empty() || is_port_suffix(port) => ip,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if is_port_suffix(&format!(":{port}")) => host,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether `s` is `:<digits>`.
fn is_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn loopback_peers_with_local_host_are_admins() {
        for (ip, host) in [
            ("127.0.0.1", "127.0.0.1:5681"),
            ("127.0.0.5", "localhost:5681"),
            ("::1", "[::1]:5681"),
            ("::ffff:127.0.0.1", "localhost"),
        ] {
            assert!(
                is_local_admin(peer(ip), &headers(&[("host", host)])),
                "{ip} {host}"
            );
        }
        assert!(is_local_admin(peer("127.0.0.1"), &HeaderMap::new()));
    }

    #[test]
    fn remote_peers_are_refused() {
        for ip in ["10.0.0.1", "192.168.1.2", "::ffff:10.1.1.1", "2001:db8::1"] {
            assert!(
                !is_local_admin(peer(ip), &headers(&[("host", "localhost:5681")])),
                "{ip}"
            );
        }
    }

    #[test]
    fn proxied_or_cross_site_requests_are_refused() {
        let local = peer("127.0.0.1");
        for extra in [
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://evil.example"),
            ("origin", "http://localhost:9999"),
            ("origin", "null"),
        ] {
            let h = headers(&[("host", "localhost:5681"), extra]);
            assert!(!is_local_admin(local, &h), "{extra:?}");
        }
        for host in [
            "evil.example",
            "evil.example:5681",
            "10.0.0.1:5681",
            "localhost:x",
        ] {
            assert!(
                !is_local_admin(local, &headers(&[("host", host)])),
                "{host}"
            );
        }
        let same_origin = headers(&[
            ("host", "localhost:5681"),
            ("origin", "http://localhost:5681"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(is_local_admin(local, &same_origin));
    }
}
