//! The Envoy-facing xDS server: ADS (state of the world and delta) and SDS (stream, delta and
//! fetch) on one Unix socket, serving the agent's current [`XdsSnapshot`].
//!
//! Every stream watches the snapshot channel and pushes a change the moment it is published, so
//! a rotated certificate reaches Envoy in milliseconds. The protocol bookkeeping (subscriptions,
//! nonces, ACK and NACK) lives in `sotw` and `delta`, free of I/O; `server` drives it.

use std::path::PathBuf;

use prost_types::Any;

use crate::state::XdsSnapshot;

mod delta;
mod server;
mod snapshot;
mod socket;
mod sotw;

pub use envoy_bootstrap::{
    CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, EXTENSION_CONFIG_TYPE_URL, LISTENER_TYPE_URL,
    SECRET_TYPE_URL,
};
pub use server::serve;
pub use snapshot::build_snapshot;
pub use socket::{MAX_SOCKET_PATH_LEN, bind};

/// Routes (RDS), answered by name only.
const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Why the xDS socket could not be bound or served.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The socket path is longer than a Unix socket address holds.
    #[error("the xDS socket path {} is {len} bytes long, the limit is {max}", path.display())]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    /// The socket's directory could not be created (for example, the work dir is not writable).
    #[error("cannot create the xDS socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket's directory is shared between users (sticky bit, like `/tmp`), so it cannot be
    /// made private.
    #[error(
        "the xDS socket directory {} is shared between users (sticky bit set); use a private work dir",
        path.display()
    )]
    SharedDirectory { path: PathBuf },
    /// The socket or its directory could not be inspected.
    #[error("cannot inspect {}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The mode of the socket or its directory could not be set.
    #[error("cannot restrict the permissions of {}", path.display())]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something other than a socket is where the socket goes; it is left alone.
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    /// Another process answers on the socket (another agent with the same work dir?).
    #[error("the xDS socket {} is in use by another process", path.display())]
    InUse { path: PathBuf },
    /// A stale socket could not be removed.
    #[error("cannot remove the stale xDS socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot bind the xDS socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("the xDS server failed")]
    Serve {
        #[source]
        source: tonic::transport::Error,
    },
}

/// How a type's subscriptions are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TypeKind {
    /// Listeners and clusters: an empty subscription means "everything", and the first request
    /// is always answered (Envoy waits for it to finish initialising).
    Wildcard,
    /// Secrets, endpoints, extension configs, routes: only the resources asked for by name, and
    /// nothing at all while none of them exists (an empty SDS answer is a NACK in Envoy).
    Named,
    /// A type the agent never serves: answered once, empty.
    Unknown,
}

impl TypeKind {
    fn of(type_url: &str) -> TypeKind {
        match type_url {
            LISTENER_TYPE_URL | CLUSTER_TYPE_URL => TypeKind::Wildcard,
            SECRET_TYPE_URL | ENDPOINT_TYPE_URL | EXTENSION_CONFIG_TYPE_URL | ROUTE_TYPE => {
                TypeKind::Named
            }
            _ => TypeKind::Unknown,
        }
    }
}

/// The order types are pushed in after a snapshot change: secrets before the listeners and
/// clusters that use them, clusters (then their endpoints) before the listeners that route to
/// them, the permissions before the listeners that fetch them (make before break).
fn push_rank(type_url: &str) -> u8 {
    match type_url {
        SECRET_TYPE_URL => 0,
        CLUSTER_TYPE_URL => 1,
        ENDPOINT_TYPE_URL => 2,
        EXTENSION_CONFIG_TYPE_URL => 3,
        LISTENER_TYPE_URL => 4,
        ROUTE_TYPE => 5,
        _ => 6,
    }
}

/// The resources of one type in a snapshot, if any.
fn resources_of<'s>(
    snapshot: &'s XdsSnapshot,
    type_url: &str,
) -> Option<&'s std::collections::BTreeMap<String, Any>> {
    snapshot.resources.get(type_url)
}

/// Version of one resource for delta xDS: a digest of its bytes, so the same content always has
/// the same version, across agent restarts too (Envoy sends it back in
/// `initial_resource_versions` when it reconnects).
fn resource_version(resource: &Any) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &resource.value);
    hex(&digest.as_ref()[..16])
}

/// A digest of a set of named resources: equal digests mean a state-of-the-world response would
/// carry the same content.
fn fingerprint<'a>(resources: impl Iterator<Item = (&'a String, &'a Any)>) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, resource) in resources {
        for part in [
            name.as_bytes(),
            resource.type_url.as_bytes(),
            resource.value.as_slice(),
        ] {
            // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The snapshot holds `prost_types::Any`; envoy-types generated its own `Any` for the wire.
fn wire_any(any: &Any) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: any.type_url.clone(),
        value: any.value.clone(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        // Writing into a String cannot fail.
        let _ = write!(out, "{byte:02x}");
        out
    })
}

#[cfg(test)]
mod tests;
