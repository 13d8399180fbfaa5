//! The edge's route table. Routing, `405 Allow`, maintenance exemptions, metrics labels and
//! `/api/openapi.json` all read this one table, so the documentation cannot drift from
//! what is served.

use http::Method;
use serde_json::{json, Map, Value};

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Liveness: the process answers.
    Live,
    /// Startup: every service answered SERVING once.
    Startup,
    /// Readiness with aggregation (DESIGN §6).
    Ready,
    /// Prometheus metrics (guarded).
    Metrics,
    /// This API's OpenAPI document.
    OpenApi,
    /// AuthService.GetJwks.
    Jwks,
    /// RateLimitService.Reset (admin).
    RateLimitReset,
    /// RateLimitService.GetBucket (admin): a bucket read without spending from it.
    RateLimitBucket,
    /// AuthService.Register.
    Register,
    /// AuthService.Login.
    Login,
    /// AuthService.Refresh.
    Refresh,
    /// AuthService.Logout.
    Logout,
    /// AuthService.VerifyEmail.
    VerifyEmail,
    /// AuthService.GetMe.
    Me,
    /// AuthService.UnlockAccount (admin).
    Unlock,
    /// AuthService.ListLockouts (admin): lockouts in force with their remaining time.
    Lockouts,
    /// AuthService.RevokeToken (admin).
    Revoke,
    /// AuthService.GetOpenIdConfiguration.
    OpenIdConfiguration,
    /// AuthService.RequestPasswordReset.
    PasswordReset,
    /// AuthService.ConfirmPasswordReset.
    PasswordResetConfirm,
    /// AuthService.ChangePassword.
    ChangePassword,
    /// AuthService.ListSessions (the caller's).
    Sessions,
    /// AuthService.RevokeSession (the caller's).
    SessionRevoke,
    /// AuthService.RevokeAllSessions (the caller's: "log out everywhere").
    SessionsRevokeAll,
    /// AuthService.DeleteAccount (the caller's, re-authenticated).
    DeleteMe,
    /// AuthService.ListSessions (admin, any account).
    AdminSessions,
    /// AuthService.RevokeSession (admin, any account).
    AdminSessionRevoke,
    /// AuthService.RevokeAllSessions (admin, any account).
    AdminSessionsRevokeAll,
    /// AuthService.DeleteAccount (admin, any account).
    AdminDeleteUser,
    /// ChatService.Complete, Portico's JSON.
    Chat,
    /// ChatService.Complete, OpenAI's JSON.
    ChatCompletions,
    /// ChatService.ListModels, OpenAI's JSON.
    Models,
    /// ChatService.ListModels, one model, OpenAI's JSON.
    Model,
    /// ChatService.Embed, OpenAI's JSON.
    Embeddings,
    /// ChatService.ListProviders (admin at the edge).
    AdminLlmProviders,
    /// ChatService.SetProviderPriority (admin).
    AdminLlmProviderUpdate,
    /// ContentService.ListContent, published only.
    ContentList,
    /// ContentService.GetContent.
    ContentGet,
    /// ContentService.GetContent with drafts (admin): `ETag`, `Last-Modified`.
    AdminContentGet,
    /// ContentService.ListContent with drafts (admin).
    AdminContentList,
    /// ContentService.CreateContent (admin).
    AdminContentCreate,
    /// ContentService.UpdateContent (admin, If-Match).
    AdminContentUpdate,
    /// ContentService.DeleteContent (admin).
    AdminContentDelete,
    /// The operator console's embedded files (see `console`).
    Console,
    /// AuthService.CreateApiKey (the secret is shown once).
    ApiKeyCreate,
    /// AuthService.ListApiKeys (the caller's, or `?user=` for admins).
    ApiKeyList,
    /// AuthService.GetApiKey.
    ApiKeyGet,
    /// AuthService.RevokeApiKey.
    ApiKeyRevoke,
    /// AuthService.GetApiKey, then ChatService.GetUsage for that key.
    ApiKeyUsage,
    /// ChatService.GetUsage by user and/or key (admin).
    AdminUsage,
}

impl Handler {
    /// Health and metrics stay up in maintenance mode and are never rate limited.
    pub fn is_operational(self) -> bool {
        matches!(
            self,
            Handler::Live | Handler::Startup | Handler::Ready | Handler::Metrics
        )
    }

    /// The policy applied on top of `global`, if any (DESIGN §8).
    pub fn extra_policy(self) -> Option<&'static str> {
        match self {
            // Everything that checks a password or spends a reset token.
            Handler::Register
            | Handler::Login
            | Handler::PasswordReset
            | Handler::PasswordResetConfirm
            | Handler::ChangePassword
            | Handler::DeleteMe => Some("auth"),
            Handler::Chat | Handler::ChatCompletions | Handler::Embeddings => Some("chat"),
            _ => None,
        }
    }
}

/// One route: a path template (`{name}` matches one segment) and its methods.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path template.
    pub path: &'static str,
    /// Method served.
    pub method: Method,
    /// What answers it.
    pub handler: Handler,
    /// OpenAPI tag.
    pub tag: &'static str,
    /// One-line description.
    pub summary: &'static str,
}

