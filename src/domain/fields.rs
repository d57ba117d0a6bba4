//! Parse-don't-validate newtypes for user-supplied fields. Each parser names the
//! offending field so the wire layer can return `INVALID_ARGUMENT` with a
//! google.rpc.BadRequest field violation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
pub const MAX_MODULES: usize = 64;
pub const MAX_MODULE_CHARS: usize = 64;
pub const MAX_API_VERSION_CHARS: usize = 32;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;
pub const MAX_REASON_CHARS: usize = 500;
pub const MAX_PRINCIPAL_CHARS: usize = 128;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

type Parsed<T> = Result<T, FieldViolation>;

fn char_len(s: &str) -> usize {
    s.chars().count()
}

fn no_control_chars(field: &str, s: &str) -> Parsed<()> {
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A token's display name: 1..=100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    pub fn parse(field: &str, s: &str) -> Parsed<Self> {
        if s.trim().is_empty() {
            return Err(FieldViolation::new(
                field,
                "is required and must not be blank",
            ));
        }
        if char_len(s) > MAX_NAME_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if s.contains(['\n', '\t']) {
            return Err(FieldViolation::new(field, "must be a single line"));
        }
        no_control_chars(field, s)?;
        Ok(Self(s.to_owned()))
    }

    /// "<name> (copy)", shortened so it still fits the length limit.
    pub fn copy_of(name: &str) -> Self {
        const SUFFIX: &str = " (copy)";
        let keep = MAX_NAME_CHARS - SUFFIX.chars().count();
        let base: String = name.chars().take(keep).collect();
        Self(format!("{base}{SUFFIX}"))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Free text, at most 1000 characters.
pub fn description(field: &str, s: &str) -> Parsed<String> {
    if char_len(s) > MAX_DESCRIPTION_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    no_control_chars(field, s)?;
    Ok(s.to_owned())
}

/// A state-change reason, at most 500 characters.
pub fn reason(field: &str, s: &str) -> Parsed<String> {
    if char_len(s) > MAX_REASON_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    no_control_chars(field, s)?;
    Ok(s.to_owned())
}

/// The bytes a module name may hold (`[A-Za-z0-9._:/*-]`), as a table:
/// `check_module` runs for each required module on every Validate.
static MODULE_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'/' | b'*' | b'-');
        b += 1;
    }
    table
};

/// One module name: 1..=64 characters of `[A-Za-z0-9._:/*-]`.
pub fn module(field: &str, s: &str) -> Parsed<String> {
    check_module(field, s)?;
    Ok(s.to_owned())
}

/// `module` without the copy, for Validate's required modules.
pub fn check_module(field: &str, s: &str) -> Result<(), FieldViolation> {
    if s.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if s.len() > MAX_MODULE_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_MODULE_CHARS} characters"),
        ));
    }
    // Bytes, not chars: the allowed set is ASCII, so any byte of a multi-byte
    // character fails it too. Runs for each required module on every Validate.
    if !s.bytes().all(|b| MODULE_BYTES[usize::from(b)]) {
        return Err(FieldViolation::new(
            field,
            "may contain only letters, digits and . _ : / * -",
        ));
    }
    Ok(())
}

