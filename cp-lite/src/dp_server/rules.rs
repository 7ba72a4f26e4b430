//! Which clients may reach an inbound, and which endpoints serve an outbound: Kuma's
//! TrafficPermission and MeshTrafficPermission matching turned into ordered, neutral rules (no
//! Envoy types), and the mesh's index of inbounds by service.
//!
//! Pure: no I/O, no async. The per-mesh parts ([`MeshPolicies`], [`EndpointIndex`]) are built
//! once per snapshot, so that each view stream only matches its own inbounds and outbounds.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use cp_lite_api::v1::{ClientSelector, Endpoint, PermissionAction, PermissionRule};

use crate::resources::{
    Action, MeshTrafficPermissionSpec, SERVICE_TAG, TargetRef, TrafficPermissionSpec,
};

/// Tags as resources carry them.
pub(crate) type Tags = BTreeMap<String, String>;

/// The selector value that matches any value of its tag.
const ANY_VALUE: &str = "*";

/// The authorization policies of one mesh, prepared for matching.
#[derive(Debug, Default)]
pub(crate) struct MeshPolicies {
    /// What the policies were built from, sorted by name, to tell whether a rebuild changed
    /// anything.
    inputs: PolicyInputs,
    /// Sorted by name: on a rank tie the first one wins.
    traffic_permissions: Vec<TrafficPermission>,
    /// Sorted by targetRef specificity, then by name: the order in which Kuma merges them.
    mesh_traffic_permissions: Vec<MeshTrafficPermission>,
}

/// The TrafficPermissions and MeshTrafficPermissions of a mesh, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PolicyInputs {
    pub(crate) traffic_permissions: Vec<(String, TrafficPermissionSpec)>,
    pub(crate) mesh_traffic_permissions: Vec<(String, MeshTrafficPermissionSpec)>,
}

#[derive(Debug)]
struct TrafficPermission {
    destinations: Vec<Tags>,
    /// The single rule this policy gives an inbound it is the best match for.
    rule: PermissionRule,
}

#[derive(Debug)]
struct MeshTrafficPermission {
    target: Target,
    /// One rule per `from[]` item, in the policy's order.
    from: Vec<PermissionRule>,
}

/// What a top-level `targetRef` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Mesh,
    MeshSubset(Tags),
    MeshService(String),
    MeshServiceSubset(String, Tags),
    /// A Dataplane by name; every Dataplane when the name is absent.
    Dataplane(Option<String>),
}

/// How well a TrafficPermission destination selector matches an inbound: exact values count
/// before `*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    exact: usize,
    wildcard: usize,
}

impl MeshPolicies {
    /// Prepares the policies of one mesh. A MeshTrafficPermission whose `targetRef` kind is not
    /// known is left out (validation never stores one); so are `from[]` items of unknown kinds.
    pub(crate) fn new(mut inputs: PolicyInputs) -> Self {
        inputs.traffic_permissions.sort_by(|a, b| a.0.cmp(&b.0));
        inputs
            .mesh_traffic_permissions
            .sort_by(|a, b| a.0.cmp(&b.0));
        let traffic_permissions = inputs
            .traffic_permissions
            .iter()
            .map(|(name, spec)| TrafficPermission {
                destinations: spec
                    .destinations
                    .iter()
                    .map(|d| d.match_tags.clone())
                    .collect(),
                rule: PermissionRule {
                    policy: format!("TrafficPermission/{name}"),
                    action: PermissionAction::Allow as i32,
                    clients: spec
                        .sources
                        .iter()
                        .map(|s| selector(s.match_tags.clone()))
                        .collect(),
                },
            })
            .collect();
        let mut mesh_traffic_permissions: Vec<MeshTrafficPermission> = inputs
            .mesh_traffic_permissions
            .iter()
            .filter_map(|(name, spec)| {
                let target = match &spec.target_ref {
                    None => Target::Mesh,
                    Some(target_ref) => Target::of(target_ref)?,
                };
                let policy = format!("MeshTrafficPermission/{name}");
                let from = spec
                    .from
                    .iter()
                    .filter_map(|item| {
                        Some(PermissionRule {
                            policy: policy.clone(),
                            action: action(item.default.action) as i32,
                            clients: vec![from_selector(&item.target_ref)?],
                        })
                    })
                    .collect();
                Some(MeshTrafficPermission { target, from })
            })
            .collect();
        // Stable: equal specificity keeps the name order.
        mesh_traffic_permissions.sort_by_key(|m| m.target.specificity());
        MeshPolicies {
            inputs,
            traffic_permissions,
            mesh_traffic_permissions,
        }
    }