const fn post(
    path: &'static str,
    handler: Handler,
    tag: &'static str,
    summary: &'static str,
) -> Route {
    Route {
        path,
        method: Method::POST,
        handler,
        tag,
        summary,
    }
}

const fn get(
    path: &'static str,
    handler: Handler,
    tag: &'static str,
    summary: &'static str,
) -> Route {
    Route {
        path,
        method: Method::GET,
        handler,
        tag,
        summary,
    }
}

const fn delete(
    path: &'static str,
    handler: Handler,
    tag: &'static str,
    summary: &'static str,
) -> Route {
    Route {
        path,
        method: Method::DELETE,
        handler,
        tag,
        summary,
    }
}

/// Every route the edge serves.
pub static ROUTES: &[Route] = &[
    get("/health", Handler::Live, "health", "Liveness"),
    get("/healthz", Handler::Live, "health", "Liveness"),
    get("/livez", Handler::Live, "health", "Liveness"),
    get("/api/health", Handler::Live, "health", "Liveness"),
    get("/api/health/live", Handler::Live, "health", "Liveness"),
    get(
        "/api/health/startup",
        Handler::Startup,
        "health",
        "Startup: 200 once every service answered SERVING",
    ),
    get(
        "/ready",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    get(
        "/readyz",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    get(
        "/api/health/ready",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    get(
        "/api/v1/health/ready",
        Handler::Ready,
        "health",
        "Readiness with dependency checks",
    ),
    get(
        "/metrics",
        Handler::Metrics,
        "operations",
        "Prometheus metrics (guarded by METRICS_GUARD)",
    ),
    get(
        "/api/metrics",
        Handler::Metrics,
        "operations",
        "Prometheus metrics (guarded by METRICS_GUARD)",
    ),
    get(
        "/api/openapi.json",
        Handler::OpenApi,
        "operations",
        "This OpenAPI document",
    ),
    get(
        "/.well-known/jwks.json",
        Handler::Jwks,
        "auth",
        "Public keys that verify access tokens",
    ),
    post(
        "/api/v1/auth/register",
        Handler::Register,
        "auth",
        "Create an account (201)",
    ),
    post(
        "/api/v1/auth/login",
        Handler::Login,
        "auth",
        "Email and password for an access and a refresh token",
    ),
    post(
        "/api/v1/auth/refresh",
        Handler::Refresh,
        "auth",
        "Spend a refresh token for a new pair (rotation)",
    ),
    post(
        "/api/v1/auth/logout",
        Handler::Logout,
        "auth",
        "Revoke the refresh family and the bearer's access token (204)",
    ),
    post(
        "/api/v1/auth/verify-email",
        Handler::VerifyEmail,
        "auth",
        "Consume an email verification token",
    ),
    get(
        "/api/v1/auth/me",
        Handler::Me,
        "auth",
        "The account behind the bearer token",
    ),
    delete(
        "/api/v1/auth/me",
        Handler::DeleteMe,
        "auth",
        "Delete the bearer's account; the current password re-authenticates (204)",
    ),
    get(
        "/.well-known/openid-configuration",
        Handler::OpenIdConfiguration,
        "auth",
        "OpenID Connect discovery: issuer, jwks_uri, signing algorithms, endpoints",
    ),
    post(
        "/api/v1/auth/password-reset",
        Handler::PasswordReset,
        "auth",
        "Mail a single-use reset token; the same 202 whether or not the address has an account",
    ),
    post(
        "/api/v1/auth/password-reset/confirm",
        Handler::PasswordResetConfirm,
        "auth",
        "Spend a reset token and set a new password; every session is revoked",
    ),
    post(
        "/api/v1/auth/password",
        Handler::ChangePassword,
        "auth",
        "Change the bearer's password (current + new); other sessions revoked by default",
    ),
    get(
        "/api/v1/auth/sessions",
        Handler::Sessions,
        "auth",
        "The bearer's sessions (refresh families): created, last used, IP, user agent",
    ),
    delete(
        "/api/v1/auth/sessions",
        Handler::SessionsRevokeAll,
        "auth",
        "Log out everywhere: every session of the bearer, this one included",
    ),
    delete(
        "/api/v1/auth/sessions/{id}",
        Handler::SessionRevoke,
        "auth",
        "End one of the bearer's sessions (204)",
    ),
    get(
        "/api/v1/admin/auth/users/{user}/sessions",
        Handler::AdminSessions,
        "admin",
        "Sessions of an account (id or email)",
    ),
    delete(
        "/api/v1/admin/auth/users/{user}/sessions",
        Handler::AdminSessionsRevokeAll,
        "admin",
        "End every session of an account (id or email)",
    ),
    delete(
        "/api/v1/admin/auth/users/{user}/sessions/{id}",
        Handler::AdminSessionRevoke,
        "admin",
        "End one session of an account (204)",
    ),
    delete(
        "/api/v1/admin/auth/users/{user}",
        Handler::AdminDeleteUser,
        "admin",
        "Delete an account (id or email); audit rows keep an anonymous reference (204)",
    ),
    post(
        "/api/v1/admin/auth/unlock",
        Handler::Unlock,
        "admin",
        "Clear login lockouts of an email (X-Admin-Key or admin JWT)",
    ),
    get(
        "/api/v1/admin/auth/lockouts",
        Handler::Lockouts,
        "admin",
        "Login lockouts in force with their remaining time (?email=, ?limit=; X-Admin-Key or admin JWT)",
    ),
    post(
        "/api/v1/admin/auth/revoke",
        Handler::Revoke,
        "admin",
        "Revoke an access token by jti or every session of a user",
    ),
    post(
        "/api/v1/chat",
        Handler::Chat,
        "chat",
        "Complete a conversation (the chat policy applies)",
    ),
    post(
        "/v1/chat/completions",
        Handler::ChatCompletions,
        "chat",
        "OpenAI-compatible chat completions",
    ),
    get(
        "/v1/models",
        Handler::Models,
        "chat",
        "The model aliases callers may name (OpenAI's list)",
    ),
    get(
        "/v1/models/{id}",
        Handler::Model,
        "chat",
        "One model alias (404 model_not_found)",
    ),
    post(
        "/v1/embeddings",
        Handler::Embeddings,
        "chat",
        "OpenAI-compatible embeddings (the chat policy applies)",
    ),
    get(
        "/api/v1/admin/llm/providers",
        Handler::AdminLlmProviders,
        "admin",
        "LLM providers by priority, with circuit state (X-Admin-Key or admin JWT)",
    ),
    Route {
        path: "/api/v1/admin/llm/providers/{name}",
        method: Method::PUT,
        handler: Handler::AdminLlmProviderUpdate,
        tag: "admin",
        summary: "Change a provider's priority and/or enabled flag at runtime",
    },
    get(
        "/api/v1/content",
        Handler::ContentList,
        "content",
        "Published content, newest first (cursor, limit, tag)",
    ),
    get(
        "/api/v1/content/{slug}",
        Handler::ContentGet,
        "content",
        "One published item (ETag, If-None-Match)",
    ),
    get(
        "/api/v1/admin/content",
        Handler::AdminContentList,
        "admin",
        "All content including drafts",
    ),
    post(
        "/api/v1/admin/content",
        Handler::AdminContentCreate,
        "admin",
        "Create content (201)",
    ),
    get(
        "/api/v1/admin/content/{slug}",
        Handler::AdminContentGet,
        "admin",
        "One item, drafts included, with the ETag that PUT and DELETE take in If-Match (X-Admin-Key or admin JWT)",
    ),
    Route {
        path: "/api/v1/admin/content/{slug}",
        method: Method::PUT,
        handler: Handler::AdminContentUpdate,
        tag: "admin",
        summary: "Replace content; If-Match carries the ETag you edited, or * (412 when it changed, 428 without)",
    },
    Route {
        path: "/api/v1/admin/content/{slug}",
        method: Method::DELETE,
        handler: Handler::AdminContentDelete,
        tag: "admin",
        summary: "Delete content (204)",
    },
    get(
        "/api/v1/admin/ratelimit/buckets",
        Handler::RateLimitBucket,
        "admin",
        "Read one rate limit bucket without spending from it (?policy=&key=; X-Admin-Key or admin JWT)",
    ),
    Route {
        path: "/api/v1/admin/ratelimit/reset",
        method: Method::POST,
        handler: Handler::RateLimitReset,
        tag: "admin",
        summary: "Reset rate limit buckets by key ({policy}:{key}) or prefix (X-Admin-Key)",
    },
    post(
        "/api/v1/api-keys",
        Handler::ApiKeyCreate,
        "api-keys",
        "Create an API key (pk_…, shown once) with scopes, expiry, rate and token budget (201)",
    ),
    get(
        "/api/v1/api-keys",
        Handler::ApiKeyList,
        "api-keys",
        "The bearer's API keys (admins: ?user=<id or email>), never their secrets",
    ),
    get(
        "/api/v1/api-keys/{id}",
        Handler::ApiKeyGet,
        "api-keys",
        "One API key of the bearer (any key for an admin)",
    ),
    delete(
        "/api/v1/api-keys/{id}",
        Handler::ApiKeyRevoke,
        "api-keys",
        "Revoke an API key: refused on every replica within a second (204)",
    ),
    get(
        "/api/v1/api-keys/{id}/usage",
        Handler::ApiKeyUsage,
        "api-keys",
        "Requests and tokens of a key by day and model (?from=&to= YYYY-MM-DD), and its budget",
    ),
    get(
        "/api/v1/admin/usage",
        Handler::AdminUsage,
        "admin",
        "API key usage by day and model for ?user=<account id> and/or ?key=<key id>",
    ),
    get(
        "/console",
        Handler::Console,
        "console",
        "The operator console (HTML; embedded, strict CSP)",
    ),
    get(
        "/console/{asset}",
        Handler::Console,
        "console",
        "The console's script and stylesheet",
    ),
];

/// The result of matching a request against [`ROUTES`].
#[derive(Debug)]
pub enum Match {
    /// A route serves this method and path.
    Found(&'static Route, Vec<(&'static str, String)>),
    /// The path exists, with these methods.
    MethodNotAllowed(Vec<Method>),
    /// No route has this path.
    NotFound,
}

/// Finds the route for `method` and `path`.
pub fn find(method: &Method, path: &str) -> Match {
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(params) = match_path(route.path, path) else {
            continue;
        };
        if route.method == *method {
            return Match::Found(route, params);
        }
        if !allowed.contains(&route.method) {
            allowed.push(route.method.clone());
        }
    }
    if allowed.is_empty() {
        Match::NotFound
    } else {
        if allowed.contains(&Method::GET) {
            allowed.push(Method::HEAD);
        }
        allowed.push(Method::OPTIONS);
        Match::MethodNotAllowed(allowed)
    }
}

fn match_path(template: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut template_segments = template.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (template_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some(t), Some(p)) => {
                if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    if p.is_empty() {
                        return None;
                    }
                    params.push((name, p.to_owned()));
                } else if t != p {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// The OpenAPI 3.1 document of [`ROUTES`].
pub fn openapi(version: &str) -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "tags": [route.tag],
            "summary": route.summary,
            "operationId": operation_id(route),
            "parameters": parameters,
            "responses": responses(route.handler),
        });
        if let Some(body) = request_body(route.handler) {
            operation["requestBody"] = body;
        }
        if let (Some(Value::Array(query)), Some(parameters)) = (
            query_parameters(route.handler),
            operation["parameters"].as_array_mut(),
        ) {
            // After the path's own parameters (`{id}`).
            parameters.extend(query);
        }
        if route.handler == Handler::Metrics {
            operation["parameters"] = json!([{
                "name": "x-metrics-secret", "in": "header", "required": false,
                "schema": {"type": "string"}
            }]);
        }
        if let Value::Object(methods) = entry {
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portico REST edge",
            "version": version,
            "description": "REST edge of the Portico suite. Every error body is {\"error\":{\"code\",\"message\",\"correlationId\"}}; every response carries x-correlation-id.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {
                        "type": "object",
                        "required": ["code", "message", "correlationId"],
                        "properties": {
                            "code": {"type": "string"},
                            "message": {"type": "string"},
                            "correlationId": {"type": "string"}
                        }
                    }}
                },
                "Liveness": {
                    "type": "object",
                    "required": ["status", "timestamp", "uptime", "version"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok"]},
                        "timestamp": {"type": "string"},
                        "uptime": {"type": "number"},
                        "version": {"type": "string"}
                    }
                },
                "ApiKey": {
                    "type": "object",
                    "required": ["id", "userId", "name", "scopes", "prefix", "createdAt"],
                    "properties": {
                        "id": {"type": "string"},
                        "userId": {"type": "string"},
                        "name": {"type": "string"},
                        "scopes": {"type": "array", "items": {"type": "string"}},
                        "prefix": {"type": "string", "description": "pk_ and the next 6 characters of the secret"},
                        "createdAt": {"type": "string"},
                        "lastUsedAt": {"type": ["string", "null"]},
                        "expiresAt": {"type": ["string", "null"]},
                        "revokedAt": {"type": ["string", "null"]},
                        "requestsPerMinute": {"type": ["integer", "null"]},
                        "tokenBudget": {"type": ["integer", "null"]},
                        "budgetWindowSeconds": {"type": ["integer", "null"]}
                    }
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "degraded", "unhealthy"]},
                        "checks": {"type": "object"}
                    }
                }
            }
        }
    })
}

