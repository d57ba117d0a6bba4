//! `Check`'s request and reply as the server reads and writes them.
//!
//! Envoy sends a `CheckRequest` of half a kilobyte for every proxied request:
//! both peers' addresses, a dozen headers, the route's context extensions.
//! Decoded into the `envoy-types` messages, that is some forty strings and
//! two hash maps to build and drop per call, and the reply (five headers and
//! a metadata `Struct`) as many again: together they halved `Check`'s
//! throughput against `Health/Check` (measured; see the README's
//! Benchmarks). As with Validate (`api::wire`), the server uses its own
//! types instead, which encode the same bytes:
//!
//! - `CheckCall` keeps the request's `attributes` as received (one buffer)
//!   and reads the two or three fields tokend needs from it in place: a
//!   header, and context extensions;
//! - `CheckReply` is written straight into one buffer from the decision.
//!
//! build.rs points the generated server at these types; clients (the tests,
//! the benchmark) use the `envoy-types` messages, and `to_message` gives the
//! same for both here.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{self, DecodeContext, WireType},
};

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

/// Field numbers (envoy/service/auth/v3/*.proto and the types they use).
mod field {
    /// CheckRequest.attributes
    pub const ATTRIBUTES: u32 = 1;
    /// AttributeContext.source; Peer.address; Address.socket_address;
    /// SocketAddress.address
    pub const SOURCE: u32 = 1;
    pub const PEER_ADDRESS: u32 = 1;
    pub const SOCKET_ADDRESS: u32 = 1;
    pub const SOCKET_ADDRESS_ADDRESS: u32 = 2;
    /// AttributeContext.request, .context_extensions
    pub const REQUEST: u32 = 4;
    pub const CONTEXT_EXTENSIONS: u32 = 10;
    /// AttributeContext.Request.http
    pub const HTTP: u32 = 2;
    /// AttributeContext.HttpRequest.headers, .header_map
    pub const HEADERS: u32 = 3;
    pub const HEADER_MAP: u32 = 13;
    /// HeaderMap.headers
    pub const HEADER_MAP_HEADERS: u32 = 1;
    /// map entries; HeaderValue.key, .value, .raw_value
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    pub const RAW_VALUE: u32 = 3;

    /// CheckResponse.status, .denied_response, .ok_response, .dynamic_metadata
    pub const STATUS: u32 = 1;
    pub const DENIED_RESPONSE: u32 = 2;
    pub const OK_RESPONSE: u32 = 3;
    pub const DYNAMIC_METADATA: u32 = 4;
    /// google.rpc.Status.code, .message
    pub const CODE: u32 = 1;
    pub const MESSAGE: u32 = 2;
    /// OkHttpResponse.headers, .headers_to_remove
    pub const OK_HEADERS: u32 = 2;
    pub const HEADERS_TO_REMOVE: u32 = 5;
    /// DeniedHttpResponse.status, .headers, .body; HttpStatus.code
    pub const DENIED_STATUS: u32 = 1;
    pub const DENIED_HEADERS: u32 = 2;
    pub const BODY: u32 = 3;
    pub const HTTP_STATUS_CODE: u32 = 1;
    /// HeaderValueOption.header, .append_action
    pub const HEADER: u32 = 1;
    pub const APPEND_ACTION: u32 = 3;
    /// Struct.fields; Value.string_value, .list_value; ListValue.values
    pub const STRUCT_FIELDS: u32 = 1;
    pub const STRING_VALUE: u32 = 3;
    pub const LIST_VALUE: u32 = 6;
    pub const LIST_VALUES: u32 = 1;
}

/// `HeaderValueOption.HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

// ---------------------------------------------------------------------------
// Reading fields in place
// ---------------------------------------------------------------------------

