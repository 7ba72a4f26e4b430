//! `kumactl get`, `kumactl delete` and `kumactl inspect dataplanes`: requests and rendering.

use std::io::Write;

use reqwest::Method;
use time::OffsetDateTime;

use super::cli::OutputFormat;
use super::client::ApiClient;
use super::error::KumactlError;
use super::kinds::Kind;
use super::table::{self, ago, dataplane_tags, date, tag_set_string, timestamp};

/// How many `next` links a listing follows at most, so a misbehaving server cannot loop forever.
const MAX_PAGES: usize = 1_000;

/// A listing: items as JSON for the table, and the same items as order-preserving documents for
/// YAML/JSON output.
#[derive(Debug, Default)]
pub struct Listing {
    /// The items, for reading fields.
    pub items: Vec<serde_json::Value>,
    /// The items in the order and shape the server sent them.
    pub documents: Vec<serde_norway::Value>,
}

impl Listing {
    /// The REST list document `{"total","items","next"}`.
    pub fn to_document(&self) -> serde_norway::Value {
        let mut list = serde_norway::Mapping::new();
        list.insert("total".into(), (self.documents.len() as u64).into());
        list.insert(
            "items".into(),
            serde_norway::Value::Sequence(self.documents.clone()),
        );
        list.insert("next".into(), serde_norway::Value::Null);
        serde_norway::Value::Mapping(list)
    }
}

/// Fetches a whole collection, following `next` links.
pub async fn list(client: &ApiClient, segments: &[String]) -> Result<Listing, KumactlError> {
    let mut listing = Listing::default();
    let mut url = client.url(segments);
    for _ in 0..MAX_PAGES {
        let reply = client
            .send(Method::GET, url.clone(), None)
            .await?
            .into_success()?;
        let page = reply.json()?;
        let document = reply.document()?;
        listing
            .items
            .extend(page["items"].as_array().into_iter().flatten().cloned());
        if let Some(items) = document
            .get("items")
            .and_then(serde_norway::Value::as_sequence)
        {
            listing.documents.extend(items.iter().cloned());
        }
        match page["next"].as_str().filter(|next| !next.is_empty()) {
            Some(next) => {
                url = url
                    .join(next)
                    .map_err(|error| KumactlError::InvalidResponse {
                        url: reply.url.clone(),
                        reason: format!("invalid next link {next:?}: {error}"),
                    })?;
            }
            None => return Ok(listing),
        }
    }
    Ok(listing)
}

/// `kumactl get <plural>`.
pub async fn get_list(
    client: &ApiClient,
    kind: Kind,
    mesh: &str,
    format: OutputFormat,
    now: OffsetDateTime,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let listing = list(client, &kind.collection_path(mesh)).await?;
    match format {
        OutputFormat::Table => {
            out.write_all(resources_table(kind, &listing.items, now).as_bytes())?
        }
        _ => print_document(&listing.to_document(), format, out)?,
    }
    Ok(())
}

/// `kumactl get <singular> NAME`.
pub async fn get_one(
    client: &ApiClient,
    kind: Kind,
    mesh: &str,
    name: &str,
    format: OutputFormat,
    now: OffsetDateTime,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let reply = client
        .send(
            Method::GET,
            client.url(&kind.resource_path(mesh, name)),
            None,
        )
        .await?;
    if reply.status == 404 {
        return Err(KumactlError::NoResourcesFound {
            mesh: kind.is_mesh_scoped().then(|| mesh.to_owned()),
        });
    }
    let reply = reply.into_success()?;
    match format {
        OutputFormat::Table => {
            let item = reply.json()?;
            out.write_all(resources_table(kind, std::slice::from_ref(&item), now).as_bytes())?;
        }
        _ => print_document(&reply.document()?, format, out)?,
    }
    Ok(())
}

/// `kumactl delete TYPE NAME`.
pub async fn delete(
    client: &ApiClient,
    kind_name: &str,
    mesh: &str,
    name: &str,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let kind = Kind::from_cli_name(kind_name).ok_or_else(|| {
        let allowed: Vec<&str> = Kind::ALL.iter().map(|kind| kind.cli_name()).collect();
        KumactlError::InvalidArgs(format!(
            "unknown TYPE: {kind_name}. Allowed values: {}",
            allowed.join(", ")
        ))
    })?;
    let reply = client
        .send(
            Method::DELETE,
            client.url(&kind.resource_path(mesh, name)),
            None,
        )
        .await?;
    if reply.status == 404 {
        return Err(KumactlError::NothingToDelete {
            kind: kind.type_name(),
            name: name.to_owned(),
        });
    }
    reply.into_success()?;
    writeln!(out, "deleted {} {name:?}", kind.type_name())?;
    Ok(())
}

