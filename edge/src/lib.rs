//! Portico's REST edge (hyper 1): routing, REST ↔ gRPC, CORS, correlation IDs, the metrics
//! guard, health aggregation, maintenance mode, body limits and graceful shutdown. It talks to
//! the services over gRPC only and imports none of their crates.

// The middleware stack is one nested type (`Stack`): its future's layout is deeper than 128.
#![recursion_limit = "256"]

use std::{
    net::IpAddr,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use layers::Stepped;
use portico_config::{EdgeSettings, ExposeSecret as _, Settings, BODY_LIMIT_BYTES};
use portico_telemetry::{metrics, RequestContext};
use tonic::Code;

mod api_key_routes;
mod auth_routes;
pub mod backends;
mod chat_routes;
pub mod client_ip;
pub mod console;
mod content_revision;
mod content_routes;
pub mod cors;
pub mod error;
pub mod health;
pub mod layers;
mod limits;
pub mod openapi;
pub mod response;
pub mod routes;
mod server;
pub mod transcoder;

pub use error::{http_status, ApiError};
pub use response::{Body, Response};
pub use server::{serve, EdgeHandle};

/// Longest a Redis command of the edge may take (readiness, denylist).
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// How long the edge keeps a public item (each use is also checked against the content
/// revision it follows: see `content_revision`).
const CONTENT_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most public items the edge keeps.
const CONTENT_CACHE_CAPACITY: usize = 10_000;
/// The request headers the edge forwards into gRPC metadata, as they are (`Authorization`,
/// `X-Admin-Key`) or through the trace propagator (`traceparent`, `tracestate`): each is capped
/// at `EDGE_MAX_FORWARDED_HEADER_BYTES`, so one caller's oversized header is that caller's 401
/// or 431, never an HTTP/2 error on a connection other callers share.
const FORWARDED_HEADERS: [&str; 5] = [
    "authorization",
    "x-admin-key",
    portico_tokens::API_KEY_HEADER,
    "traceparent",
    "tracestate",
];
/// Added to `LLM_TIMEOUT` for the edge's deadline on a chat call, so the gateway's own timeout (a
/// clear 504) fires first.
const CHAT_DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// Errors while starting the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A backend URL is invalid.
    #[error("backend URL: {0}")]
    Backend(#[from] tonic::transport::Error),
    /// The Redis URL could not be used.
    #[error("REDIS_URL: {0}")]
    Redis(#[from] portico_redis::fred::error::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// A `*_GRPC_URL` cannot be dialled as configured.
    #[error("backend: {0}")]
    Channel(#[from] portico_grpc::client::ChannelError),
    /// TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] portico_tls::TlsError),
    /// The configuration is refused (the message names the variable).
    #[error("{0}")]
    Config(String),
}

/// The edge's middleware stack over its dispatch (see `layers`), outermost first.
pub type Stack = layers::trace::Traced<
    Stepped<
        layers::metrics::Metrics,
        Stepped<
            layers::headers::ResponseHeaders,
            Stepped<
                layers::cors::CorsLayer,
                Stepped<
                    layers::dialect::ErrorDialect,
                    Stepped<
                        layers::request_limits::RequestLimits,
                        Stepped<
                            layers::routing::Routing,
                            Stepped<
                                layers::maintenance::Maintenance,
                                Stepped<
                                    layers::rate_limit::RateLimit,
                                    Stepped<layers::timeout::Timeout, Dispatch>,
                                >,
                            >,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

/// The innermost service: a matched route's target (see [`Edge::dispatch`]).
#[derive(Clone)]
pub struct Dispatch(Edge);

impl<B> layers::Handle<B> for Dispatch
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Liveness is answered here, at once; every other target's future is boxed. The stack's
    /// future holds the dispatch's, which every layer moves when it calls the next one: unboxed,
    /// it is as large as the largest hook's state (chat, content, the transcoder), and copying
    /// it was the largest single cost of a `/healthz` answer (8 % of the edge's CPU in a
    /// profile). One allocation is nothing next to the gRPC call those targets make.
    fn handle<'a>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut layers::Exchange,
    ) -> impl std::future::Future<Output = Response> + Send + 'a {
        let live = exchange
            .matched
            .route()
            .is_some_and(|route| route.handler() == Some(routes::Handler::Live));
        if live {
            futures_util::future::Either::Left(std::future::ready(health::live_response(&self.0)))
        } else {
            futures_util::future::Either::Right(Box::pin(self.0.dispatch(request, exchange)))
        }
    }
}

