//! `cp-lite`: a thin Kuma-compatible control plane.
//!
//! It stores resources (Mesh, Dataplane, TrafficPermission, MeshTrafficPermission, Secret), runs
//! the mesh CAs, issues and verifies dataplane tokens, signs CSRs and streams each agent a view
//! of what concerns it. It knows nothing about Envoy. See `ARCHITECTURE.md` at the repository root.

pub mod admin;
pub mod api;
pub mod app;
pub mod ca;
pub mod config;
pub mod dp_server;
pub mod kumactl;
pub mod manager;
pub mod resources;
pub mod store;
pub mod tokens;
