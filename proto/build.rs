//! Compiles `proto/**/*.proto` with protox (pure Rust, no system `protoc`) and
//! keeps the encoded descriptor set for gRPC server reflection.

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/portico/auth/v1/auth.proto",
    "proto/portico/content/v1/content.proto",
    "proto/portico/chat/v1/chat.proto",
    "proto/portico/ratelimit/v1/ratelimit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("portico_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Envoy's RLS: the Rust types come from envoy-types, which ships no descriptor set; these
    // vendored files give reflection (grpcurl describe) the same messages. No code is generated.
    println!("cargo:rerun-if-changed=envoy");
    let envoy = protox::compile(["envoy/envoy/service/ratelimit/v3/rls.proto"], ["envoy"])?;
    std::fs::write(
        out_dir.join("envoy_rls_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