/// The edge's shared state; cheap to clone.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EdgeSettings,
    backends: backends::Backends,
    /// The generic REST ↔ gRPC path and the bindings it serves.
    transcoder: transcoder::Transcoder,
    /// The edge's routes and every binding.
    routes: Arc<routes::RouteTable>,
    /// `/api/openapi.json`, generated on first use.
    openapi: std::sync::OnceLock<Bytes>,
    limiter: limits::EdgeLimiter,
    cors: layers::cors::CorsLayer,
    /// Signs forwarded client IPs on plaintext hops (see `portico_tls::PeerKey`).
    signer: Option<portico_tls::PeerKey>,
    redis: Option<portico_redis::Redis>,
    verifier: portico_tokens::Verifier,
    allow_anonymous_chat: bool,
    /// The deadline of a chat call: `LLM_TIMEOUT` and a margin for the hops.
    chat_timeout: std::time::Duration,
    /// `LLM_MAX_TOKENS`, which the OpenAPI document states.
    chat_max_tokens: u32,
    /// `ADMIN_API_KEY`, for the admin routes the edge answers itself.
    admin_key: Option<portico_config::SecretString>,
    /// The epoch of the edge's content copies, following ContentService.WatchRevision.
    content_revision: Arc<content_revision::ContentRevision>,
    /// Public items read through this edge, each tagged with the epoch it was read under.
    content_cache: portico_ttlmap::TtlMap<Arc<content_routes::CachedItem>>,
    started_at: Instant,
    started: AtomicBool,
    /// The last readiness aggregate (see `health::readiness`).
    readiness: health::ReadinessCache,
}

