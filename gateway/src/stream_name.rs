//! Validated stream names: they appear in URLs, file names and logs, so only a
//! conservative character set is accepted.

use std::fmt;
use std::sync::Arc;

/// A stream name: 1–64 characters of `[A-Za-z0-9_.-]`, not starting with `.`.
/// Shared, because the media thread clones it on the per-packet path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(Arc<str>);

impl StreamName {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Option<Self> {
        Self::is_valid(raw).then(|| Self(Arc::from(raw)))
    }

    pub fn is_valid(raw: &str) -> bool {
        !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && !raw.starts_with('.')
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::StreamName;

    #[test]
    fn accepts_and_rejects() {
        assert!(StreamName::parse("cam-1.main_x").is_some());
        for bad in ["", ".hidden", "a/b", "a b", "..", "é", &"x".repeat(65)] {
            assert!(StreamName::parse(bad).is_none(), "{bad:?}");
        }
    }
}
