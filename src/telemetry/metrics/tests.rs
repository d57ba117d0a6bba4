//! Unit tests of the metrics tables, sharded counters and rendering.

#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn method_paths_map_to_their_rows() {
    assert_eq!(method_index("/tokens.v1.TokenService/Issue"), 0);
    assert_eq!(method_index("/tokens.v1.TokenService/Validate"), 1);
    assert_eq!(method_index("/grpc.health.v1.Health/Check"), 13);
    assert_eq!(method_index("/tokens.v1.TokenService/Nope"), OTHER_METHOD);
    assert_eq!(method_index("garbage"), OTHER_METHOD);
    assert_eq!(method_index("/"), OTHER_METHOD);
}

/// Every RPC of `proto/` has its own row: a method added to the service
/// without one would be counted under `other` and vanish from dashboards.
#[test]
fn every_method_of_the_proto_has_a_row() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut seen = 0;
    for file in &set.file {
        for service in &file.service {
            let full = format!("{}.{}", file.package(), service.name());
            for method in &service.method {
                let path = format!("/{full}/{}", method.name());
                assert_ne!(
                    method_index(&path),
                    OTHER_METHOD,
                    "{path} has no metrics row"
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 13, "{seen}");
}

#[test]
fn sharded_counters_sum_over_threads() {
    static T: Sharded<3> = Sharded::new();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    T.add(1);
                }
            });
        }
    });
    assert_eq!(T.sum(1), 4000);
    assert_eq!(T.sum(0), 0);
    T.add(7); // out of range: ignored, no panic
}

#[test]
fn the_check_rpc_has_its_own_row() {
    assert_eq!(
        method_index("/envoy.service.auth.v3.Authorization/Check"),
        METHODS.len() - 1
    );
    for (i, result) in [
        GatewayResult::Missing,
        GatewayResult::Refused,
        GatewayResult::Error,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(gateway_result_index(result), REASONS.len() + i);
    }
}

#[test]
fn every_reason_has_its_own_label() {
    for (i, (reason, _)) in REASONS.iter().enumerate() {
        assert_eq!(reason_index(*reason), i);
    }
}
