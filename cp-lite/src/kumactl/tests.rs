//! Whole commands run in-process against a small fake API server that answers from a closure
//! and records every request, to check requests sent and texts printed.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use clap::Parser;

use super::*;

/// One request the fake server received.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    path: String,
    body: String,
}

type Responder = dyn Fn(&Request) -> (u16, String) + Send + Sync;

struct FakeServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    async fn start(
        respond: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeServer {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let recorded = requests.clone();
        let router = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let recorded = recorded.clone();
            let respond = respond.clone();
            async move {
                let request = Request {
                    method,
                    path: uri.to_string(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                let (status, body) = respond(&request);
                recorded.lock().unwrap().push(request);
                (StatusCode::from_u16(status).unwrap(), body)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeServer {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Output of one run.
struct Outcome {
    result: Result<(), KumactlError>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// What the binary prints for an error.
    fn error(&self) -> String {
        match &self.result {
            Ok(()) => panic!("expected an error; stdout: {}", self.stdout),
            Err(error) => format!("Error: {error}\n"),
        }
    }
}

/// A temp dir with a config file whose active control plane is `url`.
fn config_for(url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config"),
        format!(
            "contexts:\n- controlPlane: test\n  name: test\ncontrolPlanes:\n- coordinates:\n    apiServer:\n      url: {url}\n  name: test\ncurrentContext: test\n"
        ),
    )
    .unwrap();
    dir
}

async fn kumactl(config: &tempfile::TempDir, args: &[&str], stdin: &str) -> Outcome {
    let config_file = config.path().join("config");
    let argv = ["kumactl", "--config-file", config_file.to_str().unwrap()]
        .into_iter()
        .chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).unwrap();
    let mut input = stdin.as_bytes();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let result = run(
        cli,
        &mut Io {
            stdin: &mut input,
            stdout: &mut stdout,
            stderr: &mut stderr,
        },
    )
    .await;
    Outcome {
        result,
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

const INDEX: &str = r#"{"version":"0.1.0","tagline":"Kuma","product":"cp-lite","instanceId":"host","basedOnKuma":"2.14.3"}"#;

#[tokio::test]
async fn control_planes_add_checks_the_index_and_saves() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/" => (200, INDEX.to_owned()),
        _ => (404, String::new()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config"), "").unwrap();
    let outcome = kumactl(
        &dir,
        &[
            "config",
            "control-planes",
            "add",
            "--name",
            "example",
            "--address",
            &server.url,
        ],
        "",
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(
        outcome.stdout,
        "added Control Plane \"example\"\nswitched active Control Plane to \"example\"\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config")).unwrap(),
        format!(
            "contexts:\n- controlPlane: example\n  name: example\ncontrolPlanes:\n- coordinates:\n    apiServer:\n      url: {}\n  name: example\ncurrentContext: example\n",
            server.url
        )
    );
    assert_eq!(server.requests()[0].path, "/");

    // The same name again is refused without --overwrite ...
    let outcome = kumactl(
        &dir,
        &[
            "config",
            "control-planes",
            "add",
            "--name",
            "example",
            "--address",
            &server.url,
        ],
        "",
    )
    .await;
    assert_eq!(
        outcome.error(),
        "Error: Control Plane with name \"example\" already exists. Use --overwrite to replace an existing one.\n"
    );
    // ... and accepted with it.
    let outcome = kumactl(
        &dir,
        &[
            "config",
            "control-planes",
            "add",
            "--name",
            "example",
            "--address",
            &server.url,
            "--overwrite",
        ],
        "",
    )
    .await;
    outcome.result.unwrap();

    let outcome = kumactl(&dir, &["config", "control-planes", "list"], "").await;
    assert_eq!(
        outcome.stdout,
        format!(
            "ACTIVE   NAME      ADDRESS\n*        example   {}\n",
            server.url
        )
    );
}

#[tokio::test]
async fn control_planes_add_refuses_what_is_not_kuma() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/other" => (200, r#"{"tagline":"OtherProduct"}"#.to_owned()),
        "/html" => (200, "<html></html>".to_owned()),
        _ => (500, String::new()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let add = |address: String| {
        let dir = &dir;
        async move {
            kumactl(
                dir,
                &[
                    "config",
                    "control-planes",
                    "add",
                    "--name",
                    "x",
                    "--address",
                    &address,
                ],
                "",
            )
            .await
        }
    };
    assert_eq!(
        add(format!("{}/other", server.url)).await.error(),
        "Error: this CLI is for Kuma but the control plane you're connected to is OtherProduct. Please use the CLI for your control plane\n"
    );
    let not_json = add(format!("{}/html", server.url)).await.error();
    assert!(
        not_json.starts_with("Error: could not unmarshal body from the Control Plane API Server. Provided address is not valid Kuma Control Plane API Server: "),
        "{not_json}"
    );
    assert_eq!(
        add(format!("{}/broken", server.url)).await.error(),
        "Error: Control Plane API Server is not responding\n"
    );
    let unreachable = add("http://127.0.0.1:1".to_owned()).await.error();
    assert!(
        unreachable.starts_with(
            "Error: could not connect to the Control Plane API Server at http://127.0.0.1:1: "
        ),
        "{unreachable}"
    );
    let relative = add("localhost:5681".to_owned()).await.error();
    assert!(
        relative.starts_with("Error: API Server URL is invalid: parse \"localhost:5681\": "),
        "{relative}"
    );
    // Nothing was saved by any failed attempt.
    assert!(!dir.path().join("config").exists());
}

#[tokio::test]
async fn apply_puts_each_document_and_reports_the_outcome() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/meshes/demo" => (201, "{}".to_owned()),
        _ => (200, "{}".to_owned()),
    })
    .await;
    let config = config_for(&server.url);
    let input = "type: Mesh\nname: demo\n---\ntype: TrafficPermission\nname: allow-all\nmesh: demo\nsources:\n- match:\n    kuma.io/service: '*'\ndestinations:\n- match:\n    kuma.io/service: '*'\n";
    let outcome = kumactl(&config, &["apply", "-f", "-"], input).await;
    outcome.result.unwrap();
    assert_eq!(
        outcome.stdout,
        "resource type=\"Mesh\" mesh=\"\" name=\"demo\" Created\n\
         resource type=\"TrafficPermission\" mesh=\"demo\" name=\"allow-all\" Updated\n"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, Method::PUT);
    assert_eq!(requests[0].path, "/meshes/demo");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&requests[0].body).unwrap(),
        serde_json::json!({"type": "Mesh", "name": "demo"})
    );
    assert_eq!(
        requests[1].path,
        "/meshes/demo/traffic-permissions/allow-all"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&requests[1].body).unwrap()["sources"][0]["match"]
            ["kuma.io/service"],
        "*"
    );
}

