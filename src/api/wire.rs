//! Validate's request and reply as the server reads and writes them.
//!
//! Validate runs on every request of every backend service, so its messages
//! skip the generated types' per-call work:
//!
//! - `ValidateCall` (`tokens.v1.ValidateRequest`) parses the token straight
//!   out of the request bytes into an inline `TokenValue`: no `String` is
//!   allocated, copied and freed for it. `client_ip` is kept as sent (a
//!   `String`, allocated only when a caller sends one) and parsed by the
//!   handler.
//! - `ValidateReply` (`tokens.v1.ValidateResponse`): building the generated
//!   message for a hit (a dozen strings, a vector and a hash map, then encoding
//!   and dropping them) cost about as much as the cache lookup itself. The
//!   validation cache keeps each token's verified fields already in wire form
//!   (`Snapshot::wire`), so a verified reply is `valid` and `reason` followed
//!   by a copy of those bytes.
//!
//! Both are small, because tonic moves them several times per call.
//! build.rs points the generated server at these types; the generated client
//! still uses `pb::ValidateRequest` and `pb::ValidateResponse`, which encode
//! the same bytes.
//!
//! This is the one module that knows how these two messages are encoded:
//! their field numbers are declared once (`field`), a unit test checks them
//! against the compiled proto's descriptors, and `encode_verified` makes the
//! bytes the validation cache keeps (opaque to it) for each token.
//!
//! **Changing `ValidateRequest` or `ValidateResponse`** in
//! `proto/tokens/v1/token_service.proto`: add or renumber the field in
//! `field` below; for a request field, decode it in `ValidateCall::merge_field`
//! and encode it in `encode_raw`/`encoded_len`; for a verified-token reply
//! field, encode it in `encode_verified` (the order of fields must be the
//! order prost writes: by field number). The tests
//! `field_numbers_match_the_proto` and `a_verified_reply_decodes_to_the_generated_message`
//! fail until all of it agrees with the generated messages.

use std::sync::Arc;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};

use crate::{
    domain::{TokenValue, token::ValidationView, token_value::MalformedToken},
    pb,
    validation::cache::Entry,
};

/// Field numbers, declared once (checked against the proto by a test).
pub(crate) mod field {
    /// `tokens.v1.ValidateRequest`.
    pub mod request {
        pub const TOKEN: u32 = 1;
        pub const REQUIRED_MODULES: u32 = 2;
        pub const CLIENT_IP: u32 = 3;
    }
    /// `tokens.v1.ValidateResponse`.
    pub mod response {
        pub const VALID: u32 = 1;
        pub const REASON: u32 = 2;
        pub const TOKEN_ID: u32 = 3;
        pub const ACCOUNT_ID: u32 = 4;
        pub const OWNER_ID: u32 = 5;
        pub const MODULES: u32 = 6;
        pub const API_VERSION: u32 = 7;
        pub const METADATA: u32 = 8;
        pub const EXPIRES_AT: u32 = 9;
    }
    /// Inside a map entry (`metadata`).
    pub mod map_entry {
        pub const KEY: u32 = 1;
        pub const VALUE: u32 = 2;
    }
}

use field::{
    request::{CLIENT_IP, REQUIRED_MODULES, TOKEN},
    response::{REASON, VALID},
};

/// Appends a length-delimited field (a string or an embedded message).
fn put(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// The verified-token fields of a `ValidateResponse` (3-9) for `token`,
/// encoded once when its cache entry is built (the cache's `ReplyEncoder`):
/// a hit's reply is `valid` and `reason` followed by a copy of these bytes.
pub fn encode_verified(token: &ValidationView<'_>) -> Box<[u8]> {
    use field::{map_entry, response as f};
    let mut buf = Vec::with_capacity(128);
    // As prost writes them: a singular string (and a map entry's key or
    // value) only when not empty; every element of a repeated one.
    fn put_unless_empty(buf: &mut Vec<u8>, tag: u32, text: &str) {
        if !text.is_empty() {
            put(buf, tag, text.as_bytes());
        }
    }
    put_unless_empty(&mut buf, f::TOKEN_ID, token.id.as_str());
    put_unless_empty(&mut buf, f::ACCOUNT_ID, token.account_id);
    put_unless_empty(&mut buf, f::OWNER_ID, token.owner_id);
    for m in token.modules {
        put(&mut buf, f::MODULES, m.as_bytes());
    }
    put_unless_empty(&mut buf, f::API_VERSION, token.api_version);
    let mut entry = Vec::new();
    for (k, v) in token.metadata {
        entry.clear();
        put_unless_empty(&mut entry, map_entry::KEY, k);
        put_unless_empty(&mut entry, map_entry::VALUE, v);
        put(&mut buf, f::METADATA, &entry);
    }
    if let Some(t) = token.expires_at {
        let ts = prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        };
        put(&mut buf, f::EXPIRES_AT, &ts.encode_to_vec());
    }
    buf.into_boxed_slice()
}

