//! Resource name rules (Kuma's `ValidateMeta`): names are lowercase RFC 1123 subdomains of at
//! most 253 characters, mesh names at most 63.

use super::validation::ValidationError;
use super::{ResourceKey, ResourceType};

/// The longest resource name.
pub const MAX_NAME_LENGTH: usize = 253;
/// The longest Mesh name (it becomes a SPIFFE trust domain and a DNS label).
pub const MAX_MESH_NAME_LENGTH: usize = 63;

const IDENTIFIER_MESSAGE: &str = "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const MESH_FIELD_MESSAGE: &str = "invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_', '.' symbols.";

/// Whether `name` is a lowercase RFC 1123 subdomain: dot-separated labels of `[a-z0-9-]`,
/// each starting and ending with an alphanumeric character.
pub fn is_rfc1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    first.is_ascii_alphanumeric()
                        && last.is_ascii_alphanumeric()
                        && bytes
                            .iter()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                }
                _ => false,
            }
        })
}

/// Checks a resource name; violations are reported at `field`.
pub(crate) fn validate_identifier(err: &mut ValidationError, field: &str, name: &str) {
    if name.is_empty() {
        err.add(field, "cannot be empty");
    } else if name.len() > MAX_NAME_LENGTH {
        err.add(field, "value length must less or equal 253");
    } else if !is_rfc1123_subdomain(name) {
        err.add(field, IDENTIFIER_MESSAGE);
    }
}

/// The name rules for a key: `name` always, `mesh` for mesh-scoped types (Kuma keeps the
/// older, looser character set there), and the 63-character limit for Mesh names.
pub fn validate_key(key: &ResourceKey) -> ValidationError {
    let mut err = ValidationError::new();
    validate_identifier(&mut err, "name", &key.name);
    if key.kind.is_mesh_scoped() {
        if key.mesh.is_empty() {
            err.add("mesh", "cannot be empty");
        } else if key.mesh.len() > MAX_NAME_LENGTH {
            err.add("mesh", "value length must less or equal 253");
        } else if !key
            .mesh
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        {
            err.add("mesh", MESH_FIELD_MESSAGE);
        }
    }
    if key.kind == ResourceType::Mesh && key.name.len() > MAX_MESH_NAME_LENGTH {
        err.add("name", "cannot be longer than 63 characters");
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: &ValidationError) -> Vec<(String, String)> {
        err.violations
            .iter()
            .map(|v| (v.field.clone(), v.message.clone()))
            .collect()
    }

    #[test]
    fn rfc1123() {
        for ok in ["a", "dp-1", "default.ca-builtin-cert-ca-1", "0a", "a.b.c"] {
            assert!(is_rfc1123_subdomain(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", ".a", "a.", "a b", "ä"] {
            assert!(!is_rfc1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn kuma_texts() {
        let err = validate_key(&ResourceKey::in_mesh(ResourceType::Dataplane, "", "Web_1"));
        assert_eq!(
            fields(&err),
            vec![
                ("name".to_string(), IDENTIFIER_MESSAGE.to_string()),
                ("mesh".to_string(), "cannot be empty".to_string()),
            ]
        );
        let err = validate_key(&ResourceKey::in_mesh(ResourceType::Secret, "Bad!", ""));
        assert_eq!(
            fields(&err),
            vec![
                ("name".to_string(), "cannot be empty".to_string()),
                ("mesh".to_string(), MESH_FIELD_MESSAGE.to_string()),
            ]
        );
        let long = "a".repeat(254);
        let err = validate_key(&ResourceKey::in_mesh(ResourceType::Secret, "m", long));
        assert_eq!(
            fields(&err),
            vec![(
                "name".to_string(),
                "value length must less or equal 253".to_string()
            )]
        );
        // Kuma keeps '_' legal in the mesh field of scoped resources.
        assert!(
            validate_key(&ResourceKey::in_mesh(ResourceType::Secret, "old_mesh", "s")).is_empty()
        );
    }

    #[test]
    fn mesh_name_length() {
        assert!(validate_key(&ResourceKey::mesh("a".repeat(63))).is_empty());
        let err = validate_key(&ResourceKey::mesh("a".repeat(64)));
        assert_eq!(err.to_string(), "name: cannot be longer than 63 characters");
    }
}
