//! Harness for the integration tests: starts the real binaries on loopback with temp dirs.
