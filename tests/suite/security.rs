//! The attack review's findings (issue 12), each as the attack it describes: admin from an
//! unverified address, oversized headers, a flooded hash queue, guesses spread over many
//! addresses and IPv6 /64s, private reads cached as public, internal text in client errors,
//! denial of wallet, production guards, and a readiness flood.

use std::{
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use portico_proto::auth::{self as pb, auth_service_client::AuthServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::{
    fake_llm::{FakeLlm, Reply},
    harness::{self, TestSuite},
};

const PASSWORD: &str = "correct horse battery";
const ADMIN_KEY: &str = "security-admin-key-0123456789abcdef";

async fn grpc(addr: std::net::SocketAddr) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
}

fn login_from(email: &str, password: &str, ip: &str) -> tonic::Request<pb::LoginRequest> {
    let mut request = tonic::Request::new(pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    });
    harness::as_edge(&mut request, ip);
    request
}

async fn register(auth: &mut AuthServiceClient<Channel>, email: &str) {
    auth.register(pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
}

/// The role of the account behind a fresh login of `email`.
async fn role_after_login(auth: &mut AuthServiceClient<Channel>, email: &str) -> i32 {
    let tokens = auth
        .login(login_from(email, PASSWORD, "192.0.2.1"))
        .await
        .expect("login")
        .into_inner();
    let mut me = tonic::Request::new(pb::GetMeRequest {});
    me.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", tokens.access_token)
            .parse()
            .expect("ascii"),
    );
    auth.get_me(me).await.expect("me").into_inner().role
}

