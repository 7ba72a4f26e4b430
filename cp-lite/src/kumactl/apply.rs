//! `kumactl apply`: splits YAML/JSON input into documents, works out each resource's type, mesh
//! and name (universal or Kubernetes form), and PUTs it to its REST URL.
//!
//! Every document is checked before anything is sent, so a syntax error anywhere applies nothing.

use std::io::Write;

use reqwest::Method;

use super::client::ApiClient;
use super::error::KumactlError;
use super::kinds::Kind;

/// The mesh a mesh-scoped resource goes to when its document names none.
pub const DEFAULT_MESH: &str = "default";

/// The Kubernetes label that carries the mesh of a resource.
const MESH_LABEL: &str = "kuma.io/mesh";

/// One resource ready to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Position in the input (0-based, counting non-empty documents), as Kuma numbers them.
    pub index: usize,
    /// The resource type.
    pub kind: Kind,
    /// The resource name.
    pub name: String,
    /// The mesh; empty for a Mesh.
    pub mesh: String,
    /// The document to send, with the default mesh filled in when it was left out.
    pub body: serde_norway::Value,
}

/// A document that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource[{index}]: {message}")]
pub struct DocumentError {
    /// Position in the input.
    pub index: usize,
    /// What is wrong, in Kuma's words where Kuma has them.
    pub message: String,
}

impl Document {
    /// The URL path of the resource.
    pub fn path(&self) -> Vec<String> {
        self.kind.resource_path(&self.mesh, &self.name)
    }
}

/// Splits and parses the input. Documents are separated by lines starting with `---`; empty
/// documents are skipped. Returns every valid document and every error.
pub fn parse_documents(text: &str) -> (Vec<Document>, Vec<DocumentError>) {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (index, (first_line, chunk)) in split_documents(text).into_iter().enumerate() {
        match parse_document(index, first_line, &chunk) {
            Ok(document) => documents.push(document),
            Err(message) => errors.push(DocumentError { index, message }),
        }
    }
    (documents, errors)
}

/// Non-empty documents with the 1-based line each one starts at.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            if !current.trim().is_empty() {
                chunks.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = number + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        chunks.push((start, current));
    }
    chunks
}