/// The length-delimited fields of an encoded message, in order, as (tag,
/// bytes); other wire types are skipped. A malformed tail ends the walk.
fn fields(mut rest: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let (tag, wire_type) = encoding::decode_key(&mut rest).ok()?;
            match wire_type {
                WireType::LengthDelimited => {
                    let len = usize::try_from(encoding::decode_varint(&mut rest).ok()?).ok()?;
                    let (value, after) = rest.split_at_checked(len)?;
                    rest = after;
                    return Some((tag, value));
                }
                WireType::Varint => {
                    encoding::decode_varint(&mut rest).ok()?;
                }
                WireType::SixtyFourBit => rest = rest.get(8..)?,
                WireType::ThirtyTwoBit => rest = rest.get(4..)?,
                WireType::StartGroup | WireType::EndGroup => return None,
            }
        }
    })
}

/// Every occurrence of the embedded message or string `tag` in `message`.
fn all(message: &[u8], tag: u32) -> impl Iterator<Item = &[u8]> {
    fields(message).filter_map(move |(t, v)| (t == tag).then_some(v))
}

/// The last occurrence of `tag` (protobuf: the last scalar wins).
fn last(message: &[u8], tag: u32) -> Option<&[u8]> {
    all(message, tag).last()
}

/// The value of the last entry whose key is `key` (as `eq`) in the map or
/// repeated message field `tag` of `message`, with `value` the value's tag.
fn entry(message: &[u8], tag: u32, value: u32, eq: impl Fn(&[u8]) -> bool) -> Option<&[u8]> {
    all(message, tag)
        .filter(|e| last(e, field::KEY).is_some_and(&eq))
        .last()
        .map(|e| last(e, value).unwrap_or_default())
}

/// A `CheckRequest`: its `attributes` as received, read in place.
#[derive(Clone, Default)]
pub struct CheckCall {
    /// The encoded `AttributeContext` (several occurrences concatenated:
    /// that is how protobuf merges them).
    attributes: Option<Bytes>,
}

impl CheckCall {
    /// An encoded `CheckRequest`'s call, e.g. from the envoy-types message.
    pub fn of(request: &CheckRequest) -> Self {
        let mut call = Self::default();
        // Our own well-formed encoding: cannot fail.
        if let Err(e) = call.merge(request.encode_to_vec().as_slice()) {
            tracing::error!(error = %e, "CheckRequest did not decode");
        }
        call
    }

    fn attributes(&self) -> &[u8] {
        self.attributes.as_deref().unwrap_or_default()
    }

    /// The `HttpRequest` messages (in order; one in practice).
    fn http(&self) -> impl Iterator<Item = &[u8]> {
        all(self.attributes(), field::REQUEST).flat_map(|r| all(r, field::HTTP))
    }

    /// The value of request header `name` (compared without case): from
    /// `headers` (lowercase names), or from `header_map` (Envoy's
    /// `encode_raw_headers`: `raw_value`, else `value`).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let eq = |k: &[u8]| k.eq_ignore_ascii_case(name.as_bytes());
        let mut found = None;
        for http in self.http() {
            if let Some(v) = entry(http, field::HEADERS, field::VALUE, eq) {
                found = Some(v);
            }
            for map in all(http, field::HEADER_MAP) {
                if let Some(h) = all(map, field::HEADER_MAP_HEADERS)
                    .filter(|h| last(h, field::KEY).is_some_and(eq))
                    .last()
                {
                    found = last(h, field::RAW_VALUE)
                        .filter(|raw| !raw.is_empty())
                        .or_else(|| last(h, field::VALUE))
                        .or(Some(&[]));
                }
            }
        }
        found
    }

    /// The downstream client's IP address: `source.address.socket_address.address`
    /// (the last one sent: protobuf merges repeated occurrences), if it is
    /// an IP address (a pipe or an internal address is not).
    pub fn source_ip(&self) -> Option<std::net::IpAddr> {
        let mut found = None;
        for source in all(self.attributes(), field::SOURCE) {
            for address in all(source, field::PEER_ADDRESS) {
                for socket in all(address, field::SOCKET_ADDRESS) {
                    if let Some(a) = last(socket, field::SOCKET_ADDRESS_ADDRESS) {
                        found = Some(a);
                    }
                }
            }
        }
        std::str::from_utf8(found?).ok()?.parse().ok()
    }

    /// The route's context extension `key`, if set (and text).
    pub fn context_extension(&self, key: &str) -> Option<&str> {
        entry(
            self.attributes(),
            field::CONTEXT_EXTENSIONS,
            field::VALUE,
            |k| k == key.as_bytes(),
        )
        .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The envoy-types message with the same content.
    pub fn to_message(&self) -> CheckRequest {
        CheckRequest::decode(self.encode_to_vec().as_slice()).unwrap_or_default()
    }
}