impl Edge {
    /// Builds the edge's state: lazy gRPC channels (the content revision followed on one), and
    /// a Redis client when `REDIS_URL` is set. The edge has no database: the services' gRPC
    /// health reports theirs.
    pub async fn new(
        settings: &Settings,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, EdgeError> {
        let redis = portico_redis::Redis::connect_optional(
            settings.storage.redis_url.as_ref(),
            &settings.storage.redis_key_prefix,
            REDIS_COMMAND_TIMEOUT,
            settings.transport.redis_tls_ca.as_deref(),
            shutdown.clone(),
        )?;
        let tls = portico_grpc::client::client_tls(settings, &shutdown)?;
        // With a certificate the edge is known by its name; on plaintext hops it signs.
        let signer = match (&settings.transport.grpc_tls, &settings.transport.peer_key) {
            (
                Some(portico_config::GrpcTls {
                    identity: Some(_), ..
                }),
                _,
            ) => None,
            (_, Some(key)) => Some(portico_tls::PeerKey::new(key.expose_secret().as_bytes())),
            (_, None) => None,
        };
        let backends = backends::Backends::new(&settings.edge, &tls)?;
        let transcoder = transcoder::Transcoder::portico(&backends);
        let routes = routes::RouteTable::new(transcoder.bindings())
            .map_err(|error| EdgeError::Config(error.to_string()))?;
        let verifier = portico_tokens::Verifier::new(
            backends.auth.channel.inner(),
            &settings.auth.issuer,
            &settings.auth.audience,
            redis.clone(),
        );
        let limiter = limits::EdgeLimiter::new(
            backends.ratelimit.channel.clone(),
            &settings.ratelimit,
            signer.clone(),
        );
        if let Some(redis) = &redis {
            redis.report_up("edge");
        }
        let edge = Self {
            inner: Arc::new(Inner {
                settings: settings.edge.clone(),
                transcoder,
                routes: Arc::new(routes),
                openapi: std::sync::OnceLock::new(),
                limiter,
                backends,
                cors: layers::cors::CorsLayer::new(
                    cors::Cors::new(
                        &settings.edge.cors_origins,
                        settings.edge.cors_allow_credentials,
                    )
                    .with_headers(
                        &settings.edge.cors_allow_headers,
                        &settings.edge.cors_expose_headers,
                    ),
                ),
                verifier,
                allow_anonymous_chat: settings.chat.allow_anonymous,
                chat_timeout: settings.chat.timeout + CHAT_DEADLINE_MARGIN,
                chat_max_tokens: settings.chat.max_tokens,
                admin_key: settings.admin_api_key.clone(),
                content_revision: Arc::default(),
                content_cache: portico_ttlmap::TtlMap::new(
                    CONTENT_CACHE_TTL,
                    CONTENT_CACHE_CAPACITY,
                ),
                redis,
                signer,
                started_at: Instant::now(),
                started: AtomicBool::new(false),
                readiness: health::ReadinessCache::default(),
            }),
        };
        content_revision::follow(
            edge.inner.backends.content.channel.clone(),
            Arc::clone(&edge.inner.content_revision),
            shutdown.clone(),
        );
        health::watch_backends(edge.clone(), shutdown);
        Ok(edge)
    }

    /// The middleware stack (`layers`) over the dispatch, built once per listener.
    pub fn stack(&self) -> Stack {
        tower::ServiceBuilder::new()
            .layer(layers::trace::Trace::new(Arc::clone(&self.inner.routes)))
            .layer(layers::StepLayer(layers::metrics::Metrics))
            .layer(layers::StepLayer(layers::headers::ResponseHeaders))
            .layer(layers::StepLayer(self.inner.cors.clone()))
            .layer(layers::StepLayer(layers::dialect::ErrorDialect))
            .layer(layers::StepLayer(
                layers::request_limits::RequestLimits::new(
                    self.inner.settings.max_forwarded_header_bytes,
                ),
            ))
            .layer(layers::StepLayer(layers::routing::Routing))
            .layer(layers::StepLayer(layers::maintenance::Maintenance::new(
                self.inner.settings.maintenance_mode,
            )))
            .layer(layers::StepLayer(layers::rate_limit::RateLimit::new(
                self.clone(),
            )))
            .layer(layers::StepLayer(layers::timeout::Timeout::new(
                self.inner.settings.request_timeout,
                self.inner.chat_timeout,
            )))
            .service(Dispatch(self.clone()))
    }

    /// The target of a matched route: the transcoder, a hook, or one of the edge's own routes.
    async fn dispatch<B>(
        &self,
        request: http::Request<B>,
        exchange: &mut layers::Exchange,
    ) -> Response
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (route, params) = match &mut exchange.matched {
            layers::Matched::Found(route, params) => (Arc::clone(route), std::mem::take(params)),
            // The routing layer answered these.
            _ => {
                return ApiError::new(Code::NotFound, "no route")
                    .into_response(exchange.correlation_id())
            }
        };
        let context = &exchange.context;
        let correlation_id = context.correlation_id.as_str();
        let client_ip = exchange.client_ip;
        let forwarded = backends::Forwarded::from_headers(
            client_ip,
            request.headers(),
            self.inner.signer.clone(),
        );
        let handler = match &route.target {
            routes::Target::Rpc(binding) => {
                return self
                    .transcode(binding, &params, request, context, &forwarded)
                    .await
                    .unwrap_or_else(|error| error.into_response(correlation_id));
            }
            routes::Target::Native(handler) | routes::Target::Hook(handler, _) => *handler,
        };
        // The path's variables arrive percent-encoded (`alias%40provider`): decoded once here for
        // every hook, as the transcoder decodes its own.
        let params: Vec<(String, String)> = params
            .into_iter()
            .map(|(name, value)| (name, auth_routes::percent_decode(&value)))
            .collect();
        match handler {
            routes::Handler::Live => health::live_response(self),
            routes::Handler::Startup => {
                if health::startup(self, context).await {
                    response::json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
                } else {
                    response::json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"status": "starting"}),
                    )
                }
            }
            routes::Handler::Ready => {
                let (status, body) = health::readiness(self, context).await;
                response::json_response(status, &body)
            }
            routes::Handler::Metrics => self.metrics(request.headers(), client_ip, correlation_id),
            routes::Handler::OpenApi => {
                // Built once: the table and descriptors do not change while the edge runs.
                let document = self.inner.openapi.get_or_init(|| {
                    let document = openapi::document(
                        &self.inner.routes,
                        self.inner.transcoder.pool(),
                        env!("CARGO_PKG_VERSION"),
                        self.inner.chat_max_tokens,
                    );
                    Bytes::from(serde_json::to_vec(&document).unwrap_or_default())
                });
                response::text_response(StatusCode::OK, "application/json", document.clone())
            }
            routes::Handler::Jwks => self.jwks(context, &forwarded).await,
            routes::Handler::OpenIdConfiguration => self
                .openid_configuration(request.headers(), context, &forwarded)
                .await
                .unwrap_or_else(|error| error.into_response(correlation_id)),
            routes::Handler::Chat | routes::Handler::ChatCompletions => {
                let dialect = if handler == routes::Handler::Chat {
                    chat_routes::Dialect::Portico
                } else {
                    chat_routes::Dialect::OpenAi
                };
                self.chat(dialect, request.into_body(), context, &forwarded)
                    .await
                    .unwrap_or_else(|error| error.into_response(correlation_id))
            }
            routes::Handler::Models | routes::Handler::Model => {
                let id = params
                    .into_iter()
                    .find(|(name, _)| *name == "id")
                    .map(|(_, v)| v);
                self.models(id, request.headers(), context, &forwarded)
                    .await
                    .unwrap_or_else(|error| error.into_response(correlation_id))
            }
            routes::Handler::Embeddings => self
                .embeddings(request.into_body(), context, &forwarded)
                .await
                .unwrap_or_else(|error| error.into_response(correlation_id)),
            routes::Handler::AdminLlmProviders => self
                .llm_providers(request.headers(), context, &forwarded)
                .await
                .unwrap_or_else(|error| error.into_response(correlation_id)),
            routes::Handler::AdminLlmProviderUpdate => {
                let name = params
                    .into_iter()
                    .find(|(name, _)| *name == "name")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                self.llm_provider_update(name, request.into_body(), context, &forwarded)
                    .await
                    .unwrap_or_else(|error| error.into_response(correlation_id))
            }
            routes::Handler::ContentList
            | routes::Handler::ContentGet
            | routes::Handler::AdminContentGet
            | routes::Handler::AdminContentList
            | routes::Handler::AdminContentCreate
            | routes::Handler::AdminContentUpdate
            | routes::Handler::AdminContentDelete => {
                let slug = params
                    .into_iter()
                    .find(|(name, _)| *name == "slug")
                    .map(|(_, v)| v);
                let query = request.uri().query().map(str::to_owned);
                let headers = request.headers().clone();
                self.content(
                    handler,
                    slug,
                    query,
                    headers,
                    request.into_body(),
                    context,
                    &forwarded,
                )
                .await
                .unwrap_or_else(|error| error.into_response(correlation_id))
            }
            routes::Handler::Console => {
                let asset = params.iter().find(|(name, _)| *name == "asset");
                console::serve(
                    asset.map(|(_, v)| v.as_str()),
                    request.headers(),
                    correlation_id,
                )
            }
            routes::Handler::ApiKeyCreate
            | routes::Handler::ApiKeyUsage
            | routes::Handler::AdminUsage => {
                let id = params
                    .into_iter()
                    .find(|(name, _)| *name == "id")
                    .map(|(_, v)| v)
                    .unwrap_or_default();
                let query = request.uri().query().map(str::to_owned);
                let headers = request.headers().clone();
                let http_request = api_key_routes::KeyRequest {
                    id,
                    query: query.as_deref(),
                    headers: &headers,
                };
                self.api_keys(
                    handler,
                    http_request,
                    request.into_body(),
                    context,
                    &forwarded,
                )
                .await
                .unwrap_or_else(|error| error.into_response(correlation_id))
            }
        }
    }

    /// Reads the body (when the binding has one) and answers through the transcoder.
    async fn transcode<B>(
        &self,
        binding: &transcoder::Binding,
        params: &[(String, String)],
        request: http::Request<B>,
        context: &RequestContext,
        forwarded: &backends::Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        let body = if binding.body == transcoder::BodyRule::None {
            Bytes::new()
        } else {
            read_body(body).await?
        };
        self.inner
            .transcoder
            .call(
                binding,
                params,
                parts.uri.query(),
                &parts.headers,
                &body,
                context,
                forwarded,
                self.inner.settings.request_timeout,
            )
            .await
    }

    fn metrics(
        &self,
        headers: &http::HeaderMap,
        client_ip: IpAddr,
        correlation_id: &str,
    ) -> Response {
        if !self.inner.settings.metrics_enabled {
            return ApiError::new(
                Code::NotFound,
                "metrics are disabled (METRICS_ENABLED=false)",
            )
            .into_response(correlation_id);
        }
        let secret = headers.get("x-metrics-secret").map(HeaderValue::as_bytes);
        let allowed = self.inner.settings.metrics_guard.allows(secret, client_ip);
        if !allowed {
            tracing::warn!(metrics_guard = true, client_ip = %client_ip, "metrics_guard refused a scrape");
            return ApiError::new(
                Code::PermissionDenied,
                "metrics are not available to this caller",
            )
            .into_response(correlation_id);
        }
        let format =
            metrics::Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
        response::text_response(
            StatusCode::OK,
            format.content_type(),
            metrics::encode_as(format),
        )
    }

    async fn jwks(&self, context: &RequestContext, forwarded: &backends::Forwarded) -> Response {
        use portico_proto::auth::{auth_service_client::AuthServiceClient, GetJwksRequest};
        let backend = &self.inner.backends.auth;
        let request = backends::request(
            GetJwksRequest {},
            context,
            forwarded,
            self.inner.settings.request_timeout,
        );
        let answer = AuthServiceClient::new(backend.channel.clone())
            .get_jwks(request)
            .await;
        match finish(backend, "GetJwks", answer) {
            Ok(jwks) => {
                let mut response =
                    response::text_response(StatusCode::OK, "application/json", jwks.jwks_json);
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                response
            }
            Err(error) => error.into_response(&context.correlation_id),
        }
    }
}

