//! The behaviour every [`Store`] must have, as tests run against each implementation.

use std::sync::Arc;

use serde_json::json;

use super::{Store, StoreError, StoredResource, WriteOp};
use crate::resources::{ResourceKey, ResourceType};

fn secret(mesh: &str, name: &str) -> ResourceKey {
    ResourceKey::in_mesh(ResourceType::Secret, mesh, name)
}

fn create(key: &ResourceKey, spec: serde_json::Value) -> WriteOp {
    WriteOp::Create {
        key: key.clone(),
        spec,
    }
}

fn update(key: &ResourceKey, spec: serde_json::Value, expected_version: u64) -> WriteOp {
    WriteOp::Update {
        key: key.clone(),
        spec,
        expected_version,
    }
}

fn delete(key: &ResourceKey, expected_version: Option<u64>) -> WriteOp {
    WriteOp::Delete {
        key: key.clone(),
        expected_version,
    }
}

fn names(resources: &[StoredResource]) -> Vec<(String, String)> {
    resources
        .iter()
        .map(|r| (r.key.mesh.clone(), r.key.name.clone()))
        .collect()
}

/// Runs every single-task check against `store`, which must start empty.
pub(super) async fn run(store: Arc<dyn Store>) {
    create_get_list(&*store).await;
    updates_and_conflicts(&*store).await;
    deletes(&*store).await;
    batches_apply_in_order(&*store).await;
    failed_batches_change_nothing(&*store).await;
    revisions(&*store).await;
    invalid_keys(&*store).await;
}

