//! The resource types kumactl knows, with their Kuma type names and REST paths.
//!
//! kumactl keeps its own small table instead of using `crate::resources` so the CLI depends only
//! on the HTTP contract, as an external client would.

/// A resource type that `apply`, `get` and `delete` handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Mesh`, the only type that is not inside a mesh.
    Mesh,
    /// `Dataplane`.
    Dataplane,
    /// `Secret` (mesh-scoped).
    Secret,
    /// `TrafficPermission` (legacy policy).
    TrafficPermission,
    /// `MeshTrafficPermission`.
    MeshTrafficPermission,
}

impl Kind {
    /// Every kind, in the order Kuma lists them in messages.
    pub const ALL: [Kind; 5] = [
        Kind::Mesh,
        Kind::Dataplane,
        Kind::TrafficPermission,
        Kind::MeshTrafficPermission,
        Kind::Secret,
    ];

    /// The Kuma type name (`type:` in universal YAML, `kind:` in Kubernetes YAML).
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::Dataplane => "Dataplane",
            Kind::Secret => "Secret",
            Kind::TrafficPermission => "TrafficPermission",
            Kind::MeshTrafficPermission => "MeshTrafficPermission",
        }
    }

    /// The REST path segment of the collection.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::Dataplane => "dataplanes",
            Kind::Secret => "secrets",
            Kind::TrafficPermission => "traffic-permissions",
            Kind::MeshTrafficPermission => "meshtrafficpermissions",
        }
    }

    /// The singular name used on the command line (`kumactl delete traffic-permission x`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::Dataplane => "dataplane",
            Kind::Secret => "secret",
            Kind::TrafficPermission => "traffic-permission",
            Kind::MeshTrafficPermission => "meshtrafficpermission",
        }
    }

    /// Looks a kind up by its Kuma type name.
    pub fn from_type_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.type_name() == name)
    }

    /// Looks a kind up by its singular command-line name.
    pub fn from_cli_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.cli_name() == name)
    }

    /// Whether resources of this kind live inside a mesh.
    pub fn is_mesh_scoped(self) -> bool {
        self != Kind::Mesh
    }

    /// The REST path segments of one resource.
    pub fn resource_path(self, mesh: &str, name: &str) -> Vec<String> {
        match self {
            Kind::Mesh => vec!["meshes".to_owned(), name.to_owned()],
            _ => vec![
                "meshes".to_owned(),
                mesh.to_owned(),
                self.plural().to_owned(),
                name.to_owned(),
            ],
        }
    }

    /// The REST path segments of the collection in `mesh` (every mesh for a `Mesh`).
    pub fn collection_path(self, mesh: &str) -> Vec<String> {
        match self {
            Kind::Mesh => vec!["meshes".to_owned()],
            _ => vec![
                "meshes".to_owned(),
                mesh.to_owned(),
                self.plural().to_owned(),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_type_name(kind.type_name()), Some(kind));
            assert_eq!(Kind::from_cli_name(kind.cli_name()), Some(kind));
        }
        assert_eq!(Kind::from_type_name("Foo"), None);
    }

    #[test]
    fn paths_follow_the_rest_api() {
        assert_eq!(
            Kind::Mesh.resource_path("ignored", "demo"),
            ["meshes", "demo"]
        );
        assert_eq!(
            Kind::TrafficPermission.resource_path("demo", "allow-all"),
            ["meshes", "demo", "traffic-permissions", "allow-all"]
        );
        assert_eq!(
            Kind::MeshTrafficPermission.collection_path("demo"),
            ["meshes", "demo", "meshtrafficpermissions"]
        );
        assert_eq!(Kind::Mesh.collection_path("demo"), ["meshes"]);
    }
}
