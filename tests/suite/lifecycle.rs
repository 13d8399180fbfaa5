//! The account lifecycle (issue 20) end to end, on whichever back-ends the run has (CI: SQLite
//! and PostgreSQL, each with and without Redis): password reset (enumeration-safe answer and
//! timing, single use, expiry, revocation), password change, sessions (self and admin), account
//! deletion, OIDC discovery, and the refresh grace period.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use portico::Component;
use portico_proto::auth::{self as pb, auth_service_client::AuthServiceClient};
use reqwest::StatusCode;
use sea_orm::ConnectionTrait as _;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::harness::{self, TestSuite};

const PASSWORD: &str = "correct horse battery";
const NEW_PASSWORD: &str = "a brand new passphrase";
const ADMIN_KEY: &str = "admin-secret-for-tests-0123456789abcdef";

/// A mailer that keeps what it was asked to send, optionally slowly (a slow mailer must never
/// show in a reset request's timing).
#[derive(Debug, Default)]
struct Mailbox {
    resets: Mutex<Vec<(String, String)>>,
    delay: Duration,
}

impl portico_auth::EmailSender for Mailbox {
    fn send_verification(&self, _email: &str, _token: &str) {}

    fn send_password_reset(&self, email: &str, token: &str) {
        std::thread::sleep(self.delay);
        self.resets
            .lock()
            .expect("lock")
            .push((email.to_owned(), token.to_owned()));
    }
}

impl Mailbox {
    fn slow(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            delay,
            ..Default::default()
        })
    }

    fn count(&self, email: &str) -> usize {
        self.resets
            .lock()
            .expect("lock")
            .iter()
            .filter(|(to, _)| to == email)
            .count()
    }

    /// Waits (bounded) for the `n`th reset mail to `email` and returns its token.
    async fn reset_token(&self, email: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, token)) = self
                .resets
                .lock()
                .expect("lock")
                .iter()
                .filter(|(to, _)| to == email)
                .nth(n - 1)
            {
                return token.clone();
            }
            assert!(Instant::now() < deadline, "no reset mail #{n} to {email}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn options(mailbox: &Arc<Mailbox>) -> portico_auth::Options {
    portico_auth::Options {
        sender: mailbox.clone(),
        ..Default::default()
    }
}