/// A Validate request: the token, already parsed, the required modules and
/// the client address as sent.
///
/// Boxed: tonic moves the decoded request through several futures before
/// the handler sees it, and at the size of a pointer those moves are
/// register copies; with the token inline each was a `memcpy` call (about
/// 0.7k instructions per Validate in all, against one allocation).
pub struct ValidateCall(Box<CallFields>);

struct CallFields {
    /// A well-formed value, or why not with the text as sent (kept so that
    /// the message still encodes what it decoded; malformed input is rare).
    token: Result<TokenValue, (MalformedToken, String)>,
    required_modules: RequiredModules,
    /// As sent (empty: none); parsed by the handler, and only when sent, so
    /// a caller that sends none pays nothing for it.
    client_ip: String,
}

impl Default for ValidateCall {
    /// An empty token, as in an empty message: malformed.
    fn default() -> Self {
        Self(Box::new(CallFields {
            token: Err((MalformedToken::Shape, String::new())),
            required_modules: RequiredModules::new(),
            client_ip: String::new(),
        }))
    }
}

/// Validate's required modules, inline: a call names one module in the
/// common case, and this keeps it (up to 24 bytes) off the heap, where a
/// `Vec<String>` would allocate twice per call.
pub type RequiredModules = smallvec::SmallVec<[compact_str::CompactString; 1]>;

impl ValidateCall {
    pub fn new(token: &str, required_modules: Vec<String>) -> Self {
        Self(Box::new(CallFields {
            token: parse_token(token),
            required_modules: required_modules.into_iter().map(Into::into).collect(),
            client_ip: String::new(),
        }))
    }

    pub fn token(&self) -> Result<&TokenValue, MalformedToken> {
        self.0.token.as_ref().map_err(|(why, _)| *why)
    }

    pub fn required_modules(&self) -> &[compact_str::CompactString] {
        &self.0.required_modules
    }

    /// The client address as sent; empty when none was.
    pub fn client_ip(&self) -> &str {
        &self.0.client_ip
    }
}

fn parse_token(text: &str) -> Result<TokenValue, (MalformedToken, String)> {
    TokenValue::parse(text).map_err(|why| (why, text.to_owned()))
}

/// The token is never shown.
impl std::fmt::Debug for ValidateCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateCall")
            .field("token", &"<redacted>")
            .field("required_modules", &self.0.required_modules)
            .field("client_ip", &self.0.client_ip)
            .finish()
    }
}

