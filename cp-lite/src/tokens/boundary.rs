//! Boundary checks: whether a verified token allows the Dataplane presenting it.

use std::collections::{BTreeMap, BTreeSet};

use super::TokenError;
use super::jwt::DataplaneClaims;

/// The Dataplane a token is presented for.
#[derive(Debug, Clone, Copy)]
pub struct BoundaryTarget<'a> {
    /// The Dataplane's name.
    pub name: &'a str,
    /// The Dataplane's mesh.
    pub mesh: &'a str,
    /// Every tag of the Dataplane with all its values (union over inbounds).
    pub tags: &'a BTreeMap<String, BTreeSet<String>>,
    /// The Dataplane's `kuma.io/workload` label, if any.
    pub workload: Option<&'a str>,
}

/// Checks the token's claims against the Dataplane, as Kuma's universal authenticator does.
///
/// Empty claims are wildcards. Name and mesh must be equal. Every tag in the token must be
/// on the Dataplane, and every value the Dataplane has for it must be allowed by the token
/// (tags the token does not name are ignored). A token workload requires the same
/// `kuma.io/workload` label. The proxy type is not checked.
pub fn check_boundary(
    claims: &DataplaneClaims,
    target: &BoundaryTarget<'_>,
) -> Result<(), TokenError> {
    if !claims.name.is_empty() && claims.name != target.name {
        return Err(TokenError::NameMismatch {
            dataplane: target.name.to_string(),
            token: claims.name.clone(),
        });
    }
    if !claims.mesh.is_empty() && claims.mesh != target.mesh {
        return Err(TokenError::MeshMismatch {
            dataplane: target.mesh.to_string(),
            token: claims.mesh.clone(),
        });
    }
    for (tag, allowed) in &claims.tags {
        let Some(values) = target.tags.get(tag) else {
            return Err(TokenError::MissingTag(tag.clone()));
        };
        if let Some(value) = values.iter().find(|v| !allowed.contains(v)) {
            let allowed: BTreeSet<&String> = allowed.iter().collect();
            return Err(TokenError::TagValueNotAllowed {
                tag: tag.clone(),
                value: value.clone(),
                allowed: allowed.into_iter().cloned().collect(),
            });
        }
    }
    if !claims.workload.is_empty() {
        match target.workload {
            None => return Err(TokenError::MissingWorkloadLabel),
            Some(workload) if workload != claims.workload => {
                return Err(TokenError::WorkloadMismatch {
                    dataplane: workload.to_string(),
                    token: claims.workload.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dp_tags() -> BTreeMap<String, BTreeSet<String>> {
        BTreeMap::from([
            (
                "kuma.io/service".to_string(),
                BTreeSet::from(["web".to_string(), "web-api".to_string()]),
            ),
            ("version".to_string(), BTreeSet::from(["v1".to_string()])),
        ])
    }

    fn check(claims: &DataplaneClaims, workload: Option<&str>) -> Result<(), TokenError> {
        let tags = dp_tags();
        check_boundary(
            claims,
            &BoundaryTarget {
                name: "dp-1",
                mesh: "default",
                tags: &tags,
                workload,
            },
        )
    }

    #[test]
    fn empty_claims_allow_everything() {
        check(&DataplaneClaims::default(), None).unwrap();
        check(&DataplaneClaims::default(), Some("backend")).unwrap();
    }

    #[test]
    fn type_is_not_enforced() {
        let claims = DataplaneClaims {
            proxy_type: "ingress".into(),
            ..Default::default()
        };
        check(&claims, None).unwrap();
    }

    #[test]
    fn mesh_mismatch() {
        let claims = DataplaneClaims {
            mesh: "demo".into(),
            ..Default::default()
        };
        assert_eq!(
            check(&claims, None).unwrap_err().to_string(),
            "proxy mesh from requestor: default is different than in token: demo"
        );
    }

    #[test]
    fn token_tags_must_cover_every_dataplane_value() {
        let claims = |values: &[&str]| DataplaneClaims {
            tags: BTreeMap::from([(
                "kuma.io/service".to_string(),
                values.iter().map(|v| v.to_string()).collect(),
            )]),
            ..Default::default()
        };
        check(&claims(&["web-api", "web", "other"]), None).unwrap();
        // Allowed values are listed sorted and once each, as Kuma's tag sets are.
        assert_eq!(
            check(&claims(&["zz", "web", "zz"]), None)
                .unwrap_err()
                .to_string(),
            r#"dataplane contains tag "kuma.io/service" with value "web-api" which is not allowed with this token. Allowed values in token are ["web" "zz"]"#
        );
        assert_eq!(
            check(&claims(&[]), None).unwrap_err().to_string(),
            r#"dataplane contains tag "kuma.io/service" with value "web" which is not allowed with this token. Allowed values in token are []"#
        );
    }

    #[test]
    fn quoting_follows_go() {
        let claims = DataplaneClaims {
            tags: BTreeMap::from([("a\"b".to_string(), vec!["x".to_string()])]),
            ..Default::default()
        };
        assert_eq!(
            check(&claims, None).unwrap_err().to_string(),
            r#"dataplane has no tag "a\"b" required by the token"#
        );
    }

    #[test]
    fn workload_rules() {
        let claims = DataplaneClaims {
            workload: "backend".into(),
            ..Default::default()
        };
        check(&claims, Some("backend")).unwrap();
        assert_eq!(
            check(&claims, Some("front\"end")).unwrap_err().to_string(),
            r#"dataplane workload "front\"end" is not allowed with this token. Allowed workload in token is "backend""#
        );
        assert_eq!(
            check(&claims, None).unwrap_err(),
            TokenError::MissingWorkloadLabel
        );
    }
}