async fn register(suite: &TestSuite, email: &str) {
    let registered = suite
        .post(
            "/api/v1/auth/register",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
}

async fn login_with(suite: &TestSuite, email: &str, password: &str, agent: &str) -> Value {
    let response = suite
        .http
        .post(suite.url("/api/v1/auth/login"))
        .header("user-agent", agent)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("edge");
    assert_eq!(response.status(), StatusCode::OK, "login {email}");
    response.json().await.expect("json")
}

async fn login(suite: &TestSuite, email: &str) -> Value {
    login_with(suite, email, PASSWORD, "lifecycle-test").await
}

fn access(tokens: &Value) -> &str {
    tokens["accessToken"].as_str().expect("access token")
}

fn refresh(tokens: &Value) -> &str {
    tokens["refreshToken"].as_str().expect("refresh token")
}

async fn me_status(suite: &TestSuite, token: &str) -> StatusCode {
    suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("edge")
        .status()
}

async fn refresh_status(suite: &TestSuite, token: &str) -> StatusCode {
    suite
        .post("/api/v1/auth/refresh", json!({"refreshToken": token}))
        .await
        .status()
}

async fn grpc(addr: std::net::SocketAddr) -> AuthServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    AuthServiceClient::new(channel)
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn a_reset_for_an_unknown_address_looks_like_one_for_a_known_address() {
    // A mailer that takes 100 ms: were the lookup or the mail on the request path, the known
    // address would answer at least that much later.
    let mailbox = Mailbox::slow(Duration::from_millis(100));
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "1000")
        .env("RATE_LIMIT_GLOBAL_MAX", "1000")
        .env("AUTH_PASSWORD_RESET_ACCOUNT_MAX", "1000")
        .auth_options(options(&mailbox))
        .spawn()
        .await;
    register(&suite, "known@example.com").await;
    let suite = &suite;
    let ask = |email: &'static str| async move {
        let started = Instant::now();
        let response = suite
            .post("/api/v1/auth/password-reset", json!({"email": email}))
            .await;
        let elapsed = started.elapsed();
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        (status, body, elapsed)
    };
    // Warm-up: connections, prepared statements, the counters' rows.
    for email in ["known@example.com", "unknown@example.com"] {
        ask(email).await;
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for pair in 0..30 {
        // Alternate which goes first, so neither always follows the other's background work.
        let order = if pair % 2 == 0 {
            ["known@example.com", "unknown@example.com"]
        } else {
            ["unknown@example.com", "known@example.com"]
        };
        for email in order {
            let (status, body, elapsed) = ask(email).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{email}");
            assert_eq!(body, json!({"status": "accepted"}), "{email}");
            if email.starts_with("known") {
                known.push(elapsed);
            } else {
                unknown.push(elapsed);
            }
        }
    }
    let (known, unknown) = (median(&mut known), median(&mut unknown));
    let gap = known.abs_diff(unknown);
    assert!(
        gap < Duration::from_millis(20).max(known.min(unknown) / 2),
        "median known {known:?} vs unknown {unknown:?}: the answer's timing tells them apart"
    );
    assert!(
        known < Duration::from_millis(100),
        "the 100 ms mailer is off the request path: {known:?}"
    );
    // The known address did get its mails; the unknown one has nobody to get them.
    mailbox.reset_token("known@example.com", 31).await;
    assert_eq!(mailbox.count("unknown@example.com"), 0);

    // Malformed addresses are refused the same for everyone.
    let bad = suite
        .post(
            "/api/v1/auth/password-reset",
            json!({"email": "not-an-address"}),
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn reset_requests_are_limited_per_address_and_per_ip() {
    let mailbox = Arc::new(Mailbox::default());
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "7")
        .env("AUTH_PASSWORD_RESET_ACCOUNT_MAX", "2")
        .auth_options(options(&mailbox))
        .spawn()
        .await;
    register(&suite, "limited@example.com").await;
    let mut answers = Vec::new();
    for email in ["limited@example.com", "nobody@example.com"] {
        for _ in 0..3 {
            let response = suite
                .post("/api/v1/auth/password-reset", json!({"email": email}))
                .await;
            let retry = response.headers().get("retry-after").cloned();
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            answers.push((status, retry.is_some(), body["error"]["message"].clone()));
        }
    }
    // Per address: 2 accepted, then 429 — known or not alike (no enumeration through it).
    assert_eq!(answers[0..3], answers[3..6], "{answers:?}");
    assert_eq!(answers[0].0, StatusCode::ACCEPTED);
    assert_eq!(answers[1].0, StatusCode::ACCEPTED);
    assert_eq!(answers[2].0, StatusCode::TOO_MANY_REQUESTS);
    assert!(answers[2].1, "Retry-After");
    // Per IP: the edge's `auth` policy (RATE_LIMIT_AUTH_MAX=7: register and six requests spent it).
    let over = suite
        .post(
            "/api/v1/auth/password-reset",
            json!({"email": "third@example.com"}),
        )
        .await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let confirm = suite
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": "x", "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(
        confirm.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "confirming shares the IP's budget"
    );
    mailbox.reset_token("limited@example.com", 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        mailbox.count("limited@example.com"),
        2,
        "the refused one sent nothing"
    );
}

#[tokio::test]
async fn a_reset_token_works_once_and_expires() {
    let clock = portico_limiter::ManualClock::new(now_micros());
    let mailbox = Arc::new(Mailbox::default());
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("AUTH_PASSWORD_RESET_TTL", "30m")],
        portico_auth::Options {
            clock: clock.clone(),
            sender: mailbox.clone(),
        },
    )
    .await;
    let mut auth = grpc(addr).await;
    let email = "once@example.com";
    auth.register(pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let reset = || pb::RequestPasswordResetRequest {
        email: email.into(),
    };
    let confirm = |token: &str, password: &str| pb::ConfirmPasswordResetRequest {
        token: token.into(),
        new_password: password.into(),
    };
    let login = |password: &str| pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };

    auth.request_password_reset(reset()).await.expect("request");
    let first = mailbox.reset_token(email, 1).await;
    clock.advance(Duration::from_secs(29 * 60));
    let done = auth
        .confirm_password_reset(confirm(&first, NEW_PASSWORD))
        .await
        .expect("within 30 minutes")
        .into_inner();
    assert_eq!(done.sessions_revoked, 0, "it had none");
    let again = auth
        .confirm_password_reset(confirm(&first, "yet another passphrase"))
        .await
        .expect_err("single use");
    assert_eq!(again.code(), tonic::Code::InvalidArgument);
    assert!(auth.login(login(NEW_PASSWORD)).await.is_ok());
    assert_eq!(
        auth.login(login(PASSWORD)).await.expect_err("old").code(),
        tonic::Code::Unauthenticated
    );

    auth.request_password_reset(reset()).await.expect("request");
    let second = mailbox.reset_token(email, 2).await;
    clock.advance(Duration::from_secs(30 * 60 + 1));
    let expired = auth
        .confirm_password_reset(confirm(&second, "yet another passphrase"))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), tonic::Code::InvalidArgument);
    assert!(auth.login(login(NEW_PASSWORD)).await.is_ok(), "unchanged");

    let weak = auth
        .confirm_password_reset(confirm("whatever", "short"))
        .await
        .expect_err("weak password");
    assert_eq!(weak.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn after_a_reset_every_old_refresh_and_access_token_is_refused() {
    let mailbox = Arc::new(Mailbox::default());
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .auth_options(options(&mailbox))
        .spawn()
        .await;
    let email = "reset@example.com";
    register(&suite, email).await;
    let laptop = login(&suite, email).await;
    let phone = login(&suite, email).await;
    let asked = suite
        .post("/api/v1/auth/password-reset", json!({"email": email}))
        .await;
    assert_eq!(asked.status(), StatusCode::ACCEPTED);
    let token = mailbox.reset_token(email, 1).await;
    let confirmed = suite
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": token, "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let confirmed: Value = confirmed.json().await.expect("json");
    assert_eq!(confirmed["sessionsRevoked"], 2);
    for tokens in [&laptop, &phone] {
        assert_eq!(
            me_status(&suite, access(tokens)).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refresh_status(&suite, refresh(tokens)).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let old = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    login_with(&suite, email, NEW_PASSWORD, "after-reset").await;

    let audit = audit_events(&suite.database_url).await;
    for expected in ["PASSWORD_RESET_REQUESTED", "PASSWORD_RESET_COMPLETED"] {
        assert!(
            audit.iter().any(|(event, _, _)| event == expected),
            "{expected} in {audit:?}"
        );
    }
}

/// `(event_type, user_id, email)` of every audit row.
async fn audit_events(database_url: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let db = sea_orm::Database::connect(database_url).await.expect("db");
    let rows = db
        .query_all(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT event_type, user_id, email FROM audit_events ORDER BY id",
        ))
        .await
        .expect("audit");
    rows.iter()
        .map(|row| {
            (
                row.try_get("", "event_type").expect("event_type"),
                row.try_get("", "user_id").expect("user_id"),
                row.try_get("", "email").expect("email"),
            )
        })
        .collect()
}

async fn change_password(suite: &TestSuite, token: &str, body: Value) -> reqwest::Response {
    suite
        .http
        .post(suite.url("/api/v1/auth/password"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("edge")
}

#[tokio::test]
async fn changing_the_password_revokes_the_other_sessions_and_keeps_this_one() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await;
    let email = "change@example.com";
    register(&suite, email).await;
    let here = login(&suite, email).await;
    let elsewhere = login(&suite, email).await;

    let wrong = change_password(
        &suite,
        access(&here),
        json!({"currentPassword": "not my password", "newPassword": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let anonymous = suite
        .post(
            "/api/v1/auth/password",
            json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let changed = change_password(
        &suite,
        access(&here),
        json!({"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let changed: Value = changed.json().await.expect("json");
    assert_eq!(
        changed["sessionsRevoked"], 1,
        "revokeOtherSessions defaults to true"
    );
    assert_eq!(
        me_status(&suite, access(&elsewhere)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh_status(&suite, refresh(&elsewhere)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me_status(&suite, access(&here)).await,
        StatusCode::OK,
        "this session stays"
    );
    assert_eq!(refresh_status(&suite, refresh(&here)).await, StatusCode::OK);

    // Without revocation the other sessions stay.
    let third = login_with(&suite, email, NEW_PASSWORD, "third").await;
    let kept = change_password(
        &suite,
        access(&here),
        json!({"currentPassword": NEW_PASSWORD, "newPassword": PASSWORD, "revokeOtherSessions": false}),
    )
    .await;
    assert_eq!(kept.status(), StatusCode::OK);
    let kept: Value = kept.json().await.expect("json");
    assert_eq!(kept["sessionsRevoked"], 0);
    assert_eq!(me_status(&suite, access(&third)).await, StatusCode::OK);
    assert_eq!(
        refresh_status(&suite, refresh(&third)).await,
        StatusCode::OK
    );
    login(&suite, email).await;
}

async fn sessions(suite: &TestSuite, path: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = suite.http.get(suite.url(path));
    request = match token {
        Some(token) => request.bearer_auth(token),
        None => request.header("x-admin-key", ADMIN_KEY),
    };
    let response = request.send().await.expect("edge");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn delete(suite: &TestSuite, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = suite.http.delete(suite.url(path));
    request = match token {
        Some(token) => request.bearer_auth(token),
        None => request.header("x-admin-key", ADMIN_KEY),
    };
    request.send().await.expect("edge")
}

#[tokio::test]
async fn sessions_are_listed_and_ended_by_their_owner_and_by_an_admin() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .spawn()
        .await;
    let email = "sessions@example.com";
    register(&suite, email).await;
    let laptop = login_with(&suite, email, PASSWORD, "Laptop/1.0").await;
    let phone = login_with(&suite, email, PASSWORD, "Phone/2.0").await;

    let (status, listed) = sessions(&suite, "/api/v1/auth/sessions", Some(access(&laptop))).await;
    assert_eq!(status, StatusCode::OK);
    let listed = listed["sessions"].as_array().expect("sessions").clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let current: Vec<_> = listed.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["userAgent"], "Laptop/1.0");
    assert_eq!(current[0]["ip"], "127.0.0.1");
    assert!(current[0]["createdAt"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(current[0]["lastUsedAt"].as_str().is_some());
    let phone_session = listed
        .iter()
        .find(|s| s["userAgent"] == "Phone/2.0")
        .expect("the phone's session")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // Another account cannot end it (nor learn that it exists).
    let other = {
        register(&suite, "other@example.com").await;
        login(&suite, "other@example.com").await
    };
    let foreign = delete(
        &suite,
        &format!("/api/v1/auth/sessions/{phone_session}"),
        Some(access(&other)),
    )
    .await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    assert_eq!(me_status(&suite, access(&phone)).await, StatusCode::OK);

    let ended = delete(
        &suite,
        &format!("/api/v1/auth/sessions/{phone_session}"),
        Some(access(&laptop)),
    )
    .await;
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me_status(&suite, access(&phone)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh_status(&suite, refresh(&phone)).await,
        StatusCode::UNAUTHORIZED
    );
    let again = delete(
        &suite,
        &format!("/api/v1/auth/sessions/{phone_session}"),
        Some(access(&laptop)),
    )
    .await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let (_, listed) = sessions(&suite, "/api/v1/auth/sessions", Some(access(&laptop))).await;
    assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(1));

    // Log out everywhere, this session included.
    let tablet = login(&suite, email).await;
    let everywhere = delete(&suite, "/api/v1/auth/sessions", Some(access(&laptop))).await;
    assert_eq!(everywhere.status(), StatusCode::OK);
    let everywhere: Value = everywhere.json().await.expect("json");
    assert_eq!(everywhere["sessionsRevoked"], 2);
    for tokens in [&laptop, &tablet] {
        assert_eq!(
            me_status(&suite, access(tokens)).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refresh_status(&suite, refresh(tokens)).await,
            StatusCode::UNAUTHORIZED
        );
    }

    // An admin, by email (percent-encoded or not) or by id.
    let first = login(&suite, email).await;
    let second = login(&suite, email).await;
    let (status, listed) = sessions(
        &suite,
        "/api/v1/admin/auth/users/sessions%40example.com/sessions",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed = listed["sessions"].as_array().expect("sessions").clone();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s["current"] == false));
    let id = listed[0]["id"].as_str().expect("id");
    let one = delete(
        &suite,
        &format!("/api/v1/admin/auth/users/{email}/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(one.status(), StatusCode::NO_CONTENT);
    let user_id: Value = suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(access(&other))
        .send()
        .await
        .expect("edge")
        .json()
        .await
        .expect("json");
    let (status, _) = sessions(
        &suite,
        &format!(
            "/api/v1/admin/auth/users/{}/sessions",
            user_id["id"].as_str().expect("id")
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "by id");
    let all = delete(
        &suite,
        &format!("/api/v1/admin/auth/users/{email}/sessions"),
        None,
    )
    .await;
    assert_eq!(all.status(), StatusCode::OK);
    let all: Value = all.json().await.expect("json");
    assert_eq!(all["sessionsRevoked"], 1);
    for tokens in [&first, &second] {
        assert_eq!(
            me_status(&suite, access(tokens)).await,
            StatusCode::UNAUTHORIZED
        );
    }

    // A user is not an admin; an unknown account is 404.
    let (status, _) = sessions(
        &suite,
        &format!("/api/v1/admin/auth/users/{email}/sessions"),
        Some(access(&other)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = sessions(
        &suite,
        "/api/v1/admin/auth/users/ghost@example.com/sessions",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// How many rows of `table` match `column = value`.
async fn rows(db: &sea_orm::DatabaseConnection, table: &str, column: &str, value: &str) -> i64 {
    let backend = db.get_database_backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    db.query_one(sea_orm::Statement::from_sql_and_values(
        backend,
        format!("SELECT COUNT(*) AS n FROM {table} WHERE {column} = {placeholder}"),
        [value.into()],
    ))
    .await
    .expect("count")
    .expect("row")
    .try_get::<i64>("", "n")
    .expect("n")
}

#[tokio::test]
async fn deleting_an_account_removes_everything_it_says_and_anonymises_the_audit() {
    let mailbox = Arc::new(Mailbox::default());
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .auth_options(options(&mailbox))
        .spawn()
        .await;
    let email = format!("leaving-{}@example.com", uuid::Uuid::new_v4().simple());
    register(&suite, &email).await;
    let tokens = login(&suite, &email).await;
    let second = login(&suite, &email).await;
    let user: Value = suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(access(&tokens))
        .send()
        .await
        .expect("edge")
        .json()
        .await
        .expect("json");
    let user_id = user["id"].as_str().expect("id").to_owned();
    // Leave something in every place deletion says it clears.
    suite
        .post("/api/v1/auth/password-reset", json!({"email": email}))
        .await;
    mailbox.reset_token(&email, 1).await;
    suite
        .post(
            "/api/v1/auth/login",
            json!({"email": email, "password": "a wrong password"}),
        )
        .await;

    let without = suite
        .http
        .delete(suite.url("/api/v1/auth/me"))
        .bearer_auth(access(&tokens))
        .json(&json!({"password": "a wrong password"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(without.status(), StatusCode::FORBIDDEN, "re-authentication");
    let deleted = suite
        .http
        .delete(suite.url("/api/v1/auth/me"))
        .bearer_auth(access(&tokens))
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .expect("edge");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);

    // Audit rows are written before the answer: look at every place deletion says it clears
    // (before any new attempt at the address writes new attempt counters).
    let db = sea_orm::Database::connect(&suite.database_url)
        .await
        .expect("db");
    assert_eq!(rows(&db, "users", "id", &user_id).await, 0);
    for table in ["refresh_tokens", "password_resets", "email_verifications"] {
        assert_eq!(rows(&db, table, "user_id", &user_id).await, 0, "{table}");
    }
    assert_eq!(rows(&db, "lockouts", "email", &email).await, 0);
    assert_eq!(
        rows(
            &db,
            "auth_counters",
            "name",
            &format!("password_reset:{email}")
        )
        .await,
        0
    );
    assert_eq!(rows(&db, "audit_events", "user_id", &user_id).await, 0);
    assert_eq!(rows(&db, "audit_events", "email", &email).await, 0);
    if let Some(url) = &suite.redis_url {
        assert_eq!(
            redis_keys_naming(url, &email).await,
            0,
            "Redis keys of {email}"
        );
    }
    let audit = audit_events(&suite.database_url).await;
    let deletion = audit
        .iter()
        .find(|(event, _, _)| event == "ACCOUNT_DELETED")
        .expect("ACCOUNT_DELETED");
    let pseudonym = deletion.1.clone().expect("a pseudonym");
    assert_ne!(pseudonym, user_id);
    let kept: Vec<&str> = audit
        .iter()
        .filter(|(_, id, _)| id.as_deref() == Some(pseudonym.as_str()))
        .map(|(event, _, email)| {
            assert!(email.is_none(), "anonymised: {event}");
            event.as_str()
        })
        .collect();
    for event in [
        "USER_REGISTERED",
        "LOGIN_SUCCESS",
        "LOGIN_FAILURE",
        "PASSWORD_RESET_REQUESTED",
        "ACCOUNT_DELETED",
    ] {
        assert!(kept.contains(&event), "{event} kept in {kept:?}");
    }

    for token in [access(&tokens), access(&second)] {
        assert_eq!(me_status(&suite, token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        refresh_status(&suite, refresh(&second)).await,
        StatusCode::UNAUTHORIZED
    );
    let gone = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);

    // An admin deletes by id; twice is 404.
    register(&suite, "removed@example.com").await;
    let removed = login(&suite, "removed@example.com").await;
    let id: Value = suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(access(&removed))
        .send()
        .await
        .expect("edge")
        .json()
        .await
        .expect("json");
    let path = format!(
        "/api/v1/admin/auth/users/{}",
        id["id"].as_str().expect("id")
    );
    // The admin binding takes no password: not in its OpenAPI parameters, refused in the query.
    let openapi = suite.openapi().await;
    let parameters = openapi["paths"]["/api/v1/admin/auth/users/{user}"]["delete"]["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = parameters
        .iter()
        .filter_map(|parameter| parameter["name"].as_str())
        .collect();
    assert_eq!(names, ["user"], "{parameters:?}");
    let with_password = delete(&suite, &format!("{path}?password=anything"), None).await;
    harness::assert_error(
        with_password,
        StatusCode::BAD_REQUEST,
        "unknown query parameter `password`",
    )
    .await;
    assert_eq!(
        delete(&suite, &path, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(&suite, &path, None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        me_status(&suite, access(&removed)).await,
        StatusCode::UNAUTHORIZED
    );
}

/// Keys in the Redis at `url` (any prefix) whose name contains `needle`.
async fn redis_keys_naming(url: &str, needle: &str) -> usize {
    use fred::{prelude::*, types::scan::Scanner as _};
    use futures_util::TryStreamExt as _;
    let client = Builder::from_config(Config::from_url(url).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect");
    let mut found = 0;
    let mut pages = client.scan(format!("*{needle}*"), Some(500), None);
    while let Some(mut page) = pages.try_next().await.expect("scan") {
        found += page.take_results().map_or(0, |keys| keys.len());
    }
    let _ = client.quit().await;
    found
}

#[tokio::test]
async fn a_token_verifies_with_nothing_but_the_issuer_url() {
    // The issuer is the edge's own URL, as in production (JWT_ISSUER=https://api.example.com).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let suite = TestSuite::builder()
        .env("EDGE_ADDR", &format!("127.0.0.1:{port}"))
        .env("JWT_ISSUER", &issuer)
        .spawn()
        .await;
    register(&suite, "oidc@example.com").await;
    let token = login(&suite, "oidc@example.com").await;

    // What a JWT middleware does: {issuer}/.well-known/openid-configuration, then jwks_uri.
    let discovery = suite
        .http
        .get(format!("{issuer}/.well-known/openid-configuration"))
        .send()
        .await
        .expect("edge");
    assert_eq!(discovery.status(), StatusCode::OK);
    assert_eq!(discovery.headers()["content-type"], "application/json");
    let discovery: Value = discovery.json().await.expect("json");
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(
        discovery["jwks_uri"],
        format!("{issuer}/.well-known/jwks.json").as_str()
    );
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    assert_eq!(
        discovery["portico_endpoints"]["password_reset"],
        format!("{issuer}/api/v1/auth/password-reset").as_str()
    );
    let jwks: jsonwebtoken::jwk::JwkSet = suite
        .http
        .get(discovery["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("a JWK set");
    let header = jsonwebtoken::decode_header(access(&token)).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("the token's key is published");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[discovery["issuer"].as_str().expect("issuer")]);
    validation.set_audience(&["portico"]);
    let claims = jsonwebtoken::decode::<Value>(
        access(&token),
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("verified with what discovery published")
    .claims;
    assert_eq!(claims["iss"], issuer.as_str());

    // The OpenAPI document lists the new routes from the same table.
    let openapi = suite.openapi().await;
    for (path, method) in [
        ("/.well-known/openid-configuration", "get"),
        ("/api/v1/auth/password-reset", "post"),
        ("/api/v1/auth/password-reset/confirm", "post"),
        ("/api/v1/auth/password", "post"),
        ("/api/v1/auth/sessions", "get"),
        ("/api/v1/auth/sessions", "delete"),
        ("/api/v1/auth/sessions/{session_id}", "delete"),
        ("/api/v1/auth/me", "delete"),
        ("/api/v1/admin/auth/users/{user}", "delete"),
        ("/api/v1/admin/auth/users/{user}/sessions", "get"),
    ] {
        assert!(
            openapi["paths"][path][method].is_object(),
            "{method} {path} in the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn without_a_url_issuer_discovery_follows_the_host_it_was_asked_on() {
    let suite = TestSuite::spawn().await;
    let discovery: Value = suite
        .get("/.well-known/openid-configuration")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["issuer"], "portico");
    assert_eq!(
        discovery["jwks_uri"],
        suite.url("/.well-known/jwks.json").as_str()
    );
}

/// A standalone auth service on a manual clock, and a logged-in pair.
async fn grace_service(
    grace: &str,
) -> (
    AuthServiceClient<Channel>,
    Arc<portico_limiter::ManualClock>,
    pb::TokenPair,
    tokio_util::sync::CancellationToken,
) {
    let clock = portico_limiter::ManualClock::new(now_micros());
    let (addr, _db, stop) = harness::spawn_auth(
        &[("AUTH_REFRESH_GRACE", grace)],
        portico_auth::Options {
            clock: clock.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut auth = grpc(addr).await;
    auth.register(pb::RegisterRequest {
        email: "tabs@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let pair = auth
        .login(pb::LoginRequest {
            email: "tabs@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    (auth, clock, pair, stop)
}

fn refresh_request(token: &str) -> pb::RefreshRequest {
    pb::RefreshRequest {
        refresh_token: token.into(),
    }
}

async fn valid(auth: &mut AuthServiceClient<Channel>, token: &str) -> bool {
    auth.validate_token(pb::ValidateTokenRequest {
        access_token: token.into(),
    })
    .await
    .expect("validate")
    .into_inner()
    .valid
}

#[tokio::test]
async fn a_refresh_repeated_within_the_grace_period_returns_the_same_pair() {
    let (mut auth, clock, pair, _stop) = grace_service("10s").await;
    let first = auth
        .refresh(refresh_request(&pair.refresh_token))
        .await
        .expect("refresh")
        .into_inner();
    clock.advance(Duration::from_millis(10));
    let second = auth
        .refresh(refresh_request(&pair.refresh_token))
        .await
        .expect("10 ms later: within the grace period")
        .into_inner();
    assert_eq!(second, first, "the same successor pair");
    assert!(valid(&mut auth, &first.access_token).await);

    clock.advance(Duration::from_secs(10));
    let third = auth
        .refresh(refresh_request(&pair.refresh_token))
        .await
        .expect_err("after the window: reuse");
    assert_eq!(third.code(), tonic::Code::Unauthenticated);
    assert!(
        third.message().contains("already used"),
        "{}",
        third.message()
    );
    let successor = auth
        .refresh(refresh_request(&first.refresh_token))
        .await
        .expect_err("the family is revoked");
    assert_eq!(successor.code(), tonic::Code::Unauthenticated);
    assert!(
        !valid(&mut auth, &first.access_token).await,
        "its live access token is denylisted"
    );
}

#[tokio::test]
async fn concurrent_refreshes_within_the_grace_period_share_one_successor() {
    let (auth, _clock, pair, _stop) = grace_service("10s").await;
    let racers = (0..10).map(|_| {
        let mut auth = auth.clone();
        let token = pair.refresh_token.clone();
        async move {
            auth.refresh(refresh_request(&token))
                .await
                .map(|r| r.into_inner())
        }
    });
    let pairs: Vec<pb::TokenPair> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .map(|result| result.expect("every racer gets the pair"))
        .collect();
    assert!(
        pairs.iter().all(|p| *p == pairs[0]),
        "one winner minted one successor"
    );
    let mut auth = auth;
    assert!(
        auth.refresh(refresh_request(&pairs[0].refresh_token))
            .await
            .is_ok(),
        "the family lives on"
    );
}

#[tokio::test]
async fn a_zero_grace_period_is_strict_rotation() {
    let (mut auth, _clock, pair, _stop) = grace_service("0").await;
    let first = auth
        .refresh(refresh_request(&pair.refresh_token))
        .await
        .expect("refresh")
        .into_inner();
    let again = auth
        .refresh(refresh_request(&pair.refresh_token))
        .await
        .expect_err("reuse at once");
    assert_eq!(again.code(), tonic::Code::Unauthenticated);
    assert!(auth
        .refresh(refresh_request(&first.refresh_token))
        .await
        .is_err());
}

#[tokio::test]
async fn the_lifecycle_over_grpc() {
    let mailbox = Arc::new(Mailbox::default());
    let suite = TestSuite::builder()
        .env("ADMIN_API_KEY", ADMIN_KEY)
        .auth_options(options(&mailbox))
        .spawn()
        .await;
    let mut auth = grpc(suite.service_addr(Component::Auth)).await;
    let email = "rpc@example.com";
    auth.register(pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let login = |password: &str| pb::LoginRequest {
        email: email.into(),
        password: password.into(),
    };
    let pair = auth
        .login(login(PASSWORD))
        .await
        .expect("login")
        .into_inner();
    let listed = auth
        .list_sessions(bearer(
            pb::ListSessionsRequest::default(),
            &pair.access_token,
        ))
        .await
        .expect("sessions")
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    assert!(listed.sessions[0].current);
    let changed = auth
        .change_password(bearer(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: NEW_PASSWORD.into(),
                revoke_other_sessions: None,
            },
            &pair.access_token,
        ))
        .await
        .expect("change")
        .into_inner();
    assert_eq!(changed.sessions_revoked, 0);
    let other = auth
        .login(login(NEW_PASSWORD))
        .await
        .expect("login")
        .into_inner();
    let mut admin = tonic::Request::new(pb::RevokeAllSessionsRequest { user: email.into() });
    admin
        .metadata_mut()
        .insert("x-admin-key", ADMIN_KEY.parse().expect("ascii"));
    let revoked = auth
        .revoke_all_sessions(admin)
        .await
        .expect("admin")
        .into_inner();
    assert_eq!(revoked.sessions_revoked, 2);
    assert!(!valid(&mut auth, &other.access_token).await);
    let plain = auth
        .login(login(NEW_PASSWORD))
        .await
        .expect("login")
        .into_inner();
    let user_only = auth
        .revoke_all_sessions(bearer(
            pb::RevokeAllSessionsRequest { user: email.into() },
            &plain.access_token,
        ))
        .await
        .expect_err("not an admin");
    assert_eq!(user_only.code(), tonic::Code::PermissionDenied);
    let fresh = auth
        .login(login(NEW_PASSWORD))
        .await
        .expect("login")
        .into_inner();
    let deleted = auth
        .delete_account(bearer(
            pb::DeleteAccountRequest {
                user: String::new(),
                password: NEW_PASSWORD.into(),
            },
            &fresh.access_token,
        ))
        .await
        .expect("delete")
        .into_inner();
    assert!(!deleted.user_id.is_empty());
    let config: Value = serde_json::from_str(
        &auth
            .get_open_id_configuration(pb::GetOpenIdConfigurationRequest {
                base_url: "https://api.example.com".into(),
            })
            .await
            .expect("discovery")
            .into_inner()
            .json,
    )
    .expect("json");
    assert_eq!(
        config["jwks_uri"],
        "https://api.example.com/.well-known/jwks.json"
    );
}

#[tokio::test]
async fn an_operator_issued_reset_token_resets_the_password_and_ends_every_session() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await;
    let email = "locked-out@example.com";
    register(&suite, email).await;
    let session = login(&suite, email).await;
    // `portico users reset-password EMAIL`, through the same library call.
    let settings = portico_config::Settings::from_source(&std::collections::HashMap::from([(
        "DATABASE_URL".to_owned(),
        suite.database_url.clone(),
    )]))
    .expect("settings");
    assert!(
        portico_auth::issue_password_reset(&settings, "nobody@example.com")
            .await
            .expect("lookup")
            .is_none()
    );
    let token = portico_auth::issue_password_reset(&settings, "Locked-Out@Example.com")
        .await
        .expect("issue")
        .expect("the account exists");
    let confirmed = suite
        .post(
            "/api/v1/auth/password-reset/confirm",
            json!({"token": token, "password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert_eq!(
        me_status(&suite, access(&session)).await,
        StatusCode::UNAUTHORIZED
    );
    login_with(&suite, email, NEW_PASSWORD, "after").await;
    assert!(audit_events(&suite.database_url)
        .await
        .iter()
        .any(|(event, _, _)| event == "PASSWORD_RESET_ISSUED"));
}