impl Message for ValidateCall {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // proto3 leaves an empty string out; a well-formed value is never empty.
        match &self.0.token {
            Ok(value) => encoding::string::encode(TOKEN, &value.expose(), buf),
            Err((_, text)) if !text.is_empty() => encoding::string::encode(TOKEN, text, buf),
            Err(_) => {}
        }
        for module in &self.0.required_modules {
            encoding::encode_key(REQUIRED_MODULES, WireType::LengthDelimited, buf);
            encoding::encode_varint(module.len() as u64, buf);
            buf.put_slice(module.as_bytes());
        }
        if !self.0.client_ip.is_empty() {
            encoding::string::encode(CLIENT_IP, &self.0.client_ip, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            TOKEN => {
                // The request body is one contiguous buffer in practice: parse
                // the value where it lies.
                if wire_type == WireType::LengthDelimited
                    && let Some((text, used)) = contiguous_str(buf.chunk())
                {
                    self.0.token = parse_token(text);
                    buf.advance(used);
                    return Ok(());
                }
                // Anything else gets prost's own checks and errors.
                let mut text = String::new();
                encoding::string::merge(wire_type, &mut text, buf, ctx)?;
                self.0.token = parse_token(&text);
                Ok(())
            }
            REQUIRED_MODULES => {
                if wire_type == WireType::LengthDelimited
                    && let Some((text, used)) = contiguous_str(buf.chunk())
                {
                    self.0.required_modules.push(text.into());
                    buf.advance(used);
                    return Ok(());
                }
                let mut text = String::new();
                encoding::string::merge(wire_type, &mut text, buf, ctx)?;
                self.0.required_modules.push(text.into());
                Ok(())
            }
            CLIENT_IP => encoding::string::merge(wire_type, &mut self.0.client_ip, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let len = match &self.0.token {
            Ok(value) => value.text_len(),
            Err((_, text)) => text.len(),
        };
        let token = if len == 0 {
            0
        } else {
            encoding::key_len(TOKEN) + encoding::encoded_len_varint(len as u64) + len
        };
        let client_ip = if self.0.client_ip.is_empty() {
            0
        } else {
            encoding::string::encoded_len(CLIENT_IP, &self.0.client_ip)
        };
        token
            + self
                .0
                .required_modules
                .iter()
                .map(|m| {
                    encoding::key_len(REQUIRED_MODULES)
                        + encoding::encoded_len_varint(m.len() as u64)
                        + m.len()
                })
                .sum::<usize>()
            + client_ip
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A length-delimited UTF-8 string at the start of `chunk`, if it lies wholly
/// within it, and the number of bytes it takes with its length prefix.
fn contiguous_str(chunk: &[u8]) -> Option<(&str, usize)> {
    let mut rest = chunk;
    let len = usize::try_from(encoding::decode_varint(&mut rest).ok()?).ok()?;
    let header = chunk.len() - rest.len();
    let text = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((text, header + len))
}

/// A Validate reply: the verdict, plus the token's fields when its secret verified.
#[derive(Clone, Default)]
pub struct ValidateReply {
    valid: bool,
    reason: i32,
    /// The verified token's cache entry, whose wire bytes carry fields 3-9.
    verified: Option<Arc<Entry>>,
    /// Set only when a reply is decoded (which the server never does): the
    /// whole message, which then replaces the fields above.
    decoded: Option<Box<pb::ValidateResponse>>,
}

impl ValidateReply {
    pub fn new(valid: bool, reason: pb::Reason, verified: Option<Arc<Entry>>) -> Self {
        Self {
            valid,
            reason: reason as i32,
            verified,
            decoded: None,
        }
    }

    /// The generated message with the same content.
    pub fn to_message(&self) -> pb::ValidateResponse {
        if let Some(decoded) = &self.decoded {
            return (**decoded).clone();
        }
        let mut message = pb::ValidateResponse {
            valid: self.valid,
            reason: self.reason,
            ..Default::default()
        };
        if let Some(entry) = &self.verified {
            // Our own well-formed encoding of the same message: cannot fail.
            if let Err(e) = message.merge(entry.snapshot.reply()) {
                tracing::error!(error = %e, "cached ValidateResponse fields did not decode");
            }
        }
        message
    }
}

/// As the message it encodes: the cache entry itself is not shown.
impl std::fmt::Debug for ValidateReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_message().fmt(f)
    }
}

impl Message for ValidateReply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(decoded) = &self.decoded {
            return decoded.encode_raw(buf);
        }
        // Field order and defaults as prost writes them: 1, 2, then 3-9.
        if self.valid {
            encoding::bool::encode(VALID, &self.valid, buf);
        }
        if self.reason != 0 {
            encoding::int32::encode(REASON, &self.reason, buf);
        }
        if let Some(entry) = &self.verified {
            buf.put_slice(entry.snapshot.reply());
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if self.decoded.is_none() {
            self.decoded = Some(Box::new(self.to_message()));
            self.verified = None;
        }
        match self.decoded.as_deref_mut() {
            Some(message) => message.merge_field(tag, wire_type, buf, ctx),
            None => Ok(()),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(decoded) = &self.decoded {
            return decoded.encoded_len();
        }
        let valid = if self.valid {
            encoding::bool::encoded_len(VALID, &self.valid)
        } else {
            0
        };
        let reason = if self.reason != 0 {
            encoding::int32::encoded_len(REASON, &self.reason)
        } else {
            0
        };
        valid
            + reason
            + self
                .verified
                .as_ref()
                .map_or(0, |e| e.snapshot.reply().len())
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;
