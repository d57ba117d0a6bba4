//! Unit tests of the ext_authz wire codec against the generated envoy types.

#![allow(clippy::unwrap_used)]
use std::collections::HashMap;

use envoy_types::pb::{
    envoy::{
        config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption, header_value_option},
        service::auth::v3::{
            AttributeContext, DeniedHttpResponse, OkHttpResponse, attribute_context,
            check_response::HttpResponse,
        },
        r#type::v3::HttpStatus,
    },
    google::{
        protobuf::{ListValue, Struct, Value, value::Kind},
        rpc,
    },
};

use super::*;

fn request(headers: &[(&str, &str)], raw: &[(&str, &str)], ext: &[(&str, &str)]) -> CheckRequest {
    let map = |p: &[(&str, &str)]| -> HashMap<String, String> {
        p.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "1".into(),
                    method: "GET".into(),
                    headers: map(headers),
                    header_map: (!raw.is_empty()).then(|| HeaderMap {
                        headers: raw
                            .iter()
                            .map(|(k, v)| HeaderValue {
                                key: (*k).into(),
                                raw_value: v.as_bytes().to_vec(),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                    path: "/x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: map(ext),
            ..Default::default()
        }),
    }
}

#[test]
fn a_call_reads_headers_and_extensions_in_place() {
    let r = request(
        &[("authorization", "Bearer a"), ("x-api-key", "k")],
        &[],
        &[
            ("required_modules", "billing:read"),
            ("token_header", "x-api-key"),
        ],
    );
    let bytes = r.encode_to_vec();
    let call = CheckCall::decode(bytes.as_slice()).unwrap();
    assert_eq!(call.header("authorization"), Some(&b"Bearer a"[..]));
    assert_eq!(call.header("Authorization"), Some(&b"Bearer a"[..]));
    assert_eq!(call.header("x-api-key"), Some(&b"k"[..]));
    assert_eq!(call.header("cookie"), None);
    assert_eq!(
        call.context_extension("required_modules"),
        Some("billing:read")
    );
    assert_eq!(call.context_extension("token_header"), Some("x-api-key"));
    assert_eq!(call.context_extension("nope"), None);
    // Encodes what it decoded, and back to the same message.
    assert_eq!(call.encode_to_vec(), bytes);
    assert_eq!(call.encoded_len(), bytes.len());
    assert_eq!(call.to_message(), r);
    assert!(!format!("{call:?}").contains("Bearer"));
    // Raw header encoding.
    let raw = CheckCall::of(&request(&[], &[("X-Api-Key", "raw")], &[]));
    assert_eq!(raw.header("x-api-key"), Some(&b"raw"[..]));
    // Nothing at all.
    let empty = CheckCall::decode(&b""[..]).unwrap();
    assert_eq!(empty.header("authorization"), None);
    assert_eq!(empty.context_extension("required_modules"), None);
}

#[test]
fn a_call_split_across_buffers_or_sent_twice_still_reads() {
    let bytes = request(&[("authorization", "Bearer a")], &[], &[]).encode_to_vec();
    for cut in 1..bytes.len() {
        let (head, tail) = bytes.split_at(cut);
        let call = CheckCall::decode(head.chain(tail)).unwrap();
        assert_eq!(
            call.header("authorization"),
            Some(&b"Bearer a"[..]),
            "cut {cut}"
        );
    }
    // Two occurrences of `attributes` merge; the later header wins.
    let mut twice = bytes.clone();
    twice.extend(request(&[("authorization", "Bearer b")], &[], &[]).encode_to_vec());
    let call = CheckCall::decode(twice.as_slice()).unwrap();
    assert_eq!(call.header("authorization"), Some(&b"Bearer b"[..]));
    // Truncated input is an error, not a panic.
    assert!(CheckCall::decode(&bytes[..bytes.len() - 1]).is_err());
}

fn option(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

#[test]
fn an_allowed_reply_decodes_to_the_envoy_types_message() {
    let headers = [
        ("x-tokend-token-id", "abc".into()),
        ("x-tokend-modules", "a,b".into()),
    ];
    let reply = CheckReply::allowed(
        Allowed {
            headers: &headers,
            remove: "authorization",
            token_id: "abc",
            account_id: "acme",
            owner_id: "o",
            api_version: "",
        },
        ["a", "b"].into_iter(),
    );
    let expected = CheckResponse {
        status: Some(rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                option("x-tokend-token-id", "abc"),
                option("x-tokend-modules", "a,b"),
            ],
            headers_to_remove: vec!["authorization".into()],
            ..Default::default()
        })),
        dynamic_metadata: Some(Struct {
            fields: HashMap::from([
                ("token_id".into(), string("abc")),
                ("account_id".into(), string("acme")),
                ("owner_id".into(), string("o")),
                (
                    "modules".into(),
                    Value {
                        kind: Some(Kind::ListValue(ListValue {
                            values: vec![string("a"), string("b")],
                        })),
                    },
                ),
                ("api_version".into(), string("")),
            ]),
        }),
    };
    assert_eq!(reply.to_message(), expected);
    let bytes = reply.encode_to_vec();
    assert_eq!(bytes.len(), reply.encoded_len());
    // Decoded by the reply type itself, as a client built on it would.
    assert_eq!(
        CheckReply::decode(bytes.as_slice()).unwrap().to_message(),
        expected
    );
}

#[test]
fn a_denied_reply_decodes_to_the_envoy_types_message() {
    let reply = CheckReply::denied(
        16,
        "revoked",
        401,
        &[("www-authenticate", "Bearer realm=\"tokend\"")],
        "tokend: revoked\n",
    );
    let expected = CheckResponse {
        status: Some(rpc::Status {
            code: 16,
            message: "revoked".into(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: 401 }),
            headers: vec![option("www-authenticate", "Bearer realm=\"tokend\"")],
            body: "tokend: revoked\n".into(),
        })),
        dynamic_metadata: None,
    };
    assert_eq!(reply.to_message(), expected);
}
