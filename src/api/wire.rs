//! `tokens.v1.ValidateResponse` as the server sends it.
//!
//! Validate runs on every request of every backend service, and building the
//! generated message for a hit (a dozen strings, a vector and a hash map, then
//! encoding and dropping them) cost about as much as the cache lookup itself.
//! The validation cache keeps each token's verified fields already in wire form
//! (`Snapshot::wire`), so a verified reply is `valid` and `reason` followed by a
//! copy of those bytes. build.rs points the generated server at this type; the
//! generated client still decodes the same bytes into `pb::ValidateResponse`.

use std::sync::Arc;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};

use crate::{pb, validation::cache::Entry};

const VALID: u32 = 1;
const REASON: u32 = 2;

/// A Validate reply: the verdict, plus the token's fields when its secret verified.
#[derive(Clone, Default)]
pub struct ValidateReply {
    /// `valid` and `reason`; also the token's fields once decoded or materialised.
    head: pb::ValidateResponse,
    /// The verified token's cache entry, whose wire bytes carry fields 3-9.
    verified: Option<Arc<Entry>>,
}

impl ValidateReply {
    pub fn new(valid: bool, reason: pb::Reason, verified: Option<Arc<Entry>>) -> Self {
        Self {
            head: pb::ValidateResponse {
                valid,
                reason: reason as i32,
                ..Default::default()
            },
            verified,
        }
    }

    /// The generated message with the same content.
    pub fn to_message(&self) -> pb::ValidateResponse {
        let mut copy = self.clone();
        copy.materialise();
        copy.head
    }

    /// Moves the entry's fields into `head`, e.g. before decoding more into it.
    fn materialise(&mut self) {
        if let Some(entry) = self.verified.take() {
            // Our own well-formed encoding of the same message: cannot fail.
            if let Err(e) = self.head.merge(entry.snapshot.wire()) {
                tracing::error!(error = %e, "cached ValidateResponse fields did not decode");
            }
        }
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
        match &self.verified {
            None => self.head.encode_raw(buf),
            Some(entry) => {
                // Field order and defaults as prost writes them: 1, 2, then 3-9.
                if self.head.valid {
                    encoding::bool::encode(VALID, &self.head.valid, buf);
                }
                if self.head.reason != 0 {
                    encoding::int32::encode(REASON, &self.head.reason, buf);
                }
                buf.put_slice(entry.snapshot.wire());
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.materialise();
        self.head.merge_field(tag, wire_type, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match &self.verified {
            None => self.head.encoded_len(),
            Some(entry) => {
                let valid = if self.head.valid {
                    encoding::bool::encoded_len(VALID, &self.head.valid)
                } else {
                    0
                };
                let reason = if self.head.reason != 0 {
                    encoding::int32::encoded_len(REASON, &self.head.reason)
                } else {
                    0
                };
                valid + reason + entry.snapshot.wire().len()
            }
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::{BTreeMap, HashMap};

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::{
        domain::TokenValue,
        validation::cache::{
            VerifiedCache,
            tests::{config, token},
        },
    };

    fn entry_for(t: &crate::domain::Token) -> Arc<Entry> {
        let cache = VerifiedCache::new(config());
        cache.apply(t, Some([7; 16]));
        cache.get(&t.id).unwrap()
    }

    /// What the reply must decode to: the generated message, field by field.
    fn expected(t: &crate::domain::Token, valid: bool, reason: pb::Reason) -> pb::ValidateResponse {
        pb::ValidateResponse {
            valid,
            reason: reason as i32,
            token_id: t.id.to_string(),
            account_id: t.account_id.clone(),
            owner_id: t.owner_id.clone(),
            modules: t.modules.clone(),
            api_version: t.api_version.clone(),
            metadata: t.metadata.clone().into_iter().collect::<HashMap<_, _>>(),
            expires_at: t.expires_at.map(|e| prost_types::Timestamp {
                seconds: e.timestamp(),
                nanos: e.timestamp_subsec_nanos() as i32,
            }),
        }
    }

    #[test]
    fn a_verified_reply_decodes_to_the_generated_message() {
        let v = TokenValue::generate("tk").unwrap();
        let mut t = token(v.id(), "h");
        t.modules = vec!["billing".into(), "reports:read".into()];
        t.metadata = BTreeMap::from([
            ("team".into(), "payments é".into()),
            ("empty".into(), String::new()),
            ("long".into(), "x".repeat(300)),
        ]);
        t.expires_at = Some(Utc.timestamp_opt(4_102_444_800, 123_456_000).unwrap());
        let entry = entry_for(&t);
        for (valid, reason) in [
            (true, pb::Reason::Valid),
            (false, pb::Reason::Disabled),
            (false, pb::Reason::MissingModules),
        ] {
            let reply = ValidateReply::new(valid, reason, Some(Arc::clone(&entry)));
            let bytes = reply.encode_to_vec();
            assert_eq!(bytes.len(), reply.encoded_len());
            let decoded = pb::ValidateResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(decoded, expected(&t, valid, reason));
            assert_eq!(reply.to_message(), decoded);
            // And back into the reply type, as a client built on it would.
            let again = ValidateReply::decode(bytes.as_slice()).unwrap();
            assert_eq!(again.to_message(), decoded);
        }
    }

    #[test]
    fn a_token_without_optional_fields_encodes_only_what_it_has() {
        let v = TokenValue::generate("tk").unwrap();
        let mut t = token(v.id(), "h");
        t.modules.clear();
        t.api_version.clear();
        let reply = ValidateReply::new(true, pb::Reason::Valid, Some(entry_for(&t)));
        let decoded = pb::ValidateResponse::decode(reply.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, expected(&t, true, pb::Reason::Valid));
    }

    #[test]
    fn a_rejection_is_the_plain_message() {
        let reply = ValidateReply::new(false, pb::Reason::Unknown, None);
        let bytes = reply.encode_to_vec();
        assert_eq!(bytes.len(), reply.encoded_len());
        let decoded = pb::ValidateResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            decoded,
            pb::ValidateResponse {
                reason: pb::Reason::Unknown as i32,
                ..Default::default()
            }
        );
    }
}
