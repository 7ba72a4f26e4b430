//! `kuma-dp`: the sidecar identity agent. It authenticates to cp-lite with a dataplane token,
//! keeps its key and certificates in memory only, rotates them at 4/5 of their lifetime, and
//! supervises Envoy, serving it secrets and configuration over a local Unix socket.

pub mod admin;
pub mod app;
pub mod config;
pub mod cp;
pub mod dataplane;
pub mod dataplane_template;
pub mod envoy;
pub mod identity;
pub mod metrics;
pub mod signals;
pub mod state;
pub mod token;
pub mod xds;
