//! Compiles `proto/**/*.proto` with protox (pure Rust, no system `protoc`) and
//! keeps the encoded descriptor set for gRPC server reflection.

use std::{env, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/google/api/http.proto",
    "proto/google/api/annotations.proto",
    "proto/portico/api/v1/http.proto",
    "proto/portico/auth/v1/auth.proto",
    "proto/portico/content/v1/content.proto",
    "proto/portico/chat/v1/chat.proto",
    "proto/portico/ratelimit/v1/ratelimit.proto",
];

/// Compiled into a descriptor set of their own (see `portico_proto::testing`).
const TEST_PROTOS: &[&str] = &["proto/portico/testing/v1/greeter.proto"];

/// The files of `set` under `prefix` (their imports were compiled with the main set already).
fn only(mut set: prost_types::FileDescriptorSet, prefix: &str) -> prost_types::FileDescriptorSet {
    set.file
        .retain(|file| file.name.as_deref().is_some_and(|n| n.starts_with(prefix)));
    set
}

/// The descriptors of `files` (imports and comments included), decoded and as encoded bytes.
fn compile(
    files: &[&str],
) -> Result<(prost_types::FileDescriptorSet, Vec<u8>), Box<dyn std::error::Error>> {
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(files)?;
    Ok((
        compiler.file_descriptor_set(),
        compiler.encode_file_descriptor_set(),
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS.iter().chain(TEST_PROTOS) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Encoded by the compiler itself: prost's `FileDescriptorSet` would drop the custom
    // options (`google.api.http`, `portico.api.v1.route`) that the edge reads.
    let (descriptors, encoded) = compile(PROTOS)?;
    std::fs::write(out_dir.join("portico_descriptor.bin"), encoded)?;
    // Envoy's RLS: the Rust types come from envoy-types, which ships no descriptor set; these
    // vendored files give reflection (grpcurl describe) the same messages. No code is generated.
    println!("cargo:rerun-if-changed=envoy");
    let envoy = protox::compile(["envoy/envoy/service/ratelimit/v3/rls.proto"], ["envoy"])?;
    std::fs::write(
        out_dir.join("envoy_rls_descriptor.bin"),
        envoy.encode_to_vec(),
    )?;
    // A test-only service: the edge's tests serve it to show that an annotated RPC is exposed
    // over REST and in the OpenAPI with no edge code. Its own descriptor set, so that the
    // suite's never lists it.
    let (testing, encoded) = compile(TEST_PROTOS)?;
    std::fs::write(out_dir.join("testing_descriptor.bin"), encoded)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(only(testing, "portico/testing/"))?;
    Ok(())
}
