//! The HTTP client kumactl uses to talk to the Control Plane API server.
//!
//! Plain HTTP only: this build carries no TLS client, so an `https://` address is refused with a
//! clear message instead of a transport error.

use std::time::Duration;

use reqwest::{Method, Url};

use super::config::ApiServer;
use super::duration::format_go_duration;
use super::error::{KumactlError, from_error_response};

/// A client bound to one API server address.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    headers: Vec<(String, String)>,
    timeout: Duration,
}

/// The status and body of an answer, with the URL it came from (for messages).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
    /// The requested URL.
    pub url: String,
}

impl ApiClient {
    /// A client for `api_server`; `timeout` zero means no timeout (as `--api-timeout 0`).
    pub fn new(api_server: &ApiServer, timeout: Duration) -> Result<ApiClient, KumactlError> {
        let base = parse_address(&api_server.url)?;
        // Like Kuma's clients, which build their own transport: no proxy from the environment,
        // so a loopback control plane is never sent through one.
        let mut builder = reqwest::Client::builder().no_proxy();
        if !timeout.is_zero() {
            builder = builder.timeout(timeout);
        }
        let http = builder.build().map_err(|error| {
            KumactlError::InvalidArgs(format!("could not create the HTTP client: {error}"))
        })?;
        Ok(ApiClient {
            http,
            base,
            headers: api_server
                .headers
                .iter()
                .map(|header| (header.key.clone(), header.value.clone()))
                .collect(),
            timeout,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` below the base URL; each segment is percent-encoded as needed.
    pub fn url(&self, segments: &[String]) -> Url {
        let mut url = self.base.clone();
        // `parse_address` only accepts http URLs, which always have a path to extend.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends a request and reads the whole answer; any status is returned as is.
    pub async fn send(
        &self,
        method: Method,
        url: Url,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Reply, KumactlError> {
        let mut request = self.http.request(method, url.clone());
        for (key, value) in &self.headers {
            request = request.header(key, value);
        }
        if let Some(body) = json_body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| self.connect_error(&url, error))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|error| self.connect_error(&url, error))?;
        Ok(Reply {
            status,
            body,
            url: url.to_string(),
        })
    }

    /// Sends a request and turns an error status into the error kumactl shows.
    pub async fn call(
        &self,
        method: Method,
        segments: &[String],
        json_body: Option<&serde_json::Value>,
    ) -> Result<Reply, KumactlError> {
        let reply = self.send(method, self.url(segments), json_body).await?;
        reply.into_success()
    }

    fn connect_error(&self, url: &Url, error: reqwest::Error) -> KumactlError {
        let reason = if error.is_timeout() {
            format!(
                "no answer within {} (--api-timeout)",
                format_go_duration(self.timeout)
            )
        } else {
            innermost_cause(&error)
        };
        KumactlError::Connect {
            url: origin(url),
            reason,
            source: error,
        }
    }
}

impl Reply {
    /// The reply itself when the status is 2xx, otherwise the problem document or
    /// `(<status>): <body>` error.
    pub fn into_success(self) -> Result<Reply, KumactlError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(from_error_response(self.status, self.body))
        }
    }

    /// The body as JSON, for reading fields.
    pub fn json(&self) -> Result<serde_json::Value, KumactlError> {
        serde_json::from_str(&self.body).map_err(|error| KumactlError::InvalidResponse {
            url: self.url.clone(),
            reason: error.to_string(),
        })
    }

    /// The body as an order-preserving document, for printing it as YAML or JSON with the keys in
    /// the order the server sent them.
    pub fn document(&self) -> Result<serde_norway::Value, KumactlError> {
        serde_norway::from_str(&self.body).map_err(|error| KumactlError::InvalidResponse {
            url: self.url.clone(),
            reason: error.to_string(),
        })
    }
}

/// Checks an API server address: an absolute `http://` URL.
pub fn parse_address(address: &str) -> Result<Url, KumactlError> {
    let url = Url::parse(address)
        .map_err(|error| KumactlError::InvalidUrl(format!("parse {address:?}: {error}")))?;
    match url.scheme() {
        "http" => Ok(url),
        "https" => Err(KumactlError::InvalidArgs(format!(
            "{address} is an https address, but this kumactl talks plain HTTP only; use the http address of the API server (port 5681 by default)"
        ))),
        other => Err(KumactlError::InvalidUrl(format!(
            "parse {address:?}: unsupported scheme {other:?}"
        ))),
    }
}

/// `scheme://host:port` of a URL, to name the server in connection errors.
fn origin(url: &Url) -> String {
    let origin = url.origin().ascii_serialization();
    if origin == "null" {
        url.to_string()
    } else {
        origin
    }
}

/// The deepest error in a chain: for a refused connection that is `Connection refused`, which
/// says more than the generic `error sending request`.
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> ApiClient {
        ApiClient::new(
            &ApiServer {
                url: url.to_owned(),
                ..ApiServer::default()
            },
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn builds_urls_below_the_base() {
        let segments = [
            "meshes".to_owned(),
            "demo".to_owned(),
            "dataplanes+insights".to_owned(),
        ];
        assert_eq!(
            client("http://localhost:5681").url(&segments).as_str(),
            "http://localhost:5681/meshes/demo/dataplanes+insights"
        );
        assert_eq!(
            client("http://cp:5681/api/").url(&segments).as_str(),
            "http://cp:5681/api/meshes/demo/dataplanes+insights"
        );
        // A name cannot escape its path segment.
        assert_eq!(
            client("http://cp:5681")
                .url(&["meshes".to_owned(), "a/b?c".to_owned()])
                .as_str(),
            "http://cp:5681/meshes/a%2Fb%3Fc"
        );
    }

    #[test]
    fn refuses_addresses_it_cannot_use() {
        assert!(matches!(
            parse_address("localhost:5681"),
            Err(KumactlError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_address("not a url"),
            Err(KumactlError::InvalidUrl(_))
        ));
        let https = parse_address("https://cp:5682").unwrap_err().to_string();
        assert!(https.contains("plain HTTP only"), "{https}");
    }

    #[tokio::test]
    async fn connection_errors_name_the_address() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = client(&format!("http://127.0.0.1:{port}"));
        let error = client
            .call(Method::GET, &["meshes".to_owned()], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "could not connect to the Control Plane API Server at http://127.0.0.1:{port}: "
            )),
            "{error}"
        );
        assert!(error.to_lowercase().contains("refused"), "{error}");
    }
}
