//! `/metrics` and its guard (docs/CONTRACT.md §7): none, secret, cidr — and a spoofed
//! `X-Forwarded-For` from an untrusted peer does not pass.

use crate::harness::TestSuite;

async fn scrape(suite: &TestSuite, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = suite.http.get(suite.url("/metrics"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("edge answers")
}

#[tokio::test]
async fn unguarded_metrics_expose_the_http_counters() {
    let suite = TestSuite::spawn().await;
    assert_eq!(suite.get("/healthz").await.status(), 200);
    let response = scrape(&suite, &[]).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("text");
    assert!(text.contains("http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(suite.get("/api/metrics").await.status() == 200);
}

#[tokio::test]
async fn secret_guard_needs_the_exact_secret() {
    let suite = TestSuite::builder()
        .env("METRICS_GUARD", "secret")
        .env("METRICS_GUARD_SECRET", "s3cret-value")
        .spawn()
        .await;
    assert_eq!(scrape(&suite, &[]).await.status(), 403);
    assert_eq!(
        scrape(&suite, &[("x-metrics-secret", "s3cret-valuX")])
            .await
            .status(),
        403
    );
    assert_eq!(
        scrape(&suite, &[("x-metrics-secret", "s3cret")])
            .await
            .status(),
        403
    );
    assert_eq!(
        scrape(&suite, &[("x-metrics-secret", "s3cret-value")])
            .await
            .status(),
        200
    );
    let body: serde_json::Value = scrape(&suite, &[]).await.json().await.expect("json");
    assert_eq!(body["error"]["code"], "PERMISSION_DENIED");
}

#[tokio::test]
async fn cidr_guard_checks_the_socket_peer_not_a_spoofed_header() {
    let outside = TestSuite::builder()
        .env("METRICS_GUARD", "cidr")
        .env("METRICS_GUARD_ALLOWLIST", "10.0.0.0/8")
        .spawn()
        .await;
    assert_eq!(scrape(&outside, &[]).await.status(), 403);
    // The test client (127.0.0.1) is not a trusted proxy: its X-Forwarded-For is ignored.
    assert_eq!(
        scrape(&outside, &[("x-forwarded-for", "10.1.2.3")])
            .await
            .status(),
        403
    );

    let inside = TestSuite::builder()
        .env("METRICS_GUARD", "cidr")
        .env("METRICS_GUARD_ALLOWLIST", "127.0.0.0/8")
        .spawn()
        .await;
    assert_eq!(scrape(&inside, &[]).await.status(), 200);
}

#[tokio::test]
async fn cidr_guard_believes_forwarded_for_only_from_trusted_proxies() {
    let suite = TestSuite::builder()
        .env("METRICS_GUARD", "cidr")
        .env("METRICS_GUARD_ALLOWLIST", "10.0.0.0/8")
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .spawn()
        .await;
    assert_eq!(
        scrape(&suite, &[("x-forwarded-for", "10.1.2.3")])
            .await
            .status(),
        200
    );
    assert_eq!(
        scrape(&suite, &[("x-forwarded-for", "203.0.113.5")])
            .await
            .status(),
        403
    );
    // A client prepending an allowed address does not help: the nearest untrusted hop counts.
    assert_eq!(
        scrape(&suite, &[("x-forwarded-for", "10.1.2.3, 203.0.113.5")])
            .await
            .status(),
        403
    );
}

#[tokio::test]
async fn disabled_metrics_are_404() {
    let suite = TestSuite::builder()
        .env("METRICS_ENABLED", "false")
        .spawn()
        .await;
    assert_eq!(scrape(&suite, &[]).await.status(), 404);
}