/// The query parameters of the routes that take them (OpenAPI `parameters`).
fn query_parameters(handler: Handler) -> Option<Value> {
    let parameter = |name: &str, required: bool, description: &str| json!({"name": name, "in": "query", "required": required, "description": description, "schema": {"type": "string"}});
    Some(match handler {
        Handler::RateLimitBucket => json!([
            parameter("policy", true, "global, auth or chat"),
            parameter("key", true, "The bucket's key within the policy: a client IP (IPv6: its /64, e.g. 2001:db8::/64) or a user id")
        ]),
        Handler::ApiKeyList => json!([parameter(
            "user",
            false,
            "Admins: the account (id or email) whose keys to list (default: the caller's)"
        )]),
        Handler::ApiKeyUsage => json!([
            parameter("from", false, "First day, YYYY-MM-DD (UTC; default: no lower bound)"),
            parameter("to", false, "Last day, YYYY-MM-DD (UTC; default: no upper bound)")
        ]),
        Handler::AdminUsage => json!([
            parameter("user", false, "An account id: every key of it (user, key or both)"),
            parameter("key", false, "One API key's id"),
            parameter("from", false, "First day, YYYY-MM-DD (UTC)"),
            parameter("to", false, "Last day, YYYY-MM-DD (UTC)")
        ]),
        Handler::Lockouts => json!([
            parameter("email", false, "Only this email's lockouts (default: every email's)"),
            {"name": "limit", "in": "query", "required": false, "description": "Most lockouts returned (default 100)", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
        ]),
        _ => return None,
    })
}

fn object(properties: Value, required: &[&str]) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": false, "properties": properties, "required": required
    }}}})
}

