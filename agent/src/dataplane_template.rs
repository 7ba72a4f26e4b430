//! The Dataplane template of `kuma-dp run --dataplane[-file]`: rendered with the
//! `--dataplane-var` values as Kuma does (mustache `{{ var }}` placeholders, dotted keys), then
//! read just enough to learn the Dataplane's mesh, name and Envoy admin port. cp-lite validates
//! the whole resource when the agent registers it.

use std::collections::BTreeMap;

use serde_norway::Value;

/// The resource type a template must have.
const DATAPLANE_TYPE: &str = "Dataplane";

/// Why a template could not be rendered or read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{{` without its closing `}}`.
    #[error("dataplane template: unclosed tag starting at byte {offset}")]
    UnclosedTag {
        /// Where the tag starts in the template.
        offset: usize,
    },
    /// A mustache tag other than a variable or a comment (sections, partials, delimiters).
    #[error(
        "dataplane template: unsupported tag {tag:?}, only {{{{ var }}}} placeholders are supported"
    )]
    UnsupportedTag {
        /// The whole tag, braces included.
        tag: String,
    },
    /// A `--dataplane-var` without `=`.
    #[error("invalid --dataplane-var {0:?}: expected key=value")]
    InvalidVar(String),
    /// The rendered text is not YAML (or JSON).
    #[error("could not parse the rendered Dataplane")]
    Yaml(#[source] serde_norway::Error),
    /// The resource is not a Dataplane (Kuma's text).
    #[error("invalid proxy resource type \"{0}\", expected Dataplane")]
    WrongType(String),
    /// Mesh or name is missing (Kuma's meta validation texts).
    #[error("{0}")]
    Meta(String),
}

/// `--dataplane-var` values, by key. Dotted keys (`a.b=v`) are kept whole: a placeholder
/// `{{ a.b }}` looks them up as Kuma's nested mustache context would.
pub type TemplateVars = BTreeMap<String, String>;

/// Parses one `--dataplane-var` argument (`key=value`; the value may contain `=`).
pub fn parse_var(arg: &str) -> Result<(String, String), TemplateError> {
    match arg.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(TemplateError::InvalidVar(arg.to_string())),
    }
}

/// A rendered template and the placeholders it named that had no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The template with every placeholder replaced.
    pub text: String,
    /// Placeholders with no `--dataplane-var`; mustache renders them empty, as Kuma does.
    pub missing: Vec<String>,
}

/// Renders `template` the way Kuma's mustache does for the tags a Dataplane template uses:
/// `{{ key }}` is replaced by the HTML-escaped value, `{{{ key }}}` and `{{& key }}` by the raw
/// value, `{{! comment }}` by nothing; an unknown key renders empty.
pub fn render(template: &str, vars: &TemplateVars) -> Result<Rendered, TemplateError> {
    let mut text = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut rest = template;
    let mut consumed = 0;
    while let Some(start) = rest.find("{{") {
        text.push_str(&rest[..start]);
        let after_open = &rest[start + 2..];
        let triple = after_open.starts_with('{');
        let (close, inner_start) = if triple { ("}}}", 1) } else { ("}}", 0) };
        let Some(end) = after_open[inner_start..].find(close) else {
            return Err(TemplateError::UnclosedTag {
                offset: consumed + start,
            });
        };
        let inner = &after_open[inner_start..inner_start + end];
        let tag_len = 2 + inner_start + end + close.len();
        let tag = &rest[start..start + tag_len];

        let (raw, key) = if triple {
            (true, inner.trim())
        } else if let Some(key) = inner.trim_start().strip_prefix('&') {
            (true, key.trim())
        } else {
            (false, inner.trim())
        };
        match key.chars().next() {
            Some('!') if !triple => {}
            Some('#' | '^' | '/' | '>' | '=' | '<' | '$') | None => {
                return Err(TemplateError::UnsupportedTag {
                    tag: tag.to_string(),
                });
            }
            Some(_) => match vars.get(key) {
                Some(value) if raw => text.push_str(value),
                Some(value) => text.push_str(&html_escape(value)),
                None => {
                    if !missing.iter().any(|m| m == key) {
                        missing.push(key.to_string());
                    }
                }
            },
        }
        consumed += start + tag_len;
        rest = &rest[start + tag_len..];
    }
    text.push_str(rest);
    Ok(Rendered { text, missing })
}

/// Mustache's escaping of `{{ var }}` values.
fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A rendered Dataplane template and what the agent reads from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneTemplate {
    /// The rendered resource, sent to cp-lite as is.
    pub text: String,
    pub mesh: String,
    pub name: String,
    /// `networking.admin.port`, when set.
    pub admin_port: Option<u16>,
}

impl DataplaneTemplate {
    /// Renders `template` and reads its type, mesh, name and admin port.
    pub fn render(
        template: &str,
        vars: &TemplateVars,
    ) -> Result<(Self, Vec<String>), TemplateError> {
        let rendered = render(template, vars)?;
        let parsed = Self::parse(rendered.text)?;
        Ok((parsed, rendered.missing))
    }

