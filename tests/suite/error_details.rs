//! Structured gRPC errors (`google.rpc` details): a validation failure lists every bad field in
//! a `BadRequest`, a lockout carries `RetryInfo` and `ErrorInfo` beside its `retry-after`, and
//! the edge answers them as the JSON body's `details` (and `Retry-After`; on OpenAI's routes
//! OpenAI's shape, `param` naming the first bad field).

use std::time::Duration;

use portico::Component;
use portico_proto::auth::{self as auth_pb, auth_service_client::AuthServiceClient};
use portico_proto::chat::{self as chat_pb, chat_service_client::ChatServiceClient};
use portico_proto::content::{self as pb, content_service_client::ContentServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::{self, TestSuite};

const KEY: &str = "admin-secret-for-tests-0123456789abcdef";

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-admin-key", KEY.parse().expect("ascii"));
    request
}

#[tokio::test]
async fn every_bad_field_is_a_bad_request_violation_over_grpc_and_rest() {
    let suite = TestSuite::builder()
        .env("ADMIN_API_KEY", KEY)
        .env("RATE_LIMIT_GLOBAL_MAX", "10000")
        .spawn()
        .await;
    let mut content = ContentServiceClient::new(suite.channel(Component::Content).await);
    let refused = content
        .create_content(admin(pb::CreateContentRequest {
            slug: "several-bad-fields".into(),
            title: "   ".into(),
            body: "body".into(),
            tags: vec!["ok".into(), "Not OK".into(), String::new()],
            status: 99,
        }))
        .await
        .expect_err("invalid");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("title must be"), "{refused:?}");
    assert!(refused.message().contains("status must be"), "{refused:?}");
    let details = refused.check_error_details().expect("details decode");
    let fields: Vec<&str> = details
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["title", "tags[1]", "tags[2]", "status"]);
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "INVALID_FIELDS");
    assert_eq!(info.domain, "portico.dev");

    // One bad field: the message is the one it always was.
    let one = content
        .create_content(admin(pb::CreateContentRequest {
            slug: "one-bad-field".into(),
            title: String::new(),
            ..Default::default()
        }))
        .await
        .expect_err("invalid");
    assert_eq!(one.message(), "title must be 1 to 200 characters");
    assert_eq!(
        one.get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .len(),
        1
    );

    // The edge: 400 as before, with the violations as `details`.
    let response = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", KEY)
        .json(&json!({"slug": "rest-bad-fields", "title": "", "body": "b", "tags": ["Bad Tag"]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
    let details = body["error"]["details"].as_array().expect("details");
    let bad = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .expect("BadRequest in the body");
    let fields: Vec<&str> = bad["fieldViolations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| v["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["title", "tags[0]"], "{body}");
    assert!(details
        .iter()
        .any(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
            && d["reason"] == "INVALID_FIELDS"));
}

#[tokio::test]
async fn a_lockout_carries_retry_info_and_error_info() {
    let (addr, _db, _stop) = harness::spawn_auth(
        &[
            ("AUTH_LOGIN_MAX_ATTEMPTS", "2"),
            ("AUTH_LOGIN_LOCKOUT_MINUTES", "15"),
        ],
        portico_auth::Options::default(),
    )
    .await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut auth = AuthServiceClient::new(channel);
    let login = || {
        let mut request = tonic::Request::new(auth_pb::LoginRequest {
            email: "erin@example.com".into(),
            password: "wrong password".into(),
        });
        harness::as_edge(&mut request, "198.51.100.7");
        request
    };
    for _ in 0..2 {
        let failed = auth.login(login()).await.expect_err("wrong");
        assert_eq!(failed.code(), tonic::Code::Unauthenticated);
    }
    let locked = auth.login(login()).await.expect_err("locked");
    assert_eq!(locked.code(), tonic::Code::ResourceExhausted);
    // The metadata the edge reads today stays.
    let seconds: u64 = locked
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((890..=900).contains(&seconds), "{seconds}");
    let details = locked.check_error_details().expect("details decode");
    let delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo delay");
    assert_eq!(delay, Duration::from_secs(seconds));
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "LOGIN_LOCKED_OUT");
    assert_eq!(info.domain, "portico.dev");
}

#[tokio::test]
async fn the_edge_answers_a_lockouts_details_and_retry_after() {
    let suite = TestSuite::builder()
        .env("AUTH_LOGIN_MAX_ATTEMPTS", "2")
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await;
    let credentials = json!({"email": "frank@example.com", "password": "wrong password"});
    for _ in 0..2 {
        let r = suite.post("/api/v1/auth/login", credentials.clone()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = suite.post("/api/v1/auth/login", credentials).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    let body: Value = locked.json().await.expect("json");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    let details = body["error"]["details"].as_array().expect("details");
    assert!(
        details.contains(&json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "LOGIN_LOCKED_OUT",
            "domain": "portico.dev",
        })),
        "{body}"
    );
    assert!(
        details.contains(&json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{retry}s"),
        })),
        "{body}"
    );
}

