//! Kuma's REST endpoints for resources: list, get, put (create or update) and delete, plus the
//! `dataplanes+insights` overviews.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::access::{Caller, access_denied};
use super::body::LimitedBody;
use super::problem::Problem;
use crate::manager::{ApplyOutcome, ResourceManager};
use crate::resources::{
    ParseError, Resource, ResourceKey, ResourceMeta, ResourceType, parse_rest_body, to_rest_json,
};
use crate::store::StoredResource;

/// The path segment of the dataplane overviews.
const OVERVIEWS: &str = "dataplanes+insights";

const TITLE_RETRIEVE: &str = "Could not retrieve a resource";
const TITLE_LIST: &str = "Could not retrieve resources";
const TITLE_CREATE: &str = "Could not create a resource";
const TITLE_UPDATE: &str = "Could not update a resource";
const TITLE_DELETE: &str = "Could not delete a resource";
const TITLE_PROCESS: &str = "Could not process a resource";

/// The resource routes.
pub(super) fn routes() -> Router<ResourceManager> {
    Router::new()
        .route("/meshes", get(list_meshes))
        .route(
            "/meshes/{name}",
            get(get_mesh).put(put_mesh).delete(delete_mesh),
        )
        .route("/meshes/{mesh}/{plural}", get(list_in_mesh))
        .route(
            "/meshes/{mesh}/{plural}/{name}",
            get(get_in_mesh).put(put_in_mesh).delete(delete_in_mesh),
        )
        .route("/{plural}", get(list_everywhere))
}

/// What a plural path segment names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    /// Resources of one mesh-scoped type.
    Resources(ResourceType),
    /// Dataplanes with their insights.
    Overviews,
}

impl Collection {
    fn parse(plural: &str) -> Option<Collection> {
        if plural == OVERVIEWS {
            return Some(Collection::Overviews);
        }
        ResourceType::from_plural(plural)
            .filter(|kind| kind.is_mesh_scoped())
            .map(Collection::Resources)
    }

    /// Whether `caller` may read this collection: Secrets hold CA and token signing keys, so
    /// only the local admin reads them (the decision is made on the decoded path, so no
    /// spelling of the URL gets around it).
    fn readable_by(self, caller: Caller) -> bool {
        caller.admin || self != Collection::Resources(ResourceType::Secret)
    }

    /// The type users may write through this collection, if any (insights are written by the
    /// DP server only).
    fn writable(self) -> Option<ResourceType> {
        match self {
            Collection::Resources(ResourceType::DataplaneInsight) | Collection::Overviews => None,
            Collection::Resources(kind) => Some(kind),
        }
    }
}

/// Go-restful's reply for an unknown path (also the router's fallback).
pub(crate) async fn page_not_found() -> Response {
    (StatusCode::NOT_FOUND, "404: Page Not Found").into_response()
}

async fn list_meshes(State(manager): State<ResourceManager>) -> Response {
    list(&manager, Collection::Resources(ResourceType::Mesh), None).await
}

async fn get_mesh(State(manager): State<ResourceManager>, Path(name): Path<String>) -> Response {
    get_one(&manager, ResourceKey::mesh(name)).await
}

async fn put_mesh(
    State(manager): State<ResourceManager>,
    Path(name): Path<String>,
    LimitedBody(body): LimitedBody,
) -> Response {
    put(&manager, ResourceKey::mesh(name), &body).await
}

async fn delete_mesh(State(manager): State<ResourceManager>, Path(name): Path<String>) -> Response {
    delete(&manager, ResourceKey::mesh(name)).await
}

async fn list_in_mesh(
    State(manager): State<ResourceManager>,
    caller: Caller,
    Path((mesh, plural)): Path<(String, String)>,
) -> Response {
    match Collection::parse(&plural) {
        Some(collection) if !collection.readable_by(caller) => access_denied().into_response(),
        Some(collection) => list(&manager, collection, Some(&mesh)).await,
        None => page_not_found().await,
    }
}

async fn list_everywhere(
    State(manager): State<ResourceManager>,
    caller: Caller,
    Path(plural): Path<String>,
) -> Response {
    match Collection::parse(&plural) {
        Some(collection) if !collection.readable_by(caller) => access_denied().into_response(),
        Some(collection) => list(&manager, collection, None).await,
        None => page_not_found().await,
    }
}

