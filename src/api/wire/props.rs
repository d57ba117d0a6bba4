//! Property tests of the hand-written Validate codec against the generated
//! prost types: the request decoder is fed arbitrary bytes (it reads them
//! straight off the network) and agrees with `pb::ValidateRequest` on all of
//! them; requests the generated client sends decode field for field; and
//! replies decode with prost to the message they stand for. The fuzz target
//! `validate_request` (tests/fuzz) runs the first property for longer.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::*;
use crate::{
    domain::{AccountId, OwnerId, Token, TokenId, TokenState},
    validation::cache::tests::token,
};

/// Cases per property: enough to reach odd corners, few enough that
/// `cargo test` stays quick.
const CASES: u32 = 512;

/// Both decoders on `bytes`, delivered in one buffer or, when `cut` is set,
/// two: they agree on whether it decodes, on every field, and on the bytes
/// the message encodes back to.
fn agree(bytes: &[u8], cut: Option<usize>) -> Result<(), TestCaseError> {
    let generated = pb::ValidateRequest::decode(bytes);
    let ours = match cut {
        Some(at) => {
            let (head, tail) = bytes.split_at(at.min(bytes.len()));
            ValidateCall::decode(head.chain(tail))
        }
        None => ValidateCall::decode(bytes),
    };
    match (ours, generated) {
        (Ok(call), Ok(message)) => {
            prop_assert_eq!(call.required_modules(), message.required_modules.as_slice());
            prop_assert_eq!(call.client_ip(), message.client_ip.as_str());
            match call.token() {
                Ok(value) => prop_assert_eq!(value.expose(), message.token.clone()),
                Err(why) => prop_assert_eq!(TokenValue::parse(&message.token).err(), Some(why)),
            }
            prop_assert_eq!(call.encoded_len(), message.encoded_len());
            prop_assert_eq!(call.encode_to_vec(), message.encode_to_vec());
        }
        (Err(_), Err(_)) => {}
        (ours, generated) => prop_assert!(
            false,
            "hand codec ok: {}, prost ok: {}",
            ours.is_ok(),
            generated.is_ok()
        ),
    }
    Ok(())
}

/// A token text: a real value, a value with one character replaced, or any text.
fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(()).prop_map(|()| TokenValue::generate("tk").unwrap().expose()),
        (any::<prop::sample::Index>(), any::<char>()).prop_map(|(at, c)| {
            let mut chars: Vec<char> = TokenValue::generate("tk")
                .unwrap()
                .expose()
                .chars()
                .collect();
            let i = at.index(chars.len());
            chars[i] = c;
            chars.into_iter().collect()
        }),
        ".{0,80}",
    ]
}

fn reason() -> impl Strategy<Value = pb::Reason> {
    prop::sample::select(vec![
        pb::Reason::Unspecified,
        pb::Reason::Valid,
        pb::Reason::Malformed,
        pb::Reason::Unknown,
        pb::Reason::Disabled,
        pb::Reason::Revoked,
        pb::Reason::Expired,
        pb::Reason::MissingModules,
    ])
}

/// A token with arbitrary values in every field the reply carries.
fn any_token() -> impl Strategy<Value = Token> {
    (
        "[0-9A-Za-z]{16}",
        (".{0,24}", ".{0,24}", ".{0,12}"),
        prop::collection::vec(".{0,24}", 0..5),
        prop::collection::btree_map(".{0,16}", ".{0,40}", 0..5),
        prop::option::of((-2_000_000_000i64..4_102_444_800, 0u32..1_000_000_000)),
    )
        .prop_map(|(id, (account, owner, api), modules, metadata, expires)| {
            let mut t = token(TokenId::parse(&id).unwrap(), "h");
            t.account_id = AccountId::from_stored(account);
            t.owner_id = OwnerId::from_stored(owner);
            t.api_version = api;
            t.modules = modules;
            t.metadata = metadata;
            t.expires_at = expires.map(|(s, n)| DateTime::<Utc>::from_timestamp(s, n).unwrap());
            t.state = TokenState::Active;
            t
        })
}