/// The fields of a status's `BadRequest`, in order.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn a_chat_request_reports_every_bad_field_over_grpc_rest_and_openai() {
    let (addr, _shutdown) =
        harness::spawn_chat(&[], std::sync::Arc::new(portico_limiter::SystemClock)).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut chat = ChatServiceClient::new(channel);
    let conversation = json!({
        "messages": [
            {"role": "user", "content": "fine"},
            {"role": "robot", "content": "x"},
            {"role": "user", "content": 42},
        ],
        "temperature": 3,
        "stop": ["a", "b", "c", "d", "e"],
    });
    let mut request = tonic::Request::new(chat_pb::CompleteRequest {
        openai_json: conversation.to_string(),
        ..Default::default()
    });
    harness::as_edge(&mut request, "198.51.100.8");
    let refused = chat.complete(request).await.expect_err("invalid");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let expected = [
        "messages[1].role",
        "messages[2].content",
        "temperature",
        "stop",
    ];
    assert_eq!(violated_fields(&refused), expected);
    for fragment in ["robot", "content must be", "temperature", "stop sequences"] {
        assert!(refused.message().contains(fragment), "{refused:?}");
    }
    let info = refused
        .check_error_details()
        .expect("details decode")
        .error_info()
        .cloned()
        .expect("ErrorInfo");
    assert_eq!(info.reason, "INVALID_FIELDS");

    // Through the edge: Portico's route answers the violations as `details`; OpenAI's keeps
    // OpenAI's shape, `param` naming the first field and the message listing every one.
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_CAPACITY", "100")
        .spawn()
        .await;
    let response = suite
        .post(
            "/api/v1/chat",
            json!({"messages": [{"role": "wizard", "content": "x"}], "temperature": 3}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    let bad = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .cloned()
        .expect("BadRequest");
    assert_eq!(
        bad["fieldViolations"]
            .as_array()
            .expect("violations")
            .iter()
            .map(|v| v["field"].as_str().expect("field"))
            .collect::<Vec<_>>(),
        ["messages[0].role", "temperature"],
        "{body}"
    );
    let response = suite.post("/v1/chat/completions", conversation).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    let error = &body["error"];
    assert_eq!(error["type"], "invalid_request_error", "{body}");
    assert_eq!(error["param"], "messages[1].role", "{body}");
    assert!(error["code"].is_null(), "{body}");
    let message = error["message"].as_str().expect("message");
    for fragment in ["robot", "content must be", "temperature", "stop sequences"] {
        assert!(message.contains(fragment), "{message}");
    }
}

#[tokio::test]
async fn register_reports_a_bad_email_and_a_bad_password_together() {
    let (addr, _db, _stop) = harness::spawn_auth(&[], portico_auth::Options::default()).await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut auth = AuthServiceClient::new(channel);
    let register = |email: &str, password: &str| {
        let mut request = tonic::Request::new(auth_pb::RegisterRequest {
            email: email.into(),
            password: password.into(),
        });
        harness::as_edge(&mut request, "198.51.100.9");
        request
    };
    let both = auth
        .register(register("not-an-email", "short"))
        .await
        .expect_err("invalid");
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&both), ["email", "password"]);
    assert_eq!(
        both.message(),
        "email must be an ASCII address (name@example.com) of at most 254 characters; password must be 8 to 128 characters"
    );
    // One bad field: the message it always was, with its one violation.
    let one = auth
        .register(register("erin@example.com", "short"))
        .await
        .expect_err("invalid");
    assert_eq!(one.message(), "password must be 8 to 128 characters");
    assert_eq!(violated_fields(&one), ["password"]);

    // Through the edge: 400 with both in `details`.
    let suite = TestSuite::spawn().await;
    let response = suite
        .post(
            "/api/v1/auth/register",
            json!({"email": "nope", "password": "short"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    let fields: Vec<&str> = body["error"]["details"]
        .as_array()
        .expect("details")
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .and_then(|bad| bad["fieldViolations"].as_array())
        .expect("BadRequest")
        .iter()
        .map(|v| v["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["email", "password"], "{body}");
}
