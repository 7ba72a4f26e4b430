//! The revocation list: token ids (`jti`) listed in the mesh's revocations Secret.

use std::collections::HashSet;

/// Revoked token ids. Kuma stores them comma-separated in a Secret, with one trailing
/// newline allowed; whitespace around each id is ignored here too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    ids: HashSet<String>,
}

impl RevocationList {
    /// Parses the Secret's data, e.g. `id1,id2\n`. Empty entries are skipped.
    pub fn parse(data: &[u8]) -> Self {
        let text = String::from_utf8_lossy(data);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let ids = text
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect();
        RevocationList { ids }
    }

    /// A list revoking nothing (no revocations Secret).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether the token with this `jti` is revoked.
    pub fn contains(&self, jti: &str) -> bool {
        !jti.is_empty() && self.ids.contains(jti)
    }

    /// How many ids are listed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comma_separated_ids() {
        let list = RevocationList::parse(b"a,b,c\n");
        assert_eq!(list.len(), 3);
        assert!(list.contains("a") && list.contains("b") && list.contains("c"));
        assert!(!list.contains("d"));
        assert!(!list.contains("a,b"));
    }

    #[test]
    fn tolerates_whitespace_and_empty_entries() {
        let list = RevocationList::parse(b" a , b,,\r\n c \n");
        assert!(list.contains("a") && list.contains("b") && list.contains("c"));
        assert_eq!(list.len(), 3);
        // An absent jti is never revoked, even by an empty entry.
        assert!(!list.contains(""));
    }

    #[test]
    fn empty_data_revokes_nothing() {
        assert!(RevocationList::parse(b"").is_empty());
        assert!(RevocationList::parse(b"\n").is_empty());
        assert!(RevocationList::empty().is_empty());
        assert!(!RevocationList::empty().contains("a"));
    }
}
