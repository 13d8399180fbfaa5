//! The edge's route table: the edge's own routes (health, metrics, the OpenAPI document, the
//! console) and every REST binding of the descriptor set (`transcoder::rules`). Routing,
//! `405 Allow`, maintenance exemptions, rate-limit policies, metrics labels and
//! `/api/openapi.json` all read this one table.

use std::sync::Arc;

use http::Method;

use crate::transcoder::Binding;

/// What the edge itself answers: its own routes, and the hooks bindings name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Liveness: the process answers.
    Live,
    /// Startup: every service answered SERVING once.
    Startup,
    /// Readiness with aggregation (README "Health").
    Ready,
    /// Prometheus metrics (guarded).
    Metrics,
    /// This API's OpenAPI document.
    OpenApi,
    /// The operator console's embedded files (see `console`).
    Console,
    /// Hook `jwks`: the key set served byte for byte, as the service serialised it.
    Jwks,
    /// Hook `openid_configuration`: the document built on the Host the client reached.
    OpenIdConfiguration,
    /// Hook `chat`: Portico's chat JSON, SSE for `stream: true`.
    Chat,
    /// Hook `chat_completions`: OpenAI's dialect (request, answer, errors, SSE).
    ChatCompletions,
    /// Hook `models`: OpenAI's model list.
    Models,
    /// Hook `model`: one model of OpenAI's list.
    Model,
    /// Hook `embeddings`: OpenAI's embeddings dialect.
    Embeddings,
    /// Hook `llm_providers`: providers and model aliases, from two RPCs.
    AdminLlmProviders,
    /// Hook `llm_provider_update`: a partial update (`priority` and/or `enabled`).
    AdminLlmProviderUpdate,
    /// Hook `content_list`: the public list.
    ContentList,
    /// Hook `content_get`: the public item through the edge's cache (ETag, 304).
    ContentGet,
    /// Hook `admin_content_get`: one item, drafts included, with the ETag `If-Match` takes.
    AdminContentGet,
    /// Hook `admin_content_list`: drafts included.
    AdminContentList,
    /// Hook `admin_content_create`.
    AdminContentCreate,
    /// Hook `admin_content_update`: `If-Match` preconditions.
    AdminContentUpdate,
    /// Hook `admin_content_delete`.
    AdminContentDelete,
    /// Hook `api_key_create`: durations as text (`30d`), the secret shown once.
    ApiKeyCreate,
    /// Hook `api_key_usage`: the key from auth, then its usage from the chat gateway.
    ApiKeyUsage,
    /// Hook `admin_usage`: the edge authorizes, then asks the chat gateway as a trusted peer.
    AdminUsage,
}

impl Handler {
    /// The JSON Schema of the body a hook reads itself (OpenAI's dialect, content's fields),
    /// with the deployment's token bound (`LLM_MAX_TOKENS`) for the chat routes; `None`: the
    /// body is the RPC's request message.
    pub fn body_schema(self, chat_max_tokens: u32) -> Option<serde_json::Value> {
        Some(match self {
            Self::Chat => crate::chat_routes::portico_body_schema(chat_max_tokens),
            Self::ChatCompletions => crate::chat_routes::openai_body_schema(chat_max_tokens),
            Self::Embeddings => crate::chat_routes::embeddings_body_schema(),
            Self::AdminLlmProviderUpdate => crate::chat_routes::provider_change_schema(),
            Self::AdminContentCreate => crate::content_routes::create_schema(),
            Self::AdminContentUpdate => crate::content_routes::update_schema(),
            _ => return None,
        })
    }

    /// The hook a binding names (`portico.api.v1.Route.hook`).
    pub fn hook(name: &str) -> Option<Self> {
        Some(match name {
            "jwks" => Self::Jwks,
            "openid_configuration" => Self::OpenIdConfiguration,
            "chat" => Self::Chat,
            "chat_completions" => Self::ChatCompletions,
            "models" => Self::Models,
            "model" => Self::Model,
            "embeddings" => Self::Embeddings,
            "llm_providers" => Self::AdminLlmProviders,
            "llm_provider_update" => Self::AdminLlmProviderUpdate,
            "content_list" => Self::ContentList,
            "content_get" => Self::ContentGet,
            "admin_content_get" => Self::AdminContentGet,
            "admin_content_list" => Self::AdminContentList,
            "admin_content_create" => Self::AdminContentCreate,
            "admin_content_update" => Self::AdminContentUpdate,
            "admin_content_delete" => Self::AdminContentDelete,
            "api_key_create" => Self::ApiKeyCreate,
            "api_key_usage" => Self::ApiKeyUsage,
            "admin_usage" => Self::AdminUsage,
            _ => return None,
        })
    }
}

