//! Read-only admin lookups the console shows: one rate-limit bucket
//! (`RateLimitService.GetBucket`, never spending a token) and the login lockouts in force
//! (`AuthService.ListLockouts`). Both take their arguments from the query string; the services
//! check the admin credentials (`X-Admin-Key` or an admin bearer token), as for every admin route.

use http::StatusCode;
use portico_proto::{
    auth::{auth_service_client::AuthServiceClient, ListLockoutsRequest},
    ratelimit::{rate_limit_service_client::RateLimitServiceClient, GetBucketRequest},
};
use portico_telemetry::RequestContext;
use serde_json::json;
use tonic::Code;

use crate::{
    auth_routes::percent_decode,
    backends::Forwarded,
    finish,
    response::{self, Response},
    ApiError, Edge,
};

/// The network of a lockout that is the account-wide back-off rather than one network's.
const ACCOUNT_WIDE: &str = "*";

/// The `name=value` pairs of a query string, decoded (`+` is a space, `%XX` a byte); a name
/// outside `known` is refused, so a misspelt parameter is a 400 rather than silently ignored.
fn query_pairs(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |raw: &str| percent_decode(&raw.replace('+', " "));
        let name = decode(name);
        if !known.contains(&name.as_str()) {
            return Err(ApiError::new(
                Code::InvalidArgument,
                format!(
                    "unknown query parameter `{name}`: expected {}",
                    known.join(", ")
                ),
            ));
        }
        pairs.push((name, decode(value)));
    }
    Ok(pairs)
}

fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

impl Edge {
    /// `GET /api/v1/admin/ratelimit/buckets?policy=…&key=…`: the bucket as it is now.
    pub(crate) async fn ratelimit_bucket(
        &self,
        query: Option<&str>,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError> {
        let pairs = query_pairs(query, &["policy", "key"])?;
        let (Some(policy), Some(key)) = (param(&pairs, "policy"), param(&pairs, "key")) else {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "give `policy` (global, auth or chat) and `key` (e.g. a client IP or user id)",
            ));
        };
        let backend = &self.inner.backends.ratelimit;
        let request = self.call(
            GetBucketRequest {
                policy: policy.clone(),
                key: key.clone(),
            },
            context,
            forwarded,
        );
        let answer = RateLimitServiceClient::new(backend.channel.clone())
            .get_bucket(request)
            .await;
        let bucket = finish(backend, "GetBucket", answer)?;
        Ok(response::json_response(
            StatusCode::OK,
            &json!({
                "policy": policy,
                "key": key,
                "bucket": bucket.bucket,
                "limit": bucket.limit,
                "remaining": bucket.remaining,
                "resetAfterMs": bucket.reset_after_ms,
                "resetAfterSeconds": bucket.reset_after_ms.div_ceil(1000),
                "retryAfterMs": bucket.retry_after_ms,
            }),
        ))
    }

    /// `GET /api/v1/admin/auth/lockouts?email=…&limit=…`: lockouts in force, the latest to end
    /// first.
    pub(crate) async fn auth_lockouts(
        &self,
        query: Option<&str>,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError> {
        let pairs = query_pairs(query, &["email", "limit"])?;
        let limit = match param(&pairs, "limit") {
            None => 0,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidArgument,
                        "limit must be an integer from 1 to 1000",
                    )
                })?,
        };
        let backend = &self.inner.backends.auth;
        let request = self.call(
            ListLockoutsRequest {
                email: param(&pairs, "email").unwrap_or_default(),
                limit,
            },
            context,
            forwarded,
        );
        let answer = AuthServiceClient::new(backend.channel.clone())
            .list_lockouts(request)
            .await;
        let listed = finish(backend, "ListLockouts", answer)?;
        let lockouts: Vec<_> = listed
            .lockouts
            .into_iter()
            .map(|lockout| {
                json!({
                    "email": lockout.email,
                    "scope": if lockout.network == ACCOUNT_WIDE { "account" } else { "network" },
                    "network": lockout.network,
                    "lockedUntil": lockout.locked_until,
                    "remainingMs": lockout.remaining_ms,
                    "remainingSeconds": lockout.remaining_ms.div_ceil(1000),
                })
            })
            .collect();
        Ok(response::json_response(
            StatusCode::OK,
            &json!({ "lockouts": lockouts, "truncated": listed.truncated }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_unknown_names_refused() {
        let pairs = query_pairs(
            Some("policy=chat&key=2001%3Adb8%3A%3A%2F64"),
            &["policy", "key"],
        )
        .ok()
        .unwrap_or_default();
        assert_eq!(param(&pairs, "key").as_deref(), Some("2001:db8::/64"));
        let pairs = query_pairs(Some("email=a%2Bb%40example.com+"), &["email"])
            .ok()
            .unwrap_or_default();
        assert_eq!(param(&pairs, "email").as_deref(), Some("a+b@example.com "));
        let refused = query_pairs(Some("polcy=chat"), &["policy", "key"]).err();
        assert_eq!(refused.map(|e| e.status()), Some(StatusCode::BAD_REQUEST));
    }
}
