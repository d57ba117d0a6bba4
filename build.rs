//! Compiles `proto/` into Rust with tonic-prost-build, using the protoc binary
//! vendored by `protoc-bin-vendored` (no system protoc needed), and writes the
//! file descriptor set that the server hands to gRPC reflection.
//!
//! Two passes: the messages and the client, then the server alone (into
//! `$OUT_DIR/server`), whose Validate request and reply are the hand-written
//! `api::wire::ValidateCall` and `ValidateReply` (the same wire messages, the
//! token parsed in place and the reply encoded straight from the validation
//! cache) while every other type comes from the first pass.
//!
//! Then Envoy's ext_authz API (`proto/third_party`, the files the
//! `envoy-types` crate was generated from): its server alone (into
//! `$OUT_DIR/ext_authz`), whose `Check` request and reply are the
//! hand-written `api::ext_authz::wire::CheckCall` and `CheckReply` while every
//! message type is the crate's; and a descriptor set for reflection, which
//! that crate does not export.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;

    let protos = [PathBuf::from("proto/tokens/v1/token_service.proto")];
    let includes = [PathBuf::from("proto"), well_known.clone()];
    tonic_prost_build::configure()
        .build_server(false)
        .file_descriptor_set_path(out_dir.join("tokens_v1_descriptor.bin"))
        // Messages that carry token values or secrets get a hand-written,
        // redacting `Debug` (src/pb.rs) so no `{:?}` can ever print a secret.
        .skip_debug([
            "tokens.v1.IssueResponse",
            "tokens.v1.RotateResponse",
            "tokens.v1.DuplicateResponse",
            "tokens.v1.ValidateRequest",
            "tokens.v1.RevokeRequest",
            "tokens.v1.RevokeRequest.target",
            "tokens.v1.SearchRequest",
        ])
        .compile_with_config(config, &protos, &includes)?;

    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server_dir)
        .extern_path(".tokens.v1", "crate::pb")
        .extern_path(
            ".tokens.v1.ValidateRequest",
            "crate::api::wire::ValidateCall",
        )
        .extern_path(
            ".tokens.v1.ValidateResponse",
            "crate::api::wire::ValidateReply",
        )
        .compile_with_config(config, &protos, &includes)?;

    // Envoy's ext_authz server, with every message from envoy-types except
    // Check's own request and reply.
    let ext_authz_dir = out_dir.join("ext_authz");
    std::fs::create_dir_all(&ext_authz_dir)?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let mut server = tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&ext_authz_dir);
    for package in ["envoy", "udpa", "validate", "xds"] {
        server = server.extern_path(
            format!(".{package}"),
            format!("::envoy_types::pb::{package}"),
        );
    }
    server
        .extern_path(".google.rpc", "::envoy_types::pb::google::rpc")
        .extern_path(
            ".envoy.service.auth.v3.CheckRequest",
            "crate::api::ext_authz::wire::CheckCall",
        )
        .extern_path(
            ".envoy.service.auth.v3.CheckResponse",
            "crate::api::ext_authz::wire::CheckReply",
        )
        .compile_with_config(
            config,
            &[PathBuf::from(
                "proto/third_party/envoy/service/auth/v3/external_auth.proto",
            )],
            &[PathBuf::from("proto/third_party"), well_known.clone()],
        )?;

    // Envoy's ext_authz service, for reflection.
    let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            out_dir.join("envoy_ext_authz_descriptor.bin").display()
        ))
        .arg("-Iproto/third_party")
        .arg(format!("-I{}", well_known.display()))
        .arg("envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc (ext_authz descriptor set) failed: {status}").into());
    }
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