fn request_body(handler: Handler) -> Option<Value> {
    let string = json!({"type": "string"});
    let credentials = json!({
        "email": {"type": "string", "maxLength": 254},
        "password": {"type": "string", "minLength": 8, "maxLength": 128}
    });
    Some(match handler {
        Handler::RateLimitReset => json!({
            "required": true,
            "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "key": {"type": "string", "description": "One bucket: {policy}:{key}, e.g. global:203.0.113.7"},
                    "prefix": {"type": "string", "description": "Every bucket starting with this, e.g. global: (empty = all)"}
                },
                "oneOf": [{"required": ["key"]}, {"required": ["prefix"]}]
            }}}
        }),
        Handler::Register | Handler::Login => object(credentials, &["email", "password"]),
        Handler::Refresh | Handler::Logout => {
            object(json!({"refreshToken": string}), &["refreshToken"])
        }
        Handler::VerifyEmail => object(json!({"token": string}), &["token"]),
        Handler::PasswordReset => object(
            json!({"email": {"type": "string", "maxLength": 254}}),
            &["email"],
        ),
        Handler::PasswordResetConfirm => object(
            json!({"token": string, "password": {"type": "string", "minLength": 8, "maxLength": 128}}),
            &["token", "password"],
        ),
        Handler::ChangePassword => object(
            json!({
                "currentPassword": {"type": "string", "maxLength": 128},
                "newPassword": {"type": "string", "minLength": 8, "maxLength": 128},
                "revokeOtherSessions": {"type": "boolean", "default": true}
            }),
            &["currentPassword", "newPassword"],
        ),
        Handler::DeleteMe => object(
            json!({"password": {"type": "string", "maxLength": 128}}),
            &["password"],
        ),
        Handler::Unlock => object(json!({"email": string, "ip": string}), &["email"]),
        Handler::AdminContentCreate | Handler::AdminContentUpdate => {
            let mut properties = json!({
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "body": {"type": "string", "description": "Markdown, at most 256 KiB"},
                "tags": {"type": "array", "maxItems": 16, "items": {"type": "string", "pattern": "^[a-z0-9-]{1,32}$"}},
                "status": {"type": "string", "enum": ["draft", "published"]}
            });
            let required: &[&str] = if handler == Handler::AdminContentCreate {
                properties["slug"] = json!({"type": "string", "pattern": "^[a-z0-9-]{1,100}$"});
                &["slug", "title"]
            } else {
                properties["version"] = json!({"type": "integer", "description": "Expected version when If-Match is not sent"});
                &["title"]
            };
            object(properties, required)
        }
        Handler::ChatCompletions => {
            json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["messages"],
                "description": "OpenAI's chat completion request, every field (tools, tool_choice, content parts, response_format, n, seed, logprobs, …, and fields newer than Portico) passed to the provider unchanged; model is an alias (GET /v1/models), rewritten to each deployment's model name",
                "properties": {
                    "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": {
                        "type": "object", "required": ["role"],
                        "properties": {
                            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                            "content": {"oneOf": [string, {"type": "array", "items": {"type": "object", "required": ["type"]}}, {"type": "null"}]},
                            "tool_calls": {"type": "array"},
                            "tool_call_id": string
                        }
                    }},
                    "model": string,
                    "stream": {"type": "boolean"},
                    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
                    "n": {"type": "integer", "minimum": 1, "maximum": 8},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "max_completion_tokens": {"type": "integer", "minimum": 1},
                    "stop": {"oneOf": [string, {"type": "array", "maxItems": 4, "items": string}]},
                    "tools": {"type": "array", "maxItems": 128, "items": {"type": "object"}},
                    "tool_choice": {"oneOf": [string, {"type": "object"}]}
                }
            }}}})
        }
        Handler::Chat => {
            json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["messages"],
                "properties": {
                    "messages": {"type": "array", "minItems": 1, "maxItems": 256, "items": {
                        "type": "object", "required": ["role", "content"],
                        "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]}, "content": {"type": "string"}}
                    }},
                    "model": string,
                    "stream": {"type": "boolean"},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "max_tokens": {"type": "integer", "minimum": 0},
                    "stop": {"oneOf": [string, {"type": "array", "maxItems": 4, "items": string}]}
                }
            }}}})
        }
        Handler::Embeddings => {
            json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["input"],
                "properties": {
                    "input": {"oneOf": [string, {"type": "array", "minItems": 1, "maxItems": 2048}]},
                    "model": string,
                    "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                    "dimensions": {"type": "integer", "minimum": 1}
                },
                "description": "OpenAI's embeddings request; every field reaches the provider, model rewritten to the deployment's"
            }}}})
        }
        Handler::AdminLlmProviderUpdate => {
            json!({"required": true, "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false,
                "properties": {"priority": {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000, "description": "Lower is tried first"}, "enabled": {"type": "boolean"}},
                "minProperties": 1
            }}}})
        }
        Handler::ApiKeyCreate => object(
            json!({
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "scopes": {"type": "array", "minItems": 1, "items": {"type": "string", "enum": ["chat", "content:write", "admin"]},
                    "description": "content:write and admin need an admin owner; a key never outranks its owner"},
                "user": {"type": "string", "description": "Admins: the owner's account id or email (default: the caller)"},
                "expiresIn": {"oneOf": [{"type": "integer", "minimum": 60}, {"type": "string", "examples": ["90d"]}], "description": "Lifetime, seconds or a duration (default: never expires)"},
                "requestsPerMinute": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "description": "The key's own request rate, on top of its owner's limits"},
                "tokenBudget": {"type": "integer", "minimum": 1, "description": "Most prompt + completion tokens per budget window"},
                "budgetWindow": {"oneOf": [{"type": "integer", "minimum": 60}, {"type": "string", "examples": ["1d"]}], "description": "Budget window (default 1d: UTC days)"}
            }),
            &["name", "scopes"],
        ),
        Handler::Revoke => json!({"required": true, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": false,
            "properties": {"jti": string, "userId": string},
            "oneOf": [{"required": ["jti"]}, {"required": ["userId"]}]
        }}}}),
        _ => return None,
    })
}

