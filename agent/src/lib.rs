//! `kuma-dp`: the sidecar identity agent. It authenticates to cp-lite with a dataplane token,
//! keeps its key and certificates in memory only, rotates them at 4/5 of their lifetime, and
//! supervises Envoy, serving it secrets and configuration over a local Unix socket.

pub mod config;
pub mod cp;
pub mod dataplane_template;
pub mod identity;
pub mod metrics;
pub mod state;
pub mod token;