    /// Whether these policies were built from `inputs` (in any order).
    pub(crate) fn built_from(&self, inputs: &PolicyInputs) -> bool {
        let mut sorted = inputs.clone();
        sorted.traffic_permissions.sort_by(|a, b| a.0.cmp(&b.0));
        sorted
            .mesh_traffic_permissions
            .sort_by(|a, b| a.0.cmp(&b.0));
        sorted == self.inputs
    }

    /// The rules of one inbound of Dataplane `dataplane` with tags `inbound`, first match wins,
    /// a client no rule matches is denied:
    /// 1. the `from[]` items of every MeshTrafficPermission selecting the inbound, in merge order,
    ///    reversed (in Kuma the last matching item decides);
    /// 2. else one ALLOW rule for the sources of the best matching TrafficPermission;
    /// 3. else none.
    pub(crate) fn inbound_rules(&self, dataplane: &str, inbound: &Tags) -> Vec<PermissionRule> {
        let mut rules = Vec::new();
        let mut selected = false;
        for policy in &self.mesh_traffic_permissions {
            if policy.target.selects(dataplane, inbound) {
                selected = true;
                rules.extend(policy.from.iter().cloned());
            }
        }
        if selected {
            rules.reverse();
            return rules;
        }
        let mut best: Option<(Rank, &TrafficPermission)> = None;
        for policy in &self.traffic_permissions {
            let Some(rank) = policy
                .destinations
                .iter()
                .filter_map(|d| rank(d, inbound))
                .max()
            else {
                continue;
            };
            // Strictly better only: on a tie the earlier name stays.
            if best.is_none_or(|(b, _)| rank.cmp(&b) == Ordering::Greater) {
                best = Some((rank, policy));
            }
        }
        best.map(|(_, p)| vec![p.rule.clone()]).unwrap_or_default()
    }
}

impl Target {
    fn of(target_ref: &TargetRef) -> Option<Target> {
        let name = || target_ref.name.clone().unwrap_or_default();
        Some(match target_ref.kind.as_str() {
            "Mesh" => Target::Mesh,
            "MeshSubset" => Target::MeshSubset(target_ref.tags.clone()),
            "MeshService" => Target::MeshService(name()),
            "MeshServiceSubset" => Target::MeshServiceSubset(name(), target_ref.tags.clone()),
            "Dataplane" => Target::Dataplane(target_ref.name.clone()),
            _ => return None,
        })
    }

    /// Mesh < MeshSubset < MeshService < MeshServiceSubset < Dataplane.
    fn specificity(&self) -> u8 {
        match self {
            Target::Mesh => 0,
            Target::MeshSubset(_) => 1,
            Target::MeshService(_) => 2,
            Target::MeshServiceSubset(..) => 3,
            Target::Dataplane(_) => 4,
        }
    }

    fn selects(&self, dataplane: &str, inbound: &Tags) -> bool {
        let service = inbound.get(SERVICE_TAG);
        match self {
            Target::Mesh => true,
            Target::MeshSubset(tags) => rank(tags, inbound).is_some(),
            Target::MeshService(name) => service == Some(name),
            Target::MeshServiceSubset(name, tags) => {
                service == Some(name) && rank(tags, inbound).is_some()
            }
            Target::Dataplane(name) => name.as_deref().is_none_or(|n| n == dataplane),
        }
    }
}

/// How `selector` matches `tags`: `None` unless every tag of the selector is present with the
/// same value or `*`.
fn rank(selector: &Tags, tags: &Tags) -> Option<Rank> {
    let mut rank = Rank {
        exact: 0,
        wildcard: 0,
    };
    for (key, value) in selector {
        let actual = tags.get(key)?;
        if value == ANY_VALUE {
            rank.wildcard += 1;
        } else if value == actual {
            rank.exact += 1;
        } else {
            return None;
        }
    }
    Some(rank)
}

