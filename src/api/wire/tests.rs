//! Unit tests of the Validate wire codec: replies and calls against the generated prost types, and field numbers against the descriptor set.

#![allow(clippy::unwrap_used)]
use std::collections::{BTreeMap, HashMap};

use chrono::{TimeZone, Utc};

use super::*;
use crate::{domain::TokenValue, validation::cache::tests::token};

fn entry_for(t: &crate::domain::Token) -> Arc<Entry> {
    let cache = crate::validation::cache::tests::cache();
    cache.apply(&t.view(), Some([7; 32]));
    cache.get(&t.id).unwrap()
}

/// What the reply must decode to: the generated message, field by field.
fn expected(t: &crate::domain::Token, valid: bool, reason: pb::Reason) -> pb::ValidateResponse {
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

fn request(token: &str, modules: &[&str]) -> pb::ValidateRequest {
    pb::ValidateRequest {
        client_ip: String::new(),
        token: token.into(),
        required_modules: modules.iter().map(|m| (*m).to_owned()).collect(),
    }
}

#[test]
fn a_call_decodes_what_the_generated_client_sends() {
    let v = TokenValue::generate("tk").unwrap();
    let sent = request(&v.expose(), &["billing:read", "reports"]);
    let bytes = sent.encode_to_vec();
    let call = ValidateCall::decode(bytes.as_slice()).unwrap();
    assert_eq!(call.token().unwrap().id(), v.id());
    assert_eq!(call.required_modules(), ["billing:read", "reports"]);
    // And encodes the same bytes back.
    assert_eq!(call.encoded_len(), bytes.len());
    assert_eq!(call.encode_to_vec(), bytes);
}

#[test]
fn a_malformed_token_is_kept_as_sent() {
    for text in ["", "not-a-token", "tk_short", "é"] {
        let bytes = request(text, &[]).encode_to_vec();
        let call = ValidateCall::decode(bytes.as_slice()).unwrap();
        assert!(call.token().is_err(), "{text:?} parsed");
        assert_eq!(call.encode_to_vec(), bytes);
        assert_eq!(call.encoded_len(), bytes.len());
    }
    assert!(ValidateCall::default().token().is_err());
}

#[test]
fn a_token_that_is_not_utf8_is_a_decode_error() {
    let bytes = [0x0a, 0x02, 0xff, 0xfe];
    assert!(ValidateCall::decode(&bytes[..]).is_err());
}

#[test]
fn unknown_fields_are_skipped_and_the_last_token_wins() {
    let first = TokenValue::generate("tk").unwrap();
    let last = TokenValue::generate("tk").unwrap();
    let mut bytes = request(&first.expose(), &["a"]).encode_to_vec();
    // Field 15, varint 300: a field from a newer client.
    bytes.extend_from_slice(&[0x78, 0xac, 0x02]);
    bytes.extend_from_slice(&request(&last.expose(), &["b"]).encode_to_vec());
    let call = ValidateCall::decode(bytes.as_slice()).unwrap();
    assert_eq!(call.token().unwrap().id(), last.id());
    assert_eq!(call.required_modules(), ["a", "b"]);
}

#[test]
fn a_token_split_across_buffers_still_parses() {
    let v = TokenValue::generate("tk").unwrap();
    let bytes = request(&v.expose(), &["m"]).encode_to_vec();
    for cut in 1..bytes.len() {
        let (head, tail) = bytes.split_at(cut);
        let call = ValidateCall::decode(head.chain(tail)).unwrap();
        assert_eq!(call.token().unwrap().id(), v.id(), "cut at {cut}");
        assert_eq!(call.required_modules(), ["m"]);
    }
}

#[test]
fn a_call_never_shows_its_token() {
    let v = TokenValue::generate("tk").unwrap();
    let call = ValidateCall::new(&v.expose(), vec!["m".into()]);
    let shown = format!("{call:?}");
    assert!(!shown.contains(&v.expose()), "{shown}");
    assert!(shown.contains("redacted"));
}

/// The proto's field numbers, by name, from the compiled descriptors.
fn proto_fields(message: &str) -> HashMap<String, u32> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let m = set
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == message)
        .unwrap();
    m.field
        .iter()
        .map(|f| (f.name().to_owned(), f.number() as u32))
        .collect()
}

#[test]
fn field_numbers_match_the_proto() {
    use field::{request as q, response as r};
    let request = proto_fields("ValidateRequest");
    assert_eq!(request["token"], q::TOKEN);
    assert_eq!(request["required_modules"], q::REQUIRED_MODULES);
    assert_eq!(request["client_ip"], q::CLIENT_IP);
    assert_eq!(
        request.len(),
        3,
        "a ValidateRequest field the codec does not know"
    );
    let response = proto_fields("ValidateResponse");
    for (name, number) in [
        ("valid", r::VALID),
        ("reason", r::REASON),
        ("token_id", r::TOKEN_ID),
        ("account_id", r::ACCOUNT_ID),
        ("owner_id", r::OWNER_ID),
        ("modules", r::MODULES),
        ("api_version", r::API_VERSION),
        ("metadata", r::METADATA),
        ("expires_at", r::EXPIRES_AT),
    ] {
        assert_eq!(response[name], number, "ValidateResponse.{name}");
    }
    assert_eq!(
        response.len(),
        9,
        "a new ValidateResponse field: encode it in encode_verified (see the module doc)"
    );
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