fn expected(t: &Token, valid: bool, reason: pb::Reason) -> pb::ValidateResponse {
    pb::ValidateResponse {
        valid,
        reason: reason as i32,
        token_id: t.id.to_string(),
        account_id: t.account_id.as_str().to_owned(),
        owner_id: t.owner_id.as_str().to_owned(),
        modules: t.modules.clone(),
        api_version: t.api_version.clone(),
        metadata: t.metadata.clone().into_iter().collect::<HashMap<_, _>>(),
        expires_at: t.expires_at.map(|e| prost_types::Timestamp {
            seconds: e.timestamp(),
            nanos: e.timestamp_subsec_nanos() as i32,
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        // A failure is kept as a unit test, not in a file beside src/.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_the_request_decoder(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        cut in any::<prop::sample::Index>(),
    ) {
        agree(&bytes, None)?;
        agree(&bytes, Some(cut.index(bytes.len() + 1)))?;
    }

    /// Arbitrary bytes say little about well-formed messages, so also mangle
    /// real ones: a request with bytes replaced, dropped or added.
    #[test]
    fn mangled_requests_never_panic_the_request_decoder(
        token in token_text(),
        modules in prop::collection::vec(".{0,12}", 0..3),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = pb::ValidateRequest { token, required_modules: modules, client_ip: "203.0.113.7".into() }.encode_to_vec();
        for (at, byte, how) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 if i < bytes.len() => bytes[i] = byte,
                1 if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.insert(i, byte),
            }
        }
        agree(&bytes, None)?;
    }

    #[test]
    fn a_request_from_the_generated_client_decodes_field_for_field(
        token in token_text(),
        modules in prop::collection::vec(".{0,24}", 0..5),
        client_ip in prop_oneof![Just(String::new()), Just("2001:db8::7".to_owned()), ".{0,50}"],
        cut in any::<prop::sample::Index>(),
    ) {
        let sent = pb::ValidateRequest { token: token.clone(), required_modules: modules.clone(), client_ip: client_ip.clone() };
        let bytes = sent.encode_to_vec();
        let call = ValidateCall::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(call.required_modules(), modules.as_slice());
        prop_assert_eq!(call.client_ip(), client_ip.as_str());
        match (call.token(), TokenValue::parse(&token)) {
            (Ok(value), Ok(parsed)) => {
                prop_assert_eq!(value.expose(), token);
                prop_assert_eq!(value.id(), parsed.id());
            }
            (Err(why), Err(expected)) => prop_assert_eq!(why, expected),
            (ours, parsed) => prop_assert!(false, "decoded {:?}, parse says {:?}", ours.err(), parsed.err()),
        }
        prop_assert_eq!(call.encode_to_vec(), bytes.clone());
        agree(&bytes, Some(cut.index(bytes.len() + 1)))?;
    }

    #[test]
    fn a_reply_decodes_with_prost_to_the_message_it_stands_for(
        t in any_token(),
        valid in any::<bool>(),
        reason in reason(),
        verified in any::<bool>(),
    ) {
        let cache = crate::validation::cache::tests::cache();
        cache.apply(&t.view(), Some([7; 32]));
        let entry = verified.then(|| cache.get(&t.id).unwrap());
        let reply = ValidateReply::new(valid, reason, entry);
        let bytes = reply.encode_to_vec();
        prop_assert_eq!(bytes.len(), reply.encoded_len());
        let decoded = pb::ValidateResponse::decode(bytes.as_slice()).unwrap();
        let want = if verified {
            expected(&t, valid, reason)
        } else {
            pb::ValidateResponse { valid, reason: reason as i32, ..Default::default() }
        };
        prop_assert_eq!(&decoded, &want);
        // Byte for byte what prost writes for it (maps aside: prost writes a
        // HashMap in no fixed order, the cache in key order).
        if want.metadata.len() <= 1 {
            prop_assert_eq!(bytes, want.encode_to_vec());
        }
        prop_assert_eq!(reply.to_message(), want);
    }
}

/// Found by `a_reply_decodes_with_prost_to_the_message_it_stands_for`: the
/// cached fields wrote empty `account_id`/`owner_id` (and empty map keys and
/// values) where prost writes nothing. Both decode the same; the bytes now
/// are the same too.
#[test]
fn empty_strings_are_left_out_as_prost_leaves_them_out() {
    let v = TokenValue::generate("tk").unwrap();
    let mut t = token(v.id(), "h");
    t.account_id = AccountId::from_stored(String::new());
    t.owner_id = OwnerId::from_stored(String::new());
    t.api_version.clear();
    t.modules = vec![String::new()];
    t.metadata = std::collections::BTreeMap::from([(String::new(), String::new())]);
    let cache = crate::validation::cache::tests::cache();
    cache.apply(&t.view(), Some([7; 32]));
    let reply = ValidateReply::new(false, pb::Reason::Unspecified, cache.get(&t.id));
    let want = expected(&t, false, pb::Reason::Unspecified);
    assert_eq!(reply.encode_to_vec(), want.encode_to_vec());
    assert_eq!(reply.encoded_len(), want.encoded_len());
}
