//! The API key hooks: `POST /api/v1/api-keys` (durations as text, the secret shown once),
//! `GET /api/v1/api-keys/{id}/usage` and the admin usage route; listing, reading and revoking
//! keys are plain bindings the transcoder serves. Keys are the auth service's (it checks who
//! may manage which); usage is the chat gateway's, which the edge asks only after auth said the
//! caller may see the key.

use bytes::Bytes;
use http::StatusCode;
use portico_proto::{
    auth::{self as pb, auth_service_client::AuthServiceClient},
    chat::{self as chat_pb, chat_service_client::ChatServiceClient},
};
use portico_telemetry::RequestContext;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Code;

use crate::{
    backends::Forwarded,
    finish, parse_json, read_body,
    response::{self, Response},
    routes::Handler,
    transcoder::json::query_pairs,
    ApiError, Edge,
};

/// A duration given as seconds or as text (`30d`, `12h`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(serde_json::Number),
    Text(String),
}

impl Seconds {
    fn seconds(&self, field: &str) -> Result<u64, ApiError> {
        match self {
            Seconds::Number(n) => crate::whole::of(n).ok_or_else(|| {
                ApiError::new(
                    Code::InvalidArgument,
                    format!("{field} must be a whole number of seconds"),
                )
            }),
            Seconds::Text(text) => documented_text(field)
                .is_some_and(|pattern| pattern.is_match(text))
                .then(|| portico_config::parse_duration(text, portico_config::Unit::Seconds))
                .flatten()
                .map(|d| d.as_secs())
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidArgument,
                        format!("{field} must be seconds or a duration such as `30d` or `12h`"),
                    )
                }),
        }
    }
}

/// The text a duration field takes: the pattern of the string alternative in the field's
/// `portico.api.v1.schema` option, the very one the OpenAPI document states, compiled once. A
/// text that it refuses is refused, even one `parse_duration` could read (`1.5h`, `\u{A0}60`).
fn documented_text(field: &str) -> Option<&'static regex::Regex> {
    use std::sync::OnceLock;
    static EXPIRES_IN: OnceLock<Option<regex::Regex>> = OnceLock::new();
    static BUDGET_WINDOW: OnceLock<Option<regex::Regex>> = OnceLock::new();
    let (cell, name) = match field {
        "expiresIn" => (&EXPIRES_IN, "expires_in_seconds"),
        "budgetWindow" => (&BUDGET_WINDOW, "budget_window_seconds"),
        _ => return None,
    };
    cell.get_or_init(|| {
        let schema = crate::transcoder::rules::portico_schema_of(&format!(
            "portico.auth.v1.CreateApiKeyRequest.{name}"
        ))?;
        let text = schema["anyOf"]
            .as_array()?
            .iter()
            .find(|alternative| alternative["type"] == "string")?;
        regex::Regex::new(text["pattern"].as_str()?).ok()
    })
    .as_ref()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewKeyBody {
    name: String,
    scopes: Vec<String>,
    /// Admins: the owner (an account id or email).
    user: Option<String>,
    expires_in: Option<Seconds>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    requests_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    token_budget: Option<u64>,
    budget_window: Option<Seconds>,
}

fn param(params: &[(String, String)], name: &str) -> String {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

/// `YYYY-MM-DD`, or empty.
fn day(params: &[(String, String)], name: &str) -> Result<String, ApiError> {
    let value = param(params, name);
    let valid = value.is_empty()
        || (value.len() == 10
            && value.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            }));
    if valid {
        Ok(value)
    } else {
        Err(ApiError::new(
            Code::InvalidArgument,
            format!("{name} must be a day as YYYY-MM-DD"),
        ))
    }
}

fn optional_text(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        json!(text)
    }
}

fn optional_number(n: u64) -> Value {
    if n == 0 {
        Value::Null
    } else {
        json!(n)
    }
}

/// A key as the routes show it (never the secret).
pub(crate) fn key_json(key: &pb::ApiKey) -> Value {
    json!({
        "id": key.id,
        "userId": key.user_id,
        "name": key.name,
        "scopes": key.scopes,
        "prefix": key.prefix,
        "createdAt": key.created_at,
        "lastUsedAt": optional_text(&key.last_used_at),
        "expiresAt": optional_text(&key.expires_at),
        "revokedAt": optional_text(&key.revoked_at),
        "requestsPerMinute": optional_number(u64::from(key.requests_per_minute)),
        "tokenBudget": optional_number(key.token_budget),
        "budgetWindowSeconds": optional_number(key.budget_window_seconds),
    })
}