fn action(action: Action) -> PermissionAction {
    match action {
        Action::Allow => PermissionAction::Allow,
        Action::Deny => PermissionAction::Deny,
        Action::AllowWithShadowDeny => PermissionAction::AllowWithShadowDeny,
    }
}

fn selector(tags: Tags) -> ClientSelector {
    ClientSelector {
        tags: tags.into_iter().collect(),
    }
}

/// The clients a `from[].targetRef` names: Mesh ⇒ everyone; MeshSubset ⇒ its tags;
/// MeshService ⇒ its `kuma.io/service`; MeshServiceSubset ⇒ both.
fn from_selector(target_ref: &TargetRef) -> Option<ClientSelector> {
    let service = || {
        (
            SERVICE_TAG.to_string(),
            target_ref.name.clone().unwrap_or_default(),
        )
    };
    let tags: Tags = match target_ref.kind.as_str() {
        "Mesh" => Tags::new(),
        "MeshSubset" => target_ref.tags.clone(),
        "MeshService" => Tags::from([service()]),
        "MeshServiceSubset" => {
            let mut tags = target_ref.tags.clone();
            let (key, value) = service();
            tags.insert(key, value);
            tags
        }
        _ => return None,
    };
    Some(selector(tags))
}

/// Every inbound of every Dataplane of a mesh, by `kuma.io/service`, as endpoints.
#[derive(Debug, Default)]
pub(crate) struct EndpointIndex {
    /// Each list sorted by address, port, then tags. Inbounds without a service are under "".
    by_service: HashMap<String, Vec<IndexedEndpoint>>,
}

#[derive(Debug)]
struct IndexedEndpoint {
    tags: Tags,
    endpoint: Endpoint,
}

impl IndexedEndpoint {
    fn order(&self, other: &Self) -> Ordering {
        (&self.endpoint.address, self.endpoint.port, &self.tags).cmp(&(
            &other.endpoint.address,
            other.endpoint.port,
            &other.tags,
        ))
    }
}

