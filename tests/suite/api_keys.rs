//! API keys for programs (issue 14): created, listed, used (Bearer and `x-api-key`) and revoked
//! through the edge; revocation reaching another edge replica within a second; scopes that never
//! outrank the owner; per-key request rates; token budgets that hold under 20 concurrent streams
//! on Redis and in memory, refund failures and settle to the provider's usage; usage rows; and
//! keys that never reach the logs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    fake_llm::{End, FakeLlm, Reply},
    harness::{self, PrivateRedis, TestSuite},
};

const ADMIN_KEY: &str = "api-keys-test-admin-key-0123456789abcdef";

/// A suite whose one provider is `fake` (alias `fake-model`), with room in every rate limit.
async fn suite_with(fake: &FakeLlm, extra: &[(&str, &str)]) -> TestSuite {
    let mut builder = TestSuite::builder()
        .env(
            "LLM_PROVIDERS_FILE",
            &harness::providers_file(&[("fake", fake.base_url.as_str(), 0)]),
        )
        .env("RATE_LIMIT_CAPACITY", "1000")
        .env("RATE_LIMIT_REFILL_RATE", "1000")
        .env("RATE_LIMIT_GLOBAL_MAX", "10000")
        .env("ADMIN_API_KEY", ADMIN_KEY);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.spawn().await
}