fn retry_after(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

// ---- finding 1: admin never follows from an unverified address

#[tokio::test]
async fn a_listed_admin_email_is_not_admin_until_it_is_verified() {
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("AUTH_ADMIN_EMAILS", "boss@example.com")],
        portico_auth::Options::default(),
    )
    .await;
    let mut auth = grpc(addr).await;
    // Anyone can register any address; with verification off it is never verified.
    register(&mut auth, "BOSS@example.com").await;
    assert_eq!(
        role_after_login(&mut auth, "boss@example.com").await,
        pb::Role::User as i32,
        "registration alone never grants admin"
    );

    #[derive(Debug, Default)]
    struct Capture(std::sync::Mutex<Vec<String>>);
    impl portico_auth::EmailSender for Capture {
        fn send_verification(&self, _email: &str, token: &str) {
            self.0.lock().expect("lock").push(token.to_owned());
        }
        fn send_password_reset(&self, _email: &str, _token: &str) {}
    }
    let sent = Arc::new(Capture::default());
    let (addr, _db, _stop) = harness::spawn_auth(
        &[
            ("AUTH_ADMIN_EMAILS", "boss@example.com"),
            ("AUTH_EMAIL_VERIFICATION_REQUIRED", "true"),
        ],
        portico_auth::Options {
            sender: sent.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut auth = grpc(addr).await;
    register(&mut auth, "boss@example.com").await;
    let token = sent
        .0
        .lock()
        .expect("lock")
        .pop()
        .expect("a token was sent");
    auth.verify_email(pb::VerifyEmailRequest { token })
        .await
        .expect("verify");
    assert_eq!(
        role_after_login(&mut auth, "boss@example.com").await,
        pb::Role::Admin as i32,
        "the verified owner of a listed address is admin"
    );
}

#[tokio::test]
async fn portico_users_grant_admin_provisions_an_admin_out_of_band() {
    let (addr, database_url, _stop) =
        harness::spawn_auth(&[], portico_auth::Options::default()).await;
    let mut auth = grpc(addr).await;
    register(&mut auth, "ops@example.com").await;
    assert_eq!(
        role_after_login(&mut auth, "ops@example.com").await,
        pb::Role::User as i32
    );
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portico"))
            .env_clear()
            .env("DATABASE_URL", &database_url)
            .env("LOG_LEVEL", "warn")
            .args(args)
            .output()
            .expect("binary runs")
    };
    let granted = cli(&["users", "grant-admin", "OPS@example.com"]);
    assert!(granted.status.success(), "{granted:?}");
    assert_eq!(
        role_after_login(&mut auth, "ops@example.com").await,
        pb::Role::Admin as i32
    );
    let unknown = cli(&["users", "grant-admin", "nobody@example.com"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no account"));
    let revoked = cli(&["users", "revoke-admin", "ops@example.com"]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert_eq!(
        role_after_login(&mut auth, "ops@example.com").await,
        pb::Role::User as i32
    );
}

// ---- finding 10: production guards

#[tokio::test]
async fn production_refuses_an_open_metrics_endpoint_and_the_log_only_mailer() {
    let output = Command::new(env!("CARGO_BIN_EXE_portico"))
        .env_clear()
        .env("APP_ENV", "production")
        .env("CORS_ORIGINS", "https://app.example.com")
        .env("AUTH_ADMIN_EMAILS", "boss@example.com")
        .env("ADMIN_API_KEY", "short")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for variable in ["METRICS_GUARD:", "AUTH_ADMIN_EMAILS:", "ADMIN_API_KEY:"] {
        assert!(stderr.contains(variable), "{variable} in {stderr}");
    }

    let vars: std::collections::HashMap<String, String> = [
        ("APP_ENV", "production"),
        ("CORS_ORIGINS", "https://app.example.com"),
        ("METRICS_GUARD", "secret"),
        ("METRICS_GUARD_SECRET", "scrape-secret"),
        ("AUTH_EMAIL_VERIFICATION_REQUIRED", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([
        ("DATABASE_URL".to_owned(), harness::fresh_database().await),
        (
            "JWT_SIGNING_KEY_FILE".to_owned(),
            harness::new_signing_key(),
        ),
    ])
    .collect();
    let settings = portico_config::Settings::from_source(&vars).expect("settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = portico_auth::serve(
        &settings,
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("the built-in sender only logs tokens");
    assert!(
        refused
            .to_string()
            .starts_with("AUTH_EMAIL_VERIFICATION_REQUIRED"),
        "{refused}"
    );
}

// ---- finding 2: one caller's oversized header is nobody else's failure

#[tokio::test]
async fn oversized_headers_are_refused_for_their_sender_only() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_GLOBAL_MAX", "100000")
        .env("RATE_LIMIT_AUTH_MAX", "1000")
        .spawn()
        .await;
    let token = suite.login("valid@example.com").await;
    let me = |authorization: String| {
        suite
            .http
            .get(suite.url("/api/v1/auth/me"))
            .header("authorization", authorization)
            .send()
    };
    let valid = (0..8).map(|_| async {
        let mut statuses = Vec::new();
        for _ in 0..15 {
            statuses.push(me(format!("Bearer {token}")).await.expect("edge").status());
        }
        statuses
    });
    let attacks = (0..10).map(|n| async move {
        let size = if n % 2 == 0 { 100_000 } else { 20_000 };
        let response = me(format!("Bearer {}", "a".repeat(size)))
            .await
            .expect("the edge answers the attacker too");
        (size, response.status())
    });
    let (valid, attacks) = tokio::join!(
        futures_util::future::join_all(valid),
        futures_util::future::join_all(attacks)
    );
    for statuses in valid {
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "a valid caller failed: {statuses:?}"
        );
    }
    for (size, status) in attacks {
        assert!(
            status == StatusCode::UNAUTHORIZED
                || status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{size} bytes: {status}"
        );
    }
    let key = suite
        .http
        .get(suite.url("/api/v1/admin/llm/providers"))
        .header("x-admin-key", "k".repeat(9000))
        .send()
        .await
        .expect("edge");
    assert_eq!(key.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

// ---- finding 4: the password-hash queue is bounded

#[tokio::test]
async fn a_full_hash_queue_fails_fast_instead_of_queueing_forever() {
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("AUTH_HASH_QUEUE_MAX", "1")],
        portico_auth::Options::default(),
    )
    .await;
    let auth = grpc(addr).await;
    let logins = (0..48).map(|n| {
        let mut auth = auth.clone();
        async move {
            auth.login(login_from(
                &format!("nobody-{n}@example.com"),
                PASSWORD,
                "192.0.2.7",
            ))
            .await
            .expect_err("unknown accounts")
        }
    });
    let statuses = futures_util::future::join_all(logins).await;
    let busy: Vec<_> = statuses
        .iter()
        .filter(|s| s.code() == tonic::Code::ResourceExhausted)
        .collect();
    assert!(!busy.is_empty(), "48 at once overflow a queue of 1");
    for status in &busy {
        assert_eq!(retry_after(status), Some(1));
        assert_eq!(
            status
                .metadata()
                .get(portico_proto::ERROR_REASON_KEY)
                .and_then(|v| v.to_str().ok()),
            Some(portico_proto::REASON_OVERLOADED)
        );
    }
    assert!(
        statuses.iter().all(|s| matches!(
            s.code(),
            tonic::Code::ResourceExhausted | tonic::Code::Unauthenticated
        )),
        "{statuses:?}"
    );

    // Through the edge: 503 with Retry-After, never a 500 and never a 429 (not the caller's
    // quota).
    let suite = TestSuite::builder()
        .env("AUTH_HASH_QUEUE_MAX", "1")
        .env("RATE_LIMIT_GLOBAL_MAX", "100000")
        .env("RATE_LIMIT_AUTH_MAX", "100000")
        .spawn()
        .await;
    let logins = (0..48).map(|n| {
        suite.post(
            "/api/v1/auth/login",
            json!({"email": format!("nobody-{n}@example.com"), "password": PASSWORD}),
        )
    });
    let responses = futures_util::future::join_all(logins).await;
    let mut saw_busy = false;
    for response in responses {
        match response.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                saw_busy = true;
                assert_eq!(response.headers()["retry-after"], "1");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(saw_busy);
}

// ---- finding 6: guesses spread over many addresses

#[tokio::test]
async fn guesses_from_many_addresses_hit_the_account_ceiling_but_the_owner_gets_in() {
    let clock = portico_limiter::ManualClock::new(1_800_000_000_000_000);
    let (addr, _db, _stop) = harness::spawn_auth(
        &[
            ("AUTH_LOGIN_MAX_ATTEMPTS", "5"),
            ("AUTH_ACCOUNT_MAX_FAILURES", "3"),
            ("AUTH_ACCOUNT_BACKOFF_MAX", "60s"),
        ],
        portico_auth::Options {
            clock: clock.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut auth = grpc(addr).await;
    let victim = "victim@example.com";
    register(&mut auth, victim).await;
    // The owner's usual network.
    auth.login(login_from(victim, PASSWORD, "192.0.2.10"))
        .await
        .expect("owner logs in");

    // The review's attack: 30 guesses from 6 addresses, 5 each (each address's own limit).
    let (mut checked, mut refused) = (0, Vec::new());
    for n in 0..30 {
        let ip = format!("198.51.100.{}", n % 6 + 1);
        match auth.login(login_from(victim, "wrong guess", &ip)).await {
            Err(status) if status.code() == tonic::Code::Unauthenticated => checked += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => refused.push(status),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        checked, 4,
        "3 failures, then one attempt per back-off gap (the clock stands still)"
    );
    assert!(refused.iter().all(|s| retry_after(s) == Some(1)));

    // From a new network even the right password waits for the gap …
    let stranger = auth
        .login(login_from(victim, PASSWORD, "203.0.113.9"))
        .await
        .expect_err("in back-off");
    assert_eq!(stranger.code(), tonic::Code::ResourceExhausted);
    // … but the owner's own network is not held back by a flood from elsewhere.
    auth.login(login_from(victim, PASSWORD, "192.0.2.10"))
        .await
        .expect("the owner is never locked out by others");

    // The gaps double up to the cap, and never beyond it, however long the attack: each
    // guess below is made as soon as the previous gap has passed, from a fresh address.
    for n in 0..12 {
        clock.advance(Duration::from_secs(60));
        let ip = format!("198.51.100.{}", 100 + n);
        let status = auth
            .login(login_from(victim, "wrong guess", &ip))
            .await
            .expect_err("wrong");
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "guess {n} was checked"
        );
    }
    let waiting = auth
        .login(login_from(victim, "wrong guess", "198.51.100.200"))
        .await
        .expect_err("in back-off");
    assert_eq!(
        retry_after(&waiting),
        Some(60),
        "capped at AUTH_ACCOUNT_BACKOFF_MAX"
    );
    clock.advance(Duration::from_secs(60));
    auth.login(login_from(victim, PASSWORD, "203.0.113.9"))
        .await
        .expect("a new network gets in after at most the cap");
}

#[tokio::test]
async fn ipv6_clients_share_one_lockout_and_one_bucket_per_64() {
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("AUTH_LOGIN_MAX_ATTEMPTS", "2")],
        portico_auth::Options::default(),
    )
    .await;
    let mut auth = grpc(addr).await;
    register(&mut auth, "six@example.com").await;
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        let status = auth
            .login(login_from("six@example.com", "wrong guess", ip))
            .await
            .expect_err("wrong");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    let same_64 = auth
        .login(login_from(
            "six@example.com",
            PASSWORD,
            "2001:db8:1:2:ffff::9",
        ))
        .await
        .expect_err("the /64 is locked");
    assert_eq!(same_64.code(), tonic::Code::ResourceExhausted);
    auth.login(login_from("six@example.com", PASSWORD, "2001:db8:1:3::1"))
        .await
        .expect("another /64 is not");

    let suite = TestSuite::builder()
        .env("TRUSTED_PROXIES", "127.0.0.1")
        .env("RATE_LIMIT_GLOBAL_MAX", "2")
        .spawn()
        .await;
    let from = |ip: &'static str| {
        suite
            .http
            .get(suite.url("/api/openapi.json"))
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(from("2001:db8:5:6::1").await.expect("edge").status(), 200);
    assert_eq!(from("2001:db8:5:6::2").await.expect("edge").status(), 200);
    assert_eq!(
        from("2001:db8:5:6:abcd::3").await.expect("edge").status(),
        429,
        "one bucket for the whole /64"
    );
    assert_eq!(from("2001:db8:5:7::1").await.expect("edge").status(), 200);
}

// ---- finding 7 and 11: private views, token responses, nosniff

#[tokio::test]
async fn credentialed_reads_are_private_and_never_kept_by_the_edge() {
    let suite = TestSuite::builder()
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .env("RATE_LIMIT_GLOBAL_MAX", "10000")
        .spawn()
        .await;
    for (slug, status) in [("draft-plan", "draft"), ("news", "published")] {
        let created = suite
            .http
            .post(suite.url("/api/v1/admin/content"))
            .header("x-admin-key", ADMIN_KEY)
            .json(&json!({"slug": slug, "title": "t", "body": "b", "status": status}))
            .send()
            .await
            .expect("edge");
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    for path in [
        "/api/v1/content/draft-plan",
        "/api/v1/content/news",
        "/api/v1/content",
    ] {
        let private = suite
            .http
            .get(suite.url(path))
            .header("x-admin-key", ADMIN_KEY)
            .send()
            .await
            .expect("edge");
        assert_eq!(private.status(), StatusCode::OK, "{path}");
        assert_eq!(
            private.headers()["cache-control"],
            "private, no-store",
            "{path}"
        );
        let vary: Vec<&str> = private
            .headers()
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let vary = vary.join(", ").to_ascii_lowercase();
        assert!(
            vary.contains("authorization") && vary.contains("x-admin-key"),
            "{vary}"
        );
    }
    // The admin's read of the draft was not kept: anonymous callers still get 404.
    assert_eq!(
        suite.get("/api/v1/content/draft-plan").await.status(),
        StatusCode::NOT_FOUND
    );
    let public = suite.get("/api/v1/content/news").await;
    assert_eq!(public.headers()["cache-control"], "public, max-age=30");
}

#[tokio::test]
async fn token_responses_are_no_store_and_every_response_is_nosniff() {
    let suite = TestSuite::spawn().await;
    suite
        .post(
            "/api/v1/auth/register",
            json!({"email": "tok@example.com", "password": PASSWORD}),
        )
        .await;
    let login = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": "tok@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(login.headers()["cache-control"], "no-store");
    assert_eq!(login.headers()["pragma"], "no-cache");
    let tokens: Value = login.json().await.expect("json");
    let refreshed = suite
        .post(
            "/api/v1/auth/refresh",
            json!({"refreshToken": tokens["refreshToken"]}),
        )
        .await;
    assert_eq!(refreshed.headers()["cache-control"], "no-store");
    let me = suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(tokens["accessToken"].as_str().expect("token"))
        .send()
        .await
        .expect("edge");
    assert_eq!(me.headers()["cache-control"], "private, no-store");
    for path in ["/healthz", "/no/such/route", "/api/openapi.json"] {
        let response = suite.get(path).await;
        assert_eq!(
            response.headers()["x-content-type-options"],
            "nosniff",
            "{path}"
        );
    }
}

#[tokio::test]
async fn whitespace_passwords_and_invisible_email_characters_are_refused() {
    let suite = TestSuite::spawn().await;
    for (email, password) in [
        ("spaces@example.com", "        "),
        ("zero\u{200B}width@example.com", PASSWORD),
        ("joiner@example.com", "correct\u{200D}horse battery"),
    ] {
        let response = suite
            .post(
                "/api/v1/auth/register",
                json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{email:?} {password:?}"
        );
    }
    // A full-width spelling of an address is refused as the OpenAPI pattern says (ASCII), so it
    // is never a second account of the plain one.
    let first = suite
        .post(
            "/api/v1/auth/register",
            json!({"email": "nfkc@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let lookalike = suite
        .post(
            "/api/v1/auth/register",
            json!({"email": "\u{FF4E}fkc@example.com", "password": PASSWORD}),
        )
        .await;
    harness::assert_error(lookalike, StatusCode::BAD_REQUEST, "ASCII").await;
}

/// Every character, one at a time in an otherwise good password: the document's pattern (the
/// one schemathesis and clients validate against) takes it exactly when the service does.
#[test]
fn the_password_pattern_takes_exactly_the_characters_the_service_takes() {
    let schema = portico_edge::transcoder::rules::portico_schema_of(
        "portico.auth.v1.RegisterRequest.password",
    )
    .expect("the password's option");
    let pattern = regex::Regex::new(schema["pattern"].as_str().expect("a pattern"))
        .expect("the pattern compiles");
    let disagree: Vec<String> = (0..=0x10FFFF_u32)
        .filter_map(char::from_u32)
        .filter(|c| {
            let password = format!("abcdefgh{c}");
            pattern.is_match(&password) != portico_auth::check_password(&password).is_ok()
        })
        .map(|c| format!("U+{:04X}", u32::from(c)))
        .collect();
    assert!(
        disagree.is_empty(),
        "{} disagree: {disagree:?}",
        disagree.len()
    );
}

// ---- findings 8 and 9: chat errors and denial of wallet

async fn chat_suite(providers: &[(&str, &str, i32)], extra: &[(&str, &str)]) -> TestSuite {
    let mut builder = TestSuite::builder()
        .env("LLM_PROVIDERS_FILE", &harness::providers_file(providers))
        .env("RATE_LIMIT_CAPACITY", "1000");
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.spawn().await
}

fn hello(extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "hello"}]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[tokio::test]
async fn chat_errors_carry_a_generic_message_and_the_correlation_id_only() {
    let fake = FakeLlm::start(Reply::StatusBody(
        400,
        r#"{"error":{"message":"bad request; upstream postgres://admin:hunter2@db.internal/llm"}}"#,
    ))
    .await;
    let suite = chat_suite(&[("leaky", &fake.base_url, 0)], &[]).await;
    let refused = suite.post("/v1/chat/completions", hello(json!({}))).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let correlation = refused.headers()["x-correlation-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = refused.text().await.expect("body");
    assert!(
        !body.contains("hunter2") && !body.contains("postgres://"),
        "{body}"
    );
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["correlationId"], correlation.as_str());

    // A provider that refuses connections: its URL and the OS error stay in the logs.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{closed}/v1");
    let suite = chat_suite(&[("gone", &url, 0)], &[]).await;
    for stream in [false, true] {
        let failed = suite
            .post("/v1/chat/completions", hello(json!({"stream": stream})))
            .await;
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        let body = failed.text().await.expect("body");
        for leak in [
            url.as_str(),
            "127.0.0.1",
            &closed.to_string(),
            "onnection refused",
            "gone",
        ] {
            assert!(!body.contains(leak), "{leak:?} in {body}");
        }
        let body: Value = serde_json::from_str(&body).expect("json");
        assert!(body["error"]["correlationId"].is_string());
    }
}

#[tokio::test]
async fn callers_cannot_pick_an_unlisted_model_or_an_unbounded_max_tokens() {
    let fake = FakeLlm::start(Reply::Answer("fine")).await;
    let suite = chat_suite(
        &[("metered", &fake.base_url, 0)],
        &[("LLM_MAX_TOKENS", "100")],
    )
    .await;
    let expensive = suite
        .post("/v1/chat/completions", hello(json!({"model": "gpt-4-32k"})))
        .await;
    assert_eq!(expensive.status(), StatusCode::NOT_FOUND, "model_not_found");
    let huge = suite
        .post(
            "/v1/chat/completions",
            hello(json!({"max_tokens": 4_000_000_000u32})),
        )
        .await;
    assert_eq!(huge.status(), StatusCode::BAD_REQUEST);
    let over = suite
        .post("/api/v1/chat", hello(json!({"max_tokens": 101})))
        .await;
    assert_eq!(over.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fake.requests(), 0, "nothing reached the provider");

    let listed = suite
        .post(
            "/v1/chat/completions",
            hello(json!({"model": "fake-model"})),
        )
        .await;
    assert_eq!(listed.status(), StatusCode::OK);
    let unbounded = suite.post("/api/v1/chat", hello(json!({}))).await;
    assert_eq!(unbounded.status(), StatusCode::OK);
    let bodies = fake.bodies();
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies.iter().all(|b| b["max_tokens"] == 100),
        "every call is bounded: {bodies:?}"
    );
    // The API document states this deployment's bound, not the default.
    let spec = suite.openapi().await;
    for path in ["/api/v1/chat", "/v1/chat/completions"] {
        let schema =
            &spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(
            schema["properties"]["max_tokens"]["anyOf"][0]["maximum"], 100,
            "{path}: {schema}"
        );
    }
}

// ---- finding 11: a readiness flood does not fan out

/// A health server that answers SERVING and counts the checks it was asked.
#[derive(Clone, Default)]
struct CountingHealth(Arc<AtomicUsize>);

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for CountingHealth {
    async fn check(
        &self,
        _: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse {
                status: tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            },
        ))
    }

    type WatchStream =
        tokio_stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not needed"))
    }
}

#[tokio::test]
async fn a_readiness_flood_asks_the_backends_about_once_a_second() {
    let health = CountingHealth::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let backend = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                health.clone(),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let url = format!("http://{backend}");
    let vars: std::collections::HashMap<String, String> = [
        ("AUTH_GRPC_URL", url.as_str()),
        ("CONTENT_GRPC_URL", url.as_str()),
        ("CHAT_GRPC_URL", url.as_str()),
        ("RATELIMIT_GRPC_URL", url.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([("DATABASE_URL".to_owned(), harness::fresh_database().await)])
    .collect();
    let settings = portico_config::Settings::from_source(&vars).expect("settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let edge = portico_edge::serve(&settings, listener, shutdown.clone())
        .await
        .expect("edge starts");
    let client = reqwest::Client::new();
    let ready = format!("http://{}/readyz", edge.local_addr);
    let flood = (0..64).map(|_| client.get(&ready).send());
    let started = std::time::Instant::now();
    for response in futures_util::future::join_all(flood).await {
        assert!(response.expect("edge answers").status().is_success());
    }
    let seconds = started.elapsed().as_secs() as usize + 1;
    // One round is four services plus chat's component: at most one round per second begun.
    let rounds_allowed = 2 * seconds;
    let checks = health.0.load(Ordering::SeqCst);
    assert!(
        checks <= 5 * rounds_allowed,
        "{checks} health checks for 64 /readyz in {seconds} s"
    );
    shutdown.cancel();
}
