//! Authentication of DP server calls: the dataplane token from the `authorization` metadata,
//! verified with the keys of the Dataplane's mesh and bounded by the Dataplane (KUMA-FACTS 2.7).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use time::OffsetDateTime;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::snapshot::MeshState;
use crate::tokens::{self, BoundaryTarget, RevocationList, TokenError, VerifiedToken};

/// The metadata key that carries the token.
const AUTHORIZATION: &str = "authorization";

/// The optional scheme in front of the token (`authorization: Bearer <jwt>`).
const BEARER_PREFIX: &str = "Bearer ";

/// The token of a call: exactly one `authorization` value is required, none means an empty
/// credential (which then fails verification), a `Bearer ` prefix is accepted.
pub(crate) fn credential(metadata: &MetadataMap) -> Result<&str, Status> {
    let mut values = metadata.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok("");
    };
    let extra = values.count();
    if extra > 0 {
        return Err(unauthenticated(format!(
            "request must have exactly 1 \"{AUTHORIZATION}\" header, got {}",
            extra + 1
        )));
    }
    let value = value.to_str().map_err(|_| {
        unauthenticated(format!(
            "the \"{AUTHORIZATION}\" header must be a printable ASCII token"
        ))
    })?;
    Ok(value.strip_prefix(BEARER_PREFIX).unwrap_or(value).trim())
}

/// Where a token is checked: the mesh that holds its keys and the Dataplane it must cover.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) mesh_name: &'a str,
    /// `None` when the mesh does not exist (every token then fails: there is no key).
    pub(crate) mesh: Option<&'a MeshState>,
    pub(crate) dataplane_name: &'a str,
    pub(crate) tags: &'a BTreeMap<String, BTreeSet<String>>,
}

/// Verifies `token` (signature with the mesh's key named by `kid`, expiry, revocation) and its
/// boundary (name, mesh, tags) against `subject`.
pub(crate) fn verify(
    token: &str,
    subject: Subject<'_>,
    now: OffsetDateTime,
    in_memory_store: bool,
) -> Result<VerifiedToken, TokenError> {
    let keys = |kid: u32| subject.mesh?.signing_keys.get(&kid).cloned();
    let no_revocations;
    let revoked = match subject.mesh {
        Some(mesh) => mesh.revocations.as_ref(),
        None => {
            no_revocations = RevocationList::empty();
            &no_revocations
        }
    };
    let verified = tokens::verify(
        token,
        subject.mesh_name,
        &keys,
        revoked,
        now,
        in_memory_store,
    )?;
    tokens::check_boundary(
        &verified.claims,
        &BoundaryTarget {
            name: subject.dataplane_name,
            mesh: subject.mesh_name,
            tags: subject.tags,
            workload: None,
        },
    )?;
    Ok(verified)
}

/// A failed authentication, worded as Kuma does.
pub(crate) fn unauthenticated(error: impl fmt::Display) -> Status {
    Status::unauthenticated(format!("authentication failed: {error}"))
}

/// The call names a Dataplane that does not exist (Kuma's text).
pub(crate) fn dataplane_not_found(mesh: &str, name: &str) -> Status {
    Status::not_found(format!(
        "resource \"{mesh}.{name}\" not found; create a Dataplane in Kuma CP first or pass it as an argument to kuma-dp"
    ))
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn credential_rules() {
        let mut md = MetadataMap::new();
        assert_eq!(credential(&md).unwrap(), "");

        md.insert(
            AUTHORIZATION,
            MetadataValue::from_static("Bearer abc.def.ghi"),
        );
        assert_eq!(credential(&md).unwrap(), "abc.def.ghi");

        md.insert(AUTHORIZATION, MetadataValue::from_static("abc.def.ghi"));
        assert_eq!(credential(&md).unwrap(), "abc.def.ghi");

        md.append(AUTHORIZATION, MetadataValue::from_static("other"));
        let status = credential(&md).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            "authentication failed: request must have exactly 1 \"authorization\" header, got 2"
        );
    }
}