/// Usage rows and their totals.
fn usage_json(usage: &chat_pb::GetUsageResponse) -> Value {
    let rows: Vec<Value> = usage
        .rows
        .iter()
        .map(|row| {
            json!({
                "day": row.day,
                "keyId": row.api_key_id,
                "userId": row.user_id,
                "model": row.model,
                "requests": row.requests,
                "promptTokens": row.prompt_tokens,
                "completionTokens": row.completion_tokens,
                "totalTokens": row.prompt_tokens + row.completion_tokens,
            })
        })
        .collect();
    let sum = |f: fn(&chat_pb::UsageRow) -> u64| usage.rows.iter().map(f).sum::<u64>();
    json!({
        "rows": rows,
        "totals": {
            "requests": sum(|r| r.requests),
            "promptTokens": sum(|r| r.prompt_tokens),
            "completionTokens": sum(|r| r.completion_tokens),
            "totalTokens": sum(|r| r.prompt_tokens + r.completion_tokens),
        },
    })
}

/// What the API key routes read of the request besides its body.
pub(crate) struct KeyRequest<'a> {
    /// The `{id}` path parameter, decoded (empty when the route has none).
    pub id: String,
    /// The query string.
    pub query: Option<&'a str>,
    /// The request's headers (the admin usage route checks the credentials here).
    pub headers: &'a http::HeaderMap,
}

/// Makes `x-api-key: pk_…` an `Authorization: Bearer pk_…` (unless `Authorization` is there
/// already, which wins), so every route and service reads one credential. Anything else in
/// `x-api-key` is refused.
pub(crate) fn api_key_as_bearer(headers: &mut http::HeaderMap) -> Result<(), ApiError> {
    let Some(key) = headers.remove(portico_tokens::API_KEY_HEADER) else {
        return Ok(());
    };
    let valid = key
        .to_str()
        .is_ok_and(|k| portico_tokens::is_api_key(k) && k.len() <= 128);
    if !valid {
        return Err(ApiError::new(
            Code::Unauthenticated,
            "x-api-key must be a Portico API key (pk_…)",
        ));
    }
    if !headers.contains_key(http::header::AUTHORIZATION) {
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(key.as_bytes());
        if let Ok(value) = http::HeaderValue::from_bytes(&bearer) {
            headers.insert(http::header::AUTHORIZATION, value);
        }
    }
    Ok(())
}

impl Edge {
    /// Answers one of the API key routes.
    pub(crate) async fn api_keys<B>(
        &self,
        handler: Handler,
        http_request: KeyRequest<'_>,
        body: B,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let backend = &self.inner.backends.auth;
        let mut auth = AuthServiceClient::new(backend.channel.clone());
        let KeyRequest { id, query, headers } = http_request;
        let params = query_pairs(query);
        match handler {
            Handler::ApiKeyCreate => {
                let body: NewKeyBody = parse_json(&read_body(body).await?)?;
                let request = pb::CreateApiKeyRequest {
                    user: body.user.unwrap_or_default(),
                    name: body.name,
                    scopes: body.scopes,
                    expires_in_seconds: body
                        .expires_in
                        .map(|s| s.seconds("expiresIn"))
                        .transpose()?,
                    requests_per_minute: body.requests_per_minute,
                    token_budget: body.token_budget,
                    budget_window_seconds: body
                        .budget_window
                        .map(|s| s.seconds("budgetWindow"))
                        .transpose()?,
                };
                let created = finish(
                    backend,
                    "CreateApiKey",
                    auth.create_api_key(self.call(request, context, forwarded))
                        .await,
                )?;
                let key = created.key.unwrap_or_default();
                let mut response = response::json_response(
                    StatusCode::CREATED,
                    &json!({"key": key_json(&key), "secret": created.secret}),
                );
                // The secret is shown once: no cache may keep it.
                response.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                Ok(response)
            }
            Handler::ApiKeyUsage => {
                // Auth decides whether the caller may see this key; the usage is asked for
                // only then.
                let key = finish(
                    backend,
                    "GetApiKey",
                    auth.get_api_key(self.call(pb::GetApiKeyRequest { id }, context, forwarded))
                        .await,
                )?;
                let request = chat_pb::GetUsageRequest {
                    api_key_id: key.id.clone(),
                    user_id: String::new(),
                    from_day: day(&params, "from")?,
                    to_day: day(&params, "to")?,
                    budget_window_seconds: key.budget_window_seconds,
                };
                let usage = self.usage(request, context).await?;
                let mut body = usage_json(&usage);
                body["key"] = key_json(&key);
                body["budget"] = if key.token_budget > 0 {
                    json!({
                        "tokens": key.token_budget,
                        "windowSeconds": key.budget_window_seconds,
                        "usedTokens": usage.window_used_tokens,
                        "remainingTokens": key.token_budget.saturating_sub(usage.window_used_tokens),
                        "windowEndsAt": portico_telemetry::rfc3339_millis(usage.window_ends_at * 1000),
                    })
                } else {
                    Value::Null
                };
                Ok(response::json_response(StatusCode::OK, &body))
            }
            Handler::AdminUsage => {
                let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
                portico_tokens::authorize_admin(
                    &metadata,
                    self.inner.admin_key.as_ref(),
                    &self.inner.verifier,
                )
                .await
                .map_err(|refusal| ApiError::from_status(&refusal.into(), "auth"))?;
                let request = chat_pb::GetUsageRequest {
                    api_key_id: param(&params, "key"),
                    user_id: param(&params, "user"),
                    from_day: day(&params, "from")?,
                    to_day: day(&params, "to")?,
                    budget_window_seconds: 0,
                };
                if request.api_key_id.is_empty() && request.user_id.is_empty() {
                    return Err(ApiError::new(
                        Code::InvalidArgument,
                        "give `user` (an account id), `key` (an API key id) or both",
                    ));
                }
                let usage = self.usage(request, context).await?;
                Ok(response::json_response(StatusCode::OK, &usage_json(&usage)))
            }
            _ => Err(ApiError::new(Code::Internal, "not an API key route")),
        }
    }

