//! The identities (SAN URIs) a dataplane is entitled to, in Kuma's order (KUMA-FACTS §6.1).

use std::collections::{BTreeMap, BTreeSet};

use super::CaError;
use crate::resources::SERVICE_TAG;

/// The SAN URIs of a dataplane certificate, in Kuma's order: `spiffe://<mesh>/<service>` for
/// each `kuma.io/service` value (sorted), then `kuma://<tag>/<value>` for each tag (sorted) and
/// each of its values (sorted). Fails with Kuma's text when there is no `kuma.io/service` value.
pub fn identities(
    mesh: &str,
    dataplane_name: &str,
    tags: &BTreeMap<String, BTreeSet<String>>,
) -> Result<Vec<String>, CaError> {
    identities_with_workload(mesh, dataplane_name, tags, None)
}

/// [`identities`], with Kuma's fallback for dataplanes without a `kuma.io/service` value: the
/// `kuma.io/workload` label, when given, becomes the only service (and the only tag).
pub fn identities_with_workload(
    mesh: &str,
    dataplane_name: &str,
    tags: &BTreeMap<String, BTreeSet<String>>,
    workload_label: Option<&str>,
) -> Result<Vec<String>, CaError> {
    let has_service = tags.get(SERVICE_TAG).is_some_and(|v| !v.is_empty());
    let fallback;
    let tags = if has_service {
        tags
    } else {
        match workload_label.filter(|w| !w.is_empty()) {
            Some(workload) => {
                fallback = BTreeMap::from([(
                    SERVICE_TAG.to_string(),
                    BTreeSet::from([workload.to_string()]),
                )]);
                &fallback
            }
            None => {
                return Err(CaError::NoIdentity {
                    dataplane: dataplane_name.to_string(),
                });
            }
        }
    };

    let services = tags.get(SERVICE_TAG).into_iter().flatten();
    let spiffe = services.map(|service| format!("spiffe://{mesh}/{service}"));
    let kuma = tags.iter().flat_map(|(tag, values)| {
        values
            .iter()
            .map(move |value| format!("kuma://{tag}/{value}"))
    });
    let all: Vec<String> = spiffe.chain(kuma).collect();
    // Certificates carry URIs as IA5String; catch what cannot be encoded here rather than at
    // signing time.
    if let Some(bad) = all.iter().find(|uri| !uri.is_ascii()) {
        return Err(CaError::InvalidIdentity {
            identity: bad.clone(),
        });
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn kumas_order() {
        // KUMA-FACTS §9 case 35.
        let tags = tags(&[
            ("version", &["v1"]),
            ("kuma.io/service", &["web-api", "web"]),
        ]);
        assert_eq!(
            identities("default", "dp-1", &tags).unwrap(),
            vec![
                "spiffe://default/web",
                "spiffe://default/web-api",
                "kuma://kuma.io/service/web",
                "kuma://kuma.io/service/web-api",
                "kuma://version/v1",
            ]
        );
    }

    #[test]
    fn tags_sort_around_the_service_tag() {
        let tags = tags(&[
            ("zone", &["east"]),
            ("app", &["b", "a"]),
            ("kuma.io/service", &["backend"]),
        ]);
        assert_eq!(
            identities("m", "dp", &tags).unwrap(),
            vec![
                "spiffe://m/backend",
                "kuma://app/a",
                "kuma://app/b",
                "kuma://kuma.io/service/backend",
                "kuma://zone/east",
            ]
        );
    }

    #[test]
    fn no_service_is_kumas_error() {
        let only_version = tags(&[("version", &["v1"])]);
        let err = identities("default", "dp-1", &only_version).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dataplane \"dp-1\" has no kuma.io/service tag and no kuma.io/workload label, cannot derive mTLS identity"
        );
        let empty_service = tags(&[("kuma.io/service", &[])]);
        assert!(identities("default", "dp-1", &empty_service).is_err());
        assert!(identities_with_workload("default", "dp-1", &only_version, Some("")).is_err());
    }

    #[test]
    fn workload_label_stands_in_for_the_service() {
        let only_version = tags(&[("version", &["v1"])]);
        assert_eq!(
            identities_with_workload("default", "dp-1", &only_version, Some("backend")).unwrap(),
            vec!["spiffe://default/backend", "kuma://kuma.io/service/backend"]
        );
        // A service tag wins over the label.
        let with_service = tags(&[("kuma.io/service", &["web"])]);
        assert_eq!(
            identities_with_workload("default", "dp-1", &with_service, Some("backend")).unwrap(),
            vec!["spiffe://default/web", "kuma://kuma.io/service/web"]
        );
    }

    #[test]
    fn non_ascii_values_are_refused() {
        let tags = tags(&[("kuma.io/service", &["caf\u{e9}"])]);
        assert!(matches!(
            identities("default", "dp-1", &tags),
            Err(CaError::InvalidIdentity { .. })
        ));
    }
}