/// `POST /api/v1/api-keys` with `body` as `bearer`.
async fn create(suite: &TestSuite, bearer: &str, body: Value) -> reqwest::Response {
    suite
        .http
        .post(suite.url("/api/v1/api-keys"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("edge answers")
}

/// A new key of `bearer`'s account: (id, secret).
async fn new_key(suite: &TestSuite, bearer: &str, body: Value) -> (String, String) {
    let response = create(suite, bearer, body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    (
        created["key"]["id"].as_str().expect("id").to_owned(),
        created["secret"].as_str().expect("secret").to_owned(),
    )
}

/// A key for `user` created by an operator with `X-Admin-Key`.
async fn new_key_with_admin_key(suite: &TestSuite, user: &str) -> (String, String) {
    let response = suite
        .http
        .post(suite.url("/api/v1/api-keys"))
        .header("x-admin-key", ADMIN_KEY)
        .json(&json!({"name": "issued by ops", "scopes": ["chat"], "user": user}))
        .send()
        .await
        .expect("edge");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("json");
    (
        created["key"]["id"].as_str().expect("id").to_owned(),
        created["secret"].as_str().expect("secret").to_owned(),
    )
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "fake-model", "max_tokens": 10, "stream": stream,
           "messages": [{"role": "user", "content": "hi"}]})
}

async fn chat(
    base_url: &str,
    http: &reqwest::Client,
    key: &str,
    stream: bool,
) -> reqwest::Response {
    http.post(format!("{base_url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(stream))
        .send()
        .await
        .expect("edge answers")
}

async fn get(suite: &TestSuite, path: &str, bearer: &str) -> reqwest::Response {
    suite
        .http
        .get(suite.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("edge answers")
}

/// The worst case `metering::chat_worst_case` reserves for [`chat_body`]: the JSON size of its
/// messages / 3 rounded up, 16 tokens of overhead, and `max_tokens`.
fn reservation_of_chat_body() -> u64 {
    // The gateway's estimate: the request as it forwards it (without `model` and `stream`, which
    // it owns) at 3 bytes a token plus 16, and `max_tokens`.
    let mut body = chat_body(false);
    let map = body.as_object_mut().expect("object");
    map.remove("model");
    map.remove("stream");
    let bytes = serde_json::to_string(&body).expect("json").len() as u64;
    bytes.div_ceil(3) + 16 + 10
}

/// A second edge replica in front of `suite`'s services.
async fn second_edge(suite: &TestSuite) -> (String, tokio_util::sync::CancellationToken) {
    use portico::Component;
    let url = |c: Component| format!("http://{}", suite.service_addr(c));
    let mut vars: HashMap<String, String> = [
        ("APP_ENV", "test".to_owned()),
        ("DATABASE_URL", suite.database_url.clone()),
        ("GRPC_PEER_KEY", harness::TEST_PEER_KEY.to_owned()),
        ("AUTH_GRPC_URL", url(Component::Auth)),
        ("CONTENT_GRPC_URL", url(Component::Content)),
        ("CHAT_GRPC_URL", url(Component::Chat)),
        ("RATELIMIT_GRPC_URL", url(Component::RateLimit)),
        ("RATE_LIMIT_WHITELIST", "127.0.0.1/32".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(redis) = &suite.redis_url {
        vars.insert("REDIS_URL".into(), redis.clone());
    }
    let settings = portico_config::Settings::from_source(&vars).expect("edge settings");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let edge = portico_edge::serve(
        &settings,
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        shutdown.clone(),
    )
    .await
    .expect("second edge");
    (format!("http://{}", edge.local_addr), shutdown)
}

#[tokio::test]
async fn keys_are_created_shown_once_listed_used_and_revoked() {
    let suite = TestSuite::spawn().await;
    let token = suite.login("program-owner@example.com").await;

    let response = create(
        &suite,
        &token,
        json!({"name": "cron job", "scopes": ["chat"], "expiresIn": "30d",
               "requestsPerMinute": 600, "tokenBudget": 100000, "budgetWindow": "1d"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let created: Value = response.json().await.expect("json");
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("pk_") && secret.len() == 46, "{secret}");
    let key = &created["key"];
    let id = key["id"].as_str().expect("id").to_owned();
    assert_eq!(key["scopes"], json!(["chat"]));
    assert_eq!(key["prefix"], json!(&secret[..9]));
    assert_eq!(key["tokenBudget"], 100000);
    assert_eq!(key["budgetWindowSeconds"], 86400);
    assert_eq!(key["requestsPerMinute"], 600);
    assert!(key["expiresAt"].is_string() && key["revokedAt"].is_null());

    // Listed without the secret.
    let listed = get(&suite, "/api/v1/api-keys", &token).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let text = listed.text().await.expect("body");
    assert!(text.contains(&id) && !text.contains(&secret[9..]), "{text}");

    // Used as a bearer token and as `x-api-key`: it acts for its owner.
    let me: Value = get(&suite, "/api/v1/auth/me", &secret)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["email"], "program-owner@example.com");
    let models = suite
        .http
        .get(suite.url("/v1/models"))
        .header("x-api-key", &secret)
        .send()
        .await
        .expect("edge");
    assert_eq!(models.status(), StatusCode::OK);
    let bogus = suite
        .http
        .get(suite.url("/v1/models"))
        .header("x-api-key", "not-a-portico-key")
        .send()
        .await
        .expect("edge");
    assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);
    let shown: Value = get(&suite, &format!("/api/v1/api-keys/{id}"), &token)
        .await
        .json()
        .await
        .expect("json");
    assert!(shown["lastUsedAt"].is_string(), "{shown}");

    // A key cannot manage accounts or keys without the admin scope.
    let password = suite
        .http
        .post(suite.url("/api/v1/auth/password"))
        .bearer_auth(&secret)
        .json(&json!({"currentPassword": "correct horse battery", "newPassword": "another horse battery"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(password.status(), StatusCode::FORBIDDEN);
    let by_key = create(
        &suite,
        &secret,
        json!({"name": "child", "scopes": ["chat"]}),
    )
    .await;
    assert_eq!(by_key.status(), StatusCode::FORBIDDEN);

    // Bad input is a 400 naming what to fix.
    for (body, fragment) in [
        (json!({"name": "", "scopes": ["chat"]}), "name"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "x", "scopes": ["root"]}), "scope"),
        (
            json!({"name": "x", "scopes": ["chat"], "expiresIn": "soon"}),
            "expiresIn",
        ),
        // Text the document's pattern refuses, though a duration parser could read it.
        (
            json!({"name": "x", "scopes": ["chat"], "budgetWindow": "1.5h"}),
            "budgetWindow",
        ),
        (
            json!({"name": "x", "scopes": ["chat"], "budgetWindow": 5}),
            "budgetWindow",
        ),
    ] {
        let response = create(&suite, &token, body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(fragment)),
            "{error}"
        );
    }

    // Someone else's key is not found; revoking is the owner's (and idempotent).
    let other = suite.login("someone-else@example.com").await;
    let foreign = suite
        .http
        .delete(suite.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&other)
        .send()
        .await
        .expect("edge");
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    for _ in 0..2 {
        let revoked = suite
            .http
            .delete(suite.url(&format!("/api/v1/api-keys/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .expect("edge");
        assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    }
    // The auth service itself never caches: refused at once.
    let after = get(&suite, "/api/v1/auth/me", &secret).await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let listed: Value = get(&suite, "/api/v1/api-keys", &token)
        .await
        .json()
        .await
        .expect("json");
    assert!(listed["keys"][0]["revokedAt"].is_string(), "{listed}");
}

#[tokio::test]
async fn the_openapi_document_describes_the_key_routes_and_their_parameters() {
    let suite = TestSuite::spawn().await;
    let spec = suite.openapi().await;
    let usage = &spec["paths"]["/api/v1/api-keys/{id}/usage"]["get"];
    let names: Vec<(&str, &str)> = usage["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(names, [("id", "path"), ("from", "query"), ("to", "query")]);
    let create = &spec["paths"]["/api/v1/api-keys"]["post"];
    // The body's schema is the request message's, by reference.
    let body = &create["requestBody"]["content"]["application/json"]["schema"];
    let name = body["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .expect("a schema reference");
    assert!(spec["components"]["schemas"][name]["properties"]["tokenBudget"].is_object());
    assert!(create["responses"]["201"].is_object());
    assert!(spec["components"]["schemas"]["ApiKey"]["properties"]["scopes"].is_object());
    assert!(spec["paths"]["/api/v1/api-keys/{id}"]["delete"].is_object());
    assert!(spec["paths"]["/api/v1/admin/usage"]["get"]["parameters"].is_array());
}

#[tokio::test]
async fn admins_manage_any_accounts_keys() {
    let suite = TestSuite::builder()
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .spawn()
        .await;
    let admin = suite.login_admin("key-admin@example.com").await;
    suite.login("managed@example.com").await;
    let (id, _) = new_key(
        &suite,
        &admin,
        json!({"name": "for managed", "scopes": ["chat"], "user": "managed@example.com"}),
    )
    .await;
    let listed: Value = get(
        &suite,
        "/api/v1/api-keys?user=managed%40example.com",
        &admin,
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(listed["keys"][0]["id"], json!(id));
    // With X-Admin-Key too, naming the account.
    let by_admin_key = suite
        .http
        .get(suite.url("/api/v1/api-keys?user=managed%40example.com"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("edge");
    assert_eq!(by_admin_key.status(), StatusCode::OK);
    let (_, by_operator) = new_key_with_admin_key(&suite, "managed@example.com").await;
    assert!(by_operator.starts_with("pk_"));
    let missing_user = suite
        .http
        .post(suite.url("/api/v1/api-keys"))
        .header("x-admin-key", ADMIN_KEY)
        .json(&json!({"name": "whose?", "scopes": ["chat"]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(missing_user.status(), StatusCode::BAD_REQUEST);
    // An ordinary user cannot.
    let user = suite.login("nosy@example.com").await;
    let refused = get(&suite, "/api/v1/api-keys?user=managed%40example.com", &user).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let revoked = suite
        .http
        .delete(suite.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("edge");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_revoked_key_is_refused_on_another_replica_within_a_second() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let suite = suite_with(&fake, &[]).await;
    let (replica, _stop) = second_edge(&suite).await;
    let token = suite.login("replicas@example.com").await;
    let (id, secret) = new_key(&suite, &token, json!({"name": "sdk", "scopes": ["chat"]})).await;

    // Used on both replicas, so both have it cached.
    for base in [suite.base_url.as_str(), replica.as_str()] {
        let answer = chat(base, &suite.http, &secret, false).await;
        assert_eq!(answer.status(), StatusCode::OK, "{base}");
    }
    let revoked = suite
        .http
        .delete(suite.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("edge");
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let revoked_at = Instant::now();
    // The other replica refuses it within a second (each attempt is a real request).
    loop {
        let answer = chat(&replica, &suite.http, &secret, false).await;
        if answer.status() == StatusCode::UNAUTHORIZED {
            let error: Value = answer.json().await.expect("json");
            assert_eq!(error["error"]["code"], "invalid_api_key", "OpenAI's shape");
            break;
        }
        assert_eq!(answer.status(), StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still accepted {:?} after revocation",
            revoked_at.elapsed()
        );
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn scopes_are_enforced_and_a_key_never_outranks_its_owner() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let suite = suite_with(&fake, &[]).await;
    let user = suite.login("plain-user@example.com").await;
    for scope in ["content:write", "admin"] {
        let refused = create(
            &suite,
            &user,
            json!({"name": "too much", "scopes": [scope]}),
        )
        .await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{scope}");
    }

    let admin = suite.login_admin("scoped-admin@example.com").await;
    let (_, chat_key) = new_key(&suite, &admin, json!({"name": "chat", "scopes": ["chat"]})).await;
    let (_, writer) = new_key(
        &suite,
        &admin,
        json!({"name": "cms importer", "scopes": ["content:write"]}),
    )
    .await;
    let (_, full) = new_key(&suite, &admin, json!({"name": "ops", "scopes": ["admin"]})).await;
    let write = |key: String, slug: String| {
        let http = suite.http.clone();
        let url = suite.url("/api/v1/admin/content");
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"slug": slug, "title": "T", "body": "B", "status": "published"}))
                .send()
                .await
                .expect("edge")
                .status()
        }
    };
    let unlock = |key: String| {
        let http = suite.http.clone();
        let url = suite.url("/api/v1/admin/auth/unlock");
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"email": "someone@example.com"}))
                .send()
                .await
                .expect("edge")
                .status()
        }
    };

    // A chat key chats but cannot write content or act as an admin.
    assert_eq!(
        chat(&suite.base_url, &suite.http, &chat_key, false)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        write(chat_key.clone(), "by-chat".into()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(unlock(chat_key.clone()).await, StatusCode::FORBIDDEN);
    // A content key writes content, and nothing else.
    assert_eq!(
        write(writer.clone(), "by-writer".into()).await,
        StatusCode::CREATED
    );
    assert_eq!(unlock(writer.clone()).await, StatusCode::FORBIDDEN);
    assert_eq!(
        chat(&suite.base_url, &suite.http, &writer, false)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    // An admin key of an admin does what its owner may.
    assert_eq!(unlock(full.clone()).await, StatusCode::OK);
    assert_eq!(
        write(full.clone(), "by-admin-key".into()).await,
        StatusCode::CREATED
    );

    // The owner is demoted: the owner's role is checked at use, so within a second neither key
    // outranks the owner any more.
    let settings = portico_config::Settings::from_source(&HashMap::from([(
        "DATABASE_URL".to_owned(),
        suite.database_url.clone(),
    )]))
    .expect("settings");
    assert!(
        portico_auth::set_admin(&settings, "scoped-admin@example.com", false)
            .await
            .expect("revoke-admin")
    );
    let demoted = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let slug = format!("after-demotion-{n}");
        let (written, unlocked) = (
            write(writer.clone(), slug).await,
            unlock(full.clone()).await,
        );
        if written == StatusCode::FORBIDDEN && unlocked == StatusCode::FORBIDDEN {
            break;
        }
        assert!(
            demoted.elapsed() < Duration::from_secs(1),
            "{written} {unlocked}"
        );
    }
    // The chat key still chats: chat is every user's right.
    assert_eq!(
        chat(&suite.base_url, &suite.http, &chat_key, false)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_keys_own_request_rate_is_enforced_per_key() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let suite = suite_with(&fake, &[]).await;
    let token = suite.login("rated@example.com").await;
    let (_, slow) = new_key(
        &suite,
        &token,
        json!({"name": "slow", "scopes": ["chat"], "requestsPerMinute": 2}),
    )
    .await;
    let (_, other) = new_key(&suite, &token, json!({"name": "other", "scopes": ["chat"]})).await;
    for _ in 0..2 {
        assert_eq!(
            chat(&suite.base_url, &suite.http, &slow, false)
                .await
                .status(),
            StatusCode::OK
        );
    }
    let limited = chat(&suite.base_url, &suite.http, &slow, false).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    let policy = crate::ratelimit::fields::member(&limited, "ratelimit-policy", "apikey");
    assert_eq!(
        (policy.param("q"), policy.param("w")),
        (Some(2), Some(60)),
        "the key's own rate: 2 per minute"
    );
    let limit = crate::ratelimit::fields::member(&limited, "ratelimit", "apikey");
    assert_eq!(limit.param("r"), Some(0));
    // Another key of the same owner has its own bucket.
    assert_eq!(
        chat(&suite.base_url, &suite.http, &other, false)
            .await
            .status(),
        StatusCode::OK
    );
}

/// A budget of `BUDGET` tokens and 20 concurrent streamed requests, each really costing 12
/// (7 prompt + 5 completion, as the fake reports): the total ends within one reservation of the
/// budget, refused requests are 429 in OpenAI's shape with `Retry-After` at the window's end,
/// and the charge equals the usage rows exactly.
async fn budget_holds_under_concurrent_streams(redis_url: &str) {
    const BUDGET: u64 = 100;
    let fake = FakeLlm::start(Reply::Stream(&["a", "b", "c", "d", "e"], End::Done)).await;
    let suite = suite_with(&fake, &[("REDIS_URL", redis_url)]).await;
    let token = suite.login("budgeted@example.com").await;
    let (id, secret) = new_key(
        &suite,
        &token,
        json!({"name": "budgeted", "scopes": ["chat"], "tokenBudget": BUDGET, "budgetWindow": "1d"}),
    )
    .await;

    let requests = (0..20).map(|_| {
        let (http, base, secret) = (suite.http.clone(), suite.base_url.clone(), secret.clone());
        tokio::spawn(async move {
            let response = chat(&base, &http, &secret, true).await;
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body = response.text().await.expect("body");
            (status, retry_after, body)
        })
    });
    let mut completed = 0u64;
    let mut refused = 0;
    for outcome in futures_util::future::join_all(requests).await {
        let (status, retry_after, body) = outcome.expect("task");
        match status {
            StatusCode::OK => {
                assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
                assert!(
                    !body.contains("\"usage\""),
                    "the caller did not ask for usage"
                );
                completed += 1;
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let error: Value = serde_json::from_str(&body).expect("json");
                assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
                assert_eq!(error["error"]["code"], "insufficient_quota", "{error}");
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("time")
                    .as_secs();
                let window_end = now - now % 86_400 + 86_400;
                let wait = retry_after.expect("Retry-After");
                assert!(wait.abs_diff(window_end - now) <= 2, "{wait}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(completed >= 1 && refused >= 1, "{completed} {refused}");

    let usage: Value = get(&suite, &format!("/api/v1/api-keys/{id}/usage"), &token)
        .await
        .json()
        .await
        .expect("json");
    let used = usage["budget"]["usedTokens"].as_u64().expect("used");
    assert_eq!(
        used,
        completed * 12,
        "settled to what the provider reported: {usage}"
    );
    assert!(
        used <= BUDGET + reservation_of_chat_body(),
        "{used} is more than one reservation over {BUDGET}"
    );
    assert_eq!(usage["totals"]["totalTokens"], json!(used));
    assert_eq!(usage["totals"]["requests"], json!(completed));
}

#[tokio::test]
async fn a_token_budget_holds_under_20_concurrent_streams_in_memory() {
    budget_holds_under_concurrent_streams("").await;
}

#[tokio::test]
async fn a_token_budget_holds_under_20_concurrent_streams_on_redis() {
    let redis = PrivateRedis::start().await;
    budget_holds_under_concurrent_streams(&redis.url).await;
}

async fn key_usage(suite: &TestSuite, token: &str, id: &str) -> Value {
    get(suite, &format!("/api/v1/api-keys/{id}/usage"), token)
        .await
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn failed_upstream_calls_refund_their_reservation() {
    let fake = FakeLlm::start(Reply::Status(500, None)).await;
    // The failures must not open the circuit: the later calls are to reach the provider.
    let suite = suite_with(&fake, &[("LLM_CB_FAILURE_THRESHOLD", "1000")]).await;
    let token = suite.login("refunded@example.com").await;
    // Room for two reservations: if failures kept theirs, the third request would be refused.
    let reservation = reservation_of_chat_body();
    let (id, secret) = new_key(
        &suite,
        &token,
        json!({"name": "refunds", "scopes": ["chat"], "tokenBudget": 2 * reservation}),
    )
    .await;
    for stream in [false, true, false] {
        let failed = chat(&suite.base_url, &suite.http, &secret, stream).await;
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY, "stream {stream}");
    }
    let after_failures = key_usage(&suite, &token, &id).await;
    assert_eq!(
        after_failures["budget"]["usedTokens"], 0,
        "{after_failures}"
    );
    assert_eq!(
        after_failures["totals"]["requests"], 3,
        "failures are counted, not charged"
    );
    // And the budget is whole: a real answer fits, charged what the provider reported.
    fake.set_default(Reply::Answer("now it works"));
    let ok = chat(&suite.base_url, &suite.http, &secret, false).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let answered = key_usage(&suite, &token, &id).await["budget"]["usedTokens"]
        .as_u64()
        .expect("used");
    assert!(answered > 0 && answered < reservation);
    // A stream that breaks after part of the answer reached the caller is not a refund (the
    // provider made those tokens): with no usage reported, its reservation stays charged.
    fake.set_default(Reply::Stream(&["half", "an"], End::Break));
    let broken = chat(&suite.base_url, &suite.http, &secret, true).await;
    assert_eq!(broken.status(), StatusCode::OK);
    let body = broken.text().await.expect("body");
    assert!(body.contains("half") && !body.contains("[DONE]"), "{body}");
    let after_break = key_usage(&suite, &token, &id).await;
    assert_eq!(
        after_break["budget"]["usedTokens"],
        json!(answered + reservation),
        "{after_break}"
    );
}

#[tokio::test]
async fn usage_rows_match_the_providers_reported_usage_exactly() {
    let completion = json!({
        "id": "chatcmpl-u", "object": "chat.completion", "created": 1, "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "counted"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 123, "completion_tokens": 45, "total_tokens": 168}
    });
    let fake = FakeLlm::start(Reply::Raw(completion.to_string())).await;
    let suite = suite_with(&fake, &[]).await;
    let token = suite.login("counted@example.com").await;
    let (id, secret) = new_key(
        &suite,
        &token,
        json!({"name": "counted", "scopes": ["chat"]}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            chat(&suite.base_url, &suite.http, &secret, false)
                .await
                .status(),
            StatusCode::OK
        );
    }
    // A stream whose usage chunk says 11 + 3, asked for by the caller this time.
    fake.then(Reply::Chunks(vec![
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hey"}, "finish_reason": "stop"}]})
        .to_string(),
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "fake-model", "choices": [],
               "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}})
        .to_string(),
    ]));
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let streamed = suite
        .http
        .post(suite.url("/v1/chat/completions"))
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .expect("edge")
        .text()
        .await
        .expect("body");
    assert!(streamed.contains("\"completion_tokens\":3"), "{streamed}");

    let usage: Value = get(&suite, &format!("/api/v1/api-keys/{id}/usage"), &token)
        .await
        .json()
        .await
        .expect("json");
    let rows = usage["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!(rows[0]["model"], "fake-model");
    assert_eq!(rows[0]["keyId"], json!(id));
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(rows[0]["promptTokens"], 123 * 2 + 11);
    assert_eq!(rows[0]["completionTokens"], 45 * 2 + 3);
    assert!(usage["budget"].is_null(), "no budget on this key");

    // The admin API sums a user's keys.
    let owner = usage["key"]["userId"].as_str().expect("owner").to_owned();
    let admin = suite
        .http
        .get(suite.url(&format!("/api/v1/admin/usage?user={owner}")))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("edge");
    assert_eq!(admin.status(), StatusCode::OK);
    let admin: Value = admin.json().await.expect("json");
    assert_eq!(admin["totals"]["totalTokens"], 123 * 2 + 11 + 45 * 2 + 3);
    // Another user cannot read it.
    let other = suite.login("not-the-owner@example.com").await;
    let refused = get(&suite, &format!("/api/v1/api-keys/{id}/usage"), &other).await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);

    // Prometheus: bounded labels, never a key id.
    let metrics = suite.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("api_key_tokens_total{model=\"fake-model\",kind=\"prompt\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(&id), "a key id became a label");
}

/// Everything the suite logs while the test runs on this thread (the suite's tasks run on the
/// test's current-thread runtime), spans with their fields included.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn keys_are_never_logged_or_put_on_spans() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let suite = suite_with(&fake, &[]).await;
    // Tests on other threads (no subscriber) may cache a callsite as uninteresting while this
    // one runs: every step asks the callsites again first.
    let fresh = tracing::callsite::rebuild_interest_cache;
    fresh();
    let token = suite.login("secretive@example.com").await;
    fresh();
    let (id, secret) = new_key(&suite, &token, json!({"name": "quiet", "scopes": ["chat"]})).await;
    fresh();
    chat(&suite.base_url, &suite.http, &secret, false).await;
    fresh();
    chat(&suite.base_url, &suite.http, &secret, true)
        .await
        .text()
        .await
        .expect("body");
    suite
        .http
        .get(suite.url("/v1/models"))
        .header("x-api-key", &secret)
        .send()
        .await
        .expect("edge");
    // A wrong key (one character changed) and a revoked one are refused — and not logged.
    let mut wrong = secret.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'A' { b'B' } else { b'A' };
    let wrong = String::from_utf8(wrong).expect("ascii");
    fresh();
    assert_eq!(
        chat(&suite.base_url, &suite.http, &wrong, false)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    suite
        .http
        .delete(suite.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("edge");
    fresh();
    get(&suite, "/api/v1/auth/me", &secret).await;

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("logs")).into_owned();
    assert!(
        logs.contains("http.request") && logs.contains(&id),
        "the capture saw the suite: {}",
        &logs[..logs.len().min(3000)]
    );
    // Not the key, not its secret part, not the wrong key.
    for needle in [secret.as_str(), &secret[9..], wrong.as_str()] {
        assert!(!logs.contains(needle), "a key reached the logs");
    }
}