/// The modules a token may access: at most 64, duplicates dropped, order kept.
pub fn modules(field: &str, list: &[String]) -> Parsed<Vec<String>> {
    if list.len() > MAX_MODULES {
        return Err(FieldViolation::new(
            field,
            format!("must have at most {MAX_MODULES} entries"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let m = module(&format!("{field}[{i}]"), m)?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// An API version label such as `v2` or `2024-06-01`: at most 32 characters of
/// `[A-Za-z0-9._-]`; empty means "unversioned".
pub fn api_version(field: &str, s: &str) -> Parsed<String> {
    if s.len() > MAX_API_VERSION_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_API_VERSION_CHARS} characters"),
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(FieldViolation::new(
            field,
            "may contain only letters, digits and . _ -",
        ));
    }
    Ok(s.to_owned())
}

/// Free-form key/value metadata, bounded in entries and sizes.
pub fn metadata<'a>(
    field: &str,
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Parsed<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        if k.is_empty() || char_len(k) > MAX_METADATA_KEY_CHARS {
            return Err(FieldViolation::new(
                field,
                format!("keys must be 1..={MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        if char_len(v) > MAX_METADATA_VALUE_CHARS {
            return Err(FieldViolation::new(
                format!("{field}[{k}]"),
                format!("must be at most {MAX_METADATA_VALUE_CHARS} characters"),
            ));
        }
        no_control_chars(field, k)?;
        out.insert(k.clone(), v.clone());
        if out.len() > MAX_METADATA_ENTRIES {
            return Err(FieldViolation::new(
                field,
                format!("must have at most {MAX_METADATA_ENTRIES} entries"),
            ));
        }
    }
    Ok(out)
}

/// An account or owner identifier: 1..=128 characters of `[A-Za-z0-9._:@-]`.
pub fn principal(field: &str, s: &str) -> Parsed<String> {
    if s.is_empty() {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if s.len() > MAX_PRINCIPAL_CHARS {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {MAX_PRINCIPAL_CHARS} characters"),
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'))
    {
        return Err(FieldViolation::new(
            field,
            "may contain only letters, digits and . _ : @ -",
        ));
    }
    Ok(s.to_owned())
}

/// An expiry that must lie in the future.
pub fn future_expiry(field: &str, at: DateTime<Utc>, now: DateTime<Utc>) -> Parsed<DateTime<Utc>> {
    if at <= now {
        return Err(FieldViolation::new(field, "must be in the future"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        assert!(TokenName::parse("name", "ci deploy").is_ok());
        assert!(TokenName::parse("name", "").is_err());
        assert!(TokenName::parse("name", "   ").is_err());
        assert!(TokenName::parse("name", &"é".repeat(100)).is_ok());
        assert!(TokenName::parse("name", &"é".repeat(101)).is_err());
        assert!(TokenName::parse("name", "a\nb").is_err());
        assert_eq!(TokenName::copy_of("x").into_inner(), "x (copy)");
        assert_eq!(
            TokenName::copy_of(&"a".repeat(100))
                .into_inner()
                .chars()
                .count(),
            100
        );
    }

    #[test]
    fn modules_are_checked_and_deduplicated() {
        let ok = modules("modules", &["a:read".into(), "a:read".into(), "b/*".into()]).unwrap();
        assert_eq!(ok, vec!["a:read".to_owned(), "b/*".to_owned()]);
        let err = modules("modules", &["ok".into(), String::new()]).unwrap_err();
        assert_eq!(err.field, "modules[1]");
        assert!(modules("modules", &["has space".into()]).is_err());
        // Non-ASCII letters are not module characters, whichever byte is checked.
        for bad in ["é", "aé", "ü:read", "模块", "a\u{0}b"] {
            assert!(check_module("m", bad).is_err(), "{bad:?}");
        }
        assert!(check_module("m", "Az09._:/*-").is_ok());
        assert!(modules("modules", &vec!["m".to_owned(); 65]).is_err());
    }

    #[test]
    fn metadata_bounds() {
        let mut m = std::collections::HashMap::new();
        m.insert("team".to_owned(), "payments".to_owned());
        assert!(metadata("metadata", &m).is_ok());
        m.insert(String::new(), "x".to_owned());
        assert!(metadata("metadata", &m).is_err());
        let big: std::collections::HashMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(metadata("metadata", &big).is_err());
        let mut long = std::collections::HashMap::new();
        long.insert("k".to_owned(), "v".repeat(1025));
        assert_eq!(
            metadata("metadata", &long).unwrap_err().field,
            "metadata[k]"
        );
    }

    #[test]
    fn principals_and_versions() {
        assert!(principal("account_id", "acme-1").is_ok());
        assert!(principal("account_id", "").is_err());
        assert!(principal("account_id", "a b").is_err());
        assert!(api_version("api_version", "2024-06-01").is_ok());
        assert!(api_version("api_version", "").is_ok());
        assert!(api_version("api_version", "v 2").is_err());
    }
}
