//! Who may connect to an inbound: ordered permission rules (first match wins, nothing matched
//! is denied) translated to Envoy's network RBAC filter, which Envoy evaluates as "allow when any
//! policy matches" (KUMA-FACTS 7.4, 7.5).
//!
//! The filter reaches Envoy through ECDS: the inbound listener's mesh-mTLS chains hold a filter
//! named [`rbac_config_name`] that Envoy fetches as a `TypedExtensionConfig` over ADS, with
//! deny-all as its default. A change of permissions replaces that one resource and leaves the
//! listener untouched, so connections that stay allowed are not drained.
//!
//! Translation: rule `i` with action ALLOW (or ALLOW_WITH_SHADOW_DENY) becomes a policy whose
//! principal is "one of rule `i`'s clients AND none of the clients of the DENY rules before
//! `i`", which is exactly first-match-wins. Shadow rules are the same translation with
//! ALLOW_WITH_SHADOW_DENY read as DENY.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{ExtensionConfigSource, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as PermissionKind;
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier, Set};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac as RbacRules};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use crate::common::{ads_config_source, sanitize_stat_name};
use crate::resource::{NETWORK_RBAC_TYPE_URL, to_envoy_any};

/// The tag whose value is the client's SPIFFE identity `spiffe://<mesh>/<value>`.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The tag value that matches any value.
pub const ANY_VALUE: &str = "*";
/// Prefix of the ECDS resource (and filter) name; the full name is `rbac:<listener name>`.
pub const RBAC_CONFIG_PREFIX: &str = "rbac:";

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionAction {
    /// The client is allowed.
    Allow,
    /// The client is denied.
    Deny,
    /// The client is allowed, and the shadow rules count it as denied.
    AllowWithShadowDeny,
}

/// A set of clients: those holding every tag of it. A value `*` matches any value; no tags
/// (or only `*` values) match every client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSelector {
    /// Tag → value. `kuma.io/service: X` is the identity `spiffe://<mesh>/X`, any other
    /// `k: v` the identity `kuma://k/v`.
    pub tags: BTreeMap<String, String>,
}

/// One rule of an inbound's ordered list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRule {
    /// The policy the rule comes from, `Kind/name`: names the Envoy policy.
    pub policy: String,
    /// What the rule does to the clients it matches.
    pub action: PermissionAction,
    /// The clients the rule matches (ORed). No selector matches no client.
    pub clients: Vec<ClientSelector>,
}

/// `rbac:<listener name>`: the ECDS resource and the filter that refers to it.
pub fn rbac_config_name(listener_name: &str) -> String {
    format!("{RBAC_CONFIG_PREFIX}{listener_name}")
}

/// The network RBAC filter of `listener_name` for `rules` evaluated in order (see the module
/// documentation). No rules deny everything.
pub fn network_rbac(mesh: &str, listener_name: &str, rules: &[PermissionRule]) -> Rbac {
    let enforced = policies(mesh, rules, Shadow::No);
    let shadow = rules
        .iter()
        .any(|rule| rule.action == PermissionAction::AllowWithShadowDeny)
        .then(|| allow(policies(mesh, rules, Shadow::Yes)));
    Rbac {
        stat_prefix: stat_prefix(listener_name),
        rules: Some(allow(enforced)),
        shadow_rules: shadow,
        ..Default::default()
    }
}

/// The RBAC filter that denies every connection: what a listener applies until the agent
/// serves its rules, and what an inbound without rules gets.
pub fn deny_all_rbac(listener_name: &str) -> Rbac {
    network_rbac("", listener_name, &[])
}

/// The ECDS resource `rbac:<listener name>` holding [`network_rbac`].
pub fn rbac_extension_config(
    mesh: &str,
    listener_name: &str,
    rules: &[PermissionRule],
) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: rbac_config_name(listener_name),
        typed_config: Some(to_envoy_any(&network_rbac(mesh, listener_name, rules))),
    }
}

/// The listener filter that fetches `rbac:<listener name>` over ADS, denying everything until
/// it has.
pub fn rbac_filter(listener_name: &str) -> Filter {
    Filter {
        name: rbac_config_name(listener_name),
        config_type: Some(filter::ConfigType::ConfigDiscovery(ExtensionConfigSource {
            config_source: Some(ads_config_source()),
            default_config: Some(to_envoy_any(&deny_all_rbac(listener_name))),
            apply_default_config_without_warming: false,
            type_urls: vec![NETWORK_RBAC_TYPE_URL.to_owned()],
        })),
    }
}