    /// The request's API key's own rate (policy `apikey`, keyed by the key's id), when the
    /// request brings a key with one. A key that does not verify is refused here: 401.
    pub(crate) async fn api_key_rate(
        &self,
        headers: &http::HeaderMap,
        client_ip: std::net::IpAddr,
        context: &RequestContext,
    ) -> Result<Option<crate::limits::Verdict>, crate::limits::Refusal> {
        let Some(key) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|token| portico_tokens::is_api_key(token))
        else {
            return Ok(None);
        };
        let identity = self.inner.verifier.verify(key).await.map_err(|refused| {
            tracing::info!(reason = %refused.0, "API key refused");
            crate::limits::Refusal {
                error: ApiError::new(
                    Code::Unauthenticated,
                    "the API key is invalid, expired or revoked",
                ),
                decision: None,
                policy: None,
            }
        })?;
        let Some(rate) = identity
            .api_key
            .as_ref()
            .map(|grant| grant.requests_per_minute)
            .filter(|rate| *rate > 0)
        else {
            return Ok(None);
        };
        let key_id = identity.api_key.map(|grant| grant.id).unwrap_or_default();
        self.inner
            .limiter
            .check_shaped(
                "apikey",
                &key_id,
                Some(portico_limiter::Limit::per_window(
                    rate,
                    std::time::Duration::from_secs(60),
                )),
                client_ip,
                context,
            )
            .await
    }

    /// ChatService.GetUsage as the edge (a trusted peer): the caller's right to see it was
    /// checked before, so its credentials are not forwarded.
    async fn usage(
        &self,
        request: chat_pb::GetUsageRequest,
        context: &RequestContext,
    ) -> Result<chat_pb::GetUsageResponse, ApiError> {
        let backend = &self.inner.backends.chat;
        let forwarded = Forwarded {
            client_ip: None,
            authorization: None,
            admin_key: None,
            signer: self.inner.signer.clone(),
        };
        let answer = ChatServiceClient::new(backend.channel.clone())
            .get_usage(self.call(request, context, &forwarded))
            .await;
        finish(backend, "GetUsage", answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded_and_days_checked() {
        let params = query_pairs(Some("user=alice%40example.com&from=2026-12-01&x"));
        assert_eq!(param(&params, "user"), "alice@example.com");
        assert_eq!(day(&params, "from").ok().as_deref(), Some("2026-12-01"));
        assert_eq!(day(&params, "to").ok().as_deref(), Some(""));
        let bad = query_pairs(Some("from=yesterday"));
        assert!(day(&bad, "from").is_err());
    }

    #[test]
    fn a_duration_as_text_is_taken_exactly_as_the_document_states() {
        let text = |t: &str| Seconds::Text(t.into());
        for field in ["expiresIn", "budgetWindow"] {
            assert!(documented_text(field).is_some(), "{field} has a pattern");
            for (given, seconds) in [("30d", 2_592_000), (" 12h ", 43_200), ("3600", 3600)] {
                assert_eq!(text(given).seconds(field).ok(), Some(seconds), "{given}");
            }
            assert_eq!(text("60000ms").seconds(field).ok(), Some(60));
            // `parse_duration` reads each of these; the document's pattern does not take them.
            for refused in [
                "1.5h",
                "\u{A0}3600",
                "60\u{A0}s",
                "3600.1234567",
                "2.5m",
                "soon",
            ] {
                let error = text(refused).seconds(field).expect_err(refused);
                assert!(
                    error.message.contains(field),
                    "{refused}: {}",
                    error.message
                );
            }
        }
    }
}
