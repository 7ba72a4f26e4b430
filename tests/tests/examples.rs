//! The YAML files under `examples/` are applied to a real cp-lite, so they stay valid.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use integration_tests::{CpLite, Kumactl};

#[test]
fn example_meshes_apply() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/meshes");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        // A fresh control plane each: the examples share the mesh name `default`.
        let dir = tempfile::tempdir().unwrap();
        let cp = CpLite::start(&dir.path().join("data")).unwrap();
        let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
        let out = kumactl
            .run(&["apply", "-f", file.to_str().unwrap()])
            .unwrap();
        assert!(out.success, "{}: {}", file.display(), out.all());
        let mesh = kumactl.get_json(&["mesh", "default"]).unwrap();
        assert!(
            mesh["mtls"]["enabledBackend"].is_string(),
            "{}: {mesh}",
            file.display()
        );
    }
}