/// Who answers a route.
#[derive(Debug, Clone)]
pub enum Target {
    /// The edge itself (health, metrics, OpenAPI, console).
    Native(Handler),
    /// A binding whose hook answers it.
    Hook(Handler, Arc<Binding>),
    /// A binding the generic transcoder answers.
    Rpc(Arc<Binding>),
}

/// One route: a path template (`{name}` matches one segment) and its method.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path template: the `http.route` label.
    pub path: &'static str,
    /// Method served.
    pub method: Method,
    /// Who answers it.
    pub target: Target,
}

impl Route {
    /// The edge's handler, for its own routes and hooks.
    pub fn handler(&self) -> Option<Handler> {
        match &self.target {
            Target::Native(handler) | Target::Hook(handler, _) => Some(*handler),
            Target::Rpc(_) => None,
        }
    }

    /// The binding, for RPC routes and hooks.
    pub fn binding(&self) -> Option<&Binding> {
        match &self.target {
            Target::Hook(_, binding) | Target::Rpc(binding) => Some(binding),
            Target::Native(_) => None,
        }
    }

    /// Health and metrics stay up in maintenance mode and are never rate limited.
    pub fn is_operational(&self) -> bool {
        matches!(
            self.target,
            Target::Native(Handler::Live | Handler::Startup | Handler::Ready | Handler::Metrics)
        )
    }

    /// The policy applied on top of `global`, if any (the binding's `policy`).
    pub fn extra_policy(&self) -> Option<&'static str> {
        self.binding().and_then(|binding| binding.route.policy)
    }
}

/// One of the edge's own routes, for the table and OpenAPI.
#[derive(Debug, Clone, Copy)]
pub struct NativeRoute {
    /// Path.
    pub path: &'static str,
    /// What answers it.
    pub handler: Handler,
    /// OpenAPI tag.
    pub tag: &'static str,
    /// One-line description.
    pub summary: &'static str,
}

const fn native(
    path: &'static str,
    handler: Handler,
    tag: &'static str,
    summary: &'static str,
) -> NativeRoute {
    NativeRoute {
        path,
        handler,
        tag,
        summary,
    }
}

