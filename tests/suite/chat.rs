//! The chat gateway against an in-process fake provider: circuit breaker, retries, failover,
//! timeouts, streaming (order, mid-stream failure, cancellation), the admin routes and the
//! OpenAI wire format, over gRPC and through the edge.

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
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.expect("json");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused the request (HTTP 400)")),
        "{error}"
    );
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

    // Disabling works the same way, and the list shows the order.
    let disabled = admin(
        reqwest::Method::PUT,
        format!("/api/v1/admin/llm/providers/{c}"),
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
        assert_eq!(error["error"]["code"], "DEADLINE_EXCEEDED");
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
        (json!(0.5), json!(64), json!(["END"]))
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