/// Headers carry the client's credentials: never shown.
impl std::fmt::Debug for CheckCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCall")
            .field(
                "attributes",
                &format_args!("<{} bytes>", self.attributes().len()),
            )
            .finish()
    }
}

impl Message for CheckCall {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(a) = &self.attributes {
            encoding::bytes::encode(field::ATTRIBUTES, a, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != field::ATTRIBUTES {
            return encoding::skip_field(wire_type, tag, buf, ctx);
        }
        // prost's own checks and errors; the bytes are taken, not parsed.
        let mut more = Bytes::new();
        encoding::bytes::merge(wire_type, &mut more, buf, ctx)?;
        self.attributes = Some(match self.attributes.take() {
            None => more,
            // A second occurrence merges into the first: concatenated.
            Some(first) => [first, more].concat().into(),
        });
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.attributes
            .as_ref()
            .map_or(0, |a| encoding::bytes::encoded_len(field::ATTRIBUTES, a))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

// ---------------------------------------------------------------------------
// Writing the reply
// ---------------------------------------------------------------------------

/// Writes protobuf fields into one buffer; an embedded message is written in
/// place and its length put in front of it afterwards (a short move).
struct Writer(Vec<u8>);

impl Writer {
    fn string(&mut self, tag: u32, s: &[u8]) {
        encoding::encode_key(tag, WireType::LengthDelimited, &mut self.0);
        encoding::encode_varint(s.len() as u64, &mut self.0);
        self.0.extend_from_slice(s);
    }

    fn varint(&mut self, tag: u32, v: u64) {
        encoding::encode_key(tag, WireType::Varint, &mut self.0);
        encoding::encode_varint(v, &mut self.0);
    }

    /// A nested message, written in place: the key, a one-byte length
    /// placeholder, the body, then the length. Most nested messages here are
    /// under 128 bytes, so the placeholder is the whole length; a longer one
    /// moves its body right by the varint's extra bytes. No allocation per
    /// message (this runs ~30 times per allowed reply).
    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self)) {
        encoding::encode_key(tag, WireType::LengthDelimited, &mut self.0);
        let at = self.0.len();
        self.0.push(0);
        body(self);
        let len = self.0.len() - at - 1;
        if let Ok(byte @ 0..=127) = u8::try_from(len) {
            self.0[at] = byte;
            return;
        }
        let mut varint = [0u8; 10];
        let n = {
            let mut out = &mut varint[..];
            encoding::encode_varint(len as u64, &mut out);
            10 - out.len()
        };
        self.0.splice(at..=at, varint[..n].iter().copied());
    }

    /// A `HeaderValueOption` that overwrites what the client sent.
    fn header(&mut self, tag: u32, key: &str, value: &str) {
        self.message(tag, |w| {
            w.message(field::HEADER, |w| {
                w.string(field::KEY, key.as_bytes());
                w.string(field::VALUE, value.as_bytes());
            });
            w.varint(field::APPEND_ACTION, OVERWRITE_IF_EXISTS_OR_ADD);
        });
    }