async fn create_get_list(store: &dyn Store) {
    let m1 = ResourceKey::mesh("m1");
    assert_eq!(store.get(&m1).await.unwrap(), None);
    assert_eq!(store.list(ResourceType::Mesh, None).await.unwrap(), vec![]);

    let created = store
        .commit(vec![
            create(&ResourceKey::mesh("m2"), json!({})),
            create(&m1, json!({"mtls": {"enabledBackend": "ca-1"}})),
            create(&secret("m2", "a"), json!({"data": "YQ=="})),
            create(&secret("m1", "b"), json!({"data": "Yg=="})),
            create(&secret("m1", "a"), json!({"data": "YQ=="})),
            create(
                &ResourceKey::in_mesh(ResourceType::Dataplane, "m1", "dp"),
                json!({"networking": {"address": "127.0.0.1"}}),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(created.len(), 6);
    let stored_m1 = &created[1];
    assert_eq!(stored_m1.key, m1);
    assert_eq!(stored_m1.version, 1);
    assert_eq!(stored_m1.spec, json!({"mtls": {"enabledBackend": "ca-1"}}));
    assert_eq!(stored_m1.creation_time, stored_m1.modification_time);
    assert!(created.iter().all(|r| r.version == 1));

    assert_eq!(store.get(&m1).await.unwrap().as_ref(), Some(stored_m1));
    // A Mesh and a resource in that mesh with the same name are different keys.
    assert_eq!(store.get(&secret("m1", "m1")).await.unwrap(), None);

    let meshes = store.list(ResourceType::Mesh, None).await.unwrap();
    assert_eq!(
        names(&meshes),
        [(String::new(), "m1".into()), (String::new(), "m2".into())]
    );
    let secrets = store.list(ResourceType::Secret, None).await.unwrap();
    assert_eq!(
        names(&secrets),
        [
            ("m1".into(), "a".into()),
            ("m1".into(), "b".into()),
            ("m2".into(), "a".into())
        ]
    );
    assert_eq!(secrets[2], created[2]);
    let in_m1 = store.list(ResourceType::Secret, Some("m1")).await.unwrap();
    assert_eq!(
        names(&in_m1),
        [("m1".into(), "a".into()), ("m1".into(), "b".into())]
    );
    // A mesh whose name is a prefix of another's does not pick up the other's resources.
    assert_eq!(
        store.list(ResourceType::Secret, Some("m")).await.unwrap(),
        vec![]
    );
    assert_eq!(
        store
            .list(ResourceType::TrafficPermission, None)
            .await
            .unwrap(),
        vec![]
    );

    // Creating an existing key fails and keeps the stored resource.
    match store
        .commit(vec![create(&m1, json!({"other": true}))])
        .await
    {
        Err(StoreError::AlreadyExists(key)) => assert_eq!(key, m1),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get(&m1).await.unwrap().as_ref(), Some(stored_m1));
}

async fn updates_and_conflicts(store: &dyn Store) {
    let key = secret("m1", "a");
    let before = store.get(&key).await.unwrap().unwrap();

    let updated = store
        .commit(vec![update(&key, json!({"data": "Yg=="}), before.version)])
        .await
        .unwrap();
    assert_eq!(updated.len(), 1);
    let updated = &updated[0];
    assert_eq!(updated.version, before.version + 1);
    assert_eq!(updated.spec, json!({"data": "Yg=="}));
    assert_eq!(updated.creation_time, before.creation_time);
    assert!(updated.modification_time >= before.modification_time);
    assert_eq!(store.get(&key).await.unwrap().as_ref(), Some(updated));

    // An update from a stale read conflicts and changes nothing.
    match store
        .commit(vec![update(&key, json!({"data": "Yw=="}), before.version)])
        .await
    {
        Err(StoreError::Conflict {
            key: k,
            expected,
            actual,
        }) => {
            assert_eq!(k, key);
            assert_eq!(expected, before.version);
            assert_eq!(actual, updated.version);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(&key).await.unwrap().as_ref(), Some(updated));

    let missing = secret("m1", "missing");
    match store.commit(vec![update(&missing, json!({}), 1)]).await {
        Err(StoreError::NotFound(k)) => assert_eq!(k, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(store.get(&missing).await.unwrap(), None);

    let again = store
        .commit(vec![update(&key, json!({"data": "ZA=="}), updated.version)])
        .await
        .unwrap();
    assert_eq!(again[0].version, before.version + 2);
    assert_eq!(again[0].creation_time, before.creation_time);
}

async fn deletes(store: &dyn Store) {
    let key = secret("m1", "b");
    let stored = store.get(&key).await.unwrap().unwrap();

    match store
        .commit(vec![delete(&key, Some(stored.version + 5))])
        .await
    {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, stored.version + 5);
            assert_eq!(actual, stored.version);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(&key).await.unwrap(), Some(stored.clone()));

    let results = store
        .commit(vec![delete(&key, Some(stored.version))])
        .await
        .unwrap();
    assert_eq!(results, vec![], "deletes return nothing");
    assert_eq!(store.get(&key).await.unwrap(), None);

    match store.commit(vec![delete(&key, None)]).await {
        Err(StoreError::NotFound(k)) => assert_eq!(k, key),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Without an expected version, whatever version is stored is deleted.
    let other = secret("m2", "a");
    store
        .commit(vec![update(&other, json!({"data": "eA=="}), 1)])
        .await
        .unwrap();
    store.commit(vec![delete(&other, None)]).await.unwrap();
    assert_eq!(store.get(&other).await.unwrap(), None);

    // A deleted key can be created again, from version 1.
    let recreated = store
        .commit(vec![create(&other, json!({"data": "eQ=="}))])
        .await
        .unwrap();
    assert_eq!(recreated[0].version, 1);
}

async fn batches_apply_in_order(store: &dyn Store) {
    let key = secret("m3", "staged");
    let results = store
        .commit(vec![
            create(&key, json!({"n": 1})),
            update(&key, json!({"n": 2}), 1),
            update(&key, json!({"n": 3}), 2),
        ])
        .await
        .unwrap();
    assert_eq!(
        results.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let stored = store.get(&key).await.unwrap().unwrap();
    assert_eq!(stored.version, 3);
    assert_eq!(stored.spec, json!({"n": 3}));
    assert_eq!(stored.creation_time, results[0].creation_time);

    let transient = secret("m3", "transient");
    let results = store
        .commit(vec![
            create(&transient, json!({})),
            delete(&transient, Some(1)),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(store.get(&transient).await.unwrap(), None);

    // An op sees the earlier ops of its batch: deleting then creating again is fine, and creating
    // twice in one batch is not.
    let results = store
        .commit(vec![delete(&key, Some(3)), create(&key, json!({"n": 4}))])
        .await
        .unwrap();
    assert_eq!(results[0].version, 1);
    match store
        .commit(vec![
            create(&transient, json!({})),
            create(&transient, json!({})),
        ])
        .await
    {
        Err(StoreError::AlreadyExists(k)) => assert_eq!(k, transient),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get(&transient).await.unwrap(), None);
}

async fn failed_batches_change_nothing(store: &dyn Store) {
    let existing = secret("m4", "existing");
    let doomed = secret("m4", "doomed");
    let fresh = secret("m4", "fresh");
    let other_type = ResourceKey::in_mesh(ResourceType::MeshTrafficPermission, "m4", "allow");
    store
        .commit(vec![
            create(&existing, json!({"n": 1})),
            create(&doomed, json!({"n": 1})),
        ])
        .await
        .unwrap();
    let before = store.list(ResourceType::Secret, Some("m4")).await.unwrap();
    let mut revisions = store.revisions();
    revisions.mark_unchanged();

    // Every op but the last would succeed; the last conflicts.
    let err = store
        .commit(vec![
            create(&fresh, json!({"n": 1})),
            update(&existing, json!({"n": 2}), 1),
            delete(&doomed, Some(1)),
            create(&other_type, json!({})),
            update(&existing, json!({"n": 3}), 1),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, expected: 1, actual: 2 } if *key == existing),
        "{err:?}"
    );
    assert_eq!(
        store.list(ResourceType::Secret, Some("m4")).await.unwrap(),
        before
    );
    assert_eq!(store.get(&fresh).await.unwrap(), None);
    assert_eq!(store.get(&other_type).await.unwrap(), None);
    assert!(
        !revisions.has_changed().unwrap(),
        "a failed commit bumps no revision"
    );
}

async fn revisions(store: &dyn Store) {
    let mut rx = store.revisions();
    let start = rx.borrow_and_update().clone();

    store
        .commit(vec![
            create(&ResourceKey::mesh("m5"), json!({})),
            create(&secret("m5", "one"), json!({})),
            create(&secret("m5", "two"), json!({})),
        ])
        .await
        .unwrap();
    assert!(rx.has_changed().unwrap());
    let after_first = rx.borrow_and_update().clone();
    assert_eq!(
        after_first.of(ResourceType::Mesh),
        start.of(ResourceType::Mesh) + 1
    );
    // Once per commit, however many resources of the type it wrote.
    assert_eq!(
        after_first.of(ResourceType::Secret),
        start.of(ResourceType::Secret) + 1
    );
    assert_eq!(
        after_first.of(ResourceType::Dataplane),
        start.of(ResourceType::Dataplane)
    );
    assert_eq!(after_first.total(), start.total() + 2);

    // A DataplaneInsight write moves only its own counter, so watchers can ignore it.
    store
        .commit(vec![create(
            &ResourceKey::in_mesh(ResourceType::DataplaneInsight, "m5", "dp"),
            json!({"mTLS": {}}),
        )])
        .await
        .unwrap();
    let after_insight = rx.borrow_and_update().clone();
    assert_eq!(
        after_insight.of(ResourceType::DataplaneInsight),
        after_first.of(ResourceType::DataplaneInsight) + 1
    );
    for kind in ResourceType::ALL {
        if kind != ResourceType::DataplaneInsight {
            assert_eq!(after_insight.of(kind), after_first.of(kind), "{kind}");
        }
    }

    // An empty batch writes nothing and bumps nothing.
    assert_eq!(store.commit(vec![]).await.unwrap(), vec![]);
    assert!(!rx.has_changed().unwrap());

    // A watcher wakes up on a commit made elsewhere.
    let mut waiter = store.revisions();
    waiter.mark_unchanged();
    let wait = tokio::spawn(async move {
        waiter.changed().await.unwrap();
        waiter.borrow().of(ResourceType::Secret)
    });
    store
        .commit(vec![delete(&secret("m5", "one"), None)])
        .await
        .unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, after_insight.of(ResourceType::Secret) + 1);
}

async fn invalid_keys(store: &dyn Store) {
    let key = ResourceKey::in_mesh(ResourceType::Dataplane, "", "dp");
    match store.commit(vec![create(&key, json!({}))]).await {
        Err(StoreError::InvalidKey { key: k, .. }) => assert_eq!(k, key),
        other => panic!("expected InvalidKey, got {other:?}"),
    }
    assert_eq!(
        store.list(ResourceType::Dataplane, Some("")).await.unwrap(),
        vec![]
    );
}

/// 32 tasks race to create one key with different specs: exactly one wins, the others get
/// AlreadyExists, and the winner's spec is what is stored.
pub(super) async fn create_race(store: Arc<dyn Store>) {
    let key = secret("default", "default.ca-builtin-cert-ca-1");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = Arc::clone(&store);
            let key = key.clone();
            tokio::spawn(async move {
                let result = store
                    .commit(vec![create(&key, json!({"data": i.to_string()}))])
                    .await;
                (i, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match result {
            Ok(stored) => winners.push((i, stored)),
            Err(StoreError::AlreadyExists(k)) => assert_eq!(k, key),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    let (i, stored) = &winners[0];
    assert_eq!(stored[0].spec, json!({"data": i.to_string()}));
    assert_eq!(store.get(&key).await.unwrap().as_ref(), Some(&stored[0]));
    assert_eq!(store.revisions().borrow().of(ResourceType::Secret), 1);
}
