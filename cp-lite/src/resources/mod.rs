//! The resource model: resource types and keys, typed specs, parsing of Kuma's universal and
//! Kubernetes YAML/JSON forms, validation with Kuma's texts, and REST rendering.

use std::fmt;

use serde::{Deserialize, Serialize};

mod validation;

pub use validation::{ValidationError, Violation};

/// A type of resource that cp-lite stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceType {
    /// `Mesh`, the only type that is not itself in a mesh.
    Mesh,
    /// `Dataplane`.
    Dataplane,
    /// `TrafficPermission` (legacy policy).
    TrafficPermission,
    /// `MeshTrafficPermission` (targetRef policy).
    MeshTrafficPermission,
    /// `Secret`, mesh-scoped.
    Secret,
    /// `DataplaneInsight`: what agents report (certificate state); not applied by users.
    DataplaneInsight,
}

impl ResourceType {
    /// Every type, in a stable order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Mesh,
        ResourceType::Dataplane,
        ResourceType::TrafficPermission,
        ResourceType::MeshTrafficPermission,
        ResourceType::Secret,
        ResourceType::DataplaneInsight,
    ];

    /// The `type`/`kind` name, e.g. `TrafficPermission`.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Mesh => "Mesh",
            ResourceType::Dataplane => "Dataplane",
            ResourceType::TrafficPermission => "TrafficPermission",
            ResourceType::MeshTrafficPermission => "MeshTrafficPermission",
            ResourceType::Secret => "Secret",
            ResourceType::DataplaneInsight => "DataplaneInsight",
        }
    }

    /// The REST path segment (and kumactl word), e.g. `traffic-permissions`.
    pub fn plural(self) -> &'static str {
        match self {
            ResourceType::Mesh => "meshes",
            ResourceType::Dataplane => "dataplanes",
            ResourceType::TrafficPermission => "traffic-permissions",
            ResourceType::MeshTrafficPermission => "meshtrafficpermissions",
            ResourceType::Secret => "secrets",
            ResourceType::DataplaneInsight => "dataplane-insights",
        }
    }

    /// Parses a `type`/`kind` name as written in YAML.
    pub fn from_name(name: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Parses a REST path segment.
    pub fn from_plural(plural: &str) -> Option<ResourceType> {
        Self::ALL.into_iter().find(|t| t.plural() == plural)
    }

    /// Whether resources of this type live inside a mesh.
    pub fn is_mesh_scoped(self) -> bool {
        self != ResourceType::Mesh
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one resource. `mesh` is empty for a Mesh.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: ResourceType,
    pub mesh: String,
    pub name: String,
}

impl ResourceKey {
    /// The key of a Mesh.
    pub fn mesh(name: impl Into<String>) -> Self {
        ResourceKey {
            kind: ResourceType::Mesh,
            mesh: String::new(),
            name: name.into(),
        }
    }

    /// The key of a mesh-scoped resource.
    pub fn in_mesh(kind: ResourceType, mesh: impl Into<String>, name: impl Into<String>) -> Self {
        ResourceKey {
            kind,
            mesh: mesh.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    /// Kuma's wording: `type="Secret" name="x" mesh="m"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type={:?} name={:?}", self.kind.name(), self.name)?;
        if self.kind.is_mesh_scoped() {
            write!(f, " mesh={:?}", self.mesh)?;
        }
        Ok(())
    }
}