fn operation_id(route: &Route) -> String {
    let mut id = route.method.as_str().to_ascii_lowercase();
    for part in route
        .path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            id.push(first.to_ascii_uppercase());
            id.extend(chars);
        }
    }
    id
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn responses(handler: Handler) -> Value {
    let json_ok = |schema: &str| json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    match handler {
        Handler::Live => json!({"200": json_ok("Liveness")}),
        Handler::Startup => {
            json!({"200": {"description": "Started"}, "503": {"description": "Still starting"}})
        }
        Handler::Ready => json!({
            "200": json_ok("Readiness"),
            "503": {"description": "A critical dependency is down", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}}}
        }),
        Handler::Metrics => json!({
            "200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "403": error_response("Refused by METRICS_GUARD"),
            "404": error_response("Metrics disabled")
        }),
        Handler::OpenApi => {
            json!({"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}})
        }
        Handler::RateLimitReset => json!({
            "200": {"description": "Buckets removed", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"removed": {"type": "integer"}}
            }}}},
            "400": error_response("Neither or both of key and prefix, or invalid JSON"),
            "401": error_response("X-Admin-Key missing"),
            "403": error_response("X-Admin-Key wrong, or ADMIN_API_KEY not configured"),
            "429": error_response("Rate limited")
        }),
        Handler::RateLimitBucket => json!({
            "200": {"description": "The bucket now; reading it spends nothing", "content": {"application/json": {"schema": {
                "type": "object", "properties": {
                    "policy": {"type": "string"}, "key": {"type": "string"},
                    "bucket": {"type": "string", "description": "The stored key: ratelimit:{policy}:{key}"},
                    "limit": {"type": "integer"}, "remaining": {"type": "integer", "description": "Whole tokens available now"},
                    "resetAfterMs": {"type": "integer", "description": "Until the bucket is full again"},
                    "resetAfterSeconds": {"type": "integer"},
                    "retryAfterMs": {"type": "integer", "description": "Until one token is available (0 when remaining > 0)"}
                }
            }}}},
            "400": error_response("Unknown policy, missing or oversized key, or an unknown query parameter"),
            "401": error_response("Admin credentials required"),
            "403": error_response("Not an admin"),
            "429": error_response("Rate limited"),
            "503": error_response("The rate limit store is unreachable")
        }),
        Handler::Lockouts => json!({
            "200": {"description": "Lockouts in force, the latest to end first", "content": {"application/json": {"schema": {
                "type": "object", "properties": {
                    "lockouts": {"type": "array", "items": {"type": "object", "properties": {
                        "email": {"type": "string"},
                        "scope": {"type": "string", "enum": ["network", "account"], "description": "account: the back-off that spaces attempts from every network"},
                        "network": {"type": "string", "description": "An IPv4 address, an IPv6 /64, or * (account)"},
                        "lockedUntil": {"type": "string"},
                        "remainingMs": {"type": "integer"},
                        "remainingSeconds": {"type": "integer"}
                    }}},
                    "truncated": {"type": "boolean", "description": "More lockouts matched than limit"}
                }
            }}}},
            "400": error_response("Not an email address, a bad limit, or an unknown query parameter"),
            "401": error_response("Admin credentials required"),
            "403": error_response("Not an admin"),
            "503": error_response("The lockout store is unreachable")
        }),
        Handler::Register => json!({
            "201": {"description": "Created", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "userId": {"type": "string"}, "verificationRequired": {"type": "boolean"}}}}}},
            "400": error_response("Invalid email or password"),
            "409": error_response("Email already registered (when verification is off)"),
            "429": error_response("Rate limited")
        }),
        Handler::Login | Handler::Refresh => json!({
            "200": {"description": "Tokens", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "accessToken": {"type": "string"}, "refreshToken": {"type": "string"},
                "tokenType": {"type": "string", "enum": ["Bearer"]}, "expiresIn": {"type": "integer"}}}}}},
            "400": error_response("Invalid input, or email not verified"),
            "401": error_response("Invalid credentials or token"),
            "429": error_response("Rate limited or locked out (Retry-After)")
        }),
        Handler::Logout => {
            json!({"204": {"description": "Logged out"}, "401": error_response("Invalid refresh token")})
        }
        Handler::VerifyEmail => json!({
            "200": {"description": "Verified", "content": {"application/json": {"schema": {"type": "object", "properties": {"userId": {"type": "string"}}}}}},
            "400": error_response("Invalid, used or expired token")
        }),
        Handler::Me => json!({
            "200": {"description": "The account", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "id": {"type": "string"}, "email": {"type": "string"}, "role": {"type": "string", "enum": ["user", "admin"]},
                "emailVerified": {"type": "boolean"}, "createdAt": {"type": "string"}}}}}},
            "401": error_response("Missing, invalid, expired or revoked bearer token")
        }),
        Handler::Unlock => json!({
            "200": {"description": "Cleared", "content": {"application/json": {"schema": {"type": "object", "properties": {"cleared": {"type": "integer"}}}}}},
            "401": error_response("No credentials"), "403": error_response("Not an admin")
        }),
        Handler::Revoke => json!({
            "200": {"description": "Revoked", "content": {"application/json": {"schema": {"type": "object", "properties": {"familiesRevoked": {"type": "integer"}}}}}},
            "401": error_response("No credentials"), "403": error_response("Not an admin")
        }),
        Handler::Chat | Handler::ChatCompletions => json!({
            "200": {"description": "The assistant's answer; with stream=true, server-sent events ending in data: [DONE]", "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {"schema": {"type": "string"}}}},
            "400": error_response("Invalid conversation"),
            "401": error_response("Bearer token required or invalid"),
            "404": error_response("No such model (model_not_found)"),
            "429": error_response("Rate limited (chat policy)"),
            "502": error_response("Every LLM provider failed or its circuit is open (Retry-After while open)"),
            "503": error_response("The chat gateway is unreachable"),
            "504": error_response("LLM timeout")
        }),
        Handler::Models | Handler::Model => json!({
            "200": {"description": "OpenAI's model list (or one model)", "content": {"application/json": {"schema": {"type": "object"}}}},
            "401": error_response("Bearer token required or invalid"),
            "404": error_response("No such model (model_not_found)")
        }),
        Handler::Embeddings => json!({
            "200": {"description": "The provider's embeddings list, as it sent it", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": error_response("Invalid input"),
            "401": error_response("Bearer token required or invalid"),
            "404": error_response("No such model (model_not_found)"),
            "429": error_response("Rate limited (chat policy)"),
            "502": error_response("Every deployment failed or its circuit is open (Retry-After while open)"),
            "503": error_response("The chat gateway is unreachable"),
            "504": error_response("LLM timeout")
        }),
        Handler::AdminLlmProviders | Handler::AdminLlmProviderUpdate => json!({
            "200": {"description": "Providers (or the changed one)", "content": {"application/json": {"schema": {"type": "object"}}}},
            "400": error_response("Invalid body"),
            "401": error_response("Admin credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such provider")
        }),
        Handler::ContentList | Handler::ContentGet | Handler::AdminContentList => json!({
            "200": {"description": "Content (ETag, Cache-Control)", "content": {"application/json": {"schema": {"type": "object"}}}},
            "304": {"description": "Not modified (If-None-Match)"},
            "400": error_response("Invalid cursor, limit or tag"),
            "401": error_response("Admin credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such published content")
        }),
        Handler::AdminContentGet => json!({
            "200": {"description": "The item, drafts included (ETag, Last-Modified, Cache-Control: private, no-store)", "content": {"application/json": {"schema": {"type": "object"}}}},
            "304": {"description": "Not modified (If-None-Match)"},
            "401": error_response("Admin credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such content")
        }),
        Handler::AdminContentCreate | Handler::AdminContentUpdate | Handler::AdminContentDelete => {
            json!({
                "200": {"description": "The item (ETag, Last-Modified)", "content": {"application/json": {"schema": {"type": "object"}}}},
                "201": {"description": "Created"},
                "204": {"description": "Deleted"},
                "400": error_response("Invalid field, or an If-Match that is not a list of entity tags"),
                "401": error_response("Admin credentials required"),
                "403": error_response("Not an admin"),
                "404": error_response("No such content"),
                "409": error_response("Slug taken"),
                "412": error_response("If-Match does not match the item's current ETag (someone changed it since you read it)"),
                "428": error_response("PUT without If-Match")
            })
        }
        Handler::ApiKeyCreate => json!({
            "201": {"description": "Created: the key and its secret, shown this once (no-store)", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "key": {"$ref": "#/components/schemas/ApiKey"}, "secret": {"type": "string", "pattern": "^pk_[A-Za-z0-9_-]{43}$"}}}}}},
            "400": error_response("Invalid name, scope, expiry, rate or budget"),
            "401": error_response("Credentials required"),
            "403": error_response("A scope beyond the owner's rights, or another account's key without admin"),
            "404": error_response("No such account"),
            "429": error_response("Rate limited")
        }),
        Handler::ApiKeyList => json!({
            "200": {"description": "Keys, newest first (revoked and expired ones included)", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "keys": {"type": "array", "items": {"$ref": "#/components/schemas/ApiKey"}}}}}}},
            "401": error_response("Credentials required"),
            "403": error_response("Another account's keys without admin"),
            "404": error_response("No such account")
        }),
        Handler::ApiKeyGet => json!({
            "200": {"description": "The key", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApiKey"}}}},
            "401": error_response("Credentials required"),
            "404": error_response("No such key (or not the caller's)")
        }),
        Handler::ApiKeyRevoke => json!({
            "204": {"description": "Revoked (also when it already was)"},
            "401": error_response("Credentials required"),
            "404": error_response("No such key (or not the caller's)")
        }),
        Handler::ApiKeyUsage | Handler::AdminUsage => json!({
            "200": {"description": "Usage rows (day, keyId, userId, model, requests, promptTokens, completionTokens, totalTokens) and totals; for one key also `key` and `budget` (tokens, usedTokens, remainingTokens, windowEndsAt)", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "rows": {"type": "array", "items": {"type": "object"}}, "totals": {"type": "object"}, "key": {"$ref": "#/components/schemas/ApiKey"}, "budget": {"type": ["object", "null"]}}}}}},
            "400": error_response("A day that is not YYYY-MM-DD, or no user and no key"),
            "401": error_response("Credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such key (or not the caller's)"),
            "503": error_response("The chat gateway is unreachable")
        }),
        Handler::Console => json!({
            "200": {"description": "The page or one of its files", "content": {"text/html": {"schema": {"type": "string"}}}},
            "304": {"description": "Not modified (If-None-Match)"},
            "404": error_response("No such console file")
        }),
        Handler::Jwks => json!({
            "200": {"description": "JSON Web Key Set", "content": {"application/json": {"schema": {"type": "object"}}}},
            "503": error_response("Auth service unavailable")
        }),
        Handler::OpenIdConfiguration => json!({
            "200": {"description": "OpenID Provider Metadata (the fields token verifiers read)", "content": {"application/json": {"schema": {"type": "object", "required": ["issuer", "jwks_uri", "id_token_signing_alg_values_supported"], "properties": {
                "issuer": {"type": "string"}, "jwks_uri": {"type": "string"},
                "id_token_signing_alg_values_supported": {"type": "array", "items": {"type": "string"}},
                "portico_endpoints": {"type": "object"}}}}}},
            "503": error_response("Auth service unavailable")
        }),
        Handler::PasswordReset => json!({
            "202": {"description": "Accepted; the same answer whether or not the address has an account", "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"type": "string", "enum": ["accepted"]}}}}}},
            "400": error_response("Not an email address"),
            "429": error_response("Rate limited per IP, or too many requests for this address (Retry-After)")
        }),
        Handler::PasswordResetConfirm => json!({
            "200": {"description": "Password set; every session revoked", "content": {"application/json": {"schema": {"type": "object", "properties": {"sessionsRevoked": {"type": "integer"}}}}}},
            "400": error_response("Invalid, used or expired token, or an unacceptable password"),
            "429": error_response("Rate limited")
        }),
        Handler::ChangePassword => json!({
            "200": {"description": "Password changed", "content": {"application/json": {"schema": {"type": "object", "properties": {"sessionsRevoked": {"type": "integer"}}}}}},
            "400": error_response("Unacceptable new password"),
            "401": error_response("Missing, invalid, expired or revoked bearer token"),
            "403": error_response("The current password is not correct"),
            "429": error_response("Rate limited or locked out (Retry-After)")
        }),
        Handler::Sessions | Handler::AdminSessions => json!({
            "200": {"description": "Live sessions, most recently used first", "content": {"application/json": {"schema": {"type": "object", "properties": {"sessions": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "createdAt": {"type": "string"}, "lastUsedAt": {"type": "string"},
                "ip": {"type": "string"}, "userAgent": {"type": "string"}, "current": {"type": "boolean"}}}}}}}}},
            "401": error_response("Credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such account")
        }),
        Handler::SessionRevoke | Handler::AdminSessionRevoke => json!({
            "204": {"description": "Session ended; its access tokens are refused"},
            "401": error_response("Credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such session (or account)")
        }),
        Handler::SessionsRevokeAll | Handler::AdminSessionsRevokeAll => json!({
            "200": {"description": "Every session ended", "content": {"application/json": {"schema": {"type": "object", "properties": {"sessionsRevoked": {"type": "integer"}}}}}},
            "401": error_response("Credentials required"),
            "403": error_response("Not an admin"),
            "404": error_response("No such account")
        }),
        Handler::DeleteMe | Handler::AdminDeleteUser => json!({
            "204": {"description": "Deleted: the account, its sessions, tokens and lockouts"},
            "400": error_response("Password missing"),
            "401": error_response("Credentials required"),
            "403": error_response("Wrong password, or not an admin"),
            "404": error_response("No such account"),
            "429": error_response("Rate limited or locked out (Retry-After)")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_segments() {
        assert!(match_path("/a/{slug}", "/a/x").is_some());
        assert!(match_path("/a/{slug}", "/a/").is_none());
        assert!(match_path("/a/{slug}", "/a/x/y").is_none());
        assert!(match_path("/healthz", "/healthz").is_some());
    }

    #[test]
    fn wrong_method_lists_allowed_ones() {
        match find(&Method::POST, "/healthz") {
            Match::MethodNotAllowed(methods) => {
                assert!(methods.contains(&Method::GET));
                assert!(methods.contains(&Method::HEAD));
            }
            other => panic!("expected 405, got {other:?}"),
        }
        assert!(matches!(find(&Method::GET, "/nope"), Match::NotFound));
    }
}