#[tokio::test]
async fn apply_shows_validation_problems_and_sends_nothing_for_bad_yaml() {
    let server = FakeServer::start(|_| {
        (
            400,
            r#"{"type":"/std-errors","status":400,"title":"Could not create a resource","detail":"Resource is not valid","details":"Resource is not valid","causes":[{"field":"mtls.backends[0].type","message":"could not find installed plugin for this type"}]}"#
                .to_owned(),
        )
    })
    .await;
    let config = config_for(&server.url);
    let outcome = kumactl(
        &config,
        &["apply"],
        "type: Mesh\nname: demo\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: bulitin\n",
    )
    .await;
    assert_eq!(
        outcome.error(),
        "Error: Could not create a resource (Resource is not valid)\n* mtls.backends[0].type: could not find installed plugin for this type\n"
    );

    let outcome = kumactl(&config, &["apply"], "type: Mesh\nname: demo\nmtls: [\n").await;
    assert_eq!(
        outcome.error(),
        "Error: failed to validate some resources\n"
    );
    assert!(
        outcome
            .stderr
            .starts_with("resource[0]: failed to parse resource: "),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("line"), "{}", outcome.stderr);
    assert_eq!(
        server.requests().len(),
        1,
        "the broken document was not sent"
    );
}

#[tokio::test]
async fn get_lists_and_single_resources() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/meshes" => (
            200,
            r#"{"total":1,"items":[{"type":"Mesh","name":"default","creationTime":"2020-01-01T00:00:00Z","modificationTime":"2020-01-01T00:00:00Z","mtls":{"enabledBackend":"ca-1","backends":[{"name":"ca-1","type":"builtin"}]}}],"next":null}"#.to_owned(),
        ),
        "/meshes/demo/traffic-permissions/tp" => (
            200,
            r#"{"type":"TrafficPermission","mesh":"demo","name":"tp","creationTime":"2020-01-01T00:00:00Z","modificationTime":"2020-01-01T00:00:00Z","sources":[]}"#.to_owned(),
        ),
        _ => (
            404,
            r#"{"title":"Could not retrieve a resource","details":"Not found"}"#.to_owned(),
        ),
    })
    .await;
    let config = config_for(&server.url);

    let outcome = kumactl(&config, &["get", "meshes"], "").await;
    outcome.result.unwrap();
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", outcome.stdout);
    assert!(
        lines[0].starts_with(
            "NAME      mTLS           METRICS   LOGGING   TRACING   LOCALITY   ZONEEGRESS   AGE"
        ),
        "{}",
        outcome.stdout
    );
    assert!(
        lines[1].starts_with(
            "default   builtin/ca-1   off       off       off       off        off          "
        ),
        "{}",
        outcome.stdout
    );
    assert!(lines[1].ends_with('y'), "age in years: {}", outcome.stdout);

    let outcome = kumactl(
        &config,
        &[
            "get",
            "traffic-permission",
            "tp",
            "-m",
            "demo",
            "-o",
            "yaml",
        ],
        "",
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(
        outcome.stdout,
        "type: TrafficPermission\nmesh: demo\nname: tp\ncreationTime: 2020-01-01T00:00:00Z\nmodificationTime: 2020-01-01T00:00:00Z\nsources: []\n"
    );

    let outcome = kumactl(&config, &["get", "meshes", "-o", "json"], "").await;
    let json: serde_json::Value = serde_json::from_str(&outcome.stdout).unwrap();
    assert_eq!(json["total"], 1);
    assert_eq!(json["items"][0]["name"], "default");
    assert!(json["next"].is_null());

    let outcome = kumactl(&config, &["get", "dataplane", "nope"], "").await;
    assert_eq!(
        outcome.error(),
        "Error: No resources found in default mesh\n"
    );
    let outcome = kumactl(&config, &["get", "mesh", "nope"], "").await;
    assert_eq!(outcome.error(), "Error: No resources found\n");
}

