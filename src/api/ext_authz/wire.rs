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
use smallvec::SmallVec;

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

/// A varint (protobuf base-128). Tags and lengths here are nearly all under
/// 128: one byte, read without prost's general loop.
#[inline]
fn varint(buf: &mut &[u8]) -> Option<u64> {
    match buf.split_first() {
        Some((&b, rest)) if b < 0x80 => {
            *buf = rest;
            Some(u64::from(b))
        }
        Some(_) => encoding::decode_varint(buf).ok(),
        None => None,
    }
}

/// The length-delimited fields of an encoded message, in order, as (tag,
/// bytes); other wire types are skipped. A malformed tail ends the walk.
///
/// Every lookup below is one pass of this over the bytes received: `Check`
/// runs on every proxied request, and a CheckRequest is half a kilobyte.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn step(&mut self) -> Option<(u64, &'a [u8])> {
        loop {
            let key = varint(&mut self.0)?;
            match key & 7 {
                // Length-delimited: a string, bytes or an embedded message.
                2 => {
                    let len = usize::try_from(varint(&mut self.0)?).ok()?;
                    let (value, rest) = self.0.split_at_checked(len)?;
                    self.0 = rest;
                    return Some((key >> 3, value));
                }
                0 => {
                    varint(&mut self.0)?;
                }
                1 => self.0 = self.0.get(8..)?,
                5 => self.0 = self.0.get(4..)?,
                // Groups (not in these messages) or no wire type at all.
                _ => return None,
            }
        }
    }
}

impl<'a> Fields<'a> {
    /// Everything but a short length-delimited field, and the end.
    #[cold]
    #[inline(never)]
    fn slow(&mut self) -> Option<(u64, &'a [u8])> {
        let next = self.step();
        if next.is_none() {
            self.0 = &[];
        }
        next
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, &'a [u8]);

    /// Inlined into each walk: nearly every field here is a short string
    /// or message, a one-byte key and a one-byte length.
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        if let [key @ 0..=127, len @ 0..=127, rest @ ..] = self.0
            && key & 7 == 2
            && let Some((value, rest)) = rest.split_at_checked(usize::from(*len))
        {
            self.0 = rest;
            return Some((u64::from(key >> 3), value));
        }
        // The end of every walk, without the call.
        if self.0.is_empty() {
            return None;
        }
        self.slow()
    }
}

/// The last occurrence of field `tag` (protobuf: the last scalar wins).
fn last(message: &[u8], tag: u32) -> Option<&[u8]> {
    let tag = u64::from(tag);
    Fields(message).filter(|f| f.0 == tag).last().map(|f| f.1)
}

/// `field::KEY`'s first byte: length-delimited field 1.
const KEY_BYTE: u8 = 0x0a;

/// A map entry's (or `HeaderValue`'s) key, and its value field `value`
/// (absent: empty), in one pass; the last occurrence of each wins.
fn key_value(entry: &[u8], value: u32) -> (&[u8], &[u8]) {
    // The shape every encoder writes, the key then the value, each under 128
    // bytes, is read straight off the bytes: a CheckRequest has a dozen
    // headers, and all but one are only looked at to be skipped.
    if let [KEY_BYTE, k_len @ 0..=127, rest @ ..] = entry
        && let Some((k, rest)) = rest.split_at_checked(usize::from(*k_len))
    {
        match rest {
            [] => return (k, &[]),
            [v_key, v_len @ 0..=127, v @ ..]
                if u32::from(*v_key) == value << 3 | 2 && v.len() == usize::from(*v_len) =>
            {
                return (k, v);
            }
            _ => {}
        }
    }
    let (mut k, mut v): (&[u8], &[u8]) = (&[], &[]);
    for (tag, bytes) in Fields(entry) {
        if tag == u64::from(field::KEY) {
            k = bytes;
        } else if tag == u64::from(value) {
            v = bytes;
        }
    }
    (k, v)
}

/// Whether header name `key` is `name`, without case; inlined into the
/// walk, where nearly every header is told apart by its length alone.
#[inline(always)]
fn same_name(key: &[u8], name: &[u8]) -> bool {
    key.len() == name.len() && key.eq_ignore_ascii_case(name)
}

/// A `CheckRequest`: its `attributes` as received, read in place.
#[derive(Clone, Default)]
pub struct CheckCall {
    /// The encoded `AttributeContext` (several occurrences concatenated:
    /// that is how protobuf merges them).
    attributes: Option<Bytes>,
}

/// What `Check` reads from a request's attributes besides the presented
/// token, found in one walk: the route's context extensions and the
/// downstream client's address.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// The context extension `token_header`, if set (and text).
    pub token_header: Option<&'a str>,
    /// The context extension `required_modules`, if set (and text).
    pub required_modules: Option<&'a str>,
    /// `source.address.socket_address.address`, as sent.
    source: Option<&'a [u8]>,
}

