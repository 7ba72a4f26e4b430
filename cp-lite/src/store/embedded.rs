//! The embedded store: one redb file in the data dir, durable on every commit, so CA roots and
//! token signing keys survive restarts.
//!
//! Layout: table `resources` maps `(type name, mesh, name)` to a JSON record holding the spec,
//! version and timestamps; table `meta` holds the record format version. Keys are ordered
//! byte-wise element by element, so a `list` is one range scan already sorted by (mesh, name).
//! redb calls block, so they run on `spawn_blocking`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;

use super::{Outcome, Record, Revisions, Store, StoreError, StoreType, StoredResource, WriteOp};
use crate::resources::{ResourceKey, ResourceType};

/// The store file's name inside the data dir.
pub const STORE_FILE_NAME: &str = "store.redb";

/// `(type name, mesh, name)` → JSON [`EncodedRecord`]. Type names, not enum positions, so that
/// reordering `ResourceType` never changes what a key means.
const RESOURCES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("resources");

/// Store-wide settings; only [`FORMAT_KEY`] for now.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The `meta` key holding the record format version.
const FORMAT_KEY: &str = "format";

/// The record format this code writes and reads. A file with another one is refused rather
/// than misread.
const FORMAT_VERSION: u64 = 1;

/// Keeps resources in `<data dir>/store.redb`.
pub struct EmbeddedStore {
    db: Arc<Database>,
    file: PathBuf,
    revisions: watch::Sender<Revisions>,
}

