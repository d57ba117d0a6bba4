//! Row encodings of the copy: primary keys as JSON (the progress table keeps
//! the last copied key) and the canonical bytes a row's checksum is taken
//! over, the same on SQLite and PostgreSQL whatever the column types.

use super::*;

/// A primary key as stored in the progress table: a JSON array of strings,
/// integers and timestamps (the key types the schema uses; `token_notices`
/// has a timestamp in its key). A timestamp is `{"utc": RFC 3339}` with every
/// digit of its fraction, so the resumed copy starts exactly after the row it
/// stopped at.
pub(super) fn key_to_json(key: &[Value]) -> Result<String> {
    let parts = key
        .iter()
        .map(|v| match v {
            Value::String(Some(s)) => Ok(serde_json::Value::from(s.as_str())),
            Value::BigInt(Some(n)) => Ok(serde_json::Value::from(*n)),
            Value::Int(Some(n)) => Ok(serde_json::Value::from(*n)),
            Value::ChronoDateTimeUtc(Some(t)) => Ok(serde_json::json!({
                "utc": t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            })),
            other => Err(Error::Internal(format!(
                "unsupported primary-key value for a resumable copy: {other:?}"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(serde_json::Value::Array(parts).to_string())
}

pub(super) fn key_from_json<E: EntityTrait>(text: &str) -> Result<Vec<Value>> {
    let bad = || Error::Internal(format!("unreadable progress key {text:?}"));
    let parts: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|_| bad())?;
    if parts.len() != key_columns::<E>().len() {
        return Err(bad());
    }
    parts
        .into_iter()
        .map(|p| match p {
            serde_json::Value::String(s) => Ok(Value::String(Some(s))),
            serde_json::Value::Number(n) => {
                n.as_i64().map(|n| Value::BigInt(Some(n))).ok_or_else(bad)
            }
            serde_json::Value::Object(o) => match o.get("utc") {
                Some(serde_json::Value::String(t)) if o.len() == 1 => {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|t| Value::ChronoDateTimeUtc(Some(t.with_timezone(&chrono::Utc))))
                        .map_err(|_| bad())
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

/// BLAKE3 of the row's canonical encoding: for every column of the entity,
/// its name and its value, each tagged and length-prefixed. Both sides decode
/// a row into the same `Model`, so equal rows encode equally whatever the
/// database's own representation (SQLite stores timestamps as text,
/// PostgreSQL as `timestamptz`).
pub(super) fn row_hash<E: EntityTrait>(model: &E::Model, buf: &mut Vec<u8>) -> blake3::Hash {
    buf.clear();
    for column in E::Column::iter() {
        put(buf, b'c', column.as_str().as_bytes());
        canonical(&model.get(column), buf);
    }
    blake3::hash(buf)
}

pub(super) fn put(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    buf.extend_from_slice(bytes);
}

pub(super) fn canonical(value: &Value, buf: &mut Vec<u8>) {
    match value {
        Value::Bool(Some(b)) => put(buf, b'b', &[u8::from(*b)]),
        Value::TinyInt(Some(n)) => put(buf, b'i', &i64::from(*n).to_le_bytes()),
        Value::SmallInt(Some(n)) => put(buf, b'i', &i64::from(*n).to_le_bytes()),
        Value::Int(Some(n)) => put(buf, b'i', &i64::from(*n).to_le_bytes()),
        Value::BigInt(Some(n)) => put(buf, b'i', &n.to_le_bytes()),
        Value::String(Some(s)) => put(buf, b's', s.as_bytes()),
        Value::Bytes(Some(b)) => put(buf, b'x', b),
        Value::ChronoDateTimeUtc(Some(t)) => {
            let mut exact = t.timestamp().to_le_bytes().to_vec();
            exact.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
            put(buf, b't', &exact);
        }
        // SQL NULL, whatever the column's type.
        v if is_null(v) => put(buf, b'n', &[]),
        // Any other type: both sides decode it into the same Rust type, whose
        // Debug form is then the same for equal values.
        other => put(buf, b'd', format!("{other:?}").as_bytes()),
    }
}

pub(super) fn is_null(value: &Value) -> bool {
    matches!(
        value,
        Value::Bool(None)
            | Value::TinyInt(None)
            | Value::SmallInt(None)
            | Value::Int(None)
            | Value::BigInt(None)
            | Value::TinyUnsigned(None)
            | Value::SmallUnsigned(None)
            | Value::Unsigned(None)
            | Value::BigUnsigned(None)
            | Value::Float(None)
            | Value::Double(None)
            | Value::String(None)
            | Value::Char(None)
            | Value::Bytes(None)
            | Value::Json(None)
            | Value::ChronoDate(None)
            | Value::ChronoTime(None)
            | Value::ChronoDateTime(None)
            | Value::ChronoDateTimeUtc(None)
            | Value::ChronoDateTimeLocal(None)
            | Value::ChronoDateTimeWithTimeZone(None)
    )
}