impl EndpointIndex {
    /// Indexes inbounds given as (address, port, tags); the address is `inbound.address`, else
    /// the Dataplane's `networking.address`.
    pub(crate) fn new<'a>(inbounds: impl IntoIterator<Item = (&'a str, u32, &'a Tags)>) -> Self {
        let mut by_service: HashMap<String, Vec<IndexedEndpoint>> = HashMap::new();
        for (address, port, tags) in inbounds {
            by_service
                .entry(tags.get(SERVICE_TAG).cloned().unwrap_or_default())
                .or_default()
                .push(IndexedEndpoint {
                    tags: tags.clone(),
                    endpoint: Endpoint {
                        address: address.to_string(),
                        port,
                        tags: tags.clone().into_iter().collect(),
                    },
                });
        }
        for endpoints in by_service.values_mut() {
            endpoints.sort_by(IndexedEndpoint::order);
        }
        EndpointIndex { by_service }
    }

    /// The endpoints whose tags include all of `tags`, sorted by address then port.
    pub(crate) fn endpoints(&self, tags: &Tags) -> Vec<Endpoint> {
        let matches = |e: &&IndexedEndpoint| tags.iter().all(|(k, v)| e.tags.get(k) == Some(v));
        match tags.get(SERVICE_TAG) {
            Some(service) => self
                .by_service
                .get(service)
                .into_iter()
                .flatten()
                .filter(matches)
                .map(|e| e.endpoint.clone())
                .collect(),
            // Validation requires a service on outbounds; without one, every inbound counts.
            None => {
                let mut all: Vec<&IndexedEndpoint> =
                    self.by_service.values().flatten().filter(matches).collect();
                all.sort_by(|a, b| a.order(b));
                all.into_iter().map(|e| e.endpoint.clone()).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources::{ResourceType, Selector, Spec};

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn client(pairs: &[(&str, &str)]) -> ClientSelector {
        selector(tags(pairs))
    }

    fn tp(
        name: &str,
        sources: &[&[(&str, &str)]],
        destinations: &[&[(&str, &str)]],
    ) -> (String, TrafficPermissionSpec) {
        let selectors = |list: &[&[(&str, &str)]]| {
            list.iter()
                .map(|pairs| Selector {
                    match_tags: tags(pairs),
                })
                .collect()
        };
        (
            name.to_string(),
            TrafficPermissionSpec {
                sources: selectors(sources),
                destinations: selectors(destinations),
            },
        )
    }

    fn mtp(name: &str, spec: serde_json::Value) -> (String, MeshTrafficPermissionSpec) {
        match Spec::from_value(ResourceType::MeshTrafficPermission, spec).unwrap() {
            Spec::MeshTrafficPermission(spec) => (name.to_string(), spec),
            other => panic!("{other:?}"),
        }
    }

    fn policies(
        tps: Vec<(String, TrafficPermissionSpec)>,
        mtps: Vec<(String, MeshTrafficPermissionSpec)>,
    ) -> MeshPolicies {
        MeshPolicies::new(PolicyInputs {
            traffic_permissions: tps,
            mesh_traffic_permissions: mtps,
        })
    }

    fn rule(
        policy: &str,
        action: PermissionAction,
        clients: Vec<ClientSelector>,
    ) -> PermissionRule {
        PermissionRule {
            policy: policy.to_string(),
            action: action as i32,
            clients,
        }
    }

    const WEB: &[(&str, &str)] = &[("kuma.io/service", "web"), ("version", "v1")];

    #[test]
    fn no_policy_gives_no_rules() {
        let none = MeshPolicies::default();
        assert!(none.inbound_rules("dp-1", &tags(WEB)).is_empty());
        // A TrafficPermission for another service does not apply either.
        let other = policies(
            vec![tp(
                "other",
                &[&[("kuma.io/service", "*")]],
                &[&[("kuma.io/service", "db")]],
            )],
            vec![],
        );
        assert!(other.inbound_rules("dp-1", &tags(WEB)).is_empty());
    }

    #[test]
    fn traffic_permission_gives_one_allow_rule_with_its_sources() {
        let p = policies(
            vec![tp(
                "allow",
                &[
                    &[("kuma.io/service", "frontend")],
                    &[("env", "dev"), ("kuma.io/service", "*")],
                ],
                &[&[("kuma.io/service", "web")]],
            )],
            vec![],
        );
        assert_eq!(
            p.inbound_rules("dp-1", &tags(WEB)),
            vec![rule(
                "TrafficPermission/allow",
                PermissionAction::Allow,
                vec![
                    client(&[("kuma.io/service", "frontend")]),
                    client(&[("env", "dev"), ("kuma.io/service", "*")]),
                ]
            )]
        );
    }

    #[test]
    fn traffic_permission_rank_exact_before_wildcard_then_name() {
        let any = &[("kuma.io/service", "*")][..];
        let candidates = vec![
            // Two `*` matches.
            tp(
                "a-two-wildcards",
                &[any],
                &[&[("kuma.io/service", "*"), ("version", "*")]],
            ),
            // One exact match.
            tp(
                "b-exact",
                &[&[("kuma.io/service", "one")]],
                &[&[("kuma.io/service", "web")]],
            ),
            // One exact and one `*` match, through its second destination.
            tp(
                "c-exact-and-wildcard",
                &[&[("kuma.io/service", "two")]],
                &[
                    &[("kuma.io/service", "db")],
                    &[("kuma.io/service", "web"), ("version", "*")],
                ],
            ),
            // The same rank as c, later name: c wins the tie.
            tp(
                "d-same-rank",
                &[&[("kuma.io/service", "three")]],
                &[&[("kuma.io/service", "*"), ("version", "v1")]],
            ),
            // Does not match: version differs.
            tp(
                "e-no-match",
                &[&[("kuma.io/service", "four")]],
                &[&[("kuma.io/service", "web"), ("version", "v2")]],
            ),
        ];
        let best = |list: Vec<(String, TrafficPermissionSpec)>| {
            policies(list, vec![]).inbound_rules("dp-1", &tags(WEB))[0]
                .policy
                .clone()
        };
        assert_eq!(
            best(candidates.clone()),
            "TrafficPermission/c-exact-and-wildcard"
        );
        // Input order does not matter.
        let mut reversed = candidates.clone();
        reversed.reverse();
        assert_eq!(best(reversed), "TrafficPermission/c-exact-and-wildcard");
        // Without c and d, one exact match beats two wildcards.
        assert_eq!(
            best(vec![candidates[0].clone(), candidates[1].clone()]),
            "TrafficPermission/b-exact"
        );
        // Only wildcards: `*` still selects.
        assert_eq!(
            best(vec![candidates[0].clone()]),
            "TrafficPermission/a-two-wildcards"
        );
        // A tie on rank goes to the first name.
        let tie = vec![
            tp("z", &[any], &[&[("kuma.io/service", "web")]]),
            tp("m", &[any], &[&[("version", "v1")]]),
        ];
        assert_eq!(best(tie), "TrafficPermission/m");
    }

    #[test]
    fn mesh_traffic_permission_rules_are_reversed_in_merge_order() {
        let p = policies(
            vec![],
            vec![
                mtp(
                    "mesh-wide",
                    json!({"targetRef": {"kind": "Mesh"}, "from": [
                        {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                        {"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Allow"}}
                    ]}),
                ),
                mtp(
                    "for-web",
                    json!({"targetRef": {"kind": "MeshService", "name": "web"}, "from": [
                        {"targetRef": {"kind": "MeshSubset", "tags": {"env": "dev"}}, "default": {"action": "AllowWithShadowDeny"}},
                        {"targetRef": {"kind": "MeshServiceSubset", "name": "admin", "tags": {"version": "v2"}}, "default": {"action": "Deny"}}
                    ]}),
                ),
            ],
        );
        assert_eq!(
            p.inbound_rules("dp-1", &tags(WEB)),
            vec![
                rule(
                    "MeshTrafficPermission/for-web",
                    PermissionAction::Deny,
                    vec![client(&[("kuma.io/service", "admin"), ("version", "v2")])]
                ),
                rule(
                    "MeshTrafficPermission/for-web",
                    PermissionAction::AllowWithShadowDeny,
                    vec![client(&[("env", "dev")])]
                ),
                rule(
                    "MeshTrafficPermission/mesh-wide",
                    PermissionAction::Allow,
                    vec![client(&[("kuma.io/service", "frontend")])]
                ),
                rule(
                    "MeshTrafficPermission/mesh-wide",
                    PermissionAction::Deny,
                    vec![client(&[])]
                ),
            ]
        );
        // Another service only gets the mesh-wide policy.
        assert_eq!(
            p.inbound_rules("dp-1", &tags(&[("kuma.io/service", "db")]))
                .iter()
                .map(|r| r.policy.as_str())
                .collect::<Vec<_>>(),
            [
                "MeshTrafficPermission/mesh-wide",
                "MeshTrafficPermission/mesh-wide"
            ]
        );
    }

    #[test]
    fn mesh_service_is_more_specific_than_mesh_whatever_the_names() {
        let allow_all =
            json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]});
        let deny_all = json!({"targetRef": {"kind": "MeshService", "name": "web"},
            "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]});
        // "a-..." sorts before "z-...", but MeshService is merged after Mesh, so it comes first.
        for (mesh_name, service_name) in [("z-mesh", "a-service"), ("a-mesh", "z-service")] {
            let p = policies(
                vec![],
                vec![
                    mtp(service_name, deny_all.clone()),
                    mtp(mesh_name, allow_all.clone()),
                ],
            );
            let rules = p.inbound_rules("dp-1", &tags(WEB));
            assert_eq!(
                rules,
                vec![
                    rule(
                        &format!("MeshTrafficPermission/{service_name}"),
                        PermissionAction::Deny,
                        vec![client(&[])]
                    ),
                    rule(
                        &format!("MeshTrafficPermission/{mesh_name}"),
                        PermissionAction::Allow,
                        vec![client(&[])]
                    ),
                ]
            );
        }
    }

    #[test]
    fn deny_then_allow_within_one_policy() {
        // Kuma's documented pattern: deny everyone, then allow one service. The later item wins
        // for the client it names, so the Allow comes first.
        let p = policies(
            vec![],
            vec![mtp(
                "web",
                json!({"targetRef": {"kind": "MeshService", "name": "web"}, "from": [
                    {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                    {"targetRef": {"kind": "MeshService", "name": "frontend"}, "default": {"action": "Allow"}}
                ]}),
            )],
        );
        assert_eq!(
            p.inbound_rules("dp-1", &tags(WEB)),
            vec![
                rule(
                    "MeshTrafficPermission/web",
                    PermissionAction::Allow,
                    vec![client(&[("kuma.io/service", "frontend")])]
                ),
                rule(
                    "MeshTrafficPermission/web",
                    PermissionAction::Deny,
                    vec![client(&[])]
                ),
            ]
        );
    }

    #[test]
    fn allow_with_shadow_deny_is_kept() {
        let p = policies(
            vec![],
            vec![mtp(
                "shadow",
                json!({"from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "AllowWithShadowDeny"}}]}),
            )],
        );
        assert_eq!(
            p.inbound_rules("dp-1", &tags(WEB)),
            vec![rule(
                "MeshTrafficPermission/shadow",
                PermissionAction::AllowWithShadowDeny,
                vec![client(&[])]
            )]
        );
    }

    #[test]
    fn a_selecting_mesh_traffic_permission_hides_traffic_permissions() {
        let tps = vec![tp(
            "allow-all",
            &[&[("kuma.io/service", "*")]],
            &[&[("kuma.io/service", "*")]],
        )];
        let only_db = mtp(
            "db",
            json!({"targetRef": {"kind": "MeshService", "name": "db"},
                "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]}),
        );
        let p = policies(tps, vec![only_db]);
        // web is not selected by the MTP: the TrafficPermission applies.
        assert_eq!(
            p.inbound_rules("dp-1", &tags(WEB))[0].policy,
            "TrafficPermission/allow-all"
        );
        // db is: only the MTP counts.
        let rules = p.inbound_rules("dp-1", &tags(&[("kuma.io/service", "db")]));
        assert_eq!(
            rules,
            vec![rule(
                "MeshTrafficPermission/db",
                PermissionAction::Deny,
                vec![client(&[])]
            )]
        );
    }

    #[test]
    fn top_level_target_kinds_select_inbounds() {
        let from = json!([{"targetRef": {"kind": "Mesh"}, "default": {"action": "Allow"}}]);
        let selects = |target: serde_json::Value, dataplane: &str, inbound: &[(&str, &str)]| {
            let p = policies(
                vec![],
                vec![mtp("p", json!({"targetRef": target, "from": from}))],
            );
            !p.inbound_rules(dataplane, &tags(inbound)).is_empty()
        };
        let subset = json!({"kind": "MeshSubset", "tags": {"version": "v1"}});
        assert!(selects(subset.clone(), "dp-1", WEB));
        assert!(!selects(
            subset,
            "dp-1",
            &[("kuma.io/service", "web"), ("version", "v2")]
        ));
        let service_subset =
            json!({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}});
        assert!(selects(service_subset.clone(), "dp-1", WEB));
        assert!(!selects(
            service_subset.clone(),
            "dp-1",
            &[("kuma.io/service", "web")]
        ));
        assert!(!selects(
            service_subset,
            "dp-1",
            &[("kuma.io/service", "db"), ("version", "v1")]
        ));
        let wildcard_subset =
            json!({"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "*"}});
        assert!(selects(wildcard_subset.clone(), "dp-1", WEB));
        assert!(!selects(
            wildcard_subset,
            "dp-1",
            &[("kuma.io/service", "web")]
        ));
        let dataplane = json!({"kind": "Dataplane", "name": "dp-1"});
        assert!(selects(dataplane.clone(), "dp-1", WEB));
        assert!(!selects(dataplane, "dp-2", WEB));
        assert!(selects(json!({"kind": "Dataplane"}), "dp-2", WEB));
        assert!(!selects(
            json!({"kind": "MeshService", "name": "db"}),
            "dp-1",
            WEB
        ));
    }

    #[test]
    fn specificity_orders_every_kind() {
        let from =
            |action: &str| json!([{"targetRef": {"kind": "Mesh"}, "default": {"action": action}}]);
        // Names in the reverse of the specificity order, so that only specificity explains it.
        let p = policies(
            vec![],
            vec![
                mtp(
                    "a",
                    json!({"targetRef": {"kind": "Dataplane", "name": "dp-1"}, "from": from("Allow")}),
                ),
                mtp(
                    "b",
                    json!({"targetRef": {"kind": "MeshServiceSubset", "name": "web", "tags": {"version": "v1"}}, "from": from("Deny")}),
                ),
                mtp(
                    "c",
                    json!({"targetRef": {"kind": "MeshService", "name": "web"}, "from": from("Allow")}),
                ),
                mtp(
                    "d",
                    json!({"targetRef": {"kind": "MeshSubset", "tags": {"version": "v1"}}, "from": from("Deny")}),
                ),
                mtp("e", json!({"from": from("Allow")})),
            ],
        );
        let order: Vec<String> = p
            .inbound_rules("dp-1", &tags(WEB))
            .into_iter()
            .map(|r| r.policy)
            .collect();
        assert_eq!(
            order,
            ["a", "b", "c", "d", "e"].map(|n| format!("MeshTrafficPermission/{n}"))
        );
    }

    #[test]
    fn built_from_ignores_the_order() {
        let inputs = PolicyInputs {
            traffic_permissions: vec![
                tp(
                    "b",
                    &[&[("kuma.io/service", "*")]],
                    &[&[("kuma.io/service", "*")]],
                ),
                tp(
                    "a",
                    &[&[("kuma.io/service", "*")]],
                    &[&[("kuma.io/service", "*")]],
                ),
            ],
            mesh_traffic_permissions: vec![],
        };
        let p = MeshPolicies::new(inputs.clone());
        assert!(p.built_from(&inputs));
        let mut other = inputs;
        other.traffic_permissions.pop();
        assert!(!p.built_from(&other));
    }

    fn endpoint(address: &str, port: u32, pairs: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            address: address.to_string(),
            port,
            tags: tags(pairs).into_iter().collect(),
        }
    }

    #[test]
    fn endpoints_match_every_outbound_tag_and_are_sorted() {
        let backend_v1 = tags(&[("kuma.io/service", "backend"), ("version", "v1")]);
        let backend_v2 = tags(&[("kuma.io/service", "backend"), ("version", "v2")]);
        let web = tags(&[("kuma.io/service", "web")]);
        let inbounds = [
            ("10.0.0.2", 9000, &backend_v2),
            ("10.0.1.2", 8000, &backend_v1),
            ("10.0.0.2", 7000, &web),
            ("10.0.0.1", 9000, &backend_v1),
        ];
        let index = EndpointIndex::new(inbounds);
        assert_eq!(
            index.endpoints(&tags(&[("kuma.io/service", "backend")])),
            vec![
                endpoint(
                    "10.0.0.1",
                    9000,
                    &[("kuma.io/service", "backend"), ("version", "v1")]
                ),
                endpoint(
                    "10.0.0.2",
                    9000,
                    &[("kuma.io/service", "backend"), ("version", "v2")]
                ),
                endpoint(
                    "10.0.1.2",
                    8000,
                    &[("kuma.io/service", "backend"), ("version", "v1")]
                ),
            ]
        );
        assert_eq!(
            index.endpoints(&tags(&[("kuma.io/service", "backend"), ("version", "v1")])),
            vec![
                endpoint(
                    "10.0.0.1",
                    9000,
                    &[("kuma.io/service", "backend"), ("version", "v1")]
                ),
                endpoint(
                    "10.0.1.2",
                    8000,
                    &[("kuma.io/service", "backend"), ("version", "v1")]
                ),
            ]
        );
        assert!(
            index
                .endpoints(&tags(&[("kuma.io/service", "nobody")]))
                .is_empty()
        );
        assert_eq!(
            index.endpoints(&tags(&[("version", "v2")])),
            vec![endpoint(
                "10.0.0.2",
                9000,
                &[("kuma.io/service", "backend"), ("version", "v2")]
            )]
        );
    }
}
