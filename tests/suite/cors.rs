//! CORS (docs/CONTRACT.md §5): exact allowlist, preflight 204, nothing for disallowed origins, `Vary`.

use crate::harness::TestSuite;

const ALLOWED: &str = "https://app.example.com";

#[tokio::test]
async fn allowed_origin_gets_the_headers() {
    let suite = TestSuite::builder()
        .env("CORS_ORIGINS", ALLOWED)
        .spawn()
        .await;
    let response = suite
        .http
        .get(suite.url("/healthz"))
        .header("origin", ALLOWED)
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(response.headers()["vary"], "Origin");
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii");
    assert!(exposed.contains("x-correlation-id"));
    // Scripts can read the rate limit fields in either form (RATE_LIMIT_LEGACY_HEADERS).
    for name in ["ratelimit-policy", "ratelimit,", "ratelimit-remaining"] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    assert!(response
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
}

#[tokio::test]
async fn disallowed_origin_gets_no_cors_headers() {
    let suite = TestSuite::builder()
        .env("CORS_ORIGINS", ALLOWED)
        .spawn()
        .await;
    let response = suite
        .http
        .get(suite.url("/healthz"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["vary"], "Origin");
    let cors: Vec<_> = response
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(cors.is_empty(), "{cors:?}");
}

#[tokio::test]
async fn preflight_is_answered_at_the_edge() {
    let suite = TestSuite::builder()
        .env("CORS_ORIGINS", ALLOWED)
        .env("CORS_ALLOW_CREDENTIALS", "true")
        .spawn()
        .await;
    let response = suite
        .http
        .request(reqwest::Method::OPTIONS, suite.url("/api/v1/auth/login"))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
    let methods = response.headers()["access-control-allow-methods"]
        .to_str()
        .expect("ascii");
    assert!(methods.contains("POST"));
    let headers = response.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii");
    assert!(headers.contains("authorization") && headers.contains("content-type"));

    let refused = suite
        .http
        .request(reqwest::Method::OPTIONS, suite.url("/api/v1/auth/login"))
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("edge answers");
    assert_eq!(refused.status(), 204);
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(refused
        .headers()
        .get("access-control-allow-methods")
        .is_none());
}

#[tokio::test]
async fn explicit_wildcard_allows_any_origin() {
    let suite = TestSuite::builder().env("CORS_ORIGINS", "*").spawn().await;
    let response = suite
        .http
        .get(suite.url("/healthz"))
        .header("origin", "https://anyone.example.org")
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
}
