//! Validation errors in Kuma's shape: a list of `field: message` violations.

use std::fmt;

/// One violated rule: the field path (Kuma style, e.g. `mtls.backends[0].conf.cert`) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    /// A violation of `field` for `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every rule a resource breaks; displayed as Kuma does, `field: message` joined by `; `.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub violations: Vec<Violation>,
}

impl ValidationError {
    /// A validation error with no violation yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A validation error with one violation.
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut err = Self::new();
        err.add(field, message);
        err
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation::new(field, message));
    }

    /// Records every violation of `other`, with `prefix.` in front of each field.
    pub fn add_nested(&mut self, prefix: &str, other: ValidationError) {
        for v in other.violations {
            let field = if v.field.is_empty() {
                prefix.to_string()
            } else if prefix.is_empty() {
                v.field
            } else if v.field.starts_with('[') {
                format!("{prefix}{}", v.field)
            } else {
                format!("{prefix}.{}", v.field)
            };
            self.violations.push(Violation::new(field, v.message));
        }
    }

    /// Records every violation of `other` as it is.
    pub fn extend(&mut self, other: ValidationError) {
        self.violations.extend(other.violations);
    }

    /// Whether nothing was violated.
    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// `Ok(())` when nothing was violated, the error otherwise.
    pub fn into_result(self) -> Result<(), ValidationError> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// The field path of a map entry, Kuma style: `tags["kuma.io/service"]`.
pub(crate) fn key_field(prefix: &str, key: &str) -> String {
    format!("{prefix}[{key:?}]")
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_kuma() {
        let mut inner = ValidationError::new();
        inner.add("cert", "has to be defined");
        inner.add("key", "has to be defined");
        let mut err = ValidationError::new();
        err.add_nested("mtls.backends[0].conf", inner);
        assert_eq!(
            err.to_string(),
            "mtls.backends[0].conf.cert: has to be defined; mtls.backends[0].conf.key: has to be defined"
        );
    }
}
