//! Compiles the Envoy `.proto` files shipped inside the `envoy-types` crate into a
//! `FileDescriptorSet` (in `OUT_DIR`), so the library can render typed messages as proto3 JSON.
//!
//! Where the protos come from: `envoy-types` publishes its `proto/` directory in its crate
//! source but exposes no `links` metadata, so the build script asks Cargo itself. It runs
//! `$CARGO metadata --format-version 1 --locked --offline` for this package and follows the
//! resolve graph from `envoy-bootstrap` to the exact `envoy-types` package it is compiled
//! against. That gives the right directory whatever the layout: a custom `CARGO_HOME`, a
//! vendored source, a git or path override, or several `envoy-types` versions in one lock file.
//! The descriptors therefore always match the Rust types byte for byte. `--offline` is safe:
//! Cargo has already fetched every dependency before it runs a build script.
//!
//! `--filter-platform $TARGET` keeps Cargo from wanting the manifests of other platforms'
//! dependencies, which an offline build never downloaded.
//!
//! Should `cargo metadata` fail (an unusual Cargo setup), the fallback is the crates.io
//! registry cache: `$CARGO_HOME/registry/src/*/envoy-types-<version>/proto`, with the version
//! read from the workspace `Cargo.lock`. `ENVOY_TYPES_PROTO_DIR` overrides both (a directory
//! laid out like `envoy-types/proto`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the library renders; their imports are pulled in automatically.
const PROTO_FILES: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
];

/// Import roots inside `envoy-types/proto`, as its own code generator uses them.
const INCLUDE_DIRS: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

fn main() {
    if let Err(error) = run() {
        // A build script reports failure by panicking; the message is what Cargo shows.
        panic!("envoy-bootstrap build: {error}");
    }
}

fn run() -> Result<(), String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ENVOY_TYPES_PROTO_DIR");

    let proto_dir = match env::var_os("ENVOY_TYPES_PROTO_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => envoy_types_proto_dir().or_else(|metadata_error| {
            registry_proto_dir().map_err(|registry_error| {
                format!(
                    "cannot find the envoy-types protos ({metadata_error}; {registry_error}); \
                     set ENVOY_TYPES_PROTO_DIR"
                )
            })
        })?,
    };
    let includes: Vec<PathBuf> = INCLUDE_DIRS.iter().map(|d| proto_dir.join(d)).collect();
    for dir in &includes {
        if !dir.is_dir() {
            return Err(format!("missing proto include directory {}", dir.display()));
        }
    }

    let descriptors = protox::Compiler::new(&includes)
        .map_err(|e| format!("protox: {e}"))?
        .include_imports(true)
        .include_source_info(false)
        .open_files(PROTO_FILES)
        .map_err(|e| format!("compiling Envoy protos from {}: {e}", proto_dir.display()))?
        .encode_file_descriptor_set();

    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    std::fs::write(out.join("envoy_descriptors.bin"), descriptors)
        .map_err(|e| format!("writing descriptors: {e}"))?;
    Ok(())
}

/// Finds `<envoy-types package root>/proto` through `cargo metadata`.
fn envoy_types_proto_dir() -> Result<PathBuf, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest_dir = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?,
    );
    let manifest = manifest_dir.join("Cargo.toml");

    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .arg("--filter-platform")
        .arg(env::var("TARGET").map_err(|e| format!("TARGET: {e}"))?)
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("parsing cargo metadata: {e}"))?;

    // A new `envoy-types` version always changes the lock file.
    if let Some(root) = metadata["workspace_root"].as_str() {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(root).join("Cargo.lock").display()
        );
    }

    let packages = metadata["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    let manifest_str = manifest.to_string_lossy();
    let own_id = packages
        .iter()
        .find(|p| p["manifest_path"].as_str() == Some(&*manifest_str))
        .and_then(|p| p["id"].as_str())
        .ok_or("cargo metadata: envoy-bootstrap not found")?;
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("cargo metadata: no resolve")?;
    let envoy_types_id = nodes
        .iter()
        .find(|n| n["id"].as_str() == Some(own_id))
        .and_then(|n| n["deps"].as_array())
        .and_then(|deps| {
            deps.iter()
                .find(|d| d["name"].as_str() == Some("envoy_types"))
        })
        .and_then(|d| d["pkg"].as_str())
        .ok_or("cargo metadata: envoy-bootstrap does not depend on envoy-types")?;
    let envoy_types_manifest = packages
        .iter()
        .find(|p| p["id"].as_str() == Some(envoy_types_id))
        .and_then(|p| p["manifest_path"].as_str())
        .ok_or("cargo metadata: envoy-types package not listed")?;
    let root = Path::new(envoy_types_manifest)
        .parent()
        .ok_or("cargo metadata: envoy-types manifest has no parent directory")?;
    Ok(root.join("proto"))
}

/// Fallback: the crates.io source cache, for the `envoy-types` version in `Cargo.lock`.
fn registry_proto_dir() -> Result<PathBuf, String> {
    let manifest_dir = PathBuf::from(
        env::var("CARGO_MANIFEST_DIR").map_err(|e| format!("CARGO_MANIFEST_DIR: {e}"))?,
    );
    let lock_path = manifest_dir
        .ancestors()
        .map(|dir| dir.join("Cargo.lock"))
        .find(|path| path.is_file())
        .ok_or("no Cargo.lock above the crate")?;
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock =
        std::fs::read_to_string(&lock_path).map_err(|e| format!("reading Cargo.lock: {e}"))?;
    let versions: Vec<&str> = lock
        .split("[[package]]")
        .filter(|entry| entry.lines().any(|l| l.trim() == "name = \"envoy-types\""))
        .filter_map(|entry| {
            entry
                .lines()
                .find_map(|l| l.trim().strip_prefix("version = \"")?.strip_suffix('"'))
        })
        .collect();
    let [version] = versions.as_slice() else {
        return Err(format!(
            "Cargo.lock lists {} envoy-types versions",
            versions.len()
        ));
    };

    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let sources = cargo_home.join("registry").join("src");
    let registries =
        std::fs::read_dir(&sources).map_err(|e| format!("reading {}: {e}", sources.display()))?;
    registries
        .filter_map(Result::ok)
        .map(|registry| {
            registry
                .path()
                .join(format!("envoy-types-{version}"))
                .join("proto")
        })
        .find(|proto| proto.is_dir())
        .ok_or_else(|| format!("envoy-types-{version} is not under {}", sources.display()))
}