#[tokio::test]
async fn get_follows_next_links() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/meshes/default/secrets" => (
            200,
            r#"{"total":2,"items":[{"type":"Secret","mesh":"default","name":"a"}],"next":"/meshes/default/secrets?offset=1"}"#.to_owned(),
        ),
        "/meshes/default/secrets?offset=1" => (
            200,
            r#"{"total":2,"items":[{"type":"Secret","mesh":"default","name":"b"}],"next":null}"#.to_owned(),
        ),
        _ => (404, String::new()),
    })
    .await;
    let config = config_for(&server.url);
    let outcome = kumactl(&config, &["get", "secrets"], "").await;
    outcome.result.unwrap();
    assert_eq!(
        outcome.stdout,
        "MESH      NAME   AGE\ndefault   a      never\ndefault   b      never\n"
    );
}

#[tokio::test]
async fn delete_reports_kumas_texts() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/meshes/demo/traffic-permissions/web-to-backend" => (200, "{}".to_owned()),
        _ => (
            404,
            r#"{"title":"Could not delete a resource","details":"Not found"}"#.to_owned(),
        ),
    })
    .await;
    let config = config_for(&server.url);
    let outcome = kumactl(
        &config,
        &[
            "delete",
            "traffic-permission",
            "web-to-backend",
            "--mesh",
            "demo",
        ],
        "",
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(
        outcome.stdout,
        "deleted TrafficPermission \"web-to-backend\"\n"
    );
    assert_eq!(server.requests()[0].method, Method::DELETE);

    let outcome = kumactl(&config, &["delete", "traffic-permission", "missing"], "").await;
    assert_eq!(
        outcome.error(),
        "Error: there is no TrafficPermission with name \"missing\"\n"
    );
    let outcome = kumactl(&config, &["delete", "zone", "x"], "").await;
    assert_eq!(
        outcome.error(),
        "Error: unknown TYPE: zone. Allowed values: mesh, dataplane, traffic-permission, meshtrafficpermission, secret\n"
    );
}