    /// Reads an already rendered resource (Kuma universal YAML or JSON).
    pub fn parse(text: String) -> Result<Self, TemplateError> {
        let value: Value = serde_norway::from_str(&text).map_err(TemplateError::Yaml)?;
        let field = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let kind = field("type");
        if kind != DATAPLANE_TYPE {
            return Err(TemplateError::WrongType(kind));
        }
        let mesh = field("mesh");
        let name = field("name");
        let mut violations = Vec::new();
        if name.is_empty() {
            violations.push("name: cannot be empty");
        }
        if mesh.is_empty() {
            violations.push("mesh: cannot be empty");
        }
        if !violations.is_empty() {
            return Err(TemplateError::Meta(violations.join("; ")));
        }
        let admin_port = admin_port_of(&value);
        Ok(DataplaneTemplate {
            text,
            mesh,
            name,
            admin_port,
        })
    }
}

/// `networking.admin.port` of a Dataplane resource in YAML or JSON (for example the resource
/// cp-lite returns on registration), when set and a valid port.
pub fn admin_port(resource: &str) -> Option<u16> {
    let value: Value = serde_norway::from_str(resource).ok()?;
    admin_port_of(&value)
}

fn admin_port_of(value: &Value) -> Option<u16> {
    let port = value
        .get("networking")?
        .get("admin")?
        .get("port")?
        .as_u64()?;
    u16::try_from(port).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> TemplateVars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const KUMA_TEMPLATE: &str = "type: Dataplane
mesh: default
name: {{ name }}
networking:
  address: {{ address }}
  inbound:
    - port: 11011
      servicePort: 11012
      tags:
        kuma.io/service: backend
  admin:
    port: 9901
";

    #[test]
    fn renders_kuma_testdata_template() {
        let (template, missing) = DataplaneTemplate::render(
            KUMA_TEMPLATE,
            &vars(&[("name", "dp-1"), ("address", "192.168.0.1")]),
        )
        .unwrap();
        assert!(missing.is_empty());
        assert_eq!(template.mesh, "default");
        assert_eq!(template.name, "dp-1");
        assert_eq!(template.admin_port, Some(9901));
        assert!(template.text.contains("name: dp-1\n"));
        assert!(template.text.contains("address: 192.168.0.1\n"));
    }

    #[test]
    fn placeholders_dotted_raw_escaped_comment_and_missing() {
        let rendered = render(
            "a={{a.b}} b={{{ raw }}} c={{& raw}} d={{ raw }} e={{! note }}f={{ nope }}{{nope}}",
            &vars(&[("a.b", "x"), ("raw", "<&\"'>")]),
        )
        .unwrap();
        assert_eq!(
            rendered.text,
            "a=x b=<&\"'> c=<&\"'> d=&lt;&amp;&#34;&#39;&gt; e=f="
        );
        assert_eq!(rendered.missing, vec!["nope".to_string()]);
    }

    #[test]
    fn bad_tags_are_errors() {
        let err = render("name: {{ name", &TemplateVars::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dataplane template: unclosed tag starting at byte 6"
        );
        let err = render("{{#list}}x{{/list}}", &TemplateVars::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "dataplane template: unsupported tag \"{{#list}}\", only {{ var }} placeholders are supported"
        );
    }

    #[test]
    fn wrong_type_and_missing_meta_use_kuma_texts() {
        let err = DataplaneTemplate::parse("type: Mesh\nname: x\n".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid proxy resource type \"Mesh\", expected Dataplane"
        );
        let err = DataplaneTemplate::parse("name: x\n".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid proxy resource type \"\", expected Dataplane"
        );
        let err = DataplaneTemplate::parse("type: Dataplane\n".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "name: cannot be empty; mesh: cannot be empty"
        );
    }

    #[test]
    fn json_resources_are_read_too() {
        let json =
            r#"{"type":"Dataplane","mesh":"m","name":"n","networking":{"admin":{"port":1234}}}"#;
        let parsed = DataplaneTemplate::parse(json.into()).unwrap();
        assert_eq!((parsed.mesh.as_str(), parsed.name.as_str()), ("m", "n"));
        assert_eq!(admin_port(json), Some(1234));
        assert_eq!(
            admin_port(r#"{"networking":{"admin":{"port":70000}}}"#),
            None
        );
        assert_eq!(admin_port("type: Dataplane"), None);
    }

    #[test]
    fn vars_parse_key_value() {
        assert_eq!(
            parse_var("a.b=c=d").unwrap(),
            ("a.b".to_string(), "c=d".to_string())
        );
        assert_eq!(
            parse_var("novalue").unwrap_err().to_string(),
            "invalid --dataplane-var \"novalue\": expected key=value"
        );
    }
}
