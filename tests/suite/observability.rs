//! What operators' tools read (issue 16): `/metrics` in both exposition formats, with the
//! process, build and gRPC server metrics, and cache lookups counted where they happen.

use serde_json::json;

use crate::harness::TestSuite;

const KEY: &str = "observability-admin-key-0123456789abcdef";

/// The value of one series in `text`, if it is there.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(suite: &TestSuite, accept: &str) -> (String, String) {
    let response = suite
        .http
        .get(suite.url("/metrics"))
        .header("accept", accept)
        .send()
        .await
        .expect("edge");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    (content_type, response.text().await.expect("text"))
}

#[tokio::test]
async fn metrics_answer_openmetrics_when_asked_and_text_0_0_4_otherwise() {
    let suite = TestSuite::spawn().await;
    assert_eq!(suite.get("/healthz").await.status(), 200);

    let (content_type, openmetrics) = scrape(
        &suite,
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .await;
    assert!(content_type.starts_with("application/openmetrics-text"));
    assert!(openmetrics.ends_with("# EOF\n"));
    assert!(openmetrics.contains("# TYPE http_requests counter\n"));

    let (content_type, text) = scrape(&suite, "text/plain;version=0.0.4").await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"));
    // Every counter's HELP and TYPE name its `_total` series, as promtool expects.
    assert!(text.contains("# HELP http_requests_total "));
    assert!(text.contains("# TYPE http_requests_total counter\n"));
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        assert!(value(&text, series).is_some_and(|v| v > 0.0), "{series}");
    }
    assert!(text.contains(&format!(
        "portico_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // The edge's readiness probes are gRPC calls every service counts.
    assert!(text.contains("grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"grpc.health.v1.Health\",grpc_method=\"Check\",grpc_code=\"OK\"}"));
    assert!(
        text.contains("rate_limit_exceeded_total{policy=\"chat\"}"),
        "present before any refusal"
    );
    // Nothing asks for a content-type default: curl's `*/*` gets text.
    let (content_type, _) = scrape(&suite, "*/*").await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
}

#[tokio::test]
async fn the_edge_copy_counts_its_hits_and_the_service_its_misses() {
    let suite = TestSuite::builder().env("ADMIN_API_KEY", KEY).spawn().await;
    let created = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", KEY)
        .json(&json!({"slug": "counted", "title": "Counted", "body": "b", "tags": [], "status": "published"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(created.status(), 201);
    let hits = |text: &str| {
        value(text, "cache_requests_total{layer=\"edge\",result=\"hit\"}").unwrap_or(0.0)
    };
    let misses = |text: &str| {
        value(text, "cache_requests_total{layer=\"edge\",result=\"miss\"}").unwrap_or(0.0)
    };
    let (_, before) = scrape(&suite, "text/plain").await;

    for _ in 0..6 {
        assert_eq!(suite.get("/api/v1/content/counted").await.status(), 200);
    }

    let (_, after) = scrape(&suite, "text/plain").await;
    // Other tests in this process only add to the counters: ours are at least there.
    assert!(
        hits(&after) - hits(&before) >= 5.0,
        "5 of 6 reads from the edge's copy"
    );
    assert!(
        misses(&after) - misses(&before) >= 1.0,
        "the first read missed"
    );
    assert!(
        value(&after, "cache_requests_total{layer=\"l1\",result=\"miss\"}").is_some()
            || value(
                &after,
                "cache_requests_total{layer=\"redis\",result=\"miss\"}"
            )
            .is_some(),
        "the content service counted the miss that reached it"
    );
}
