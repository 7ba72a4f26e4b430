//! Writes to a Dataplane's DataplaneInsight (what its agent reported: version, connection times,
//! certificate state), read back by `kumactl inspect dataplanes`.

use crate::resources::{DataplaneInsightSpec, ParseError, ResourceKey, ResourceType, Spec};
use crate::store::{Store, StoreError, WriteOp};

/// How often a read-modify-write is retried when another writer got in between.
const MAX_ATTEMPTS: usize = 8;

/// What to do when the Dataplane has no insight yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenMissing {
    Create,
    /// Leave it absent (e.g. a disconnect recorded after the Dataplane was deleted).
    Skip,
}

/// Why an insight could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InsightError {
    /// The store failed.
    #[error("could not store the DataplaneInsight")]
    Store(#[source] StoreError),
    /// The stored insight does not parse.
    #[error("the stored DataplaneInsight is not valid")]
    Parse(#[source] ParseError),
    /// Every attempt lost a race with another writer.
    #[error("the DataplaneInsight kept changing while being updated")]
    Contended,
}

/// Applies `change` to the insight of Dataplane `mesh`/`name` with optimistic concurrency.
pub(crate) async fn update(
    store: &dyn Store,
    mesh: &str,
    name: &str,
    when_missing: WhenMissing,
    change: impl Fn(&mut DataplaneInsightSpec),
) -> Result<(), InsightError> {
    let key = ResourceKey::in_mesh(ResourceType::DataplaneInsight, mesh, name);
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(&key).await.map_err(InsightError::Store)?;
        let op = match current {
            Some(stored) => {
                let mut spec = match Spec::from_value(ResourceType::DataplaneInsight, stored.spec) {
                    Ok(Spec::DataplaneInsight(spec)) => spec,
                    Ok(_) => empty(),
                    Err(error) => return Err(InsightError::Parse(error)),
                };
                change(&mut spec);
                WriteOp::Update {
                    key: key.clone(),
                    spec: Spec::DataplaneInsight(spec).to_value(),
                    expected_version: stored.version,
                }
            }
            None if when_missing == WhenMissing::Skip => return Ok(()),
            None => {
                let mut spec = empty();
                change(&mut spec);
                WriteOp::Create {
                    key: key.clone(),
                    spec: Spec::DataplaneInsight(spec).to_value(),
                }
            }
        };
        match store.commit(vec![op]).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists(_)) => continue,
            Err(StoreError::NotFound(_)) if when_missing == WhenMissing::Skip => return Ok(()),
            Err(StoreError::NotFound(_)) => continue,
            Err(error) => return Err(InsightError::Store(error)),
        }
    }
    Err(InsightError::Contended)
}

fn empty() -> DataplaneInsightSpec {
    DataplaneInsightSpec {
        mtls: None,
        agent_version: String::new(),
        connected_time: None,
        disconnected_time: None,
    }
}
