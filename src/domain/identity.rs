//! A token's identity as the services that check it read it: account, owner,
//! modules and API version, as plain values in one shared string.
//!
//! Every RPC authenticates its caller and every Validate checks modules, so
//! these are read far more often than they change: one immutable `Arc<str>`
//! holds them all (cheap to share between the Validate cache entry and the
//! callers authenticated by it: cloning is a reference count), with the
//! boundaries as offsets. Each module is stored behind a one-character length
//! (names are at most 64 bytes), so no name can be split or merged, whatever
//! its bytes.

use std::{fmt, sync::Arc};

/// Longest module name that can be stored (its length is one ASCII char).
const MAX_MODULE_LEN: usize = 127;

#[derive(Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    text: Arc<str>,
    /// Byte offsets into `text`, each taken right after a whole `&str` or
    /// ASCII length char was appended, so each is a char boundary within it:
    /// the fields are immutable and set only by `new`.
    account_end: usize,
    owner_end: usize,
    modules_end: usize,
}

impl TokenIdentity {
    /// Module names longer than 127 bytes cannot be stored and are left out
    /// (none passes input validation): a token never gains a module that way.
    pub fn new(account_id: &str, owner_id: &str, modules: &[String], api_version: &str) -> Self {
        let mut text = String::with_capacity(
            account_id.len()
                + owner_id.len()
                + modules.iter().map(|m| m.len() + 1).sum::<usize>()
                + api_version.len(),
        );
        text.push_str(account_id);
        let account_end = text.len();
        text.push_str(owner_id);
        let owner_end = text.len();
        for m in modules.iter().filter(|m| m.len() <= MAX_MODULE_LEN) {
            text.push(char::from(m.len() as u8));
            text.push_str(m);
        }
        let modules_end = text.len();
        text.push_str(api_version);
        Self {
            text: Arc::from(text),
            account_end,
            owner_end,
            modules_end,
        }
    }

    /// A field. Indexing cannot fail: the offsets are char boundaries of
    /// `text` by construction (see the fields), and a broken invariant
    /// would fail loudly rather than read as an empty id.
    fn slice(&self, from: usize, to: Option<usize>) -> &str {
        &self.text[from..to.unwrap_or(self.text.len())]
    }

    pub fn account_id(&self) -> &str {
        self.slice(0, Some(self.account_end))
    }

    pub fn owner_id(&self) -> &str {
        self.slice(self.account_end, Some(self.owner_end))
    }

    pub fn api_version(&self) -> &str {
        self.slice(self.modules_end, None)
    }

    pub fn modules(&self) -> impl Iterator<Item = &str> + Clone {
        self.module_bytes()
            .filter_map(|name| std::str::from_utf8(name).ok())
    }

    /// The modules as stored (length-prefixed), without the UTF-8 check.
    fn module_bytes(&self) -> impl Iterator<Item = &[u8]> + Clone {
        let mut rest = self
            .slice(self.owner_end, Some(self.modules_end))
            .as_bytes();
        std::iter::from_fn(move || {
            let (&len, after) = rest.split_first()?;
            let (name, after) = after.split_at_checked(usize::from(len))?;
            rest = after;
            Some(name)
        })
    }

    /// Whether every one of `required` is among the modules: runs on every
    /// Validate that names modules, comparing bytes (equal bytes are equal
    /// text, so the UTF-8 check `modules` makes would buy nothing here).
    pub fn has_modules(&self, required: &[impl AsRef<str>]) -> bool {
        required
            .iter()
            .all(|r| self.module_bytes().any(|m| m == r.as_ref().as_bytes()))
    }
}

impl fmt::Debug for TokenIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIdentity")
            .field("account_id", &self.account_id())
            .field("owner_id", &self.owner_id())
            .field("modules", &self.modules().collect::<Vec<_>>())
            .field("api_version", &self.api_version())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(list: &[&str]) -> Vec<String> {
        list.iter().map(|m| (*m).to_owned()).collect()
    }

    #[test]
    fn every_field_reads_back() {
        let id = TokenIdentity::new("acme", "alice", &modules(&["a:read", "b/*"]), "v1");
        assert_eq!(id.account_id(), "acme");
        assert_eq!(id.owner_id(), "alice");
        assert_eq!(id.api_version(), "v1");
        assert_eq!(id.modules().collect::<Vec<_>>(), ["a:read", "b/*"]);
        assert!(id.has_modules(&modules(&["b/*", "a:read"])));
        assert!(id.has_modules(&[] as &[&str]));
        assert!(!id.has_modules(&modules(&["a"])));
        assert!(!id.has_modules(&modules(&["a:read", "c"])));
        for other in ["acme", "alice", "v1", ""] {
            assert!(!id.has_modules(&modules(&[other])), "{other:?}");
        }
        let empty = TokenIdentity::new("", "", &[], "");
        assert_eq!(empty.modules().count(), 0);
        assert_eq!((empty.account_id(), empty.owner_id()), ("", ""));
    }

    #[test]
    fn names_cannot_be_split_or_merged() {
        // Whatever bytes a stored name has, it is one module.
        let id = TokenIdentity::new("a", "o", &modules(&["x\ny", "é", "\u{1}z"]), "");
        assert_eq!(id.modules().collect::<Vec<_>>(), ["x\ny", "é", "\u{1}z"]);
        assert!(!id.has_modules(&modules(&["x"])));
        assert!(!id.has_modules(&modules(&["z"])));
        let long = "m".repeat(200);
        let id = TokenIdentity::new("a", "o", &[long.clone(), "ok".into()], "v");
        assert_eq!(id.modules().collect::<Vec<_>>(), ["ok"]);
        assert!(!id.has_modules(&[long]));
        assert_eq!(id.api_version(), "v");
    }
}