/// The edge's own routes (all GET).
pub static NATIVE: &[NativeRoute] = &[
    native("/health", Handler::Live, "health", "Liveness"),
    native("/healthz", Handler::Live, "health", "Liveness"),
    native("/livez", Handler::Live, "health", "Liveness"),
    native("/api/health", Handler::Live, "health", "Liveness"),
    native("/api/health/live", Handler::Live, "health", "Liveness"),
    native(
        "/api/health/startup",
        Handler::Startup,
        "health",
        "Startup: 200 once every service answered SERVING",
    ),
    native(
        "/ready",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    native(
        "/readyz",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    native(
        "/api/health/ready",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    native(
        "/api/v1/health/ready",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    native(
        "/metrics",
        Handler::Metrics,
        "operations",
        "Prometheus metrics (guarded by METRICS_GUARD)",
    ),
    native(
        "/api/metrics",
        Handler::Metrics,
        "operations",
        "Prometheus metrics (guarded by METRICS_GUARD)",
    ),
    native(
        "/api/openapi.json",
        Handler::OpenApi,
        "operations",
        "This OpenAPI document",
    ),
    native(
        "/console",
        Handler::Console,
        "console",
        "The operator console (HTML; embedded, strict CSP)",
    ),
    native(
        "/console/{asset}",
        Handler::Console,
        "console",
        "The console's script and stylesheet",
    ),
];

/// The result of matching a request against the table.
#[derive(Debug)]
pub enum Match<'a> {
    /// A route serves this method and path; the path's variables, raw.
    Found(&'a Arc<Route>, Vec<(String, String)>),
    /// The path exists, with these methods.
    MethodNotAllowed(Vec<Method>),
    /// No route has this path.
    NotFound,
}

/// Why the table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Two routes the router cannot tell apart.
    #[error("route {path}: {message}")]
    Conflict {
        /// The template.
        path: &'static str,
        /// The router's reason.
        message: String,
    },
    /// A binding names a hook the edge does not have.
    #[error("{method}: no hook `{hook}` in the edge")]
    UnknownHook {
        /// The RPC.
        method: String,
        /// The name.
        hook: String,
    },
}

/// The routes, by path (matchit) and method.
#[derive(Debug)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    /// The routes of each path, in the order declared.
    paths: Vec<Vec<Arc<Route>>>,
}

impl RouteTable {
    /// The edge's own routes and every binding.
    pub fn new(bindings: &[Arc<Binding>]) -> Result<Self, TableError> {
        let mut table = Self {
            router: matchit::Router::new(),
            paths: Vec::new(),
        };
        for route in NATIVE {
            table.insert(Route {
                path: route.path,
                method: Method::GET,
                target: Target::Native(route.handler),
            })?;
        }
        for binding in bindings {
            let target = match &binding.route.hook {
                Some(hook) => Target::Hook(
                    Handler::hook(hook).ok_or_else(|| TableError::UnknownHook {
                        method: binding.method.full_name().to_owned(),
                        hook: hook.clone(),
                    })?,
                    Arc::clone(binding),
                ),
                None => Target::Rpc(Arc::clone(binding)),
            };
            table.insert(Route {
                path: binding.template,
                method: binding.http_method.clone(),
                target,
            })?;
        }
        Ok(table)
    }

    /// The table of Portico's own descriptors: what every edge serves.
    pub fn portico() -> Self {
        let pool = crate::transcoder::rules::portico_pool();
        let extensions = crate::transcoder::rules::Extensions::of(&pool);
        let bindings: Vec<_> = crate::transcoder::rules::bindings(&pool, &extensions)
            .expect("the compiled-in annotations are valid")
            .into_iter()
            .map(Arc::new)
            .collect();
        Self::new(&bindings).expect("the compiled-in routes do not conflict")
    }

    fn insert(&mut self, route: Route) -> Result<(), TableError> {
        if let Ok(found) = self.router.at(route.path) {
            // The same template (matchit gives its index for the literal path too).
            let index = *found.value;
            if self.paths[index][0].path == route.path {
                if self.paths[index].iter().any(|r| r.method == route.method) {
                    return Err(TableError::Conflict {
                        path: route.path,
                        message: format!("{} is bound twice", route.method),
                    });
                }
                self.paths[index].push(Arc::new(route));
                return Ok(());
            }
        }
        let index = self.paths.len();
        self.router
            .insert(route.path, index)
            .map_err(|error| TableError::Conflict {
                path: route.path,
                message: error.to_string(),
            })?;
        self.paths.push(vec![Arc::new(route)]);
        Ok(())
    }

    /// Every route, by path in declaration order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.paths.iter().flatten().map(|route| &**route)
    }

    /// Finds the route for `method` and `path`.
    pub fn find(&self, method: &Method, path: &str) -> Match<'_> {
        let Ok(found) = self.router.at(path) else {
            return Match::NotFound;
        };
        let routes = &self.paths[*found.value];
        if let Some(route) = routes.iter().find(|route| route.method == *method) {
            let params = found
                .params
                .iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect();
            return Match::Found(route, params);
        }
        let mut allowed: Vec<Method> = Vec::new();
        for route in routes {
            if !allowed.contains(&route.method) {
                allowed.push(route.method.clone());
            }
        }
        if allowed.contains(&Method::GET) {
            allowed.push(Method::HEAD);
        }
        allowed.push(Method::OPTIONS);
        Match::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::portico()
    }

    #[test]
    fn templates_match_whole_segments() {
        let table = table();
        match table.find(&Method::GET, "/api/v1/api-keys/abc") {
            Match::Found(route, params) => {
                assert_eq!(route.path, "/api/v1/api-keys/{id}");
                assert_eq!(params, vec![("id".to_owned(), "abc".to_owned())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            table.find(&Method::GET, "/api/v1/api-keys/abc/extra"),
            Match::NotFound
        ));
        assert!(matches!(
            table.find(&Method::GET, "/healthz/"),
            Match::NotFound
        ));
    }

    #[test]
    fn wrong_method_lists_allowed_ones() {
        let table = table();
        match table.find(&Method::POST, "/healthz") {
            Match::MethodNotAllowed(methods) => {
                assert!(methods.contains(&Method::GET));
                assert!(methods.contains(&Method::HEAD));
            }
            other => panic!("expected 405, got {other:?}"),
        }
        match table.find(&Method::PUT, "/api/v1/auth/me") {
            Match::MethodNotAllowed(methods) => {
                assert!(methods.contains(&Method::GET) && methods.contains(&Method::DELETE));
            }
            other => panic!("expected 405, got {other:?}"),
        }
        assert!(matches!(table.find(&Method::GET, "/nope"), Match::NotFound));
    }

    #[test]
    fn policies_and_hooks_follow_the_annotations() {
        let table = table();
        let Match::Found(login, _) = table.find(&Method::POST, "/api/v1/auth/login") else {
            panic!("login");
        };
        assert_eq!(login.extra_policy(), Some("auth"));
        assert!(matches!(login.target, Target::Rpc(_)));
        let Match::Found(chat, _) = table.find(&Method::POST, "/v1/chat/completions") else {
            panic!("chat");
        };
        assert_eq!(chat.handler(), Some(Handler::ChatCompletions));
        assert_eq!(chat.extra_policy(), Some("chat"));
        let Match::Found(health, _) = table.find(&Method::GET, "/readyz") else {
            panic!("readyz");
        };
        assert!(health.is_operational() && !login.is_operational());
    }
}