/// `<sanitized listener name>.`, Kuma's prefix: the stats read `<listener>.rbac.allowed`.
fn stat_prefix(listener_name: &str) -> String {
    format!("{}.", sanitize_stat_name(listener_name))
}

/// Whether ALLOW_WITH_SHADOW_DENY reads as DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shadow {
    No,
    Yes,
}

fn allow(policies: HashMap<String, Policy>) -> RbacRules {
    RbacRules {
        action: Action::Allow.into(),
        policies,
        ..Default::default()
    }
}

/// One policy per allowing rule with at least one client; see the module documentation.
fn policies(mesh: &str, rules: &[PermissionRule], shadow: Shadow) -> HashMap<String, Policy> {
    let allows = |action: PermissionAction| match action {
        PermissionAction::Allow => true,
        PermissionAction::Deny => false,
        PermissionAction::AllowWithShadowDeny => shadow == Shadow::No,
    };
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for rule in rules.iter().filter(|rule| allows(rule.action)) {
        *uses.entry(rule.policy.as_str()).or_default() += 1;
    }
    let mut denied: Vec<Principal> = Vec::new();
    let mut policies = HashMap::new();
    for (index, rule) in rules.iter().enumerate() {
        let clients: Vec<Principal> = rule
            .clients
            .iter()
            .map(|selector| selector_principal(mesh, selector))
            .collect();
        if !allows(rule.action) {
            denied.extend(clients);
            continue;
        }
        if clients.is_empty() {
            continue;
        }
        let mut principal = vec![or_ids(clients)];
        if !denied.is_empty() {
            principal.push(Principal {
                identifier: Some(Identifier::NotId(Box::new(or_ids(denied.clone())))),
            });
        }
        let name = if uses.get(rule.policy.as_str()).copied().unwrap_or(0) > 1 {
            format!("{}#{index}", rule.policy)
        } else {
            rule.policy.clone()
        };
        policies.insert(
            name,
            Policy {
                permissions: vec![Permission {
                    rule: Some(PermissionKind::Any(true)),
                }],
                principals: vec![Principal {
                    identifier: Some(Identifier::AndIds(Set { ids: principal })),
                }],
                ..Default::default()
            },
        );
    }
    policies
}

/// `and_ids` of the identities a selector requires, or `any` when it requires none.
fn selector_principal(mesh: &str, selector: &ClientSelector) -> Principal {
    let ids: Vec<Principal> = selector
        .tags
        .iter()
        .filter(|(_, value)| value.as_str() != ANY_VALUE)
        .map(|(tag, value)| {
            let uri = if tag == SERVICE_TAG {
                format!("spiffe://{mesh}/{value}")
            } else {
                format!("kuma://{tag}/{value}")
            };
            authenticated(uri)
        })
        .collect();
    if ids.is_empty() {
        return Principal {
            identifier: Some(Identifier::Any(true)),
        };
    }
    Principal {
        identifier: Some(Identifier::AndIds(Set { ids })),
    }
}

/// A peer whose certificate carries the URI SAN `uri`.
fn authenticated(uri: String) -> Principal {
    Principal {
        identifier: Some(Identifier::Authenticated(Authenticated {
            principal_name: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(uri)),
                ..Default::default()
            }),
        })),
    }
}

