//! Portico's gRPC contracts: the generated code of `proto/portico/**` plus Envoy's
//! rate limit API (`envoy.service.ratelimit.v3`) from the maintained `envoy-types` crate.

#![allow(missing_docs, clippy::all)]

/// `portico.auth.v1`: accounts and tokens.
pub mod auth {
    tonic::include_proto!("portico.auth.v1");
}

/// `portico.content.v1`: published content.
pub mod content {
    tonic::include_proto!("portico.content.v1");
}

/// `portico.chat.v1`: the LLM chat gateway.
pub mod chat {
    tonic::include_proto!("portico.chat.v1");
}

/// `portico.ratelimit.v1`: token-bucket rate limiting.
pub mod ratelimit {
    tonic::include_proto!("portico.ratelimit.v1");
}

/// `portico.testing.v1`: a service only tests serve (see `TESTING_FILE_DESCRIPTOR_SET`).
pub mod testing {
    tonic::include_proto!("portico.testing.v1");
}

/// Envoy's rate limit service v3, wire-compatible with Envoy proxies.
pub mod envoy_rls {
    pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3 as common;
    pub use envoy_types::pb::envoy::service::ratelimit::v3::*;
    pub use envoy_types::pb::google::protobuf as wkt;
}

/// Encoded `FileDescriptorSet` of every Portico proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portico_descriptor.bin"));

/// Encoded `FileDescriptorSet` of the test-only `portico.testing.v1` service (and what it
/// imports): the edge's tests serve it to show that an annotated RPC is exposed over REST.
pub const TESTING_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/testing_descriptor.bin"));

/// The encoded descriptors of Envoy's `envoy.service.ratelimit.v3.RateLimitService` and what it
/// imports (vendored under `proto/envoy`), for server reflection.
pub const ENVOY_RLS_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy_rls_descriptor.bin"));

/// Full gRPC service names, as used by health checks and reflection.
pub mod names {
    pub const AUTH: &str = "portico.auth.v1.AuthService";
    pub const CONTENT: &str = "portico.content.v1.ContentService";
    pub const CHAT: &str = "portico.chat.v1.ChatService";
    pub const RATELIMIT: &str = "portico.ratelimit.v1.RateLimitService";
    pub const ENVOY_RLS: &str = "envoy.service.ratelimit.v3.RateLimitService";
    /// Health name of the ratelimit service's Redis: NOT_SERVING while the fail mode applies.
    pub const RATELIMIT_REDIS: &str = "portico.ratelimit.v1.RateLimitService/redis";
}

/// Limits of the request contract: the services check them and the edge's OpenAPI document
/// states them (the hooks' body schemas), from this one place.
pub mod limits {
    /// The chat gateway's requests (`ChatService` and the OpenAI routes).
    pub mod chat {
        /// Most messages in one conversation.
        pub const MAX_MESSAGES: u32 = 256;
        /// Most stop sequences (OpenAI's limit).
        pub const MAX_STOP: u32 = 4;
        /// Most choices (`n`) one call may ask for: each is paid for.
        pub const MAX_CHOICES: u32 = 8;
        /// Most tools one call may offer.
        pub const MAX_TOOLS: u32 = 128;
        /// Most embedding inputs in one call (OpenAI's limit).
        pub const MAX_INPUTS: u32 = 2048;
        /// Longest model name, in characters.
        pub const MAX_MODEL_CHARS: u32 = 256;
    }

    /// Content items (`ContentService`).
    pub mod content {
        /// Longest slug (`[a-z0-9-]`).
        pub const MAX_SLUG: u32 = 100;
        /// Longest title, in characters, after trimming.
        pub const MAX_TITLE: u32 = 200;
        /// Largest body, in bytes of UTF-8.
        pub const MAX_BODY_BYTES: u32 = 256 * 1024;
        /// Most tags on one item.
        pub const MAX_TAGS: u32 = 16;
        /// Longest tag (`[a-z0-9-]`).
        pub const MAX_TAG: u32 = 32;
    }
}

/// Metadata key the services set on an error status to refine its HTTP mapping at the edge.
pub const ERROR_REASON_KEY: &str = "x-portico-error";
/// Reason: every LLM provider failed or its circuit is open (502).
pub const REASON_LLM_UNAVAILABLE: &str = "llm-unavailable";
/// Reason: the LLM call timed out (504).
pub const REASON_LLM_TIMEOUT: &str = "llm-timeout";
/// Reason: the service is saturated (RESOURCE_EXHAUSTED that is not the caller's quota): 503
/// with `Retry-After`.
pub const REASON_OVERLOADED: &str = "overloaded";
/// Reason: the request named a model alias the chat gateway does not serve (NOT_FOUND; OpenAI's
/// `model_not_found`).
pub const REASON_MODEL_NOT_FOUND: &str = "model-not-found";
/// Reason: the caller's API key has spent its token budget for the window (RESOURCE_EXHAUSTED;
/// OpenAI's `insufficient_quota`).
pub const REASON_TOKEN_BUDGET: &str = "token-budget";
