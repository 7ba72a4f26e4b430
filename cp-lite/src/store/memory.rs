//! The in-memory store: a sorted map behind a lock, for tests and `KUMA_STORE_TYPE=memory`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use time::OffsetDateTime;
use tokio::sync::watch;

use super::{Outcome, Record, Revisions, Store, StoreError, StoreType, StoredResource, WriteOp};
use crate::resources::{ResourceKey, ResourceType};

/// Keeps resources in memory; nothing survives the process.
pub struct MemoryStore {
    resources: RwLock<BTreeMap<ResourceKey, Record>>,
    revisions: watch::Sender<Revisions>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            resources: RwLock::new(BTreeMap::new()),
            revisions: watch::Sender::new(Revisions::default()),
        }
    }

    // A panic while the lock is held cannot leave a half-applied commit: `commit` checks every
    // op before it changes the map. So a poisoned lock still guards consistent data.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<ResourceKey, Record>> {
        self.resources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<ResourceKey, Record>> {
        self.resources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    // Specs hold secrets (CA keys, signing keys): show only how many resources there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("resources", &self.read().len())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        Ok(self
            .read()
            .get(key)
            .map(|record| record.clone().into_stored(key.clone())))
    }

    async fn list(
        &self,
        kind: ResourceType,
        mesh: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let start = ResourceKey {
            kind,
            mesh: mesh.unwrap_or_default().to_owned(),
            name: String::new(),
        };
        let resources = self.read();
        Ok(resources
            .range(start..)
            .take_while(|(key, _)| key.kind == kind && mesh.is_none_or(|m| key.mesh == m))
            .map(|(key, record)| record.clone().into_stored(key.clone()))
            .collect())
    }

    async fn commit(&self, ops: Vec<WriteOp>) -> Result<Vec<StoredResource>, StoreError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let now = OffsetDateTime::now_utc();
        let mut results = Vec::new();
        {
            let mut resources = self.write();
            // The batch's effect, applied to the map only once every op has passed its checks.
            let mut staged: BTreeMap<ResourceKey, Option<Record>> = BTreeMap::new();
            for op in &ops {
                let key = op.key();
                let current = match staged.get(key) {
                    Some(staged) => staged.as_ref(),
                    None => resources.get(key),
                };
                match super::apply_op(op, current, now)? {
                    Outcome::Put(record) => {
                        results.push(record.clone().into_stored(key.clone()));
                        staged.insert(key.clone(), Some(record));
                    }
                    Outcome::Remove => {
                        staged.insert(key.clone(), None);
                    }
                }
            }
            for (key, record) in staged {
                match record {
                    Some(record) => resources.insert(key, record),
                    None => resources.remove(&key),
                };
            }
        }
        self.revisions
            .send_modify(|revisions| revisions.bump(ops.iter().map(|op| op.key().kind)));
        Ok(results)
    }

    fn revisions(&self) -> watch::Receiver<Revisions> {
        self.revisions.subscribe()
    }

    fn store_type(&self) -> StoreType {
        StoreType::Memory
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn shared_suite() {
        super::super::suite::run(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_of_one_key_have_one_winner() {
        super::super::suite::create_race(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn debug_does_not_show_specs() {
        let store = MemoryStore::new();
        let key = ResourceKey::in_mesh(ResourceType::Secret, "m", "key");
        store
            .commit(vec![WriteOp::Create {
                key,
                spec: serde_json::json!({"data": "c2VjcmV0LWtleQ=="}),
            }])
            .await
            .unwrap();
        let debug = format!("{store:?}");
        assert_eq!(debug, "MemoryStore { resources: 1, .. }");
    }
}
