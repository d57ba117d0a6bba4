//! Compiles `proto/` into Rust with tonic-prost-build, using the protoc binary
//! vendored by `protoc-bin-vendored` (no system protoc needed), and writes the
//! file descriptor set that the server hands to gRPC reflection.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;

    tonic_prost_build::configure()
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
        .compile_with_config(
            config,
            &[PathBuf::from("proto/tokens/v1/token_service.proto")],
            &[PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