#[tokio::test]
async fn dataplane_token_is_printed_without_newline() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/tokens/dataplane" => (200, "header.claims.signature".to_owned()),
        _ => (404, String::new()),
    })
    .await;
    let config = config_for(&server.url);
    let outcome = kumactl(
        &config,
        &[
            "generate",
            "dataplane-token",
            "--name",
            "dp-echo-1",
            "--mesh",
            "default",
            "--type",
            "dataplane",
            "--tag",
            "kuma.io/service=backend,backend-admin",
            "--valid-for",
            "24h",
        ],
        "",
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(outcome.stdout, "header.claims.signature");
    assert_eq!(
        outcome.stderr,
        "Flag --type has been deprecated, please use --proxy-type instead\n"
    );
    let request = &server.requests()[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&request.body).unwrap(),
        serde_json::json!({"name": "dp-echo-1", "mesh": "default",
                           "tags": {"kuma.io/service": ["backend", "backend-admin"]},
                           "type": "dataplane", "workload": "", "validFor": "24h0m0s"})
    );
}

#[tokio::test]
async fn dataplane_token_errors() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/tokens/dataplane" if request.body.contains("\"mesh\":\"nomesh\"") => (
            404,
            r#"{"type":"/std-errors","status":404,"title":"Signing Key not found","detail":"there is no signing key","details":"there is no signing key"}"#.to_owned(),
        ),
        _ => (500, "Internal Server Error".to_owned()),
    })
    .await;
    let config = config_for(&server.url);
    let outcome = kumactl(
        &config,
        &["generate", "dataplane-token", "--valid-for", "1h"],
        "",
    )
    .await;
    assert_eq!(
        outcome.error(),
        "Error: failed to generate a dataplane token: (500): Internal Server Error\n"
    );
    let outcome = kumactl(
        &config,
        &[
            "generate",
            "dataplane-token",
            "--valid-for",
            "1h",
            "-m",
            "nomesh",
        ],
        "",
    )
    .await;
    assert_eq!(
        outcome.error(),
        "Error: Signing Key not found (there is no signing key)\n"
    );
    let outcome = kumactl(&config, &["generate", "dataplane-token", "--name", "x"], "").await;
    assert_eq!(
        outcome.error(),
        "Error: required flag(s) \"valid-for\" not set\n"
    );
}