impl EmbeddedStore {
    /// Opens (creating the dir and file when missing) the store in `dir`. Blocks: call it at
    /// startup or on `spawn_blocking`. Fails with [`StoreError::InUse`] while another store has
    /// the same file open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let file = dir.join(STORE_FILE_NAME);
        let db = match Database::create(&file) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::InUse {
                    dir: dir.to_owned(),
                    file,
                });
            }
            Err(source) => {
                return Err(StoreError::Open {
                    file,
                    source: Box::new(source),
                });
            }
        };
        restrict_permissions(&file).map_err(|source| StoreError::Open {
            file: file.clone(),
            source: Box::new(source),
        })?;
        initialize(&db, &file)?;
        Ok(EmbeddedStore {
            db: Arc::new(db),
            file,
            revisions: watch::Sender::new(Revisions::default()),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Runs `f` on the blocking pool with the database.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(StoreError::Task)?
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        let key = key.clone();
        self.blocking(move |db| {
            let txn = db
                .begin_read()
                .map_err(|e| StoreError::backend("begin a read", e))?;
            let table = txn
                .open_table(RESOURCES)
                .map_err(|e| StoreError::backend("open the resources table", e))?;
            let found = table
                .get((key.kind.name(), key.mesh.as_str(), key.name.as_str()))
                .map_err(|e| StoreError::backend("read a resource", e))?;
            match found {
                Some(bytes) => Ok(Some(decode(&key, bytes.value())?.into_stored(key))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(
        &self,
        kind: ResourceType,
        mesh: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let mesh = mesh.map(str::to_owned);
        self.blocking(move |db| {
            let txn = db
                .begin_read()
                .map_err(|e| StoreError::backend("begin a read", e))?;
            let table = txn
                .open_table(RESOURCES)
                .map_err(|e| StoreError::backend("open the resources table", e))?;
            let start = (kind.name(), mesh.as_deref().unwrap_or_default(), "");
            let range = table
                .range(start..)
                .map_err(|e| StoreError::backend("list resources", e))?;
            let mut resources = Vec::new();
            for entry in range {
                let (stored_key, bytes) =
                    entry.map_err(|e| StoreError::backend("list resources", e))?;
                let (stored_kind, stored_mesh, stored_name) = stored_key.value();
                if stored_kind != kind.name() || mesh.as_deref().is_some_and(|m| m != stored_mesh) {
                    break;
                }
                let key = ResourceKey {
                    kind,
                    mesh: stored_mesh.to_owned(),
                    name: stored_name.to_owned(),
                };
                resources.push(decode(&key, bytes.value())?.into_stored(key));
            }
            Ok(resources)
        })
        .await
    }

    async fn commit(&self, ops: Vec<WriteOp>) -> Result<Vec<StoredResource>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let kinds: Vec<ResourceType> = ops.iter().map(|op| op.key().kind).collect();
        let results = self
            .blocking(move |db| {
                let mut txn = db
                    .begin_write()
                    .map_err(|e| StoreError::backend("begin a write", e))?;
                txn.set_durability(Durability::Immediate)
                    .map_err(|e| StoreError::backend("make the write durable", e))?;
                match apply_all(&txn, &ops) {
                    Ok(results) => {
                        txn.commit().map_err(|e| StoreError::backend("commit", e))?;
                        Ok(results)
                    }
                    Err(error) => {
                        // Nothing of the batch may stay: abort explicitly rather than rely on drop.
                        if let Err(abort_error) = txn.abort() {
                            tracing::warn!(error = %abort_error, "could not abort a store write");
                        }
                        Err(error)
                    }
                }
            })
            .await?;
        self.revisions
            .send_modify(|revisions| revisions.bump(kinds));
        Ok(results)
    }

    fn revisions(&self) -> watch::Receiver<Revisions> {
        self.revisions.subscribe()
    }

    fn store_type(&self) -> StoreType {
        StoreType::Embedded
    }
}

/// Applies `ops` in order inside `txn`, which the caller commits or aborts.
fn apply_all(txn: &WriteTransaction, ops: &[WriteOp]) -> Result<Vec<StoredResource>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut table = txn
        .open_table(RESOURCES)
        .map_err(|e| StoreError::backend("open the resources table", e))?;
    let mut results = Vec::new();
    for op in ops {
        let key = op.key();
        let db_key = (key.kind.name(), key.mesh.as_str(), key.name.as_str());
        let current = table
            .get(db_key)
            .map_err(|e| StoreError::backend("read a resource", e))?
            .map(|bytes| decode(key, bytes.value()))
            .transpose()?;
        match super::apply_op(op, current.as_ref(), now)? {
            Outcome::Put(record) => {
                table
                    .insert(db_key, encode(key, &record)?.as_slice())
                    .map_err(|e| StoreError::backend("write a resource", e))?;
                results.push(record.into_stored(key.clone()));
            }
            Outcome::Remove => {
                table
                    .remove(db_key)
                    .map_err(|e| StoreError::backend("delete a resource", e))?;
            }
        }
    }
    Ok(results)
}

/// Creates both tables (so that reads never meet a missing table) and checks or records the
/// format version.
fn initialize(db: &Database, file: &Path) -> Result<(), StoreError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StoreError::backend("begin a write", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::backend("make the write durable", e))?;
    {
        txn.open_table(RESOURCES)
            .map_err(|e| StoreError::backend("open the resources table", e))?;
        let mut meta = txn
            .open_table(META)
            .map_err(|e| StoreError::backend("open the meta table", e))?;
        let format = meta
            .get(FORMAT_KEY)
            .map_err(|e| StoreError::backend("read the format version", e))?
            .map(|v| v.value());
        match format {
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| StoreError::backend("write the format version", e))?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Open {
                    file: file.to_owned(),
                    source: format!(
                        "the file has record format {other}, this cp-lite reads format {FORMAT_VERSION}"
                    )
                    .into(),
                });
            }
        }
    }
    txn.commit().map_err(|e| StoreError::backend("commit", e))
}

