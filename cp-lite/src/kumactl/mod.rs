//! `kumactl`, the operator CLI, as a library so tests can drive it in-process.
