//! The operator console at `/console`: embedded files under a strict Content-Security-Policy,
//! no inline script, validators for caching. (The page itself is driven in Chromium by
//! tools/console-e2e.)

use crate::harness::TestSuite;

#[tokio::test]
async fn console_is_served_with_a_strict_csp_and_no_inline_script() {
    let suite = TestSuite::spawn().await;

    let page = suite.get("/console").await;

    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("cache-control"), "no-cache");
    assert!(!header("x-correlation-id").is_empty());
    let html = page.text().await.expect("body");
    let scripts: Vec<&str> = html
        .match_indices("<script")
        .map(|(at, _)| &html[at..at + html[at..].find('>').expect("tag ends")])
        .collect();
    assert_eq!(scripts, ["<script src=\"/console/console.js\" defer"]);
    assert!(!html.contains("<style") && !html.contains(" style="));
}

#[tokio::test]
async fn console_files_carry_etags_and_revalidate_with_304() {
    let suite = TestSuite::spawn().await;

    for (path, content_type) in [
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let first = suite.get(path).await;
        assert_eq!(first.status(), 200, "{path}");
        assert!(first.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with(content_type));
        assert!(first.headers().contains_key("content-security-policy"));
        let etag = first.headers()["etag"].clone();

        let again = suite
            .http
            .get(suite.url(path))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .expect("edge answers");

        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag);
    }
    // Only the embedded files: never a path into the file system.
    let missing = suite.get("/console/..%2FCargo.toml").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(suite.get("/console/nope.js").await.status(), 404);
}
