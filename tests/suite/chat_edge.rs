//! The chat routes at the edge: validation, the bearer requirement, and the `chat` rate limit
//! policy per user or per IP. The built-in `echo` provider answers (no provider configured).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::TestSuite;

fn conversation() -> Value {
    json!({"messages": [{"role": "user", "content": "Hello"}]})
}

async fn chat(
    suite: &TestSuite,
    path: &str,
    body: &Value,
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut request = suite.http.post(suite.url(path)).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("edge answers")
}

#[tokio::test]
async fn conversations_are_validated() {
    // Rate limiting comes first (floods of malformed requests are limited too): room for all.
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_CAPACITY", "100")
        .spawn()
        .await;
    for (path, body, fragment) in [
        ("/api/v1/chat", json!({"messages": []}), "1 to 256"),
        (
            "/api/v1/chat",
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "role `wizard`",
        ),
        (
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
            "temperature",
        ),
        // Bounds hold for the number sent, not for what an f32 makes of it (2, infinity, -0).
        (
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 1e308}),
            "temperature",
        ),
        (
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "x"}],
                "temperature": f64::from_bits(2.0f64.to_bits() + 1)}),
            "temperature",
        ),
        (
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "x"}],
                "temperature": -f64::from_bits(1)}),
            "temperature",
        ),
        (
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
            "unknown field",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        ("/v1/embeddings", json!({"input": []}), "input"),
        ("/v1/embeddings", json!({"input": 42}), "input"),
    ] {
        let response = chat(&suite, path, &body, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path} {body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(fragment)),
            "{error}"
        );
    }
    // OpenAI SDKs send fields Portico ignores; those are fine on the OpenAI route.
    let openai = json!({"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 1, "user": "u1"});
    assert_eq!(
        chat(&suite, "/v1/chat/completions", &openai, None)
            .await
            .status(),
        StatusCode::OK
    );
    let streamed = json!({"messages": [{"role": "user", "content": "x"}], "stream": true});
    assert_eq!(
        chat(&suite, "/api/v1/chat", &streamed, None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn anonymous_callers_share_a_chat_bucket_per_ip() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_CAPACITY", "2")
        .spawn()
        .await;
    for remaining in [1, 0] {
        let response = chat(&suite, "/api/v1/chat", &conversation(), None).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "the echo provider answers"
        );
        let policy = crate::ratelimit::fields::member(&response, "ratelimit-policy", "chat");
        assert_eq!(policy.param("q"), Some(2));
        let limit = crate::ratelimit::fields::member(&response, "ratelimit", "chat");
        assert_eq!(limit.param("r"), Some(remaining));
    }
    let refused = chat(&suite, "/v1/chat/completions", &conversation(), None).await;
    assert_eq!(
        refused.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "both chat routes share the bucket"
    );
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (1..=4).contains(&retry),
        "0.333 tokens/s: the next token within ~3.003 s, not {retry}"
    );
    let body: Value = refused.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`chat`")),
        "{body}"
    );
}

#[tokio::test]
async fn signed_in_callers_get_a_chat_bucket_each() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_CAPACITY", "1")
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await;
    let ann = suite.login("ann@example.com").await;
    let ben = suite.login("ben@example.com").await;
    assert_eq!(
        chat(&suite, "/api/v1/chat", &conversation(), Some(&ann))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        chat(&suite, "/api/v1/chat", &conversation(), Some(&ann))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        chat(&suite, "/api/v1/chat", &conversation(), Some(&ben))
            .await
            .status(),
        StatusCode::OK,
        "same IP, another user: another bucket"
    );
    assert_eq!(
        chat(&suite, "/api/v1/chat", &conversation(), None)
            .await
            .status(),
        StatusCode::OK,
        "anonymous callers from that IP have their own bucket too"
    );
    let forged = chat(&suite, "/api/v1/chat", &conversation(), Some("not-a-token")).await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anonymous_chat_can_be_switched_off() {
    let suite = TestSuite::builder()
        .env("CHAT_ALLOW_ANONYMOUS", "false")
        .spawn()
        .await;
    let anonymous = chat(&suite, "/api/v1/chat", &conversation(), None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let token = suite.login("cy@example.com").await;
    assert_eq!(
        chat(&suite, "/api/v1/chat", &conversation(), Some(&token))
            .await
            .status(),
        StatusCode::OK
    );
}
