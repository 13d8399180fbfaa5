//! The chat gateway against an in-process fake provider: circuit breaker, retries, failover,
//! timeouts, streaming (order, mid-stream failure, cancellation), the admin routes, the OpenAI
//! wire format (pass-through both ways, tool calls, `n`), model aliases and balancing,
//! `/v1/models`, `/v1/embeddings` and GenAI metrics, over gRPC and through the edge.

use std::time::Duration;

use portico_limiter::ManualClock;
use portico_proto::chat::{self as pb, chat_service_client::ChatServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::{transport::Channel, Code};

use crate::{
    fake_llm::{End, FakeLlm, Reply},
    harness::{self, TestSuite},
};

const ADMIN_KEY: &str = "chat-admin-key-for-tests-0123456789abcdef";

fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn ask(text: &str) -> pb::CompleteRequest {
    pb::CompleteRequest {
        messages: vec![pb::ChatMessage {
            role: "user".into(),
            content: text.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn client(addr: std::net::SocketAddr) -> ChatServiceClient<Channel> {
    ChatServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
}

async fn circuit(client: &mut ChatServiceClient<Channel>, name: &str) -> String {
    client
        .list_providers(pb::ListProvidersRequest {})
        .await
        .expect("list")
        .into_inner()
        .providers
        .into_iter()
        .find(|p| p.name == name)
        .expect("provider listed")
        .circuit_state
}

/// A suite whose chat gateway uses `providers` (name, fake, priority).
async fn suite_with(providers: &[(&str, &FakeLlm, i32)], extra: &[(&str, &str)]) -> TestSuite {
    let listed: Vec<(&str, &str, i32)> = providers
        .iter()
        .map(|(name, fake, priority)| (*name, fake.base_url.as_str(), *priority))
        .collect();
    let mut builder = TestSuite::builder()
        .env("LLM_PROVIDERS_FILE", &harness::providers_file(&listed))
        .env("RATE_LIMIT_CAPACITY", "1000")
        .env("ADMIN_API_KEY", ADMIN_KEY);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.spawn().await
}

/// `POST /api/v1/chat` with one "hi": the answer's JSON (any status).
async fn say_hi(suite: &TestSuite) -> Value {
    suite
        .post(
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .json()
        .await
        .expect("json")
}

fn conversation(stream: bool) -> Value {
    json!({"model": "fake-model", "stream": stream, "messages": [{"role": "user", "content": "Hello"}]})
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn circuit_opens_after_the_threshold_fails_fast_then_half_opens_and_closes() {
    let fake = FakeLlm::start(Reply::Status(500, None)).await;
    let name = unique("flaky");
    let file = harness::providers_file(&[(&name, &fake.base_url, 0)]);
    let clock = ManualClock::new(1_800_000_000_000_000);
    let (addr, _shutdown) = harness::spawn_chat(
        &[
            ("LLM_PROVIDERS_FILE", &file),
            ("LLM_CB_FAILURE_THRESHOLD", "5"),
            ("LLM_CB_RESET_TIMEOUT", "30s"),
        ],
        clock.clone(),
    )
    .await;
    let mut chat = client(addr).await;

    // One call is an attempt and two retries: three consecutive failures, still closed.
    let first = chat.complete(ask("hi")).await.expect_err("500s");
    assert_eq!(first.code(), Code::Unavailable);
    assert_eq!(fake.requests(), 3);
    assert_eq!(circuit(&mut chat, &name).await, "closed");
    // The fifth failure opens it; the call stops there.
    let second = chat.complete(ask("hi")).await.expect_err("500s");
    assert_eq!(second.code(), Code::Unavailable);
    assert_eq!(fake.requests(), 5);
    assert_eq!(circuit(&mut chat, &name).await, "open");
    let gauge = format!("circuit_breaker_state{{name=\"{name}\"}} 2");
    assert!(portico_telemetry::metrics::encode_text().contains(&gauge));

    // Open: refused at once, without calling upstream, with a reason and Retry-After.
    fake.set_default(Reply::Answer("recovered"));
    let refused = chat.complete(ask("hi")).await.expect_err("open");
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(fake.requests(), 5, "an open circuit must not call upstream");
    let metadata = refused.metadata();
    assert_eq!(
        metadata
            .get("x-portico-error")
            .and_then(|v| v.to_str().ok()),
        Some("llm-unavailable")
    );
    assert_eq!(
        metadata.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("30")
    );
    assert!(
        refused.message().contains("circuit open"),
        "{}",
        refused.message()
    );

    // After the reset timeout: half-open, one probe, success closes it.
    clock.advance(Duration::from_secs(30));
    assert_eq!(circuit(&mut chat, &name).await, "half_open");
    let answer = chat.complete(ask("hi")).await.expect("probe succeeds");
    assert_eq!(answer.get_ref().provider, name);
    assert_eq!(
        answer
            .get_ref()
            .message
            .as_ref()
            .map(|m| m.content.as_str()),
        Some("recovered")
    );
    assert_eq!(fake.requests(), 6);
    assert_eq!(circuit(&mut chat, &name).await, "closed");
    let gauge = format!("circuit_breaker_state{{name=\"{name}\"}} 0");
    assert!(portico_telemetry::metrics::encode_text().contains(&gauge));
}

#[tokio::test]
async fn a_provider_going_down_flips_its_dependency_gauge_with_no_readiness_call() {
    // Only the chat gateway runs (no edge, so nothing calls /readyz): the gauge follows the
    // circuit the calls themselves move.
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let name = unique("gauged");
    let file = harness::providers_file(&[(&name, &fake.base_url, 0)]);
    let clock = ManualClock::new(1_800_000_000_000_000);
    let (addr, _shutdown) = harness::spawn_chat(
        &[
            ("LLM_PROVIDERS_FILE", &file),
            ("LLM_CB_FAILURE_THRESHOLD", "3"),
            ("LLM_CB_RESET_TIMEOUT", "30s"),
        ],
        clock.clone(),
    )
    .await;
    let mut chat = client(addr).await;
    let series = |up: u8| {
        format!("dependency_up{{component=\"chat-gateway\",dependency=\"llm:{name}\"}} {up}")
    };
    let metrics = portico_telemetry::metrics::encode_text();
    assert!(
        metrics.contains(&series(1)),
        "up once configured:\n{metrics}"
    );

    fake.set_default(Reply::Status(500, None));
    // One call is three failed attempts: the threshold, so the circuit opens.
    let failed = chat.complete(ask("hi")).await.expect_err("500s");
    assert_eq!(failed.code(), Code::Unavailable);
    let metrics = portico_telemetry::metrics::encode_text();
    assert!(metrics.contains(&series(0)), "down:\n{metrics}");

    // Still 0 while half-open; the probe's success brings it back to 1.
    fake.set_default(Reply::Answer("recovered"));
    clock.advance(Duration::from_secs(30));
    assert_eq!(circuit(&mut chat, &name).await, "half_open");
    assert!(portico_telemetry::metrics::encode_text().contains(&series(0)));
    chat.complete(ask("hi")).await.expect("probe succeeds");
    let metrics = portico_telemetry::metrics::encode_text();
    assert!(metrics.contains(&series(1)), "up again:\n{metrics}");
}

#[tokio::test]
async fn a_503_is_retried_then_succeeds_and_a_400_is_neither_retried_nor_failed_over() {
    let primary = FakeLlm::start(Reply::Answer("fine now")).await;
    let backup = FakeLlm::start(Reply::Answer("from the backup")).await;
    let suite = suite_with(
        &[
            (&unique("primary"), &primary, 0),
            (&unique("backup"), &backup, 1),
        ],
        &[],
    )
    .await;

    primary.then(Reply::Status(503, None));
    let response = suite
        .post(
            "/api/v1/chat",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["message"]["content"], "fine now");
    assert_eq!(primary.requests(), 2, "one 503, one retry");
    assert_eq!(backup.requests(), 0);

    primary.then(Reply::Status(400, None));
    let response = suite
        .post("/v1/chat/completions", conversation(false))
        .await;
    let error = harness::assert_error(
        response,
        StatusCode::BAD_REQUEST,
        "refused the request (HTTP 400)",
    )
    .await;
    assert!(
        !error.to_string().contains("fake says"),
        "the provider's own text stays in the logs: {error}"
    );
    assert_eq!(primary.requests(), 3, "a caller's 400 is not retried");
    assert_eq!(backup.requests(), 0, "nor failed over");
}

#[tokio::test]
async fn failover_follows_priority_and_an_admin_change_applies_at_once() {
    let first = FakeLlm::start(Reply::Status(502, None)).await;
    let second = FakeLlm::start(Reply::Answer("second speaking")).await;
    let third = FakeLlm::start(Reply::Answer("third speaking")).await;
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let suite = suite_with(&[(&a, &first, 1), (&b, &second, 2), (&c, &third, 3)], &[]).await;

    let body = say_hi(&suite).await;
    assert_eq!(body["provider"], json!(b), "{body}");
    assert_eq!(first.requests(), 3);
    assert_eq!(third.requests(), 0);
    // The upstream got what the caller asked for.
    assert_eq!(second.bodies()[0]["messages"][0]["content"], "hi");

    // A 429 whose Retry-After exceeds the budget is not waited for: next provider at once.
    first.set_default(Reply::Status(429, Some(3600)));
    let body = say_hi(&suite).await;
    assert_eq!(body["provider"], json!(b));
    assert_eq!(first.requests(), 4, "no retry before the Retry-After");

    // Admin: put `c` first; the very next request goes there.
    let admin = |method: reqwest::Method, path: String| {
        suite
            .http
            .request(method, suite.url(&path))
            .header("x-admin-key", ADMIN_KEY)
    };
    let changed = admin(
        reqwest::Method::PUT,
        format!("/api/v1/admin/llm/providers/{c}"),
    )
    .json(&json!({"priority": 0}))
    .send()
    .await
    .expect("put");
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.expect("json");
    assert_eq!(
        (changed["priority"].clone(), changed["circuitState"].clone()),
        (json!(0), json!("closed"))
    );
    let body = say_hi(&suite).await;
    assert_eq!(body["provider"], json!(c));
    assert_eq!(body["message"]["content"], "third speaking");

    // Disabling works the same way (the name percent-encoded this time, as a client may send
    // it), and the list shows the order.
    let encoded = format!("%{:02X}{}", c.as_bytes()[0], &c[1..]);
    let disabled = admin(
        reqwest::Method::PUT,
        format!("/api/v1/admin/llm/providers/{encoded}"),
    )
    .json(&json!({"enabled": false}))
    .send()
    .await
    .expect("put");
    assert_eq!(disabled.status(), StatusCode::OK);
    let listed: Value = admin(reqwest::Method::GET, "/api/v1/admin/llm/providers".into())
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let names: Vec<&str> = listed["providers"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, [c.as_str(), a.as_str(), b.as_str()]);
    assert_eq!(listed["providers"][0]["enabled"], false);
    let served_before = third.requests();
    let body = say_hi(&suite).await;
    assert_eq!(body["provider"], json!(b));
    assert_eq!(third.requests(), served_before);

    // The routes refuse non-admins and bad input.
    let anonymous = suite
        .http
        .get(suite.url("/api/v1/admin/llm/providers"))
        .send()
        .await
        .expect("get");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong = suite
        .http
        .put(suite.url(&format!("/api/v1/admin/llm/providers/{c}")))
        .header("x-admin-key", "wrong")
        .json(&json!({"priority": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    for (path, body, status) in [
        (
            "/api/v1/admin/llm/providers/nobody".to_owned(),
            json!({"priority": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/api/v1/admin/llm/providers/{c}"),
            json!({}),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/v1/admin/llm/providers/{c}"),
            json!({"priority": "high"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = admin(reqwest::Method::PUT, path.clone())
            .json(&body)
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), status, "{path} {body}");
    }
}

#[tokio::test]
async fn every_provider_failing_is_502_and_an_open_circuit_gives_retry_after() {
    let fake = FakeLlm::start(Reply::Status(500, None)).await;
    let name = unique("down");
    let suite = suite_with(
        &[(&name, &fake, 0)],
        &[
            ("LLM_CB_FAILURE_THRESHOLD", "3"),
            ("LLM_CB_RESET_TIMEOUT", "60s"),
        ],
    )
    .await;
    let response = suite
        .post("/v1/chat/completions", conversation(false))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(
        response.headers().get("retry-after").is_none(),
        "not open yet"
    );
    // Three failures opened it: the next call is refused with Retry-After and no upstream call.
    let response = suite
        .post("/v1/chat/completions", conversation(false))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("60")
    );
    assert_eq!(fake.requests(), 3);
    // Readiness shows it, and chat is non-critical: degraded, not unhealthy.
    let ready = suite.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::OK);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["checks"]["chat"]["circuitBreaker"], "open");
    assert_eq!(ready["checks"]["chat"]["providers"][&name], "open");
}

#[tokio::test]
async fn a_stalled_provider_is_a_504_streamed_or_not() {
    let fake = FakeLlm::start(Reply::Stall).await;
    let suite = suite_with(
        &[(&unique("slow"), &fake, 0)],
        &[
            ("LLM_TIMEOUT", "400ms"),
            ("LLM_CB_FAILURE_THRESHOLD", "100"),
        ],
    )
    .await;
    for stream in [false, true] {
        let response = suite
            .post("/v1/chat/completions", conversation(stream))
            .await;
        assert_eq!(
            response.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "stream={stream}"
        );
        let error: Value = response.json().await.expect("json");
        // OpenAI's error shape on the OpenAI route.
        assert_eq!(
            (
                error["error"]["type"].clone(),
                error["error"]["code"].clone()
            ),
            (json!("timeout_error"), json!("timeout")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_stream_arrives_in_order_as_openai_frames_it_and_ends_with_done() {
    let fake = FakeLlm::start(Reply::Stream(&["The", "quick", "fox"], End::Done)).await;
    let name = unique("streamer");
    let suite = suite_with(&[(&name, &fake, 0)], &[]).await;
    let mut body = conversation(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = suite.post("/v1/chat/completions", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = events(&response.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json chunk"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "The quick fox");
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(chunk["created"].is_i64() && chunk["model"].is_string());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"] == "stop")
        .count();
    assert_eq!(finish, 1);
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );
    // Tokens are counted per provider; the attempt's duration is observed.
    let metrics = portico_telemetry::metrics::encode_text();
    for line in [
        format!("llm_tokens_total{{provider=\"{name}\",kind=\"completion\"}} 3"),
        format!("llm_tokens_total{{provider=\"{name}\",kind=\"prompt\"}} 7"),
        format!("llm_request_duration_seconds_count{{provider=\"{name}\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    // The provider was asked to stream, with the caller's model.
    assert_eq!(fake.bodies()[0]["stream"], true);
    assert_eq!(fake.bodies()[0]["model"], "fake-model");
}

#[tokio::test]
async fn a_provider_failing_mid_stream_ends_in_an_error_event_never_done() {
    let fake = FakeLlm::start(Reply::Stream(&["partial", "answer"], End::Break)).await;
    let backup = FakeLlm::start(Reply::Answer("backup")).await;
    let suite = suite_with(
        &[
            (&unique("breaks"), &fake, 0),
            (&unique("spare"), &backup, 1),
        ],
        &[],
    )
    .await;
    for end in [End::Break, End::ErrorEvent] {
        fake.set_default(Reply::Stream(&["partial", "answer"], end));
        for path in ["/v1/chat/completions", "/api/v1/chat"] {
            let mut body = conversation(true);
            if path == "/api/v1/chat" {
                body.as_object_mut().expect("object").remove("model");
            }
            let response = suite.post(path, body).await;
            assert_eq!(response.status(), StatusCode::OK, "the stream had started");
            let events = events(&response.text().await.expect("body"));
            assert!(
                !events.iter().any(|e| e == "[DONE]"),
                "{end:?} {path}: {events:?}"
            );
            let last: Value = serde_json::from_str(events.last().expect("events")).expect("json");
            assert_eq!(
                last["error"]["code"], "UNAVAILABLE",
                "{end:?} {path}: {last}"
            );
            assert!(
                events.len() >= 2,
                "the partial answer came first: {events:?}"
            );
        }
    }
    assert_eq!(backup.requests(), 0, "no failover after the first byte");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let fake = FakeLlm::start(Reply::Stream(&["never", "ending"], End::Hold)).await;
    let suite = suite_with(&[(&unique("held"), &fake, 0)], &[]).await;
    let mut response = suite.post("/v1/chat/completions", conversation(true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let first = response
        .chunk()
        .await
        .expect("read")
        .expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(response);
    // Bounded only so a regression fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(20), fake.cancelled())
        .await
        .expect("the fake saw its request cancelled");
}

#[tokio::test]
async fn the_openai_shape_without_streaming_and_the_echo_default() {
    let fake = FakeLlm::start(Reply::Answer("four words right here")).await;
    let suite = suite_with(&[(&unique("plain"), &fake, 0)], &[]).await;
    let mut body = conversation(false);
    body["temperature"] = json!(0.5);
    body["max_tokens"] = json!(64);
    body["stop"] = json!("END");
    let response = suite.post("/v1/chat/completions", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["id"].is_string() && answer["created"].is_i64());
    assert_eq!(answer["choices"][0]["index"], 0);
    assert_eq!(
        answer["choices"][0]["message"],
        json!({"role": "assistant", "content": "four words right here"})
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11})
    );
    let sent = &fake.bodies()[0];
    assert_eq!(
        (
            sent["temperature"].clone(),
            sent["max_tokens"].clone(),
            sent["stop"].clone()
        ),
        (json!(0.5), json!(64), json!("END")),
        "the caller's fields as they came"
    );

    // With no provider configured the built-in echo answers, deterministically.
    let offline = TestSuite::builder()
        .env("RATE_LIMIT_CAPACITY", "100")
        .spawn()
        .await;
    let echo: Value = offline
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "say it back"}]}),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(echo["choices"][0]["message"]["content"], "say it back");
    assert_eq!(echo["model"], "echo");
    let streamed = offline
        .post(
            "/api/v1/chat",
            json!({"stream": true, "messages": [{"role": "user", "content": "say it back"}]}),
        )
        .await
        .text()
        .await
        .expect("body");
    let deltas: Vec<String> = events(&streamed)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(e).expect("json")["delta"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(deltas, ["say", " it", " back", ""]);
}

/// Writes an `LLM_PROVIDERS_FILE` with `providers` (name, base URL) and a `models:` section
/// given as YAML text.
fn alias_file(providers: &[(&str, &str)], models: &str) -> String {
    let mut text = String::from("providers:\n");
    for (name, base_url) in providers {
        text.push_str(&format!("  - name: {name}\n    base_url: {base_url}\n"));
    }
    text.push_str(models);
    let path = std::env::temp_dir().join(format!(
        "portico-models-{}.yaml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, text).expect("write providers file");
    path.to_string_lossy().into_owned()
}

async fn alias_suite(file: &str, extra: &[(&str, &str)]) -> TestSuite {
    let mut builder = TestSuite::builder()
        .env("LLM_PROVIDERS_FILE", file)
        .env("RATE_LIMIT_CAPACITY", "1000")
        .env("ADMIN_API_KEY", ADMIN_KEY);
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.spawn().await
}

/// Every field of OpenAI's chat contract (and one it does not have yet).
fn everything() -> Value {
    json!({
        "model": "chat-default",
        "messages": [
            {"role": "developer", "content": "Answer with a tool."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and what does this say?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "parallel_tool_calls": false,
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": true}},
        "n": 2, "seed": 42, "top_p": 0.9, "temperature": 0.7,
        "presence_penalty": 0.5, "frequency_penalty": -0.25, "logit_bias": {"50256": -100},
        "logprobs": true, "top_logprobs": 3, "user": "user-123", "stop": ["\n\n", "END"],
        "max_completion_tokens": 256, "reasoning_effort": "low",
        "metadata": {"team": "search"}, "service_tier": "auto", "store": false,
        "a_field_openai_adds_next_year": {"nested": [1, 2, {"deep": true}]}
    })
}

#[tokio::test]
async fn the_provider_receives_exactly_the_callers_fields_with_the_deployments_model() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let name = unique("vendor");
    let file = alias_file(
        &[(&name, &fake.base_url)],
        &format!("models:\n  - name: chat-default\n    deployments:\n      - {{provider: {name}, model: gpt-4o-2024-08-06}}\n"),
    );
    let suite = alias_suite(&file, &[]).await;

    let caller = everything();
    let response = suite.post("/v1/chat/completions", caller.clone()).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    let mut expected = caller.clone();
    expected["model"] = json!("gpt-4o-2024-08-06");
    assert_eq!(
        fake.bodies()[0],
        expected,
        "every field, only the model rewritten"
    );

    // Streaming: the same, plus what the gateway owns (stream, and usage always asked for).
    let mut streamed = caller.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": false});
    let response = suite.post("/v1/chat/completions", streamed.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.text().await.expect("body");
    let mut expected = streamed;
    expected["model"] = json!("gpt-4o-2024-08-06");
    expected["stream_options"] = json!({"include_usage": true});
    assert_eq!(fake.bodies()[1], expected);
    assert_eq!(
        fake.paths(),
        ["/v1/chat/completions", "/v1/chat/completions"]
    );

    // Over gRPC, typed fields and the JSON rest make the same provider request.
    let mut chat = ChatServiceClient::new(suite.channel(portico::Component::Chat).await);
    let mut rest = caller.clone();
    let messages = rest
        .as_object_mut()
        .and_then(|o| o.remove("messages"))
        .expect("messages");
    rest["messages"] = messages;
    rest.as_object_mut().expect("object").remove("temperature");
    let mut request = tonic::Request::new(pb::CompleteRequest {
        model: "chat-default".into(),
        temperature: Some(0.7),
        openai_json: rest.to_string(),
        ..Default::default()
    });
    harness::as_edge(&mut request, "127.0.0.1");
    chat.complete(request).await.expect("complete");
    let mut expected = caller;
    expected["model"] = json!("gpt-4o-2024-08-06");
    assert_eq!(fake.bodies()[2], expected);
}

#[tokio::test]
async fn tool_call_replies_and_streamed_tool_call_deltas_reach_the_client_unchanged() {
    let completion = r#"{"id":"chatcmpl-tools","object":"chat.completion","created":1700000000,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_abc","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"cats\"}"}},{"id":"call_b","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"dogs\"}"}}]},"logprobs":{"content":[{"token":"x","logprob":-0.1,"bytes":[120],"top_logprobs":[]}]},"finish_reason":"tool_calls"},{"index":1,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":16,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":0}},"service_tier":"default"}"#;
    let chunks: Vec<String> = [
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"fp_abc","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"lookup","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"cats\"}"}}]},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"dogs\"}"}}]},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null}"#,
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42,"completion_tokens_details":{"reasoning_tokens":4}}}"#,
    ]
    .map(str::to_owned)
    .to_vec();
    let fake = FakeLlm::start(Reply::Raw(completion.to_owned())).await;
    let suite = suite_with(&[(&unique("tools"), &fake, 0)], &[]).await;
    let mut body = everything();
    body["model"] = json!("fake-model");

    let response = suite.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.expect("body"),
        completion,
        "byte for byte: both tool calls, the refusal, logprobs, usage details"
    );

    fake.set_default(Reply::Chunks(chunks.clone()));
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = suite.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut expected = chunks.clone();
    expected.push("[DONE]".into());
    assert_eq!(
        events(&response.text().await.expect("body")),
        expected,
        "every delta as sent, in order"
    );
    // Without include_usage the caller gets no usage chunk; the rest is unchanged.
    body["stream_options"] = json!({"include_usage": false});
    let response = suite.post("/v1/chat/completions", body).await;
    let mut expected = chunks[..chunks.len() - 1].to_vec();
    expected.push("[DONE]".into());
    assert_eq!(events(&response.text().await.expect("body")), expected);

    // gRPC callers get the typed view too.
    fake.set_default(Reply::Raw(completion.to_owned()));
    let mut chat = ChatServiceClient::new(suite.channel(portico::Component::Chat).await);
    let mut request = tonic::Request::new(pb::CompleteRequest {
        model: "fake-model".into(),
        openai_json: json!({"messages": [{"role": "user", "content": "cats?"}]}).to_string(),
        ..Default::default()
    });
    harness::as_edge(&mut request, "127.0.0.1");
    let answer = chat.complete(request).await.expect("complete").into_inner();
    assert_eq!(answer.finish_reason, "tool_calls");
    let message = answer.message.expect("message");
    let calls: Vec<(&str, &str)> = message
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [("call_a", r#"{"q":"cats"}"#), ("call_b", r#"{"q":"dogs"}"#)]
    );
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.cached_tokens, usage.reasoning_tokens), (16, 4));
    assert_eq!(answer.openai_json, completion);
}

#[tokio::test]
async fn n_2_gives_two_choices_and_echo_runs_a_tool_round_trip() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_CAPACITY", "100")
        .spawn()
        .await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let ask = json!({"model": "echo", "n": 2, "tools": tools, "messages": [{"role": "user", "content": "Oslo"}]});
    let called: Value = suite
        .post("/v1/chat/completions", ask.clone())
        .await
        .json()
        .await
        .expect("json");
    let choices = called["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2, "{called}");
    assert_eq!(
        choices
            .iter()
            .map(|c| c["index"].clone())
            .collect::<Vec<_>>(),
        [json!(0), json!(1)]
    );
    let call = &choices[0]["message"]["tool_calls"][0];
    assert_eq!(choices[0]["finish_reason"], "tool_calls");
    assert_eq!(call["function"]["name"], "weather");
    assert_eq!(call["function"]["arguments"], r#"{"city":"Oslo"}"#);

    // Streamed: the same call, assembled from its deltas, for both choices.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let body = suite
        .post("/v1/chat/completions", streamed)
        .await
        .text()
        .await
        .expect("body");
    let mut arguments = [String::new(), String::new()];
    let mut ids = [None, None];
    for data in events(&body).iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(data).expect("json");
        for choice in chunk["choices"].as_array().expect("choices") {
            let index = choice["index"].as_u64().expect("index") as usize;
            if let Some(delta) = choice["delta"]["tool_calls"].get(0) {
                if let Some(id) = delta["id"].as_str() {
                    ids[index] = Some(id.to_owned());
                }
                arguments[index].push_str(delta["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
    }
    assert_eq!(arguments, [r#"{"city":"Oslo"}"#, r#"{"city":"Oslo"}"#]);
    assert_eq!(ids[0].as_deref(), call["id"].as_str());

    // The tool's result goes back; the echo answers with it.
    let answered = json!({"model": "echo", "tools": tools, "messages": [
        {"role": "user", "content": "Oslo"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "rain, 12 C"},
    ]});
    let answer: Value = suite
        .post("/v1/chat/completions", answered)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["choices"][0]["message"]["content"], "rain, 12 C");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn failover_across_two_vendors_sends_each_its_own_model_name() {
    let openai = FakeLlm::start(Reply::Status(503, None)).await;
    let anthropic = FakeLlm::start(Reply::Answer("from the second vendor")).await;
    let (a, b) = (unique("openai"), unique("anthropic"));
    let file = alias_file(
        &[(&a, &openai.base_url), (&b, &anthropic.base_url)],
        &format!(
            "models:\n  - name: chat-default\n    deployments:\n      - {{provider: {a}, model: gpt-4o-mini}}\n      - {{provider: {b}, model: claude-3-5-haiku, name: haiku}}\n"
        ),
    );
    let suite = alias_suite(&file, &[("LLM_CB_FAILURE_THRESHOLD", "100")]).await;
    for stream in [false, true] {
        let response = suite
            .post(
                "/v1/chat/completions",
                json!({"stream": stream, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "the default alias");
        let body = response.text().await.expect("body");
        assert!(body.contains("second") && body.contains("vendor"), "{body}");
    }
    assert!(openai.bodies().len() >= 3);
    assert!(openai.bodies().iter().all(|b| b["model"] == "gpt-4o-mini"));
    assert!(anthropic
        .bodies()
        .iter()
        .all(|b| b["model"] == "claude-3-5-haiku"));
    assert_eq!(anthropic.requests(), 2);

    // Moving traffic: the named deployment disabled, the alias's only one left is the failing one.
    let changed = suite
        .http
        .put(suite.url("/api/v1/admin/llm/providers/haiku"))
        .header("x-admin-key", ADMIN_KEY)
        .json(&json!({"enabled": false}))
        .send()
        .await
        .expect("put");
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.expect("json");
    assert_eq!(
        (changed["model"].clone(), changed["enabled"].clone()),
        (json!("claude-3-5-haiku"), json!(false))
    );
    let response = suite
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["type"], "api_error", "{error}");
    assert_eq!(
        anthropic.requests(),
        2,
        "a disabled deployment is not called"
    );
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found_in_openais_shape() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let suite = suite_with(&[(&unique("only"), &fake, 0)], &[]).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/embeddings", json!({"model": "gpt-9", "input": "hi"})),
    ] {
        let response = suite.post(path, body).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["code"], "model_not_found", "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["param"], "model");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("gpt-9")));
    }
    let response = suite.get("/v1/models/gpt-9").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "model_not_found");
    assert_eq!(fake.requests(), 0);
    // Portico's own routes keep Portico's shape.
    let response = suite
        .post(
            "/api/v1/chat",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn models_lists_the_aliases_and_a_request_without_model_gets_the_default() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let name = unique("p");
    let file = alias_file(
        &[(&name, &fake.base_url)],
        &format!(
            "models:\n  - name: chat-fast\n    deployments: [{{provider: {name}, model: small}}]\n  - name: chat-smart\n    deployments: [{{provider: {name}, model: large}}]\ndefault_model: chat-smart\n"
        ),
    );
    let suite = alias_suite(&file, &[]).await;
    let list: Value = suite.get("/v1/models").await.json().await.expect("json");
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["chat-fast", "chat-smart"]);
    assert_eq!(list["data"][0]["object"], "model");
    assert_eq!(list["data"][0]["owned_by"], "portico");
    let one: Value = suite
        .get("/v1/models/chat-fast")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(one["id"], "chat-fast");
    // A path variable is percent-decoded, as every client may encode it.
    let encoded = suite.get("/v1/models/chat%2Dfast").await;
    assert_eq!(encoded.status(), StatusCode::OK);
    let encoded: Value = encoded.json().await.expect("json");
    assert_eq!(encoded["id"], "chat-fast");
    let answer = suite
        .post(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(fake.bodies()[0]["model"], "large", "the default alias");
}

#[tokio::test]
async fn embeddings_go_through_failover_and_circuits_and_count_tokens() {
    let broken = FakeLlm::start(Reply::Status(500, None)).await;
    let vectors = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2,0.3]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":2,"total_tokens":2}}"#;
    let working = FakeLlm::start(Reply::Raw(vectors.to_owned())).await;
    let (a, b) = (unique("embed-a"), unique("embed-b"));
    let file = alias_file(
        &[(&a, &broken.base_url), (&b, &working.base_url)],
        &format!(
            "models:\n  - name: embed\n    deployments:\n      - {{provider: {a}, model: e-large}}\n      - {{provider: {b}, model: text-embedding-3-small}}\n"
        ),
    );
    let suite = alias_suite(&file, &[("LLM_CB_FAILURE_THRESHOLD", "3")]).await;
    let caller = json!({"model": "embed", "input": ["hello world"], "encoding_format": "float", "dimensions": 3, "user": "u"});
    let response = suite.post("/v1/embeddings", caller.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), vectors);
    assert_eq!(
        broken.requests(),
        3,
        "one attempt, two retries, then failover"
    );
    assert_eq!(broken.paths()[0], "/v1/embeddings");
    let mut expected = caller.clone();
    expected["model"] = json!("text-embedding-3-small");
    assert_eq!(working.bodies()[0], expected);
    // The three failures opened the first circuit: the next call goes straight to the second.
    let response = suite.post("/v1/embeddings", caller).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(broken.requests(), 3, "an open circuit is not called");
    let metrics = portico_telemetry::metrics::encode_text();
    for line in [
        format!("gen_ai_client_token_usage_sum{{gen_ai_operation_name=\"embeddings\",gen_ai_provider_name=\"{b}\",gen_ai_request_model=\"text-embedding-3-small\",gen_ai_token_type=\"input\"}} 4"),
        format!("gen_ai_client_operation_duration_seconds_count{{gen_ai_operation_name=\"embeddings\",gen_ai_provider_name=\"{a}\",gen_ai_request_model=\"e-large\",error_type=\"upstream_error\"}} 3"),
        format!("llm_tokens_total{{provider=\"{b}\",kind=\"prompt\"}} 4"),
        "llm_gateway_overhead_seconds_count{operation=\"embeddings\"}".to_owned(),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn equal_priorities_are_balanced_by_weight_or_by_calls_in_flight() {
    let left = FakeLlm::start(Reply::HoldStreams("left")).await;
    let right = FakeLlm::start(Reply::HoldStreams("right")).await;
    let (l, r) = (unique("left"), unique("right"));
    let file = alias_file(
        &[(&l, &left.base_url), (&r, &right.base_url)],
        &format!(
            "models:\n  - name: spread\n    deployments:\n      - {{provider: {l}, model: m, priority: 0}}\n      - {{provider: {r}, model: m, priority: 0}}\n  - name: idle-first\n    balance: least-busy\n    deployments:\n      - {{provider: {l}, model: m, priority: 0, name: idle-l}}\n      - {{provider: {r}, model: m, priority: 0, name: idle-r}}\n"
        ),
    );
    let suite = alias_suite(&file, &[]).await;
    // Weighted (the default), equal weights: both get calls.
    for _ in 0..40 {
        let response = suite
            .post(
                "/v1/chat/completions",
                json!({"model": "spread", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(left.requests() + right.requests(), 40);
    assert!(
        left.requests() > 0 && right.requests() > 0,
        "{} / {}",
        left.requests(),
        right.requests()
    );
    // Least busy: while a stream is held on one, the next call goes to the other.
    let (left_before, right_before) = (left.requests(), right.requests());
    let mut held = suite
        .post(
            "/v1/chat/completions",
            json!({"model": "idle-first", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert!(
        held.chunk().await.expect("read").is_some(),
        "the stream started"
    );
    let busy_left = left.requests() > left_before;
    let answer: Value = suite
        .post(
            "/v1/chat/completions",
            json!({"model": "idle-first", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
        .json()
        .await
        .expect("json");
    let expected = if busy_left { "right" } else { "left" };
    assert_eq!(answer["choices"][0]["message"]["content"], expected);
    assert_eq!(
        left.requests() + right.requests(),
        left_before + right_before + 2
    );
    let models: Value = {
        let mut chat = ChatServiceClient::new(suite.channel(portico::Component::Chat).await);
        let list = chat
            .list_models(pb::ListModelsRequest {})
            .await
            .expect("list")
            .into_inner();
        let idle = list
            .models
            .iter()
            .find(|m| m.id == "idle-first")
            .expect("listed");
        json!({"balance": idle.balance, "in_flight": idle.deployments.iter().map(|d| d.in_flight).sum::<u32>()})
    };
    assert_eq!(models, json!({"balance": "least-busy", "in_flight": 1}));
    drop(held);
}