/// Refuses a forwarded header larger than `max` bytes: 401 for `Authorization` (no token is
/// that large), 431 for the others.
fn check_forwarded_headers(headers: &http::HeaderMap, max: usize) -> Result<(), ApiError> {
    for name in FORWARDED_HEADERS {
        let largest = headers.get_all(name).iter().map(HeaderValue::len).max();
        if largest.is_some_and(|len| len > max) {
            return Err(if name == "authorization" {
                ApiError::new(
                    Code::Unauthenticated,
                    format!("the Authorization header is larger than {max} bytes"),
                )
            } else {
                ApiError::new(
                    Code::InvalidArgument,
                    format!("the {name} header is larger than {max} bytes"),
                )
                .with_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            });
        }
    }
    Ok(())
}

/// Refuses a declared body larger than the limit before reading a byte of it.
fn check_declared_length(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > BODY_LIMIT_BYTES as u64 => Err(body_too_large()),
        _ => Ok(()),
    }
}

fn body_too_large() -> ApiError {
    ApiError::new(
        Code::InvalidArgument,
        format!("request body exceeds {BODY_LIMIT_BYTES} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Records a finished backend call and maps its error (the one place both happen).
pub(crate) fn finish<T>(
    backend: &backends::Backend,
    method: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, ApiError> {
    backends::record(
        backend.name,
        method,
        result
            .as_ref()
            .map_or_else(tonic::Status::code, |_| Code::Ok),
    );
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| ApiError::from_status(&status, backend.name))
}

/// Whole numbers in the hooks' JSON as JSON Schema's `integer` has them: `5`, or `5.0`.
pub(crate) mod whole {
    use serde::{de::Error as _, Deserialize as _, Deserializer};

    /// A whole number, when the JSON holds one that `T` can carry.
    pub(crate) fn of<T: TryFrom<i128>>(number: &serde_json::Number) -> Option<T> {
        number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from))
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 1e30)
                    .map(|f| f as i128)
            })
            .and_then(|n| T::try_from(n).ok())
    }

    /// `#[serde(default, deserialize_with = "crate::whole::option")]`.
    pub(crate) fn option<'de, D: Deserializer<'de>, T: TryFrom<i128>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<serde_json::Number>::deserialize(deserializer)? {
            None => Ok(None),
            Some(number) => of(&number).map(Some).ok_or_else(|| {
                D::Error::custom(format!("{number} is not a whole number in range"))
            }),
        }
    }

    #[cfg(test)]
    mod tests {
        use serde_json::json;

        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "super::option")]
            n: Option<u32>,
        }

        fn n(value: serde_json::Value) -> Result<Option<u32>, String> {
            serde_json::from_value::<Body>(value)
                .map(|b| b.n)
                .map_err(|e| e.to_string())
        }

        #[test]
        fn whole_numbers_are_taken_as_integers_or_integral_floats_and_nothing_else() {
            assert_eq!(n(json!({"n": 5})), Ok(Some(5)));
            assert_eq!(n(json!({"n": 5.0})), Ok(Some(5)));
            assert_eq!(n(json!({})), Ok(None));
            assert_eq!(n(json!({"n": null})), Ok(None));
            for bad in [
                json!(5.5),
                json!(-1),
                json!(4_294_967_296_u64),
                json!("5"),
                json!(1e300),
            ] {
                assert!(n(json!({ "n": bad })).is_err(), "{bad} was taken");
            }
        }
    }
}

