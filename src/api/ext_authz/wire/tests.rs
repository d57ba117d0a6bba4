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
    let route = call.route();
    assert_eq!(route.required_modules, Some("billing:read"));
    assert_eq!(route.token_header, Some("x-api-key"));
    assert_eq!(route.source_ip(), None);
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
    assert_eq!(empty.route(), Route::default());
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

#[test]
fn raw_headers_win_and_the_last_occurrence_wins() {
    // Both forms in one request: `header_map` (Envoy's raw encoding) wins,
    // whichever comes first on the wire.
    let both = CheckCall::of(&request(
        &[("authorization", "Bearer plain")],
        &[("Authorization", "Bearer raw")],
        &[],
    ));
    assert_eq!(both.header("authorization"), Some(&b"Bearer raw"[..]));
    // A HeaderValue with `value` only (no raw_value).
    let mut r = request(&[], &[], &[]);
    let http = r
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|q| q.http.as_mut())
        .unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "x-api-key".into(),
            value: "v".into(),
            ..Default::default()
        }],
    });
    assert_eq!(CheckCall::of(&r).header("X-API-KEY"), Some(&b"v"[..]));
    // Two occurrences of `attributes`: the later extension wins, as it
    // would in the merged message.
    let mut twice = request(&[], &[], &[("token_header", "a")]).encode_to_vec();
    twice.extend(request(&[], &[], &[("token_header", "b")]).encode_to_vec());
    let call = CheckCall::decode(twice.as_slice()).unwrap();
    assert_eq!(call.route().token_header, Some("b"));
    assert_eq!(
        call.to_message().attributes.unwrap().context_extensions["token_header"],
        "b"
    );
}

#[test]
fn malformed_attributes_read_as_absent_without_panicking() {
    let good = request(
        &[("authorization", "Bearer a")],
        &[],
        &[("required_modules", "m")],
    )
    .encode_to_vec();
    // `attributes` (field 1) whose content is cut or garbage: prost accepts
    // the bytes (they are taken as received); the walk stops where they stop
    // making sense.
    let inner = &good[2..];
    for cut in 0..inner.len() {
        let mut bytes = vec![0x0a];
        bytes.push(u8::try_from(cut).unwrap_or(0x7f).min(0x7f));
        bytes.extend_from_slice(&inner[..cut.min(0x7f)]);
        if let Ok(call) = CheckCall::decode(bytes.as_slice()) {
            let _ = call.header("authorization");
            let _ = call.route();
        }
    }
    for garbage in [
        &[0x0a, 0x03, 0xff, 0xff, 0xff][..],
        &[0x0a, 0x02, 0x0b, 0x00],
        &[0x0a, 0x01, 0x00],
    ] {
        let call = CheckCall::decode(garbage).unwrap();
        assert_eq!(call.header("authorization"), None);
        assert_eq!(call.route(), Route::default());
    }
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
    let reply = CheckReply::allowed(Allowed {
        token_id: "abc",
        account_id: "acme",
        owner_id: "o",
        modules: ["a", "b"].into_iter(),
        api_version: "",
        remove: "authorization",
    });
    let expected = CheckResponse {
        status: Some(rpc::Status::default()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: vec![
                option("x-tokend-token-id", "abc"),
                option("x-tokend-account-id", "acme"),
                option("x-tokend-owner-id", "o"),
                option("x-tokend-modules", "a,b"),
                option("x-tokend-api-version", ""),
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

/// Nested messages longer than 127 bytes (a two- or three-byte length) are
/// encoded in place as prost would: long ids and many modules.
#[test]
fn an_allowed_reply_with_long_fields_decodes_to_the_envoy_types_message() {
    let account = "a".repeat(200);
    let owner = "o".repeat(20_000);
    let modules: Vec<String> = (0..64).map(|i| format!("module-{i:02}:read")).collect();
    let joined = modules.join(",");
    let reply = CheckReply::allowed(Allowed {
        token_id: "abc",
        account_id: &account,
        owner_id: &owner,
        modules: modules.iter().map(String::as_str),
        api_version: "2024-06-01",
        remove: "authorization",
    });
    let message = reply.to_message();
    let ok = match &message.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok.clone(),
        other => unreachable!("not an OK response: {other:?}"),
    };
    assert_eq!(
        ok.headers,
        vec![
            option("x-tokend-token-id", "abc"),
            option("x-tokend-account-id", &account),
            option("x-tokend-owner-id", &owner),
            option("x-tokend-modules", &joined),
            option("x-tokend-api-version", "2024-06-01"),
        ]
    );
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);
    let fields = &message.dynamic_metadata.as_ref().unwrap().fields;
    assert_eq!(fields["account_id"], string(&account));
    assert_eq!(fields["owner_id"], string(&owner));
    assert_eq!(
        fields["modules"],
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: modules.iter().map(|m| string(m)).collect(),
            })),
        }
    );
    // As long as prost's encoding of the same message (the metadata is a
    // map, which prost writes in no fixed order, so lengths, not bytes).
    let bytes = reply.encode_to_vec();
    assert_eq!(bytes.len(), message.encode_to_vec().len());
    assert_eq!(bytes.len(), reply.encoded_len());
    assert_eq!(
        CheckReply::decode(bytes.as_slice()).unwrap().to_message(),
        message
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

#[test]
fn the_source_address_is_read_in_place() {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    let with_source = |ip: &str| {
        let mut r = request(&[], &[], &[]);
        if let Some(a) = r.attributes.as_mut() {
            a.source = Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.into(),
                        port_specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                                41234,
                            ),
                        ),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            });
            // The destination is a Peer too: it must not be taken for the source.
            a.destination = Some(attribute_context::Peer {
                principal: "upstream".into(),
                ..Default::default()
            });
        }
        CheckCall::of(&r)
    };
    assert_eq!(
        with_source("203.0.113.9").route().source_ip(),
        Some("203.0.113.9".parse().unwrap())
    );
    assert_eq!(
        with_source("2001:db8::5").route().source_ip(),
        Some("2001:db8::5".parse().unwrap())
    );
    assert_eq!(with_source("not-an-ip").route().source_ip(), None);
    assert_eq!(
        CheckCall::of(&request(&[], &[], &[])).route().source_ip(),
        None
    );
}

