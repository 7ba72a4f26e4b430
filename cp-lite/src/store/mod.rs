//! Persistent and in-memory storage of resources, behind one interface.
//!
//! Everything cp-lite keeps (meshes, dataplanes, policies, secrets such as CA roots and token
//! signing keys, dataplane insights) goes through the [`Store`] trait, used as `Arc<dyn Store>`.
//! A store holds each resource's spec as its stored JSON form together with a version and two
//! timestamps. Writes are batches ([`Store::commit`]) that apply entirely or not at all, with
//! optimistic concurrency: a `Create` fails when the key exists and an `Update`/`Delete` names the
//! version it read. That is what keeps two racing writers (two `kumactl apply`, or later two
//! replicas) from both creating a CA for one backend: exactly one `Create` wins and the loser
//! re-reads the winner's.
//!
//! Implementations:
//! - [`MemoryStore`]: a map behind a lock, for tests (`KUMA_STORE_TYPE=memory`; state is lost on
//!   exit).
//! - [`EmbeddedStore`]: a redb file `<data dir>/store.redb` (`KUMA_STORE_TYPE=embedded`, the
//!   default), durable on every commit.
//!
//! # PostgreSQL (not implemented yet)
//!
//! A Postgres store maps onto the same trait, so several cp-lite replicas can share state:
//! - one table `resources(kind text, mesh text, name text, spec jsonb, version bigint,
//!   creation_time timestamptz, modification_time timestamptz, primary key (kind, mesh, name))`;
//!   `mesh` is `''` for a Mesh, as in [`ResourceKey`];
//! - `get` is a primary-key lookup, `list` is `where kind = $1 [and mesh = $2] order by mesh,
//!   name`;
//! - `commit` is one `serializable` transaction: `Create` is a plain `insert` (a unique-violation
//!   on the primary key is [`StoreError::AlreadyExists`]), `Update`/`Delete` are
//!   `update ... where kind, mesh, name and version = $expected` (zero rows → re-read to report
//!   [`StoreError::NotFound`] or [`StoreError::Conflict`]); any failure rolls everything back, and
//!   serialization failures are retried as a whole. Because creates race on the primary key, two
//!   replicas generating a CA for one backend cannot both store theirs;
//! - `revisions` is fed by `LISTEN/NOTIFY`: the commit's transaction runs `pg_notify` with the
//!   kinds it touched (delivered only if it commits), and every replica bumps its watch channel
//!   for the kinds named, so changes made by another replica reach local watchers too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::resources::{ResourceKey, ResourceType};

mod embedded;
mod memory;
#[cfg(test)]
mod suite;

pub use embedded::{EmbeddedStore, STORE_FILE_NAME};
pub use memory::MemoryStore;

/// A resource as stored: its key, the stored JSON form of its spec and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub key: ResourceKey,
    /// The spec's stored form (`Spec::to_value`).
    pub spec: serde_json::Value,
    /// 1 when created, +1 on every update.
    pub version: u64,
    /// When the resource was created; kept by updates.
    pub creation_time: OffsetDateTime,
    /// When the resource was last written.
    pub modification_time: OffsetDateTime,
}

/// One write of a [`Store::commit`] batch. Ops apply in order, each seeing the earlier ones.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Stores a new resource at version 1; fails with [`StoreError::AlreadyExists`].
    Create {
        key: ResourceKey,
        spec: serde_json::Value,
    },
    /// Replaces the spec of the resource at `expected_version`; fails with
    /// [`StoreError::NotFound`] or [`StoreError::Conflict`].
    Update {
        key: ResourceKey,
        spec: serde_json::Value,
        expected_version: u64,
    },
    /// Removes the resource, at `expected_version` when given; fails with
    /// [`StoreError::NotFound`] or [`StoreError::Conflict`].
    Delete {
        key: ResourceKey,
        expected_version: Option<u64>,
    },
}

impl WriteOp {
    /// The key this op writes.
    pub fn key(&self) -> &ResourceKey {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }
}

