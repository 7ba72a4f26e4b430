//! Envoy bootstrap and xDS resources built from agent state, with no I/O.
//!
//! Empty until the agent serves Envoy; see `ARCHITECTURE.md`.
