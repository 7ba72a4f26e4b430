//! The view stream end to end: the real cp-lite and kumactl, and a gRPC client over TLS standing
//! in for the agents. Policies applied and deleted with kumactl change the inbound rules on the
//! open streams, a new Dataplane adds an endpoint to its callers' outbounds, and a Dataplane with
//! a bad outbound is refused with the field at fault.

// Integration tests: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use cp_lite_api::v1::{PermissionAction, PermissionRule, View};
use integration_tests::{CpLite, Kumactl, dp};
use tonic::Streaming;

/// How long a change may take to reach a stream.
const WAIT: Duration = Duration::from_secs(15);

const MESH: &str = "
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
";

const WEB: &str = "
type: Dataplane
mesh: default
name: web
networking:
  address: 10.0.0.1
  inbound:
  - port: 8080
    servicePort: 80
    tags:
      kuma.io/service: web
  outbound:
  - port: 10001
    tags:
      kuma.io/service: backend
";

const BACKEND: &str = "
type: Dataplane
mesh: default
name: backend-1
networking:
  address: 10.0.0.2
  inbound:
  - port: 9000
    servicePort: 90
    tags:
      kuma.io/service: backend
";

const TRAFFIC_PERMISSION: &str = "
type: TrafficPermission
mesh: default
name: web-to-backend
sources:
- match:
    kuma.io/service: web
destinations:
- match:
    kuma.io/service: backend
";

const MESH_TRAFFIC_PERMISSION: &str = "
type: MeshTrafficPermission
mesh: default
name: backend-from-web
spec:
  targetRef:
    kind: MeshService
    name: backend
  from:
  - targetRef:
      kind: Mesh
    default:
      action: Deny
  - targetRef:
      kind: MeshService
      name: web
    default:
      action: Allow
";

fn tags(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rule(policy: &str, action: PermissionAction, clients: &[(&str, &str)]) -> PermissionRule {
    PermissionRule {
        policy: policy.to_string(),
        action: action as i32,
        clients: vec![cp_lite_api::v1::ClientSelector {
            tags: tags(clients),
        }],
    }
}

fn endpoints(view: &View) -> Vec<(String, u32)> {
    view.outbounds[0]
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.port))
        .collect()
}

#[test]
fn policies_and_endpoints_reach_open_view_streams() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = CpLite::start(&data).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    for yaml in [MESH, BACKEND, WEB] {
        kumactl.apply(yaml).unwrap();
    }
    let token = |name: &str| {
        kumactl
            .dataplane_token(&["--name", name, "--mesh", "default", "--valid-for", "1h"])
            .unwrap()
    };
    let (web_token, backend_token) = (token("web"), token("backend-1"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut web, mut backend) = runtime.block_on(async {
        let mut client = dp::connect(&data, cp.dp).await.unwrap();
        let web = dp::watch_view(&mut client, &web_token, "default", "web")
            .await
            .unwrap();
        let backend = dp::watch_view(&mut client, &backend_token, "default", "backend-1")
            .await
            .unwrap();
        (web, backend)
    });
    let next =
        |stream: &mut Streaming<View>| runtime.block_on(dp::next_view(stream, WAIT)).unwrap();

    // mTLS on, no policy: the inbounds carry no rule (everything is denied); web's outbound
    // lists backend's inbound.
    let first = next(&mut web);
    assert_eq!(first.inbounds.len(), 1);
    assert!(first.inbounds[0].rules.is_empty());
    assert_eq!(first.outbounds.len(), 1);
    assert_eq!(first.outbounds[0].port, 10001);
    assert_eq!(
        first.outbounds[0].tags,
        tags(&[("kuma.io/service", "backend")])
    );
    assert_eq!(endpoints(&first), [("10.0.0.2".to_string(), 9000)]);
    assert_eq!(
        first.outbounds[0].endpoints[0].tags,
        tags(&[("kuma.io/service", "backend")])
    );
    let view = next(&mut backend);
    assert_eq!(
        (view.inbounds[0].address.as_str(), view.inbounds[0].port),
        ("10.0.0.2", 9000)
    );
    assert!(view.inbounds[0].rules.is_empty());
    assert!(view.outbounds.is_empty());

    // A TrafficPermission allows web on backend's inbound; deleting it denies again.
    kumactl.apply(TRAFFIC_PERMISSION).unwrap();
    let view = next(&mut backend);
    assert_eq!(
        view.inbounds[0].rules,
        [rule(
            "TrafficPermission/web-to-backend",
            PermissionAction::Allow,
            &[("kuma.io/service", "web")]
        )]
    );
    delete(&kumactl, "traffic-permission", "web-to-backend");
    let view = next(&mut backend);
    assert!(view.inbounds[0].rules.is_empty(), "{view:?}");

    // A MeshTrafficPermission: deny everyone, then allow web; the later item wins, so it
    // comes first.
    kumactl.apply(MESH_TRAFFIC_PERMISSION).unwrap();
    let view = next(&mut backend);
    assert_eq!(
        view.inbounds[0].rules,
        [
            rule(
                "MeshTrafficPermission/backend-from-web",
                PermissionAction::Allow,
                &[("kuma.io/service", "web")]
            ),
            rule(
                "MeshTrafficPermission/backend-from-web",
                PermissionAction::Deny,
                &[]
            ),
        ]
    );
    delete(&kumactl, "meshtrafficpermission", "backend-from-web");
    let view = next(&mut backend);
    assert!(view.inbounds[0].rules.is_empty(), "{view:?}");

    // A second backend: one more endpoint on web's outbound, sorted by address. web's own
    // inbound rules never changed on the way, so this is only its second view.
    kumactl
        .apply(
            &BACKEND
                .replace("backend-1", "backend-2")
                .replace("10.0.0.2", "10.0.0.3"),
        )
        .unwrap();
    let view = next(&mut web);
    assert_eq!(view.version, 2);
    assert_eq!(
        endpoints(&view),
        [
            ("10.0.0.2".to_string(), 9000),
            ("10.0.0.3".to_string(), 9000)
        ]
    );
}

fn delete(kumactl: &Kumactl, kind: &str, name: &str) {
    let out = kumactl
        .run(&["delete", kind, name, "--mesh", "default"])
        .unwrap();
    assert!(out.success, "{}", out.all());
}

#[test]
fn a_bad_dataplane_outbound_is_refused_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CpLite::start(&dir.path().join("data")).unwrap();
    let kumactl = Kumactl::configure(dir.path(), &cp.api_url()).unwrap();
    kumactl.apply(MESH).unwrap();
    let bad = format!(
        "{BACKEND}  outbound:
  - port: 10001
    service: web
    tags:
      version: v1
  - port: 0
    address: localhost
    service: web
"
    );
    let out = kumactl
        .run_with_stdin(&["apply", "-f", "-"], Some(&bad))
        .unwrap();
    assert!(!out.success, "applied although invalid");
    for expected in [
        "networking.outbound[0].tags: mandatory tag \"kuma.io/service\" is missing",
        "networking.outbound[1].port: port must be in the range [1, 65535]",
        "networking.outbound[1].address: address has to be valid IP address",
    ] {
        assert!(
            out.all().contains(expected),
            "missing {expected:?} in:\n{}",
            out.all()
        );
    }
    let list = kumactl.get_json(&["dataplanes"]).unwrap();
    assert_eq!(list["total"], 0, "{list}");
}
