//! HTTP tests of the API and admin servers: real listeners on 127.0.0.1, real requests.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::manager::ResourceManager;
use crate::resources::{ResourceKey, ResourceType};
use crate::store::{MemoryStore, WriteOp};

struct Server {
    base: String,
    manager: ResourceManager,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

impl Server {
    async fn api() -> Server {
        Self::start(super::router).await
    }

    async fn admin() -> Server {
        Self::start(crate::admin::router).await
    }

    async fn start(router: fn(ResourceManager) -> axum::Router) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let manager = ResourceManager::new(Arc::new(MemoryStore::new()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(super::serve_router(
            "test",
            listener,
            router(manager.clone()),
            shutdown.clone(),
        ));
        Server {
            base,
            manager,
            shutdown,
            task,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        json_of(response).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        json_of(self.client.delete(self.url(path)).send().await.unwrap()).await
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value)
}

fn problem(status: u16, title: &str, details: &str) -> Value {
    json!({"type": "/std-errors", "status": status, "title": title, "detail": details, "details": details})
}

fn validation_problem(title: &str, causes: &[(&str, &str)]) -> Value {
    json!({
        "type": "/std-errors", "status": 400, "title": title,
        "detail": "Resource is not valid", "details": "Resource is not valid",
        "invalid_parameters": causes.iter().map(|(f, m)| json!({"field": f, "reason": m})).collect::<Vec<_>>(),
        "causes": causes.iter().map(|(f, m)| json!({"field": f, "message": m})).collect::<Vec<_>>(),
    })
}

fn dataplane(mesh: &str, name: &str) -> Value {
    json!({
        "type": "Dataplane", "mesh": mesh, "name": name,
        "networking": {"address": "127.0.0.1", "inbound": [
            {"port": 8080, "servicePort": 8081, "tags": {"kuma.io/service": "web"}}
        ]}
    })
}

fn root_ca(cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[tokio::test]
async fn index_describes_the_server() {
    let server = Server::api().await;
    let (status, index) = server.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(index["tagline"], "Kuma");
    assert_eq!(index["product"], "cp-lite");
    assert_eq!(index["basedOnKuma"], "2.14.3");
    assert_eq!(index["version"], env!("CARGO_PKG_VERSION"));
    assert!(!index["instanceId"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn meshes_are_created_updated_listed_and_deleted() {
    let server = Server::api().await;
    let mesh = json!({"type": "Mesh", "name": "demo"});
    assert_eq!(
        server.put("/meshes/demo", mesh.clone()).await.0,
        StatusCode::CREATED
    );
    assert_eq!(server.put("/meshes/demo", mesh).await.0, StatusCode::OK);

    let (status, got) = server.get("/meshes/demo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["type"], "Mesh");
    assert_eq!(got["name"], "demo");
    assert!(got["creationTime"].is_string());

    let (status, list) = server.get("/meshes").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["next"], Value::Null);
    assert_eq!(list["items"][0]["name"], "demo");

    assert_eq!(
        server.delete("/meshes/demo").await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(
        server.get("/meshes/demo").await,
        (
            StatusCode::NOT_FOUND,
            problem(404, "Could not retrieve a resource", "Not found")
        )
    );
    assert_eq!(
        server.delete("/meshes/demo").await,
        (
            StatusCode::NOT_FOUND,
            problem(404, "Could not delete a resource", "Not found")
        )
    );
}

#[tokio::test]
async fn mesh_scoped_resources_follow_kuma_paths() {
    let server = Server::api().await;
    assert_eq!(
        server
            .put("/meshes/demo/dataplanes/dp-1", dataplane("demo", "dp-1"))
            .await,
        (
            StatusCode::BAD_REQUEST,
            validation_problem(
                "Could not create a resource",
                &[("mesh", "mesh \"demo\" does not exist")]
            )
        )
    );
    server
        .put("/meshes/demo", json!({"type": "Mesh", "name": "demo"}))
        .await;
    server
        .put("/meshes/other", json!({"type": "Mesh", "name": "other"}))
        .await;
    assert_eq!(
        server
            .put("/meshes/demo/dataplanes/dp-1", dataplane("demo", "dp-1"))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        server
            .put("/meshes/other/dataplanes/dp-2", dataplane("other", "dp-2"))
            .await
            .0,
        StatusCode::CREATED
    );

    let (_, got) = server.get("/meshes/demo/dataplanes/dp-1").await;
    assert_eq!(
        (got["type"].clone(), got["mesh"].clone()),
        (json!("Dataplane"), json!("demo"))
    );
    let (_, in_mesh) = server.get("/meshes/demo/dataplanes").await;
    assert_eq!(in_mesh["total"], 1);
    let (_, everywhere) = server.get("/dataplanes").await;
    assert_eq!(everywhere["total"], 2);

    // The Mesh cannot go while it has dataplanes.
    assert_eq!(
        server.delete("/meshes/demo").await,
        (
            StatusCode::BAD_REQUEST,
            validation_problem(
                "Could not delete a resource",
                &[(
                    "mesh",
                    "unable to delete mesh, there are still some dataplanes attached"
                )]
            )
        )
    );
    assert_eq!(
        server.delete("/meshes/demo/dataplanes/dp-1").await,
        (StatusCode::OK, json!({}))
    );

    // Unknown collections are not routes.
    let response = server
        .client
        .get(server.url("/meshes/demo/widgets"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.text().await.unwrap(), "404: Page Not Found");
}

#[tokio::test]
async fn bad_bodies_get_problem_documents() {
    let server = Server::api().await;
    let response = server
        .client
        .put(server.url("/meshes/demo"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["title"], "Could not process a resource");
    assert!(!body["details"].as_str().unwrap().is_empty());
    assert!(body.get("causes").is_none());

    // Static validation names the fields.
    let (status, body) = server
        .put(
            "/meshes/demo",
            json!({"type": "Mesh", "name": "demo", "mtls": {"enabledBackend": "nope", "backends": []}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"], "Resource is not valid");
    assert_eq!(
        body["causes"],
        json!([{"field": "mtls.enabledBackend", "message": "has to be set to one of the backends in the mesh"}])
    );
    assert!(
        server
            .manager
            .list(ResourceType::Mesh, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused() {
    let server = Server::api().await;
    let big = format!(
        "{{\"type\":\"Mesh\",\"name\":\"demo\",\"x\":\"{}\"}}",
        "a".repeat(1 << 20)
    );
    let response = server
        .client
        .put(server.url("/meshes/demo"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["status"], 413);
    assert_eq!(body["type"], "/std-errors");
    assert!(
        server
            .manager
            .list(ResourceType::Mesh, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn dataplane_overviews_join_insights() {
    let server = Server::api().await;
    server
        .put("/meshes/demo", json!({"type": "Mesh", "name": "demo"}))
        .await;
    server
        .put("/meshes/demo/dataplanes/dp-1", dataplane("demo", "dp-1"))
        .await;
    server
        .put("/meshes/demo/dataplanes/dp-2", dataplane("demo", "dp-2"))
        .await;
    let insight = json!({"mTLS": {"issuedBackend": "ca-1"}, "agentVersion": "0.1.0"});
    server
        .manager
        .store()
        .commit(vec![WriteOp::Create {
            key: ResourceKey::in_mesh(ResourceType::DataplaneInsight, "demo", "dp-1"),
            spec: insight.clone(),
        }])
        .await
        .unwrap();

    let (status, list) = server.get("/meshes/demo/dataplanes+insights").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    let first = &list["items"][0];
    assert_eq!(first["type"], "DataplaneOverview");
    assert_eq!(
        (first["mesh"].clone(), first["name"].clone()),
        (json!("demo"), json!("dp-1"))
    );
    assert_eq!(first["dataplaneInsight"], insight);
    assert_eq!(first["dataplane"]["networking"]["address"], "127.0.0.1");
    assert_eq!(list["items"][1]["dataplaneInsight"], json!({}));

    let (_, all) = server.get("/dataplanes+insights").await;
    assert_eq!(all["total"], 2);
    let (status, one) = server.get("/meshes/demo/dataplanes+insights/dp-2").await;
    assert_eq!(
        (status, one["name"].clone()),
        (StatusCode::OK, json!("dp-2"))
    );
    assert_eq!(
        server.get("/meshes/demo/dataplanes+insights/dp-3").await,
        (
            StatusCode::NOT_FOUND,
            problem(404, "Could not retrieve a resource", "Not found")
        )
    );
}

#[tokio::test]
async fn dataplane_tokens_are_issued() {
    let server = Server::api().await;
    let response = server.post_raw("/tokens/dataplane", "{").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.text().await.unwrap(), "");

    let response = server
        .post_raw("/tokens/dataplane", r#"{"name":"dp-1"}"#)
        .await;
    assert_eq!(
        json_of(response).await,
        (
            StatusCode::BAD_REQUEST,
            validation_problem("Invalid request", &[("mesh", "cannot be empty")])
        )
    );

    let response = server
        .post_raw("/tokens/dataplane", r#"{"mesh":"demo"}"#)
        .await;
    assert_eq!(
        json_of(response).await,
        (
            StatusCode::NOT_FOUND,
            problem(
                404,
                "Signing Key not found",
                "there is no signing key with KID 1. Secret of name \"dataplane-token-signing-key-demo-1\" in mesh \"demo\" is not found. If signing key was rotated, regenerate the token"
            )
        )
    );

    server
        .put("/meshes/demo", json!({"type": "Mesh", "name": "demo"}))
        .await;
    let body =
        r#"{"name":"dp-1","mesh":"demo","tags":{"kuma.io/service":["web"]},"validFor":"24h"}"#;
    let response = server.post_raw("/tokens/dataplane", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let token = response.text().await.unwrap();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(!token.ends_with('\n'));
}

#[tokio::test]
async fn provided_certificates_over_http() {
    let server = Server::api().await;
    server
        .put("/meshes/demo", json!({"type": "Mesh", "name": "demo"}))
        .await;
    let path = "/meshes/demo/ca/provided/certificates";
    let (cert, key) = root_ca("provided");

    let response = server
        .post_raw(path, json!({"cert": "not a cert", "key": key}).to_string())
        .await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["title"], "Could not add signing cert");
    assert_eq!(body["details"], "Resource is not valid");
    assert_eq!(body["causes"][0]["field"], "cert");

    let response = server
        .post_raw(path, json!({"cert": cert, "key": key}).to_string())
        .await;
    let (status, added) = json_of(response).await;
    assert_eq!(status, StatusCode::OK);
    let id = added["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(added["cert"], cert.as_str());

    let (status, list) = server.get(path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(
        list["items"][0]["notAfter"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let response = server
        .post_raw(path, json!({"cert": cert, "key": key}).to_string())
        .await;
    assert_eq!(
        json_of(response).await,
        (
            StatusCode::CONFLICT,
            problem(
                409,
                "Could not add signing cert",
                "cannot add more than 1 signing certificate to provided CA"
            )
        )
    );

    assert_eq!(
        server.delete(&format!("{path}/{id}")).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(server.get(path).await.1, json!({"items": []}));
    assert_eq!(
        server.delete(&format!("{path}/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/meshes/nope/ca/provided/certificates").await,
        (
            StatusCode::NOT_FOUND,
            problem(404, "Could not retrieve signing certs", "Not found")
        )
    );
}

#[tokio::test]
async fn admin_serves_tokens_and_the_provided_ca_only() {
    let server = Server::admin().await;
    server
        .manager
        .apply(crate::resources::Resource {
            key: ResourceKey::mesh("demo"),
            spec: crate::resources::parse_documents("type: Mesh\nname: demo\n")
                .unwrap()
                .remove(0)
                .spec,
        })
        .await
        .unwrap();
    for path in ["/tokens", "/tokens/dataplane"] {
        let response = server
            .post_raw(path, r#"{"name":"dp-1","mesh":"demo"}"#)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(response.text().await.unwrap().split('.').count(), 3);
    }
    let (status, list) = server.get("/meshes/demo/ca/provided/certificates").await;
    assert_eq!((status, list), (StatusCode::OK, json!({"items": []})));
    let response = server
        .client
        .get(server.url("/meshes"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn writes_from_a_foreign_host_name_are_denied() {
    let server = Server::api().await;
    let response = server
        .client
        .put(server.url("/meshes/demo"))
        .header("host", "evil.example")
        .json(&json!({"type": "Mesh", "name": "demo"}))
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["title"], "Access Denied");
    assert!(
        server
            .manager
            .list(ResourceType::Mesh, None)
            .await
            .unwrap()
            .is_empty()
    );
    // Reads stay open.
    let response = server
        .client
        .get(server.url("/meshes"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn secrets_are_readable_only_by_local_callers() {
    let server = Server::api().await;
    server
        .put("/meshes/demo", json!({"type": "Mesh", "name": "demo"}))
        .await;
    let secret = json!({"type": "Secret", "mesh": "demo", "name": "s", "data": "c2VjcmV0"});
    assert_eq!(
        server.put("/meshes/demo/secrets/s", secret).await.0,
        StatusCode::CREATED
    );
    for path in [
        "/secrets",
        "/meshes/demo/secrets",
        "/meshes/demo/secrets/s",
        "/meshes/demo/%73ecrets/s",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let response = server
            .client
            .get(server.url(path))
            .header("host", "cp.example:5681")
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body["title"], "Access Denied");
    }
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let server = Server::api().await;
    assert_eq!(server.get("/").await.0, StatusCode::OK);
    let url = server.url("/");
    server.shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(server.client.get(url).send().await.is_err());
}
