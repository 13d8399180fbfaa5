//! The generic REST ↔ gRPC transcoder. Its route table follows from the descriptor set: every
//! RPC annotated with `google.api.http` (proto/proto/portico/**) is served at its path, its
//! request decoded from JSON, path variables and query parameters into the request message,
//! sent through one generic gRPC call (the message as bytes), and its answer encoded back.
//! Adding an annotated RPC exposes it with no edge code; bindings that need more name a hook
//! (see `routes::Handler::hook`).

pub mod json;
pub mod rules;

use std::{collections::HashMap, sync::Arc};

use bytes::{Buf as _, BufMut as _, Bytes};
use http::{HeaderValue, StatusCode};
use portico_telemetry::RequestContext;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Code, Status,
};

pub use rules::{Binding, BodyRule, RouteOptions};

use crate::{
    backends::{self, Backend, Forwarded},
    response::{self, Response},
    ApiError,
};

/// The metadata key the client's User-Agent travels in (the sessions list shows it).
const USER_AGENT_KEY: &str = "x-client-user-agent";
/// The most of a User-Agent forwarded.
const MAX_USER_AGENT_BYTES: usize = 256;

/// The bindings of a descriptor set and the backends that serve its services.
pub struct Transcoder {
    bindings: Vec<Arc<Binding>>,
    shape: rules::JsonShape,
    backends: HashMap<String, Backend>,
    pool: DescriptorPool,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("bindings", &self.bindings.len())
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// Reads the bindings of `pool`; `backends` serve its services, by full service name.
    pub fn new(
        pool: DescriptorPool,
        backends: impl IntoIterator<Item = Backend>,
    ) -> Result<Self, rules::RuleError> {
        let extensions = rules::Extensions::of(&pool);
        let bindings = rules::bindings(&pool, &extensions)?
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(Self {
            shape: rules::JsonShape::of(&pool, &extensions),
            bindings,
            backends: backends
                .into_iter()
                .map(|backend| (backend.service.to_owned(), backend))
                .collect(),
            pool,
        })
    }

    /// Portico's own descriptor set, served by the four backends.
    pub fn portico(backends: &backends::Backends) -> Self {
        Self::new(rules::portico_pool(), backends.all().into_iter().cloned())
            .expect("the compiled-in annotations are valid (rules tests)")
    }

    /// Every binding, in declaration order.
    pub fn bindings(&self) -> &[Arc<Binding>] {
        &self.bindings
    }

    /// The descriptors (OpenAPI reads the messages and comments).
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Answers `binding` generically: builds the request message, calls the RPC, encodes
    /// the answer.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        binding: &Binding,
        path: &[(String, String)],
        query: Option<&str>,
        headers: &http::HeaderMap,
        body: &[u8],
        context: &RequestContext,
        forwarded: &Forwarded,
        timeout: std::time::Duration,
    ) -> Result<Response, ApiError> {
        let service = binding.method.parent_service();
        let backend = self.backends.get(service.full_name()).ok_or_else(|| {
            tracing::error!(
                service = service.full_name(),
                "no backend serves this service"
            );
            ApiError::new(Code::Unimplemented, "this route has no backend")
        })?;
        let message = json::request(binding, &self.shape, path, query, body)?;
        let mut request = backends::request(
            Bytes::from(message.encode_to_vec()),
            context,
            forwarded,
            timeout,
        );
        forward_user_agent(headers, &mut request);
        let answer = unary(backend, binding, request).await;
        let bytes = crate::finish(backend, binding.method.name(), answer)?;
        let answer = DynamicMessage::decode(binding.method.output(), bytes).map_err(|error| {
            tracing::error!(%error, method = binding.method.full_name(), "an undecodable answer");
            ApiError::new(Code::Internal, "the service's answer could not be read")
        })?;
        let status = StatusCode::from_u16(binding.route.success_status).unwrap_or(StatusCode::OK);
        let mut response = if status == StatusCode::NO_CONTENT {
            let mut response = http::Response::new(response::empty());
            *response.status_mut() = status;
            response
        } else {
            response::json_response(status, &json::response(binding, &self.shape, &answer)?)
        };
        if binding.route.no_store {
            let headers = response.headers_mut();
            headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        }
        Ok(response)
    }
}

/// One unary call with the message as bytes: the codec copies them through.
async fn unary(
    backend: &Backend,
    binding: &Binding,
    request: tonic::Request<Bytes>,
) -> Result<tonic::Response<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(backend.channel.clone());
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("{} is not ready: {error}", backend.name)))?;
    let path = http::uri::PathAndQuery::try_from(binding.grpc_path())
        .map_err(|_| Status::internal("an RPC path that is not a URI path"))?;
    grpc.unary(request, path, BytesCodec).await
}

/// Adds the client's User-Agent (printable ASCII, capped) to a backend request.
pub(crate) fn forward_user_agent<T>(headers: &http::HeaderMap, request: &mut tonic::Request<T>) {
    let Some(agent) = headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let agent: String = agent
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(MAX_USER_AGENT_BYTES)
        .collect();
    if let Ok(value) = agent.parse() {
        request.metadata_mut().insert(USER_AGENT_KEY, value);
    }
}

/// A gRPC codec for messages already encoded (requests) or decoded later (answers).
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