#[test]
fn an_allowed_reply_without_modules_decodes() {
    let reply = CheckReply::allowed(Allowed {
        token_id: "t",
        account_id: "a",
        owner_id: "o",
        modules: std::iter::empty(),
        api_version: "v1",
        remove: "x-api-key",
    });
    let message = reply.to_message();
    let Some(HttpResponse::OkResponse(ok)) = &message.http_response else {
        unreachable!("not an OK response: {message:?}");
    };
    assert_eq!(ok.headers[3], option("x-tokend-modules", ""));
    assert_eq!(ok.headers_to_remove, vec!["x-api-key".to_owned()]);
    assert_eq!(
        message.dynamic_metadata.unwrap().fields["modules"],
        Value {
            kind: Some(Kind::ListValue(ListValue { values: Vec::new() })),
        }
    );
    assert_eq!(reply.encode_to_vec().len(), reply.encoded_len());
}

/// The constant key bytes are the keys they stand for, framed as protobuf
/// writes a length-delimited field 1.
#[test]
fn the_keyed_constants_frame_their_names() {
    use crate::api::gateway::IDENTITY_HEADERS;
    let framed =
        |name: &str| [&[0x0a, u8::try_from(name.len()).unwrap()], name.as_bytes()].concat();
    for (keyed, name) in KEYED_HEADERS.iter().zip(IDENTITY_HEADERS) {
        assert_eq!(*keyed, framed(name).as_slice(), "{name}");
    }
    let names = [
        "token_id",
        "account_id",
        "owner_id",
        "modules",
        "api_version",
    ];
    for (keyed, name) in KEYED_ENTRIES.iter().zip(names) {
        assert_eq!(*keyed, framed(name).as_slice(), "{name}");
    }
    assert_eq!(APPEND_OVERWRITE, [0x18, 2]);
}