/// Change counters, one per resource type: each successful commit adds one to the counter of
/// every type it wrote. Watchers compare the counters they care about (the DP server, for
/// instance, ignores `DataplaneInsight` writes, which it makes itself).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revisions {
    counters: BTreeMap<ResourceType, u64>,
}

impl Revisions {
    /// The counter of `kind`: how many commits (since the store was opened) wrote that type.
    pub fn of(&self, kind: ResourceType) -> u64 {
        self.counters.get(&kind).copied().unwrap_or(0)
    }

    /// The sum of every type's counter.
    pub fn total(&self) -> u64 {
        self.counters.values().sum()
    }

    /// Adds one to the counter of each type in `kinds` (each type once, however often it occurs).
    fn bump(&mut self, kinds: impl IntoIterator<Item = ResourceType>) {
        let kinds: std::collections::BTreeSet<ResourceType> = kinds.into_iter().collect();
        for kind in kinds {
            *self.counters.entry(kind).or_insert(0) += 1;
        }
    }
}

/// Where resources are kept. Object-safe: used as `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The resource stored under `key`, if any.
    async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError>;

    /// The resources of `kind`, sorted by (mesh, name). `mesh: None` = every mesh.
    async fn list(
        &self,
        kind: ResourceType,
        mesh: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError>;

    /// Applies `ops` atomically: all ops apply or none. Returns the stored result of each
    /// Create/Update, in op order (Deletes omitted).
    async fn commit(&self, ops: Vec<WriteOp>) -> Result<Vec<StoredResource>, StoreError>;

    /// Change counters, bumped after every successful commit for each type it touched.
    fn revisions(&self) -> tokio::sync::watch::Receiver<Revisions>;

    /// Which kind of store this is (tokens word some errors differently for an in-memory store).
    fn store_type(&self) -> StoreType;
}

/// The kinds of store (`KUMA_STORE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreType {
    /// `memory`: nothing survives a restart.
    Memory,
    /// `embedded`: a redb file in the data dir.
    Embedded,
    /// `postgres`: shared by several replicas (not supported yet).
    Postgres,
}

impl StoreType {
    /// Every store type, in the order they are listed in messages.
    pub const ALL: [StoreType; 3] = [StoreType::Memory, StoreType::Embedded, StoreType::Postgres];

    /// The `KUMA_STORE_TYPE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreType::Memory => "memory",
            StoreType::Embedded => "embedded",
            StoreType::Postgres => "postgres",
        }
    }
}

impl fmt::Display for StoreType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StoreType {
    type Err = UnknownStoreType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownStoreType(s.to_owned()))
    }
}

/// A `KUMA_STORE_TYPE` value that names no store type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown store type {0:?}: accepted values are \"memory\", \"embedded\" and \"postgres\"")]
pub struct UnknownStoreType(pub String);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `Create` named a key that is already stored.
    #[error("resource already exists: {0}")]
    AlreadyExists(ResourceKey),

    /// An `Update`/`Delete` named a key that is not stored.
    #[error("resource not found: {0}")]
    NotFound(ResourceKey),

    /// An `Update`/`Delete` expected another version than the stored one: someone else wrote the
    /// resource since it was read.
    #[error(
        "resource version conflict: {key}: expected version {expected}, stored version {actual}"
    )]
    Conflict {
        key: ResourceKey,
        expected: u64,
        actual: u64,
    },

    /// A write named a key that cannot exist: a Mesh with a mesh, a mesh-scoped resource without
    /// one, or an empty name.
    #[error("invalid resource key {key}: {reason}")]
    InvalidKey {
        key: ResourceKey,
        reason: &'static str,
    },

    /// The store type is known but not implemented yet.
    #[error("store type \"{0}\" is not supported yet")]
    Unsupported(StoreType),

    /// Another process (or another store in this one) has the store file open.
    #[error(
        "data dir {dir:?} is in use by another cp-lite (the store file {file:?} is locked); \
         stop it or use another data dir"
    )]
    InUse { dir: PathBuf, file: PathBuf },

    /// The data dir could not be created.
    #[error("could not create the data dir {dir:?}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The store file could not be opened (unreadable, not a store, or from an unknown format).
    #[error("could not open the store file {file:?}")]
    Open {
        file: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A stored record could not be decoded (the file was damaged or written by something else).
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },

    /// The storage backend failed while doing `action`.
    #[error("store backend failed to {action}")]
    Backend {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The blocking task running a backend call panicked or was cancelled.
    #[error("store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl StoreError {
    /// A backend failure while doing `action`.
    fn backend(
        action: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Backend {
            action,
            source: Box::new(source),
        }
    }
}