/// Parses a JSON body, refusing unknown fields (per the target type) with a 400 that says why.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(Code::InvalidArgument, format!("invalid JSON body: {error}"))
    })
}

/// Reads a request body of at most 1 MiB (413 beyond, also for chunked bodies).
pub async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match http_body_util::Limited::new(body, BODY_LIMIT_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(body_too_large()),
        Err(error) if error.is::<server::BodyTimeout>() => Err(ApiError::new(
            Code::DeadlineExceeded,
            "the request body did not arrive in time (EDGE_BODY_READ_TIMEOUT)",
        )
        .with_status(http::StatusCode::REQUEST_TIMEOUT)),
        Err(error) => Err(ApiError::new(
            Code::InvalidArgument,
            format!("cannot read the request body: {error}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};

    use super::*;

    /// Every layer moves the future of the rest of the stack when it calls it: a hook or a
    /// rate-limit decision whose state is not boxed makes every request, `/healthz` too, copy
    /// it (it measured 8 % of the edge's CPU). In a test build the future is 6.0 KB, and 14.5
    /// KB with the dispatch unboxed.
    #[tokio::test]
    async fn the_stacks_future_stays_small() {
        let source = std::collections::HashMap::from([(
            "RATELIMIT_GRPC_URL".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        )]);
        let settings = portico_config::Settings::from_source(&source).expect("settings");
        let edge = Edge::new(&settings, tokio_util::sync::CancellationToken::new())
            .await
            .expect("edge");
        let stack = edge.stack();
        let request = http::Request::get("/healthz")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let future = stack.serve(request, std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
        let size = std::mem::size_of_val(&future);
        assert!(size <= 8 * 1024, "the stack's future is {size} bytes");
        let response = future.await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413_even_without_content_length() {
        // A streamed body declares no length; the limit is enforced while reading.
        let chunks = (0..17).map(|_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(vec![
                b'x';
                64 * 1024
            ])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let error = read_body(body).await.expect_err("over 1 MiB");
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);

        let exact = Full::new(Bytes::from(vec![b'x'; BODY_LIMIT_BYTES]));
        assert_eq!(
            read_body(exact).await.map(|b| b.len()).ok(),
            Some(BODY_LIMIT_BYTES)
        );
    }
}