impl Route<'_> {
    /// The downstream client's IP address: `source.address.socket_address.
    /// address` (the last one sent: protobuf merges repeated occurrences), if
    /// it is an IP address (a pipe or an internal address is not).
    pub fn source_ip(&self) -> Option<std::net::IpAddr> {
        std::str::from_utf8(self.source?).ok()?.parse().ok()
    }
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

    /// The route's context extensions and the client's address, in one walk
    /// of the attributes (the request's headers are skipped by length).
    pub fn route(&self) -> Route<'_> {
        let mut route = Route::default();
        for (tag, bytes) in Fields(self.attributes()) {
            if tag == u64::from(field::SOURCE) {
                // Peer.address; Address.socket_address; SocketAddress.address.
                for address in Fields(bytes).filter(|f| f.0 == u64::from(field::PEER_ADDRESS)) {
                    for socket in
                        Fields(address.1).filter(|f| f.0 == u64::from(field::SOCKET_ADDRESS))
                    {
                        if let Some(a) = last(socket.1, field::SOCKET_ADDRESS_ADDRESS) {
                            route.source = Some(a);
                        }
                    }
                }
            } else if tag == u64::from(field::CONTEXT_EXTENSIONS) {
                let (key, value) = key_value(bytes, field::VALUE);
                let slot = match key {
                    k if k == super::TOKEN_HEADER.as_bytes() => &mut route.token_header,
                    k if k == super::REQUIRED_MODULES.as_bytes() => &mut route.required_modules,
                    _ => continue,
                };
                *slot = std::str::from_utf8(value).ok();
            }
        }
        route
    }

    /// The value of request header `name` (compared without case): from
    /// `headers` (lowercase names), or from `header_map` (Envoy's
    /// `encode_raw_headers`: `raw_value`, else `value`), which wins when a
    /// request has both. One walk of the request's fields.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        let mut found = None;
        for (_, request) in Fields(self.attributes()).filter(|f| f.0 == u64::from(field::REQUEST)) {
            for (_, http) in Fields(request).filter(|f| f.0 == u64::from(field::HTTP)) {
                let (mut from_headers, mut from_map) = (None, None);
                for (tag, bytes) in Fields(http) {
                    if tag == u64::from(field::HEADERS) {
                        let (key, value) = key_value(bytes, field::VALUE);
                        if same_name(key, name) {
                            from_headers = Some(value);
                        }
                    } else if tag == u64::from(field::HEADER_MAP) {
                        for (_, h) in
                            Fields(bytes).filter(|f| f.0 == u64::from(field::HEADER_MAP_HEADERS))
                        {
                            let (key, value) = key_value(h, field::VALUE);
                            if same_name(key, name) {
                                from_map = Some(
                                    last(h, field::RAW_VALUE)
                                        .filter(|raw| !raw.is_empty())
                                        .unwrap_or(value),
                                );
                            }
                        }
                    }
                }
                if let Some(v) = from_map.or(from_headers) {
                    found = Some(v);
                }
            }
        }
        found
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
    /// A varint; the values written here (tags, lengths, codes) are nearly
    /// all one byte, pushed without prost's general loop.
    #[inline]
    fn raw_varint(&mut self, v: u64) {
        match u8::try_from(v) {
            Ok(byte @ 0..=127) => self.0.push(byte),
            _ => encoding::encode_varint(v, &mut self.0),
        }
    }

    #[inline]
    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.raw_varint(u64::from(tag) << 3 | wire_type as u64);
    }

    #[inline]
    fn string(&mut self, tag: u32, s: &[u8]) {
        self.key(tag, WireType::LengthDelimited);
        self.raw_varint(s.len() as u64);
        self.0.extend_from_slice(s);
    }

    #[inline]
    fn varint(&mut self, tag: u32, v: u64) {
        self.key(tag, WireType::Varint);
        self.raw_varint(v);
    }

    /// A nested message, written in place: the key, a one-byte length
    /// placeholder, the body, then the length. Most nested messages here are
    /// under 128 bytes, so the placeholder is the whole length; a longer one
    /// moves its body right by the varint's extra bytes. No allocation per
    /// message (a denial writes about ten; an allowed reply knows its lengths
    /// first and uses `open`).
    #[inline]
    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self)) {
        self.key(tag, WireType::LengthDelimited);
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
    #[inline]
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

    /// The key and length of a length-delimited field; its body follows.
    #[inline]
    fn open(&mut self, tag: u32, len: usize) {
        // A one-byte key and length (nearly every field here): one write.
        if tag < 16
            && let Ok(len @ 0..=127) = u8::try_from(len)
        {
            self.0.extend_from_slice(&[(tag << 3 | 2) as u8, len]);
            return;
        }
        self.key(tag, WireType::LengthDelimited);
        self.raw_varint(len as u64);
    }
}

/// A `CheckResponse`, encoded when it is made.
#[derive(Clone, Default)]
pub struct CheckReply {
    encoded: Vec<u8>,
}

/// What an allowed reply carries: the identity (for the headers, in
/// `IDENTITY_HEADERS` order, and the metadata) and the header to remove.
pub struct Allowed<'a, M> {
    pub token_id: &'a str,
    pub account_id: &'a str,
    pub owner_id: &'a str,
    /// The token's modules (the headers join them with commas).
    pub modules: M,
    pub api_version: &'a str,
    pub remove: &'a str,
}