fn or_ids(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(Identifier::OrIds(Set { ids })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTENER: &str = "inbound:10.0.0.5:10001";

    fn selector(tags: &[(&str, &str)]) -> ClientSelector {
        ClientSelector {
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn rule(
        policy: &str,
        action: PermissionAction,
        clients: Vec<ClientSelector>,
    ) -> PermissionRule {
        PermissionRule {
            policy: policy.to_owned(),
            action,
            clients,
        }
    }

    fn spiffe(service: &str) -> Principal {
        authenticated(format!("spiffe://demo/{service}"))
    }

    fn and(ids: Vec<Principal>) -> Principal {
        Principal {
            identifier: Some(Identifier::AndIds(Set { ids })),
        }
    }

    fn not(principal: Principal) -> Principal {
        Principal {
            identifier: Some(Identifier::NotId(Box::new(principal))),
        }
    }

    fn any() -> Principal {
        Principal {
            identifier: Some(Identifier::Any(true)),
        }
    }

    /// Policy name → its single principal.
    fn principals(rules: &Option<RbacRules>) -> BTreeMap<String, Principal> {
        let rules = rules.clone().unwrap_or_default();
        assert_eq!(rules.action, Action::Allow as i32);
        rules
            .policies
            .into_iter()
            .map(|(name, policy)| {
                assert_eq!(
                    policy.permissions,
                    [Permission {
                        rule: Some(PermissionKind::Any(true))
                    }]
                );
                let [principal] = <[Principal; 1]>::try_from(policy.principals)
                    .unwrap_or_else(|p| panic!("{name}: one principal expected, got {p:?}"));
                (name, principal)
            })
            .collect()
    }

    /// Evaluates the translated rules for a client holding `identities`, as Envoy does.
    fn envoy_allows(rules: &Option<RbacRules>, identities: &[&str]) -> bool {
        fn matches(principal: &Principal, identities: &[&str]) -> bool {
            match principal.identifier.as_ref() {
                Some(Identifier::Any(any)) => *any,
                Some(Identifier::AndIds(set)) => set.ids.iter().all(|p| matches(p, identities)),
                Some(Identifier::OrIds(set)) => set.ids.iter().any(|p| matches(p, identities)),
                Some(Identifier::NotId(inner)) => !matches(inner, identities),
                Some(Identifier::Authenticated(auth)) => {
                    match auth
                        .principal_name
                        .as_ref()
                        .and_then(|m| m.match_pattern.as_ref())
                    {
                        Some(MatchPattern::Exact(uri)) => identities.contains(&uri.as_str()),
                        other => panic!("unexpected matcher {other:?}"),
                    }
                }
                other => panic!("unexpected principal {other:?}"),
            }
        }
        principals(rules)
            .values()
            .any(|principal| matches(principal, identities))
    }

    #[test]
    fn no_rules_deny_everything() {
        let rbac = network_rbac("demo", LISTENER, &[]);
        assert_eq!(rbac.stat_prefix, "inbound_10_0_0_5_10001.");
        assert!(principals(&rbac.rules).is_empty());
        assert_eq!(rbac.shadow_rules, None);
        assert_eq!(deny_all_rbac(LISTENER), rbac);
    }

    #[test]
    fn an_allow_rule_becomes_a_policy_named_for_its_source() {
        let rbac = network_rbac(
            "demo",
            LISTENER,
            &[rule(
                "TrafficPermission/web-to-backend",
                PermissionAction::Allow,
                vec![
                    selector(&[("kuma.io/service", "web")]),
                    selector(&[("kuma.io/service", "admin"), ("version", "v2")]),
                ],
            )],
        );
        let policies = principals(&rbac.rules);
        assert_eq!(
            policies,
            BTreeMap::from([(
                "TrafficPermission/web-to-backend".to_owned(),
                and(vec![or_ids(vec![
                    and(vec![spiffe("web")]),
                    and(vec![
                        spiffe("admin"),
                        authenticated("kuma://version/v2".into())
                    ]),
                ])])
            )])
        );
        assert!(envoy_allows(&rbac.rules, &["spiffe://demo/web"]));
        assert!(!envoy_allows(&rbac.rules, &["spiffe://demo/admin"]));
        assert!(envoy_allows(
            &rbac.rules,
            &["spiffe://demo/admin", "kuma://version/v2"]
        ));
        assert!(!envoy_allows(&rbac.rules, &["spiffe://other/web"]));
    }

    #[test]
    fn wildcards_and_empty_selectors_match_every_client() {
        for clients in [
            vec![selector(&[])],
            vec![selector(&[("kuma.io/service", "*")])],
            vec![selector(&[("kuma.io/service", "*"), ("zone", "*")])],
        ] {
            let rbac = network_rbac(
                "demo",
                LISTENER,
                &[rule(
                    "TrafficPermission/all",
                    PermissionAction::Allow,
                    clients,
                )],
            );
            assert_eq!(
                principals(&rbac.rules)["TrafficPermission/all"],
                and(vec![or_ids(vec![any()])])
            );
            assert!(envoy_allows(&rbac.rules, &[]));
        }
        // A `*` next to a concrete value only drops that tag.
        let rbac = network_rbac(
            "demo",
            LISTENER,
            &[rule(
                "TrafficPermission/v1",
                PermissionAction::Allow,
                vec![selector(&[("kuma.io/service", "*"), ("version", "v1")])],
            )],
        );
        assert!(envoy_allows(
            &rbac.rules,
            &["spiffe://demo/x", "kuma://version/v1"]
        ));
        assert!(!envoy_allows(&rbac.rules, &["spiffe://demo/x"]));
    }

    #[test]
    fn a_rule_without_clients_matches_no_one() {
        let rbac = network_rbac(
            "demo",
            LISTENER,
            &[
                rule("MeshTrafficPermission/none", PermissionAction::Deny, vec![]),
                rule(
                    "MeshTrafficPermission/empty",
                    PermissionAction::Allow,
                    vec![],
                ),
                rule(
                    "MeshTrafficPermission/web",
                    PermissionAction::Allow,
                    vec![selector(&[("kuma.io/service", "web")])],
                ),
            ],
        );
        let policies = principals(&rbac.rules);
        assert_eq!(
            policies.keys().collect::<Vec<_>>(),
            ["MeshTrafficPermission/web"]
        );
        // No earlier deny clients: no not_id part.
        assert_eq!(
            policies["MeshTrafficPermission/web"],
            and(vec![or_ids(vec![and(vec![spiffe("web")])])])
        );
    }

    #[test]
    fn first_match_wins_through_the_denies_before_each_allow() {
        let rules = [
            rule(
                "MeshTrafficPermission/deny-web",
                PermissionAction::Deny,
                vec![selector(&[("kuma.io/service", "web")])],
            ),
            rule(
                "MeshTrafficPermission/allow-all",
                PermissionAction::Allow,
                vec![selector(&[])],
            ),
            rule(
                "MeshTrafficPermission/deny-all",
                PermissionAction::Deny,
                vec![selector(&[])],
            ),
        ];
        let rbac = network_rbac("demo", LISTENER, &rules);
        let policies = principals(&rbac.rules);
        assert_eq!(
            policies,
            BTreeMap::from([(
                "MeshTrafficPermission/allow-all".to_owned(),
                and(vec![
                    or_ids(vec![any()]),
                    not(or_ids(vec![and(vec![spiffe("web")])])),
                ])
            )])
        );
        assert!(!envoy_allows(&rbac.rules, &["spiffe://demo/web"]));
        assert!(envoy_allows(&rbac.rules, &["spiffe://demo/backend"]));

        // The same rules in the other order: the allow comes after a deny of everyone.
        let reversed: Vec<_> = rules.iter().rev().cloned().collect();
        let rbac = network_rbac("demo", LISTENER, &reversed);
        assert!(!envoy_allows(&rbac.rules, &["spiffe://demo/backend"]));
        assert!(!envoy_allows(&rbac.rules, &["spiffe://demo/web"]));

        // An allow before a deny wins for the clients both match.
        let rbac = network_rbac(
            "demo",
            LISTENER,
            &[
                rule(
                    "MeshTrafficPermission/allow-web",
                    PermissionAction::Allow,
                    vec![selector(&[("kuma.io/service", "web")])],
                ),
                rules[2].clone(),
            ],
        );
        assert!(envoy_allows(&rbac.rules, &["spiffe://demo/web"]));
        assert!(!envoy_allows(&rbac.rules, &["spiffe://demo/backend"]));
    }

    #[test]
    fn every_earlier_deny_is_excluded_in_order() {
        let rules = [
            rule(
                "MeshTrafficPermission/a",
                PermissionAction::Deny,
                vec![selector(&[("kuma.io/service", "a")])],
            ),
            rule(
                "MeshTrafficPermission/b",
                PermissionAction::Allow,
                vec![selector(&[("kuma.io/service", "b")])],
            ),
            rule(
                "MeshTrafficPermission/c",
                PermissionAction::Deny,
                vec![
                    selector(&[("kuma.io/service", "c")]),
                    selector(&[("version", "v1")]),
                ],
            ),
            rule(
                "MeshTrafficPermission/d",
                PermissionAction::Allow,
                vec![selector(&[("version", "*")])],
            ),
        ];
        let policies = principals(&network_rbac("demo", LISTENER, &rules).rules);
        assert_eq!(
            policies["MeshTrafficPermission/b"],
            and(vec![
                or_ids(vec![and(vec![spiffe("b")])]),
                not(or_ids(vec![and(vec![spiffe("a")])])),
            ])
        );
        assert_eq!(
            policies["MeshTrafficPermission/d"],
            and(vec![
                or_ids(vec![any()]),
                not(or_ids(vec![
                    and(vec![spiffe("a")]),
                    and(vec![spiffe("c")]),
                    and(vec![authenticated("kuma://version/v1".into())]),
                ])),
            ])
        );
    }

    #[test]
    fn repeated_policies_get_their_rule_index() {
        let rules = [
            rule(
                "MeshTrafficPermission/mtp",
                PermissionAction::Allow,
                vec![selector(&[("kuma.io/service", "a")])],
            ),
            rule(
                "MeshTrafficPermission/mtp",
                PermissionAction::Deny,
                vec![selector(&[("kuma.io/service", "b")])],
            ),
            rule(
                "MeshTrafficPermission/mtp",
                PermissionAction::Allow,
                vec![selector(&[])],
            ),
            rule(
                "MeshTrafficPermission/other",
                PermissionAction::Allow,
                vec![selector(&[("kuma.io/service", "c")])],
            ),
        ];
        let policies = principals(&network_rbac("demo", LISTENER, &rules).rules);
        assert_eq!(
            policies.keys().collect::<Vec<_>>(),
            [
                "MeshTrafficPermission/mtp#0",
                "MeshTrafficPermission/mtp#2",
                "MeshTrafficPermission/other"
            ]
        );
    }

    #[test]
    fn shadow_rules_count_allow_with_shadow_deny_as_deny() {
        let rules = [
            rule(
                "MeshTrafficPermission/shadow",
                PermissionAction::AllowWithShadowDeny,
                vec![selector(&[("kuma.io/service", "web")])],
            ),
            rule(
                "MeshTrafficPermission/all",
                PermissionAction::Allow,
                vec![selector(&[])],
            ),
        ];
        let rbac = network_rbac("demo", LISTENER, &rules);
        assert_eq!(
            principals(&rbac.rules).keys().collect::<Vec<_>>(),
            ["MeshTrafficPermission/all", "MeshTrafficPermission/shadow"]
        );
        assert!(envoy_allows(&rbac.rules, &["spiffe://demo/web"]));
        assert!(envoy_allows(&rbac.rules, &["spiffe://demo/backend"]));

        let shadow = principals(&rbac.shadow_rules);
        assert_eq!(
            shadow,
            BTreeMap::from([(
                "MeshTrafficPermission/all".to_owned(),
                and(vec![
                    or_ids(vec![any()]),
                    not(or_ids(vec![and(vec![spiffe("web")])])),
                ])
            )])
        );
        assert!(!envoy_allows(&rbac.shadow_rules, &["spiffe://demo/web"]));
        assert!(envoy_allows(&rbac.shadow_rules, &["spiffe://demo/backend"]));
    }

    #[test]
    fn the_ecds_resource_and_the_filter_share_the_name() {
        let rules = [rule(
            "TrafficPermission/all",
            PermissionAction::Allow,
            vec![selector(&[])],
        )];
        let config = rbac_extension_config("demo", LISTENER, &rules);
        assert_eq!(config.name, "rbac:inbound:10.0.0.5:10001");
        assert_eq!(
            config.typed_config,
            Some(to_envoy_any(&network_rbac("demo", LISTENER, &rules)))
        );
        let filter = rbac_filter(LISTENER);
        assert_eq!(filter.name, config.name);
        let Some(filter::ConfigType::ConfigDiscovery(source)) = filter.config_type else {
            panic!("the filter is not discovered");
        };
        assert_eq!(source.type_urls, [NETWORK_RBAC_TYPE_URL]);
        assert_eq!(
            source.default_config,
            Some(to_envoy_any(&deny_all_rbac(LISTENER)))
        );
        assert_eq!(source.config_source, Some(ads_config_source()));
        assert!(!source.apply_default_config_without_warming);
    }
}