async fn get_in_mesh(
    State(manager): State<ResourceManager>,
    caller: Caller,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> Response {
    match Collection::parse(&plural) {
        Some(collection) if !collection.readable_by(caller) => access_denied().into_response(),
        Some(Collection::Resources(kind)) => {
            get_one(&manager, ResourceKey::in_mesh(kind, mesh, name)).await
        }
        Some(Collection::Overviews) => get_overview(&manager, &mesh, &name).await,
        None => page_not_found().await,
    }
}

async fn put_in_mesh(
    State(manager): State<ResourceManager>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
    LimitedBody(body): LimitedBody,
) -> Response {
    match Collection::parse(&plural) {
        Some(collection) => match collection.writable() {
            Some(kind) => put(&manager, ResourceKey::in_mesh(kind, mesh, name), &body).await,
            None => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        },
        None => page_not_found().await,
    }
}

async fn delete_in_mesh(
    State(manager): State<ResourceManager>,
    Path((mesh, plural, name)): Path<(String, String, String)>,
) -> Response {
    match Collection::parse(&plural) {
        Some(collection) => match collection.writable() {
            Some(kind) => delete(&manager, ResourceKey::in_mesh(kind, mesh, name)).await,
            None => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        },
        None => page_not_found().await,
    }
}

async fn list(manager: &ResourceManager, collection: Collection, mesh: Option<&str>) -> Response {
    let items = match collection {
        Collection::Resources(kind) => manager
            .list(kind, mesh)
            .await
            .map(|items| items.iter().map(rest_json).collect::<Vec<_>>()),
        Collection::Overviews => overviews(manager, mesh).await,
    };
    match items {
        Ok(items) => {
            Json(json!({"total": items.len(), "items": items, "next": null})).into_response()
        }
        Err(err) => Problem::from_manager(TITLE_LIST, err).into_response(),
    }
}

async fn get_one(manager: &ResourceManager, key: ResourceKey) -> Response {
    match manager.get(&key).await {
        Ok(Some(stored)) => Json(rest_json(&stored)).into_response(),
        Ok(None) => Problem::not_found(TITLE_RETRIEVE).into_response(),
        Err(err) => Problem::from_manager(TITLE_RETRIEVE, err).into_response(),
    }
}

async fn put(manager: &ResourceManager, key: ResourceKey, body: &[u8]) -> Response {
    // The title tells create from update, as Kuma's does.
    let title = match manager.get(&key).await {
        Ok(Some(_)) => TITLE_UPDATE,
        Ok(None) => TITLE_CREATE,
        Err(err) => return Problem::from_manager(TITLE_PROCESS, err).into_response(),
    };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            return Problem::new(StatusCode::BAD_REQUEST, TITLE_PROCESS, err.to_string())
                .into_response();
        }
    };
    let spec = match parse_rest_body(&key, value) {
        Ok(spec) => spec,
        Err(ParseError::Validation(err)) => {
            return Problem::validation(TITLE_PROCESS, err).into_response();
        }
        Err(err) => {
            return Problem::new(StatusCode::BAD_REQUEST, TITLE_PROCESS, err.to_string())
                .into_response();
        }
    };
    match manager.apply(Resource { key, spec }).await {
        Ok(ApplyOutcome::Created) => (StatusCode::CREATED, Json(json!({}))).into_response(),
        Ok(ApplyOutcome::Updated) => (StatusCode::OK, Json(json!({}))).into_response(),
        Err(err) => Problem::from_manager(title, err).into_response(),
    }
}

async fn delete(manager: &ResourceManager, key: ResourceKey) -> Response {
    match manager.delete(&key).await {
        Ok(()) => Json(json!({})).into_response(),
        Err(err) => Problem::from_manager(TITLE_DELETE, err).into_response(),
    }
}

async fn get_overview(manager: &ResourceManager, mesh: &str, name: &str) -> Response {
    let dataplane = ResourceKey::in_mesh(ResourceType::Dataplane, mesh, name);
    let insight = ResourceKey::in_mesh(ResourceType::DataplaneInsight, mesh, name);
    let found = async {
        let Some(dataplane) = manager.get(&dataplane).await? else {
            return Ok(None);
        };
        let insight = manager.get(&insight).await?;
        Ok(Some(overview(&dataplane, insight.as_ref())))
    };
    match found.await {
        Ok(Some(overview)) => Json(overview).into_response(),
        Ok(None) => Problem::not_found(TITLE_RETRIEVE).into_response(),
        Err(err) => Problem::from_manager(TITLE_RETRIEVE, err).into_response(),
    }
}

/// Every Dataplane (of `mesh`, or of all meshes) with its insight.
async fn overviews(
    manager: &ResourceManager,
    mesh: Option<&str>,
) -> Result<Vec<Value>, crate::manager::ManagerError> {
    let dataplanes = manager.list(ResourceType::Dataplane, mesh).await?;
    let insights: BTreeMap<(String, String), StoredResource> = manager
        .list(ResourceType::DataplaneInsight, mesh)
        .await?
        .into_iter()
        .map(|i| ((i.key.mesh.clone(), i.key.name.clone()), i))
        .collect();
    Ok(dataplanes
        .iter()
        .map(|dp| {
            let insight = insights.get(&(dp.key.mesh.clone(), dp.key.name.clone()));
            overview(dp, insight)
        })
        .collect())
}

/// Kuma's `DataplaneOverview`: the Dataplane's meta and spec with its insight (`{}` if none).
fn overview(dataplane: &StoredResource, insight: Option<&StoredResource>) -> Value {
    json!({
        "type": "DataplaneOverview",
        "mesh": dataplane.key.mesh,
        "name": dataplane.key.name,
        "creationTime": rfc3339(dataplane.creation_time),
        "modificationTime": rfc3339(dataplane.modification_time),
        "dataplane": dataplane.spec,
        "dataplaneInsight": insight.map_or_else(|| json!({}), |i| i.spec.clone()),
    })
}

/// The REST form of a stored resource.
fn rest_json(stored: &StoredResource) -> Value {
    let meta = ResourceMeta {
        version: stored.version,
        creation_time: stored.creation_time,
        modification_time: stored.modification_time,
    };
    to_rest_json(&stored.key, &meta, &stored.spec)
}

/// RFC 3339 in UTC; times outside years 0..=9999 (never stored) fall back to the epoch.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}