#[tokio::test]
async fn manage_ca_provided_certificates() {
    let server = FakeServer::start(|request| match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/meshes/demo/ca/provided/certificates") if request.body.contains("intermediate") => (
            400,
            r#"{"type":"/std-errors","status":400,"title":"Could not add signing cert","detail":"Resource is not valid","details":"Resource is not valid","causes":[{"field":"cert","message":"certificate must be self-signed (intermediate CAs are not allowed)"}]}"#.to_owned(),
        ),
        ("POST", "/meshes/demo/ca/provided/certificates") => (200, r#"{"id":"id-13456","cert":"x"}"#.to_owned()),
        ("DELETE", "/meshes/demo/ca/provided/certificates/1234-5678") => (200, "{}".to_owned()),
        ("GET", "/meshes/demo/ca/provided/certificates") => (200, r#"{"items":[]}"#.to_owned()),
        _ => (404, String::new()),
    })
    .await;
    let config = config_for(&server.url);
    let cert = config.path().join("ca.crt");
    let key = config.path().join("ca.key");
    std::fs::write(&cert, "root cert").unwrap();
    std::fs::write(&key, "root key").unwrap();
    let add = [
        "manage",
        "ca",
        "provided",
        "certificates",
        "add",
        "--mesh",
        "demo",
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    let outcome = kumactl(&config, &add, "").await;
    outcome.result.unwrap();
    assert_eq!(outcome.stdout, "added certificate \"id-13456\"\n");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&server.requests()[0].body).unwrap(),
        serde_json::json!({"cert": "root cert", "key": "root key"})
    );

    std::fs::write(&cert, "intermediate cert").unwrap();
    let outcome = kumactl(&config, &add, "").await;
    assert_eq!(
        outcome.error(),
        "Error: Could not add signing cert (Resource is not valid)\n* cert: certificate must be self-signed (intermediate CAs are not allowed)\n"
    );

    let outcome = kumactl(
        &config,
        &[
            "manage",
            "ca",
            "provided",
            "certificates",
            "delete",
            "--mesh",
            "demo",
            "--id",
            "1234-5678",
        ],
        "",
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(outcome.stdout, "removed certificate \"1234-5678\"\n");

    let outcome = kumactl(
        &config,
        &[
            "manage",
            "ca",
            "provided",
            "certificates",
            "list",
            "--mesh",
            "demo",
        ],
        "",
    )
    .await;
    outcome.result.unwrap();
    assert_eq!(
        outcome.stdout,
        "ID   COMMON NAME   SERIAL NUMBER   NOT VALID BEFORE   NOT VALID AFTER   SHA-1 FINGERPRINT\n"
    );
}

#[tokio::test]
async fn inspect_dataplanes_uses_the_overview_endpoint() {
    let server = FakeServer::start(|request| match request.path.as_str() {
        "/meshes/demo/dataplanes+insights" => (
            200,
            r#"{"total":1,"items":[{"type":"DataplaneOverview","mesh":"demo","name":"web-01","dataplane":{"networking":{"address":"10.0.0.1","inbound":[{"port":1,"tags":{"kuma.io/service":"web"}}]}},"dataplaneInsight":{}}],"next":null}"#.to_owned(),
        ),
        _ => (404, String::new()),
    })
    .await;
    let config = config_for(&server.url);
    let outcome = kumactl(&config, &["inspect", "dataplanes", "-m", "demo"], "").await;
    outcome.result.unwrap();
    let row: Vec<&str> = outcome
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        [
            "demo",
            "web-01",
            "kuma.io/service=web",
            "Offline",
            "never",
            "-",
            "-",
            "-",
            "never",
            "-",
            "0",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-"
        ]
    );
    let outcome = kumactl(
        &config,
        &["inspect", "dataplanes", "-m", "demo", "-o", "yaml"],
        "",
    )
    .await;
    assert!(
        outcome
            .stdout
            .starts_with("total: 1\nitems:\n- type: DataplaneOverview\n"),
        "{}",
        outcome.stdout
    );
}

#[tokio::test]
async fn commands_name_the_unreachable_control_plane() {
    let config = config_for("http://127.0.0.1:1");
    let outcome = kumactl(&config, &["get", "meshes"], "").await;
    let error = outcome.error();
    assert!(
        error.starts_with(
            "Error: could not connect to the Control Plane API Server at http://127.0.0.1:1: "
        ),
        "{error}"
    );
}

#[tokio::test]
async fn api_timeout_bounds_every_request() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let config = config_for(&url);
    let outcome = kumactl(&config, &["--api-timeout", "100ms", "get", "meshes"], "").await;
    assert_eq!(
        outcome.error(),
        format!(
            "Error: could not connect to the Control Plane API Server at {url}: no answer within 100ms (--api-timeout)\n"
        )
    );
    silent.abort();
}