/// Opens the store `store_type` names; an embedded store lives in `data_dir`.
pub async fn open(store_type: StoreType, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match store_type {
        StoreType::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreType::Embedded => {
            let dir = data_dir.to_owned();
            // Opening may create, repair or check the file: blocking work.
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .map_err(StoreError::Task)??;
            Ok(Arc::new(store))
        }
        StoreType::Postgres => Err(StoreError::Unsupported(StoreType::Postgres)),
    }
}

/// A stored resource without its key: what both stores keep per key.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    spec: serde_json::Value,
    version: u64,
    creation_time: OffsetDateTime,
    modification_time: OffsetDateTime,
}

impl Record {
    fn into_stored(self, key: ResourceKey) -> StoredResource {
        StoredResource {
            key,
            spec: self.spec,
            version: self.version,
            creation_time: self.creation_time,
            modification_time: self.modification_time,
        }
    }
}

/// What applying one op does to its key.
enum Outcome {
    /// Store this record under the op's key.
    Put(Record),
    /// Remove the op's key.
    Remove,
}

/// The single definition of the write rules, shared by every store: checks `op` against the
/// record `current`ly stored under its key and says what to store instead, at time `now`.
fn apply_op(
    op: &WriteOp,
    current: Option<&Record>,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    check_key(op.key())?;
    match (op, current) {
        (WriteOp::Create { key, .. }, Some(_)) => Err(StoreError::AlreadyExists(key.clone())),
        (WriteOp::Create { spec, .. }, None) => Ok(Outcome::Put(Record {
            spec: spec.clone(),
            version: 1,
            creation_time: now,
            modification_time: now,
        })),
        (WriteOp::Update { key, .. } | WriteOp::Delete { key, .. }, None) => {
            Err(StoreError::NotFound(key.clone()))
        }
        (
            WriteOp::Update {
                key,
                spec,
                expected_version,
            },
            Some(current),
        ) => {
            check_version(key, *expected_version, current.version)?;
            Ok(Outcome::Put(Record {
                spec: spec.clone(),
                version: current.version + 1,
                creation_time: current.creation_time,
                modification_time: now,
            }))
        }
        (
            WriteOp::Delete {
                key,
                expected_version,
            },
            Some(current),
        ) => {
            if let Some(expected) = expected_version {
                check_version(key, *expected, current.version)?;
            }
            Ok(Outcome::Remove)
        }
    }
}

fn check_version(key: &ResourceKey, expected: u64, actual: u64) -> Result<(), StoreError> {
    if expected == actual {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            actual,
        })
    }
}