/// Creates `dir` (and its parents) when missing, readable by the owner only: it holds CA keys.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes the store file readable by the owner only: it holds CA keys and signing keys.
fn restrict_permissions(file: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(file, fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// The stored form of a [`Record`]. Times are RFC 3339 in UTC with nanoseconds, so nothing is
/// lost on the way through the file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EncodedRecord {
    spec: serde_json::Value,
    version: u64,
    creation_time: String,
    modification_time: String,
}

fn encode(key: &ResourceKey, record: &Record) -> Result<Vec<u8>, StoreError> {
    let time = |t: OffsetDateTime| {
        t.format(&Rfc3339)
            .map_err(|e| StoreError::backend("format a timestamp", e))
    };
    let encoded = EncodedRecord {
        spec: record.spec.clone(),
        version: record.version,
        creation_time: time(record.creation_time)?,
        modification_time: time(record.modification_time)?,
    };
    serde_json::to_vec(&encoded).map_err(|e| StoreError::Backend {
        action: "encode a record",
        source: format!("{key}: {e}").into(),
    })
}

fn decode(key: &ResourceKey, bytes: &[u8]) -> Result<Record, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let encoded: EncodedRecord =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    let time = |s: &str| {
        OffsetDateTime::parse(s, &Rfc3339).map_err(|e| corrupt(format!("timestamp {s:?}: {e}")))
    };
    Ok(Record {
        creation_time: time(&encoded.creation_time)?,
        modification_time: time(&encoded.modification_time)?,
        spec: encoded.spec,
        version: encoded.version,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::suite;

    #[tokio::test]
    async fn shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        suite::run(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_of_one_key_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        suite::create_race(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    }

    #[tokio::test]
    async fn everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("nested").join("data");
        let mesh = ResourceKey::mesh("default");
        let secret = ResourceKey::in_mesh(ResourceType::Secret, "default", "ca");
        let gone = ResourceKey::in_mesh(ResourceType::Secret, "default", "gone");
        let (stored_mesh, stored_secret) = {
            let store = EmbeddedStore::open(&data_dir).unwrap();
            store
                .commit(vec![
                    WriteOp::Create {
                        key: mesh.clone(),
                        spec: json!({"mtls": {"enabledBackend": "ca-1"}}),
                    },
                    WriteOp::Create {
                        key: secret.clone(),
                        spec: json!({"data": "a2V5"}),
                    },
                    WriteOp::Create {
                        key: gone.clone(),
                        spec: json!({"data": ""}),
                    },
                ])
                .await
                .unwrap();
            let updated = store
                .commit(vec![
                    WriteOp::Update {
                        key: secret.clone(),
                        spec: json!({"data": "a2V5LTI="}),
                        expected_version: 1,
                    },
                    WriteOp::Delete {
                        key: gone.clone(),
                        expected_version: Some(1),
                    },
                ])
                .await
                .unwrap();
            assert_eq!(updated[0].version, 2);
            (
                store.get(&mesh).await.unwrap().unwrap(),
                store.get(&secret).await.unwrap().unwrap(),
            )
        };

        let store = EmbeddedStore::open(&data_dir).unwrap();
        assert_eq!(store.get(&mesh).await.unwrap(), Some(stored_mesh));
        let reopened_secret = store.get(&secret).await.unwrap().unwrap();
        assert_eq!(reopened_secret, stored_secret);
        assert_eq!(reopened_secret.version, 2);
        assert_eq!(reopened_secret.spec, json!({"data": "a2V5LTI="}));
        assert!(reopened_secret.modification_time >= reopened_secret.creation_time);
        assert_eq!(store.get(&gone).await.unwrap(), None);
        // Versions continue from the stored one.
        let next = store
            .commit(vec![WriteOp::Update {
                key: secret.clone(),
                spec: json!({"data": "a2V5LTM="}),
                expected_version: 2,
            }])
            .await
            .unwrap();
        assert_eq!(next[0].version, 3);
        assert_eq!(next[0].creation_time, stored_secret.creation_time);
    }

    #[tokio::test]
    async fn second_open_of_one_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedStore::open(dir.path()).unwrap();
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        let file = dir.path().join(STORE_FILE_NAME);
        assert!(matches!(&err, StoreError::InUse { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {:?} is in use by another cp-lite (the store file {:?} is locked); \
                 stop it or use another data dir",
                dir.path(),
                file
            )
        );
        drop(first);
        EmbeddedStore::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STORE_FILE_NAME), b"not a redb file at all").unwrap();
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        assert!(matches!(&err, StoreError::Open { .. }), "{err:?}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn store_file_and_new_dir_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let store = EmbeddedStore::open(&data_dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&data_dir), 0o700);
    }

    #[test]
    fn records_round_trip_with_nanoseconds() {
        let key = ResourceKey::mesh("m");
        let record = Record {
            spec: json!({"a": [1, "b", null], "n": 1.5}),
            version: 7,
            creation_time: time::macros::datetime!(2024-02-29 23:59:59.123456789 UTC),
            modification_time: time::macros::datetime!(2025-01-01 00:00:00.000000001 UTC),
        };
        let bytes = encode(&key, &record).unwrap();
        assert_eq!(decode(&key, &bytes).unwrap(), record);
    }

    #[test]
    fn undecodable_records_are_reported_as_corrupt() {
        let key = ResourceKey::mesh("m");
        let err = decode(&key, b"{").unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"stored record type="Mesh" name="m" is corrupt: "#),
            "{err}"
        );
    }
}