fn parse_document(index: usize, first_line: usize, chunk: &str) -> Result<Document, String> {
    let mut value: serde_norway::Value = serde_norway::from_str(chunk).map_err(|error| {
        format!(
            "failed to parse resource: {}",
            shift_lines(&error.to_string(), first_line - 1)
        )
    })?;
    value
        .apply_merge()
        .map_err(|error| format!("failed to parse resource: {error}"))?;
    let Some(mapping) = value.as_mapping_mut() else {
        return Err("failed to parse resource: a resource must be a mapping".to_owned());
    };
    let field = |mapping: &serde_norway::Mapping, key: &str| -> String {
        mapping
            .get(key)
            .and_then(serde_norway::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let kubernetes = !mapping.contains_key("type") && mapping.contains_key("kind");
    let (type_name, name, mut mesh) = if kubernetes {
        let metadata = mapping.get("metadata");
        let name = metadata
            .and_then(|metadata| metadata.get("name"))
            .and_then(serde_norway::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let label = metadata
            .and_then(|metadata| metadata.get("labels"))
            .and_then(|labels| labels.get(MESH_LABEL))
            .and_then(serde_norway::Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let top_level = field(mapping, "mesh");
        let mesh = if top_level.is_empty() {
            label
        } else {
            top_level
        };
        (field(mapping, "kind"), name, mesh)
    } else {
        (
            field(mapping, "type"),
            field(mapping, "name"),
            field(mapping, "mesh"),
        )
    };
    let kind = Kind::from_type_name(&type_name)
        .ok_or_else(|| format!("failed to parse resource: invalid resource type {type_name:?}"))?;
    if name.is_empty() {
        return Err("failed to read meta: name: cannot be empty".to_owned());
    }
    if kind.is_mesh_scoped() {
        if mesh.is_empty() {
            mesh = DEFAULT_MESH.to_owned();
            // The server checks the mesh in the body against the URL, so it is made explicit.
            mapping.insert("mesh".into(), mesh.clone().into());
        }
    } else {
        mesh.clear();
    }
    Ok(Document {
        index,
        kind,
        name,
        mesh,
        body: value,
    })
}

/// Adds `offset` to every `line N` in a YAML error message, so positions refer to the whole
/// input rather than to one document.
fn shift_lines(message: &str, offset: usize) -> String {
    if offset == 0 {
        return message.to_owned();
    }
    let mut shifted = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(position) = rest.find("line ") {
        let (before, after) = rest.split_at(position + "line ".len());
        shifted.push_str(before);
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match after[..digits].parse::<usize>() {
            Ok(line) => shifted.push_str(&(line + offset).to_string()),
            Err(_) => shifted.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    shifted.push_str(rest);
    shifted
}

/// Applies the input: all documents are checked first; then each is PUT in order and reported as
/// `resource type="Mesh" mesh="" name="demo" Created` (or `Updated`). Without a client (`--dry-run`)
/// the documents are printed instead.
pub async fn apply(
    client: Option<&ApiClient>,
    input: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), KumactlError> {
    if input.trim().is_empty() {
        return Err(KumactlError::NothingToApply);
    }
    let (documents, errors) = parse_documents(input);
    if !errors.is_empty() {
        for error in &errors {
            writeln!(err, "{error}")?;
        }
        return Err(KumactlError::InvalidResources);
    }
    let Some(client) = client else {
        for (position, document) in documents.iter().enumerate() {
            if position > 0 {
                out.write_all(b"---\n")?;
            }
            let yaml = serde_norway::to_string(&document.body)
                .map_err(|error| KumactlError::Format(error.to_string()))?;
            out.write_all(yaml.as_bytes())?;
        }
        return Ok(());
    };
    for document in &documents {
        let body = serde_json::to_value(&document.body).map_err(|error| {
            KumactlError::InvalidArgs(format!("resource[{}]: {error}", document.index))
        })?;
        let reply = client
            .call(Method::PUT, &document.path(), Some(&body))
            .await?;
        let action = if reply.status == 201 {
            "Created"
        } else {
            "Updated"
        };
        writeln!(
            out,
            "resource type={:?} mesh={:?} name={:?} {action}",
            document.kind.type_name(),
            document.mesh,
            document.name
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(text: &str) -> Document {
        let (mut documents, errors) = parse_documents(text);
        assert_eq!(errors, []);
        assert_eq!(documents.len(), 1);
        documents.remove(0)
    }

    #[test]
    fn universal_mesh() {
        let document = parse_one(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
        );
        assert_eq!(document.kind, Kind::Mesh);
        assert_eq!(document.name, "default");
        assert_eq!(document.mesh, "");
        assert_eq!(document.path(), ["meshes", "default"]);
        assert_eq!(document.body.get("mesh"), None);
    }

    #[test]
    fn universal_policy_defaults_to_the_default_mesh() {
        let document = parse_one("type: TrafficPermission\nname: allow-all\nsources: []\n");
        assert_eq!(document.mesh, "default");
        assert_eq!(
            document.path(),
            ["meshes", "default", "traffic-permissions", "allow-all"]
        );
        assert_eq!(
            serde_json::to_value(&document.body).unwrap()["mesh"],
            serde_json::json!("default")
        );
    }

    #[test]
    fn kubernetes_form_reads_metadata_and_mesh_label() {
        let document = parse_one(
            "apiVersion: kuma.io/v1alpha1\nkind: MeshTrafficPermission\nmetadata:\n  name: allow\n  labels:\n    kuma.io/mesh: demo\nspec: {}\n",
        );
        assert_eq!(document.kind, Kind::MeshTrafficPermission);
        assert_eq!(document.name, "allow");
        assert_eq!(document.mesh, "demo");
        assert_eq!(
            document.body.get("mesh"),
            None,
            "the label is left to the server"
        );

        let document = parse_one(
            "apiVersion: kuma.io/v1alpha1\nkind: TrafficPermission\nmesh: other\nmetadata:\n  name: tp\nspec: {}\n",
        );
        assert_eq!(document.mesh, "other");

        let document = parse_one(
            "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata:\n  name: demo\nspec: {}\n",
        );
        assert_eq!(document.kind, Kind::Mesh);
        assert_eq!(document.path(), ["meshes", "demo"]);
    }

    #[test]
    fn json_input_is_accepted() {
        let document =
            parse_one(r#"{"type": "Secret", "name": "s", "mesh": "demo", "data": "dGVzdA=="}"#);
        assert_eq!(document.path(), ["meshes", "demo", "secrets", "s"]);
    }

    #[test]
    fn several_documents_keep_their_order() {
        let (documents, errors) = parse_documents(
            "---\ntype: Mesh\nname: demo\n---\n\n---\ntype: Dataplane\nmesh: demo\nname: dp-1\nnetworking:\n  address: 127.0.0.1\n",
        );
        assert_eq!(errors, []);
        let names: Vec<(usize, &str)> = documents
            .iter()
            .map(|d| (d.index, d.name.as_str()))
            .collect();
        assert_eq!(names, [(0, "demo"), (1, "dp-1")]);
    }

    #[test]
    fn syntax_errors_carry_the_position_in_the_whole_input() {
        let (documents, errors) = parse_documents(
            "type: Mesh\nname: ok\n---\ntype: Mesh\nname: [broken\n---\ntype: Foo\nname: x\n",
        );
        assert_eq!(documents.len(), 1);
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].index, 1);
        let first = errors[0].to_string();
        assert!(
            first.starts_with("resource[1]: failed to parse resource: "),
            "{first}"
        );
        // The broken flow sequence is on line 5 of the input (line 2 of its document).
        assert!(
            first.contains("line 5") || first.contains("line 6"),
            "{first}"
        );
        assert_eq!(
            errors[1].to_string(),
            "resource[2]: failed to parse resource: invalid resource type \"Foo\""
        );
    }

    #[test]
    fn missing_names_and_types_are_reported() {
        let (_, errors) = parse_documents("type: Mesh\n---\nname: x\n---\n- a\n");
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "resource[0]: failed to read meta: name: cannot be empty",
                "resource[1]: failed to parse resource: invalid resource type \"\"",
                "resource[2]: failed to parse resource: a resource must be a mapping",
            ]
        );
    }

    #[test]
    fn shifts_every_line_number() {
        assert_eq!(
            shift_lines(
                "did not find expected key at line 2 column 3, while parsing a block mapping at line 1 column 1",
                4
            ),
            "did not find expected key at line 6 column 3, while parsing a block mapping at line 5 column 1"
        );
    }

    #[tokio::test]
    async fn invalid_input_sends_nothing_and_lists_every_problem() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let error = apply(None, "type: Mesh\nname: [x\n", &mut out, &mut err)
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "failed to validate some resources");
        let stderr = String::from_utf8(err).unwrap();
        assert!(
            stderr.starts_with("resource[0]: failed to parse resource: "),
            "{stderr}"
        );
        assert!(out.is_empty());
        let error = apply(None, " \n", &mut out, &mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "no resource(s) passed to apply");
    }

    #[tokio::test]
    async fn dry_run_prints_the_documents() {
        let mut out = Vec::new();
        apply(
            None,
            "type: TrafficPermission\nname: tp\n---\ntype: Mesh\nname: demo\n",
            &mut out,
            &mut Vec::new(),
        )
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "type: TrafficPermission\nname: tp\nmesh: default\n---\ntype: Mesh\nname: demo\n"
        );
    }
}