    /// A `google.rpc.Status`.
    fn status(&mut self, code: i32, message: &str) {
        self.message(field::STATUS, |w| {
            if code != 0 {
                w.varint(field::CODE, u64::from(code.unsigned_abs()));
            }
            if !message.is_empty() {
                w.string(field::MESSAGE, message.as_bytes());
            }
        });
    }

    /// A `google.protobuf.Value`'s string.
    fn string_value(&mut self, s: &str) {
        self.string(field::STRING_VALUE, s.as_bytes());
    }

    /// One `Struct.fields` entry.
    fn struct_field(&mut self, key: &str, value: impl FnOnce(&mut Self)) {
        self.message(field::STRUCT_FIELDS, |w| {
            w.string(field::KEY, key.as_bytes());
            w.message(field::VALUE, value);
        });
    }
}

/// A `CheckResponse`, encoded when it is made.
#[derive(Clone, Default)]
pub struct CheckReply {
    encoded: Vec<u8>,
}

/// What an allowed reply carries: the identity headers (name, value), the
/// header to remove, and the metadata (token id, account, owner, api
/// version; the modules come beside it).
pub struct Allowed<'a> {
    pub headers: &'a [(&'static str, std::borrow::Cow<'a, str>)],
    pub remove: &'a str,
    pub token_id: &'a str,
    pub account_id: &'a str,
    pub owner_id: &'a str,
    pub api_version: &'a str,
}

impl CheckReply {
    /// `OK`, headers for the upstream, the credential header removed, and
    /// the identity as dynamic metadata.
    pub fn allowed<'a>(a: Allowed<'a>, modules: impl Iterator<Item = &'a str>) -> Self {
        let mut w = Writer(Vec::with_capacity(512));
        w.status(0, "");
        w.message(field::OK_RESPONSE, |w| {
            for (k, v) in a.headers {
                w.header(field::OK_HEADERS, k, v);
            }
            w.string(field::HEADERS_TO_REMOVE, a.remove.as_bytes());
        });
        w.message(field::DYNAMIC_METADATA, |w| {
            w.struct_field("token_id", |w| w.string_value(a.token_id));
            w.struct_field("account_id", |w| w.string_value(a.account_id));
            w.struct_field("owner_id", |w| w.string_value(a.owner_id));
            w.struct_field("modules", |w| {
                w.message(field::LIST_VALUE, |w| {
                    for m in modules {
                        w.message(field::LIST_VALUES, |w| w.string_value(m));
                    }
                });
            });
            w.struct_field("api_version", |w| w.string_value(a.api_version));
        });
        Self { encoded: w.0 }
    }

    /// A denial: gRPC `code`, HTTP `status`, headers and body.
    pub fn denied(
        code: i32,
        reason: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Self {
        let mut w = Writer(Vec::with_capacity(384));
        w.status(code, reason);
        w.message(field::DENIED_RESPONSE, |w| {
            w.message(field::DENIED_STATUS, |w| {
                w.varint(field::HTTP_STATUS_CODE, u64::from(status));
            });
            for (k, v) in headers {
                w.header(field::DENIED_HEADERS, k, v);
            }
            if !body.is_empty() {
                w.string(field::BODY, body.as_bytes());
            }
        });
        Self { encoded: w.0 }
    }

    /// The envoy-types message with the same content.
    pub fn to_message(&self) -> CheckResponse {
        CheckResponse::decode(self.encoded.as_slice()).unwrap_or_default()
    }
}

/// As the message it encodes.
impl std::fmt::Debug for CheckReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_message().fmt(f)
    }
}

impl Message for CheckReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.encoded);
    }

    /// Decoding (which the server never does) keeps each field as received.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut one = CheckResponse::default();
        one.merge_field(tag, wire_type, buf, ctx)?;
        one.encode_raw(&mut self.encoded);
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.encoded.len()
    }

    fn clear(&mut self) {
        self.encoded.clear();
    }
}

#[cfg(test)]
mod tests;