/// `kumactl inspect dataplanes`.
pub async fn inspect_dataplanes(
    client: &ApiClient,
    mesh: &str,
    format: OutputFormat,
    now: OffsetDateTime,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let segments = [
        "meshes".to_owned(),
        mesh.to_owned(),
        "dataplanes+insights".to_owned(),
    ];
    let listing = list(client, &segments).await?;
    match format {
        OutputFormat::Table => out.write_all(inspect_table(&listing.items, now).as_bytes())?,
        _ => print_document(&listing.to_document(), format, out)?,
    }
    Ok(())
}

/// Prints a document as YAML or JSON (keys in the server's order).
pub fn print_document(
    document: &serde_norway::Value,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), KumactlError> {
    let text = match format {
        OutputFormat::Json => serde_json::to_string_pretty(document)
            .map(|json| json + "\n")
            .map_err(|error| KumactlError::Format(error.to_string()))?,
        _ => serde_norway::to_string(document)
            .map_err(|error| KumactlError::Format(error.to_string()))?,
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The table of `get` for a kind: Kuma's columns for meshes and dataplanes, `MESH NAME AGE` for
/// policies and secrets.
pub fn resources_table(kind: Kind, items: &[serde_json::Value], now: OffsetDateTime) -> String {
    match kind {
        Kind::Mesh => table::render(
            &[
                "NAME",
                "mTLS",
                "METRICS",
                "LOGGING",
                "TRACING",
                "LOCALITY",
                "ZONEEGRESS",
                "AGE",
            ],
            &items
                .iter()
                .map(|item| mesh_row(item, now))
                .collect::<Vec<_>>(),
        ),
        Kind::Dataplane => table::render(
            &["MESH", "NAME", "TAGS", "ADDRESS", "AGE"],
            &items
                .iter()
                .map(|item| dataplane_row(item, now))
                .collect::<Vec<_>>(),
        ),
        _ => table::render(
            &["MESH", "NAME", "AGE"],
            &items
                .iter()
                .map(|item| vec![text(item, "mesh"), text(item, "name"), age(item, now)])
                .collect::<Vec<_>>(),
        ),
    }
}

fn mesh_row(mesh: &serde_json::Value, now: OffsetDateTime) -> Vec<String> {
    let routing = &mesh["routing"];
    vec![
        text(mesh, "name"),
        mtls_cell(&mesh["mtls"]),
        enabled_backend_cell(&mesh["metrics"]),
        backends_cell(&mesh["logging"]),
        backends_cell(&mesh["tracing"]),
        on_off(
            routing["localityAwareLoadBalancing"]
                .as_bool()
                .unwrap_or(false),
        ),
        on_off(routing["zoneEgress"].as_bool().unwrap_or(false)),
        age(mesh, now),
    ]
}

/// `type/name` of the enabled CA backend, `off` when mTLS is disabled.
fn mtls_cell(mtls: &serde_json::Value) -> String {
    let enabled = enabled_backend_cell(mtls);
    if enabled != "off" {
        return enabled;
    }
    // The older schema (`enabled: true`, `ca: {builtin: {}}`), should a server return it as is.
    if mtls["enabled"].as_bool() == Some(true) {
        for ca_type in ["builtin", "provided"] {
            if mtls["ca"].get(ca_type).is_some() {
                return format!("{ca_type}/{ca_type}");
            }
        }
    }
    "off".to_owned()
}

/// `type/name` of `section.enabledBackend` looked up in `section.backends`, or `off`.
fn enabled_backend_cell(section: &serde_json::Value) -> String {
    let Some(enabled) = section["enabledBackend"]
        .as_str()
        .filter(|name| !name.is_empty())
    else {
        return "off".to_owned();
    };
    let backend = section["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|backend| backend["name"].as_str() == Some(enabled));
    match backend {
        Some(backend) => format!("{}/{enabled}", text(backend, "type")),
        None => enabled.to_owned(),
    }
}

/// Every backend of a section as `type/name`, comma-separated, or `off`.
fn backends_cell(section: &serde_json::Value) -> String {
    let backends: Vec<String> = section["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|backend| format!("{}/{}", text(backend, "type"), text(backend, "name")))
        .collect();
    if backends.is_empty() {
        "off".to_owned()
    } else {
        backends.join(", ")
    }
}

fn dataplane_row(dataplane: &serde_json::Value, now: OffsetDateTime) -> Vec<String> {
    let networking = &dataplane["networking"];
    let address = [&networking["advertisedAddress"], &networking["address"]]
        .into_iter()
        .filter_map(serde_json::Value::as_str)
        .find(|address| !address.is_empty())
        .unwrap_or_default();
    vec![
        text(dataplane, "mesh"),
        text(dataplane, "name"),
        tag_set_string(&dataplane_tags(dataplane)),
        address.to_owned(),
        age(dataplane, now),
    ]
}

/// The table of `inspect dataplanes`, with Kuma's columns. Columns cp-lite does not track
/// (xDS update counters, Envoy version, dependencies, notes) show `-`.
pub fn inspect_table(overviews: &[serde_json::Value], now: OffsetDateTime) -> String {
    table::render(
        &[
            "MESH",
            "NAME",
            "TAGS",
            "STATUS",
            "LAST CONNECTED AGO",
            "LAST UPDATED AGO",
            "TOTAL UPDATES",
            "TOTAL ERRORS",
            "CERT REGENERATED AGO",
            "CERT EXPIRATION",
            "CERT REGENERATIONS",
            "CERT BACKEND",
            "SUPPORTED CERT BACKENDS",
            "KUMA-DP VERSION",
            "ENVOY VERSION",
            "DEPENDENCIES VERSIONS",
            "NOTES",
        ],
        &overviews
            .iter()
            .map(|overview| overview_row(overview, now))
            .collect::<Vec<_>>(),
    )
}

fn overview_row(overview: &serde_json::Value, now: OffsetDateTime) -> Vec<String> {
    let insight = &overview["dataplaneInsight"];
    let connected = timestamp(insight, "connectedTime");
    let disconnected = timestamp(insight, "disconnectedTime");
    let online = match (connected, disconnected) {
        (Some(connected), Some(disconnected)) => disconnected < connected,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let mtls = insight.get("mTLS").filter(|mtls| mtls.is_object());
    let (regenerated, expiration, regenerations, backend, supported) = match mtls {
        Some(mtls) => {
            let backend = mtls["issuedBackend"].as_str().unwrap_or_default();
            let supported: Vec<&str> = mtls["supportedBackends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            (
                ago(timestamp(mtls, "lastCertificateRegeneration"), now),
                date(timestamp(mtls, "certificateExpirationTime")),
                mtls["certificateRegenerations"]
                    .as_u64()
                    .unwrap_or(0)
                    .to_string(),
                // Kuma's wording for an insight that predates `issuedBackend`.
                if backend.is_empty() {
                    "unknown".to_owned()
                } else {
                    backend.to_owned()
                },
                if supported.is_empty() {
                    "-".to_owned()
                } else {
                    supported.join(",")
                },
            )
        }
        None => (
            "never".to_owned(),
            "-".to_owned(),
            "0".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
        ),
    };
    let agent_version = insight["agentVersion"]
        .as_str()
        .filter(|version| !version.is_empty())
        .unwrap_or("-");
    vec![
        text(overview, "mesh"),
        text(overview, "name"),
        tag_set_string(&dataplane_tags(&overview["dataplane"])),
        if online { "Online" } else { "Offline" }.to_owned(),
        ago(connected, now),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        regenerated,
        expiration,
        regenerations,
        backend,
        supported,
        agent_version.to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
    ]
}

fn text(value: &serde_json::Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_owned()
}

fn age(resource: &serde_json::Value, now: OffsetDateTime) -> String {
    ago(timestamp(resource, "modificationTime"), now)
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2024-03-01 12:00:00 UTC);

    #[test]
    fn meshes_table() {
        let meshes = [
            json!({"type": "Mesh", "name": "default", "creationTime": "2024-02-28T12:00:00Z",
                   "modificationTime": "2024-02-28T12:00:00Z"}),
            json!({"type": "Mesh", "name": "demo", "creationTime": "2024-03-01T11:55:00Z",
                   "modificationTime": "2024-03-01T11:55:00Z",
                   "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]},
                   "metrics": {"enabledBackend": "prom-1", "backends": [{"name": "prom-1", "type": "prometheus"}]},
                   "logging": {"backends": [{"name": "file", "type": "file"}, {"name": "tcp", "type": "tcp"}]},
                   "tracing": {"backends": []},
                   "routing": {"localityAwareLoadBalancing": true, "zoneEgress": true}}),
            json!({"type": "Mesh", "name": "legacy", "modificationTime": "2024-03-01T09:00:00Z",
                   "mtls": {"enabled": true, "ca": {"provided": {}}}}),
        ];
        assert_eq!(
            resources_table(Kind::Mesh, &meshes, NOW),
            "NAME      mTLS                METRICS             LOGGING              TRACING   LOCALITY   ZONEEGRESS   AGE\n\
             default   off                 off                 off                  off       off        off          2d\n\
             demo      builtin/ca-1        prometheus/prom-1   file/file, tcp/tcp   off       on         on           5m\n\
             legacy    provided/provided   off                 off                  off       off        off          3h\n"
        );
    }

    #[test]
    fn dataplanes_table() {
        let dataplanes = [json!({
            "type": "Dataplane", "mesh": "default", "name": "web-01",
            "modificationTime": "2024-03-01T11:59:30Z",
            "networking": {"address": "10.0.0.1", "inbound": [
                {"port": 8080, "tags": {"kuma.io/service": "web", "version": "v1"}}]}
        })];
        assert_eq!(
            resources_table(Kind::Dataplane, &dataplanes, NOW),
            "MESH      NAME     TAGS                             ADDRESS    AGE\n\
             default   web-01   kuma.io/service=web version=v1   10.0.0.1   30s\n"
        );
    }

    #[test]
    fn policies_and_secrets_table() {
        let items = [
            json!({"type": "TrafficPermission", "mesh": "demo", "name": "allow-all",
                            "modificationTime": "2024-02-29T12:00:00Z"}),
        ];
        assert_eq!(
            resources_table(Kind::TrafficPermission, &items, NOW),
            "MESH   NAME        AGE\ndemo   allow-all   1d\n"
        );
        assert_eq!(
            resources_table(Kind::Secret, &[], NOW),
            "MESH   NAME   AGE\n"
        );
    }

    #[test]
    fn inspect_table_with_and_without_mtls() {
        let overviews = [
            json!({"type": "DataplaneOverview", "mesh": "default", "name": "web-01",
                   "dataplane": {"networking": {"address": "10.0.0.1",
                       "inbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}]}},
                   "dataplaneInsight": {
                       "agentVersion": "0.1.0",
                       "connectedTime": "2024-03-01T11:59:55Z",
                       "mTLS": {"certificateExpirationTime": "2024-03-02T11:59:55Z",
                                "lastCertificateRegeneration": "2024-03-01T11:59:57Z",
                                "certificateRegenerations": 2,
                                "issuedBackend": "ca-1",
                                "supportedBackends": ["ca-1"]}}}),
            json!({"type": "DataplaneOverview", "mesh": "default", "name": "web-02",
                   "dataplane": {"networking": {"address": "10.0.0.2",
                       "inbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}]}},
                   "dataplaneInsight": {"connectedTime": "2024-03-01T10:00:00Z",
                                        "disconnectedTime": "2024-03-01T11:00:00Z"}}),
        ];
        let rendered = inspect_table(&overviews, NOW);
        let lines: Vec<Vec<&str>> = rendered
            .lines()
            .map(|line| {
                line.split("   ")
                    .map(str::trim)
                    .filter(|cell| !cell.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(lines[0].len(), 17, "{rendered}");
        assert_eq!(
            lines[1],
            [
                "default",
                "web-01",
                "kuma.io/service=web",
                "Online",
                "5s",
                "-",
                "-",
                "-",
                "3s",
                "2024-03-02 11:59:55",
                "2",
                "ca-1",
                "ca-1",
                "0.1.0",
                "-",
                "-",
                "-"
            ]
        );
        assert_eq!(
            lines[2],
            [
                "default",
                "web-02",
                "kuma.io/service=web",
                "Offline",
                "2h",
                "-",
                "-",
                "-",
                "never",
                "-",
                "0",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-"
            ]
        );
    }

    #[test]
    fn list_document_has_kumas_shape() {
        let listing = Listing {
            items: vec![json!({"name": "a"})],
            documents: vec![serde_norway::from_str("type: Mesh\nname: a\n").unwrap()],
        };
        let mut out = Vec::new();
        print_document(&listing.to_document(), OutputFormat::Yaml, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "total: 1\nitems:\n- type: Mesh\n  name: a\nnext: null\n"
        );
        let mut out = Vec::new();
        print_document(&listing.to_document(), OutputFormat::Json, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\n  \"total\": 1,\n  \"items\": [\n    {\n      \"type\": \"Mesh\",\n      \"name\": \"a\"\n    }\n  ],\n  \"next\": null\n}\n"
        );
    }
}