/// Rejects keys that cannot exist, so that `list` by mesh stays meaningful.
fn check_key(key: &ResourceKey) -> Result<(), StoreError> {
    let reason = if key.name.is_empty() {
        Some("the name is empty")
    } else if key.kind.is_mesh_scoped() && key.mesh.is_empty() {
        Some("a mesh-scoped resource needs a mesh")
    } else if !key.kind.is_mesh_scoped() && !key.mesh.is_empty() {
        Some("a Mesh is not inside a mesh")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidKey {
            key: key.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_type_parses_accepted_values() {
        assert_eq!("memory".parse::<StoreType>().unwrap(), StoreType::Memory);
        assert_eq!(
            "embedded".parse::<StoreType>().unwrap(),
            StoreType::Embedded
        );
        assert_eq!(
            "postgres".parse::<StoreType>().unwrap(),
            StoreType::Postgres
        );
        for t in StoreType::ALL {
            assert_eq!(t.to_string().parse::<StoreType>().unwrap(), t);
        }
    }

    #[test]
    fn unknown_store_type_names_accepted_values() {
        let err = "kubernetes".parse::<StoreType>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown store type \"kubernetes\": accepted values are \"memory\", \"embedded\" and \"postgres\""
        );
        assert!("Memory".parse::<StoreType>().is_err());
        assert!("".parse::<StoreType>().is_err());
    }

    #[test]
    fn error_texts_use_kuma_key_wording() {
        let key = ResourceKey::in_mesh(ResourceType::Secret, "m", "x");
        assert_eq!(
            StoreError::NotFound(key.clone()).to_string(),
            r#"resource not found: type="Secret" name="x" mesh="m""#
        );
        assert_eq!(
            StoreError::AlreadyExists(key.clone()).to_string(),
            r#"resource already exists: type="Secret" name="x" mesh="m""#
        );
        assert_eq!(
            StoreError::Conflict {
                key,
                expected: 1,
                actual: 2
            }
            .to_string(),
            r#"resource version conflict: type="Secret" name="x" mesh="m": expected version 1, stored version 2"#
        );
        assert_eq!(
            StoreError::Unsupported(StoreType::Postgres).to_string(),
            r#"store type "postgres" is not supported yet"#
        );
    }

    #[test]
    fn revisions_count_each_type_once_per_bump() {
        let mut revisions = Revisions::default();
        assert_eq!(revisions.of(ResourceType::Mesh), 0);
        revisions.bump([
            ResourceType::Mesh,
            ResourceType::Secret,
            ResourceType::Secret,
        ]);
        revisions.bump([ResourceType::Secret]);
        assert_eq!(revisions.of(ResourceType::Mesh), 1);
        assert_eq!(revisions.of(ResourceType::Secret), 2);
        assert_eq!(revisions.of(ResourceType::Dataplane), 0);
        assert_eq!(revisions.total(), 3);
    }

    #[test]
    fn invalid_keys_are_rejected() {
        let now = OffsetDateTime::now_utc();
        let cases = [
            (
                ResourceKey::in_mesh(ResourceType::Mesh, "m", "x"),
                "a Mesh is not inside a mesh",
            ),
            (
                ResourceKey::in_mesh(ResourceType::Secret, "", "x"),
                "a mesh-scoped resource needs a mesh",
            ),
            (ResourceKey::mesh(""), "the name is empty"),
        ];
        for (key, expected) in cases {
            let op = WriteOp::Create {
                key: key.clone(),
                spec: serde_json::json!({}),
            };
            match apply_op(&op, None, now) {
                Err(StoreError::InvalidKey { key: k, reason }) => {
                    assert_eq!(k, key);
                    assert_eq!(reason, expected);
                }
                Err(other) => panic!("unexpected error {other}"),
                Ok(_) => panic!("{key} was accepted"),
            }
        }
    }

    #[tokio::test]
    async fn open_postgres_is_not_supported_yet() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(StoreType::Postgres, dir.path()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"store type "postgres" is not supported yet"#
        );
    }

    #[tokio::test]
    async fn open_returns_the_named_store() {
        let dir = tempfile::tempdir().unwrap();
        let memory = open(StoreType::Memory, dir.path()).await.unwrap();
        assert_eq!(memory.store_type(), StoreType::Memory);
        let embedded = open(StoreType::Embedded, &dir.path().join("data"))
            .await
            .unwrap();
        assert_eq!(embedded.store_type(), StoreType::Embedded);
        assert!(dir.path().join("data").join(STORE_FILE_NAME).is_file());
    }
}