/// Bytes of a length-delimited field with a one-byte key and a body of `n`.
fn field_len(n: usize) -> usize {
    1 + encoding::encoded_len_varint(n as u64) + n
}

/// `HeaderValue.key` with its key and length bytes, for each of
/// `IDENTITY_HEADERS` in order (checked against them by a test).
const KEYED_HEADERS: [&[u8]; 5] = [
    b"\x0a\x11x-tokend-token-id",
    b"\x0a\x13x-tokend-account-id",
    b"\x0a\x11x-tokend-owner-id",
    b"\x0a\x10x-tokend-modules",
    b"\x0a\x14x-tokend-api-version",
];

/// The dynamic metadata's `Struct.fields` keys with their key and length
/// bytes: `token_id`, `account_id`, `owner_id`, `modules`, `api_version`.
const KEYED_ENTRIES: [&[u8]; 5] = [
    b"\x0a\x08token_id",
    b"\x0a\x0aaccount_id",
    b"\x0a\x08owner_id",
    b"\x0a\x07modules",
    b"\x0a\x0bapi_version",
];

/// `HeaderValueOption.append_action = OVERWRITE_IF_EXISTS_OR_ADD`, encoded.
const APPEND_OVERWRITE: [u8; 2] = [
    (field::APPEND_ACTION << 3) as u8,
    OVERWRITE_IF_EXISTS_OR_ADD as u8,
];

impl CheckReply {
    /// `OK`, headers for the upstream, the credential header removed, and
    /// the identity as dynamic metadata. Every length is known before a byte
    /// is written, so the reply is written once, front to back, into a buffer
    /// of its exact size, mostly in whole slices: the header names and
    /// metadata keys with their key and length bytes are constants
    /// (`KEYED_HEADERS`, `KEYED_ENTRIES`), and the modules are joined once.
    pub fn allowed<'a, M>(a: Allowed<'a, M>) -> Self
    where
        M: Iterator<Item = &'a str> + Clone,
    {
        // The modules joined with commas, on the stack for the usual few.
        let mut joined = SmallVec::<[u8; 128]>::new();
        let mut list = 0;
        for (i, m) in a.modules.clone().enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend_from_slice(m.as_bytes());
            list += field_len(field_len(m.len()));
        }
        let values: [&[u8]; 5] = [
            a.token_id.as_bytes(),
            a.account_id.as_bytes(),
            a.owner_id.as_bytes(),
            &joined,
            a.api_version.as_bytes(),
        ];
        // HeaderValue's body, then HeaderValueOption's, per header.
        let header = |i: usize| KEYED_HEADERS[i].len() + field_len(values[i].len());
        let option = |i: usize| field_len(header(i)) + 2;
        let ok = (0..5).map(|i| field_len(option(i))).sum::<usize>() + field_len(a.remove.len());
        // A metadata entry's body, whose `Value` body is `value` bytes.
        let entry = |i: usize, value: usize| KEYED_ENTRIES[i].len() + field_len(value);
        let string_value = |i: usize| field_len(values[i].len());
        let list_value = field_len(list);
        let metadata = [0, 1, 2, 4]
            .into_iter()
            .map(|i| field_len(entry(i, string_value(i))))
            .sum::<usize>()
            + field_len(entry(3, list_value));
        let total = 2 + field_len(ok) + field_len(metadata);

        let mut w = Writer(Vec::with_capacity(total));
        // An empty `google.rpc.Status`: code OK.
        w.open(field::STATUS, 0);
        w.open(field::OK_RESPONSE, ok);
        for (i, value) in values.iter().enumerate() {
            w.open(field::OK_HEADERS, option(i));
            w.open(field::HEADER, header(i));
            w.0.extend_from_slice(KEYED_HEADERS[i]);
            w.open(field::VALUE, value.len());
            w.0.extend_from_slice(value);
            w.0.extend_from_slice(&APPEND_OVERWRITE);
        }
        w.string(field::HEADERS_TO_REMOVE, a.remove.as_bytes());
        w.open(field::DYNAMIC_METADATA, metadata);
        for (i, value) in values.iter().enumerate() {
            if i == 3 {
                w.open(field::STRUCT_FIELDS, entry(3, list_value));
                w.0.extend_from_slice(KEYED_ENTRIES[3]);
                w.open(field::VALUE, list_value);
                w.open(field::LIST_VALUE, list);
                for m in a.modules.clone() {
                    w.open(field::LIST_VALUES, field_len(m.len()));
                    w.string(field::STRING_VALUE, m.as_bytes());
                }
            } else {
                w.open(field::STRUCT_FIELDS, entry(i, string_value(i)));
                w.0.extend_from_slice(KEYED_ENTRIES[i]);
                w.open(field::VALUE, string_value(i));
                w.string(field::STRING_VALUE, value);
            }
        }
        debug_assert_eq!(w.0.len(), total);
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
