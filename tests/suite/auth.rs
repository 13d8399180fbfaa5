//! The auth service end to end: the whole flow over REST and gRPC, enumeration safety,
//! lockout (storm, expiry, unlock), refresh rotation and reuse detection, one winner among
//! concurrent refreshes, key rotation, hostile tokens, email verification, bad input.

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use portico::Component;
use portico_proto::auth::{self as pb, auth_service_client::AuthServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::harness::{self, TestSuite};

const PASSWORD: &str = "correct horse battery";

async fn register_and_login(suite: &TestSuite, email: &str) -> Value {
    let registered = suite
        .post(
            "/api/v1/auth/register",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let login = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), StatusCode::OK);
    login.json().await.expect("json")
}

async fn me(suite: &TestSuite, access_token: &str) -> reqwest::Response {
    suite
        .http
        .get(suite.url("/api/v1/auth/me"))
        .bearer_auth(access_token)
        .send()
        .await
        .expect("edge answers")
}

async fn grpc(addr: std::net::SocketAddr) -> AuthServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    AuthServiceClient::new(channel)
}

fn from_ip<T>(message: T, ip: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    harness::as_edge(&mut request, ip);
    request
}

#[tokio::test]
async fn register_login_me_refresh_logout_over_rest() {
    let suite = TestSuite::spawn().await;
    let tokens = register_and_login(&suite, "  Alice@Example.com ").await;
    assert_eq!(tokens["tokenType"], "Bearer");
    assert_eq!(tokens["expiresIn"], 900);
    let access = tokens["accessToken"].as_str().expect("access");
    let refresh = tokens["refreshToken"].as_str().expect("refresh");

    let account: Value = me(&suite, access).await.json().await.expect("json");
    assert_eq!(account["email"], "alice@example.com", "normalised");
    assert_eq!(account["role"], "user");
    assert_eq!(account["emailVerified"], false);

    let rotated = suite
        .post("/api/v1/auth/refresh", json!({"refreshToken": refresh}))
        .await;
    assert_eq!(rotated.status(), StatusCode::OK);
    let rotated: Value = rotated.json().await.expect("json");
    let new_refresh = rotated["refreshToken"].as_str().expect("refresh");
    assert_ne!(new_refresh, refresh);
    let new_access = rotated["accessToken"].as_str().expect("access");
    assert_eq!(me(&suite, new_access).await.status(), StatusCode::OK);

    let logout = suite
        .http
        .post(suite.url("/api/v1/auth/logout"))
        .bearer_auth(new_access)
        .json(&json!({"refreshToken": new_refresh}))
        .send()
        .await
        .expect("edge");
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me(&suite, new_access).await.status(),
        StatusCode::UNAUTHORIZED,
        "access jti denylisted"
    );
    let after = suite
        .post("/api/v1/auth/refresh", json!({"refreshToken": new_refresh}))
        .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED, "family revoked");
    assert_eq!(me(&suite, "").await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_same_flow_over_grpc() {
    let suite = TestSuite::spawn().await;
    let mut auth = grpc(suite.service_addr(Component::Auth)).await;
    let created = auth
        .register(pb::RegisterRequest {
            email: "grpc@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("register")
        .into_inner();
    assert!(!created.user_id.is_empty() && !created.verification_required);
    let pair = auth
        .login(pb::LoginRequest {
            email: "grpc@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    let mut me = tonic::Request::new(pb::GetMeRequest {});
    me.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", pair.access_token)
            .parse()
            .expect("ascii"),
    );
    let user = auth.get_me(me).await.expect("me").into_inner();
    assert_eq!(user.id, created.user_id);
    let valid = auth
        .validate_token(pb::ValidateTokenRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(valid.valid && valid.user_id == created.user_id);
    let next = auth
        .refresh(pb::RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .expect("refresh")
        .into_inner();
    auth.logout(pb::LogoutRequest {
        refresh_token: next.refresh_token.clone(),
    })
    .await
    .expect("logout");
    let status = auth
        .refresh(pb::RefreshRequest {
            refresh_token: next.refresh_token,
        })
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_are_indistinguishable() {
    let suite = TestSuite::spawn().await;
    register_and_login(&suite, "bob@example.com").await;
    let wrong = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": "bob@example.com", "password": "not the password"}),
        )
        .await;
    let unknown = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": "nobody@example.com", "password": "not the password"}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    let wrong: Value = wrong.json().await.expect("json");
    let unknown: Value = unknown.json().await.expect("json");
    assert_eq!(wrong["error"]["code"], unknown["error"]["code"]);
    assert_eq!(wrong["error"]["message"], unknown["error"]["message"]);
}

#[tokio::test]
async fn duplicate_registration_is_409_unless_verification_hides_it() {
    let suite = TestSuite::spawn().await;
    register_and_login(&suite, "dup@example.com").await;
    let again = suite
        .post(
            "/api/v1/auth/register",
            json!({"email": "DUP@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);

    let hiding = TestSuite::builder()
        .env("AUTH_EMAIL_VERIFICATION_REQUIRED", "true")
        .spawn()
        .await;
    let first = hiding
        .post(
            "/api/v1/auth/register",
            json!({"email": "dup@example.com", "password": PASSWORD}),
        )
        .await;
    let second = hiding
        .post(
            "/api/v1/auth/register",
            json!({"email": "dup@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(first.status(), second.status());
    let (first, second): (Value, Value) = (
        first.json().await.expect("json"),
        second.json().await.expect("json"),
    );
    assert_eq!(
        first, second,
        "the answer does not reveal that the email exists"
    );
    assert_eq!(first["verificationRequired"], true);
}

#[tokio::test]
async fn bad_input_is_400_with_a_message() {
    let suite = TestSuite::spawn().await;
    for (path, body, fragment) in [
        (
            "/api/v1/auth/register",
            json!({"email": "x@example.com", "password": "short"}),
            "8 to 128",
        ),
        (
            "/api/v1/auth/register",
            json!({"email": "not-an-email", "password": PASSWORD}),
            "ASCII address",
        ),
        (
            "/api/v1/auth/register",
            json!({"email": "x@example.com", "password": "p".repeat(129)}),
            "8 to 128",
        ),
        (
            "/api/v1/auth/register",
            json!({"email": "x@example.com", "password": PASSWORD, "role": "admin"}),
            "unknown field",
        ),
        (
            "/api/v1/auth/login",
            // proto3 JSON: a missing field is its empty value, which the service refuses.
            json!({"email": "x@example.com"}),
            "password must be",
        ),
        (
            "/api/v1/auth/refresh",
            json!({"refreshToken": ""}),
            "required",
        ),
    ] {
        let response = suite.post(path, body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.expect("json");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(fragment)),
            "{path}: {body}"
        );
    }
    let not_json = suite
        .http
        .post(suite.url("/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .expect("edge");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn lockout_after_max_failures_then_admin_unlock() {
    let suite = TestSuite::builder()
        .env("AUTH_LOGIN_MAX_ATTEMPTS", "3")
        .env("ADMIN_API_KEY", "admin-secret-for-tests-0123456789abcdef")
        // This test logs in more often than the edge's `auth` policy allows by default.
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await;
    register_and_login(&suite, "carol@example.com").await;
    for _ in 0..3 {
        let r = suite
            .post(
                "/api/v1/auth/login",
                json!({"email": "carol@example.com", "password": "wrong password"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": "carol@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(
        locked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password while locked"
    );
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((890..=900).contains(&retry), "{retry}");

    // Unknown emails lock the same way.
    for _ in 0..3 {
        suite
            .post(
                "/api/v1/auth/login",
                json!({"email": "ghost@example.com", "password": "wrong password"}),
            )
            .await;
    }
    let ghost = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": "ghost@example.com", "password": "wrong password"}),
        )
        .await;
    assert_eq!(ghost.status(), StatusCode::TOO_MANY_REQUESTS);

    let unlock = suite
        .http
        .post(suite.url("/api/v1/admin/auth/unlock"))
        .header("x-admin-key", "admin-secret-for-tests-0123456789abcdef")
        .json(&json!({"email": "Carol@Example.com"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(unlock.status(), StatusCode::OK);
    let cleared: Value = unlock.json().await.expect("json");
    assert!(
        cleared["cleared"].as_u64().is_some_and(|n| n >= 1),
        "{cleared}"
    );
    let ok = suite
        .post(
            "/api/v1/auth/login",
            json!({"email": "carol@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);

    let forbidden = suite
        .http
        .post(suite.url("/api/v1/admin/auth/unlock"))
        .json(&json!({"email": "carol@example.com"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(
        forbidden.status(),
        StatusCode::UNAUTHORIZED,
        "no admin credentials"
    );
}

#[tokio::test]
async fn lockout_expires_with_the_clock() {
    let clock = portico_limiter::ManualClock::new(1_800_000_000_000_000);
    let options = portico_auth::Options {
        clock: clock.clone(),
        ..Default::default()
    };
    let (addr, _db, _stop) = harness::spawn_auth(
        &[
            ("AUTH_LOGIN_MAX_ATTEMPTS", "2"),
            ("AUTH_LOGIN_LOCKOUT_MINUTES", "15"),
        ],
        options,
    )
    .await;
    let mut auth = grpc(addr).await;
    auth.register(pb::RegisterRequest {
        email: "dave@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let login = |password: &str| {
        from_ip(
            pb::LoginRequest {
                email: "dave@example.com".into(),
                password: password.into(),
            },
            "198.51.100.4",
        )
    };
    for _ in 0..2 {
        assert_eq!(
            auth.login(login("wrong password"))
                .await
                .expect_err("wrong")
                .code(),
            tonic::Code::Unauthenticated
        );
    }
    let locked = auth.login(login(PASSWORD)).await.expect_err("locked");
    assert_eq!(locked.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        locked
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("900")
    );
    // Another IP is not locked out (lockout is per email + IP).
    let elsewhere = from_ip(
        pb::LoginRequest {
            email: "dave@example.com".into(),
            password: PASSWORD.into(),
        },
        "198.51.100.5",
    );
    assert!(auth.login(elsewhere).await.is_ok());

    clock.advance(Duration::from_secs(14 * 60 + 59));
    assert_eq!(
        auth.login(login(PASSWORD))
            .await
            .expect_err("still locked")
            .code(),
        tonic::Code::ResourceExhausted
    );
    clock.advance(Duration::from_secs(1));
    assert!(
        auth.login(login(PASSWORD)).await.is_ok(),
        "expired after 15 minutes"
    );
}

#[tokio::test]
async fn a_parallel_wrong_password_storm_gets_only_the_allowed_checks() {
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("AUTH_LOGIN_MAX_ATTEMPTS", "5")],
        portico_auth::Options::default(),
    )
    .await;
    let mut auth = grpc(addr).await;
    auth.register(pb::RegisterRequest {
        email: "erin@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let attempts = (0..30).map(|_| {
        let mut auth = auth.clone();
        async move {
            let request = from_ip(
                pb::LoginRequest {
                    email: "erin@example.com".into(),
                    password: "wrong password".into(),
                },
                "203.0.113.50",
            );
            auth.login(request)
                .await
                .expect_err("never succeeds")
                .code()
        }
    });
    let codes = futures_util::future::join_all(attempts).await;
    let checked = codes
        .iter()
        .filter(|c| **c == tonic::Code::Unauthenticated)
        .count();
    let refused = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert_eq!(
        checked, 5,
        "exactly the allowed attempts had their password checked"
    );
    assert_eq!(refused, 25);
}

#[tokio::test]
async fn refresh_reuse_revokes_the_family_and_is_audited() {
    // Strict rotation: any reuse is theft (the grace period is tested in lifecycle.rs).
    let suite = TestSuite::builder()
        .env("AUTH_REFRESH_GRACE", "0")
        .spawn()
        .await;
    let tokens = register_and_login(&suite, "frank@example.com").await;
    let first = tokens["refreshToken"].as_str().expect("refresh").to_owned();
    let second: Value = suite
        .post("/api/v1/auth/refresh", json!({"refreshToken": first}))
        .await
        .json()
        .await
        .expect("json");
    let second = second["refreshToken"].as_str().expect("refresh").to_owned();

    let reuse = suite
        .post("/api/v1/auth/refresh", json!({"refreshToken": first}))
        .await;
    harness::assert_error(reuse, StatusCode::UNAUTHORIZED, "already used").await;
    let victim = suite
        .post("/api/v1/auth/refresh", json!({"refreshToken": second}))
        .await;
    assert_eq!(
        victim.status(),
        StatusCode::UNAUTHORIZED,
        "the whole family is revoked"
    );

    let db = sea_orm::Database::connect(&suite.database_url)
        .await
        .expect("db");
    use sea_orm::ConnectionTrait as _;
    let rows = db
        .query_all(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT event_type FROM audit_events ORDER BY id",
        ))
        .await
        .expect("audit");
    let events: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String>("", "event_type").ok())
        .collect();
    for expected in ["USER_REGISTERED", "LOGIN_SUCCESS", "REFRESH_TOKEN_REUSE"] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} in {events:?}"
        );
    }
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_have_exactly_one_winner() {
    // Strict rotation; with the grace period every racer gets the winner's pair (lifecycle.rs).
    let suite = TestSuite::builder()
        .env("AUTH_REFRESH_GRACE", "0")
        .spawn()
        .await;
    let mut auth = grpc(suite.service_addr(Component::Auth)).await;
    auth.register(pb::RegisterRequest {
        email: "gina@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let pair = auth
        .login(pb::LoginRequest {
            email: "gina@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner();
    let racers = (0..10).map(|_| {
        let mut auth = auth.clone();
        let token = pair.refresh_token.clone();
        async move {
            auth.refresh(pb::RefreshRequest {
                refresh_token: token,
            })
            .await
            .is_ok()
        }
    });
    let winners = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .filter(|won| *won)
        .count();
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn email_verification_gates_login_and_is_single_use() {
    #[derive(Debug, Default)]
    struct Capture(std::sync::Mutex<Vec<String>>);
    impl portico_auth::EmailSender for Capture {
        fn send_verification(&self, _email: &str, token: &str) {
            self.0.lock().expect("lock").push(token.to_owned());
        }
        fn send_password_reset(&self, _email: &str, _token: &str) {}
    }
    let sent = Arc::new(Capture::default());
    let options = portico_auth::Options {
        sender: sent.clone(),
        ..Default::default()
    };
    let (addr, _db, _stop) =
        harness::spawn_auth(&[("AUTH_EMAIL_VERIFICATION_REQUIRED", "true")], options).await;
    let mut auth = grpc(addr).await;
    auth.register(pb::RegisterRequest {
        email: "hana@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let login = || pb::LoginRequest {
        email: "hana@example.com".into(),
        password: PASSWORD.into(),
    };
    assert_eq!(
        auth.login(login()).await.expect_err("unverified").code(),
        tonic::Code::FailedPrecondition
    );

    let token = sent
        .0
        .lock()
        .expect("lock")
        .pop()
        .expect("a verification was sent");
    auth.verify_email(pb::VerifyEmailRequest {
        token: token.clone(),
    })
    .await
    .expect("verify");
    assert!(auth.login(login()).await.is_ok());
    let again = auth
        .verify_email(pb::VerifyEmailRequest { token })
        .await
        .expect_err("single use");
    assert_eq!(again.code(), tonic::Code::InvalidArgument);
}

mod hostile_tokens {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn claims(iss: &str, aud: &str, exp: u64) -> Value {
        json!({"iss": iss, "aud": aud, "sub": "someone", "role": "admin", "jti": "j-1", "iat": now(), "nbf": now() - 10, "exp": exp})
    }

    async fn validate(
        auth: &mut AuthServiceClient<Channel>,
        token: &str,
    ) -> pb::ValidateTokenResponse {
        auth.validate_token(pb::ValidateTokenRequest {
            access_token: token.to_owned(),
        })
        .await
        .expect("validate answers")
        .into_inner()
    }

    #[tokio::test]
    async fn forged_expired_tampered_and_revoked_tokens_are_refused() {
        let suite = TestSuite::builder()
            .env("ADMIN_API_KEY", "admin-secret-for-tests-0123456789abcdef")
            .spawn()
            .await;
        let mut auth = grpc(suite.service_addr(Component::Auth)).await;
        let jwks: Value = suite
            .get("/.well-known/jwks.json")
            .await
            .json()
            .await
            .expect("jwks");
        let kid = jwks["keys"][0]["kid"].as_str().expect("kid").to_owned();
        let x = jwks["keys"][0]["x"].as_str().expect("x").to_owned();
        let pem = std::fs::read(&suite.signing_key).expect("key");
        let key = EncodingKey::from_ed_pem(&pem).expect("ed key");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let sign = |claims: &Value| encode(&header, claims, &key).expect("sign");

        // A correctly made token is accepted: the refusals below are about what they break.
        assert!(
            validate(&mut auth, &sign(&claims("portico", "portico", now() + 300)))
                .await
                .valid
        );

        let none = format!(
            "{}.{}.",
            B64.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string()),
            B64.encode(claims("portico", "portico", now() + 300).to_string())
        );
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some(kid.clone());
        let confused = encode(
            &hs,
            &claims("portico", "portico", now() + 300),
            &EncodingKey::from_secret(x.as_bytes()),
        )
        .expect("hs");
        let good = sign(&claims("portico", "portico", now() + 300));
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(claims("portico", "portico", now() + 3600).to_string());
        let tampered = parts.join(".");

        for (name, token) in [
            ("alg none", none),
            ("HS256 signed with the public key", confused),
            (
                "wrong audience",
                sign(&claims("portico", "someone-else", now() + 300)),
            ),
            (
                "wrong issuer",
                sign(&claims("evil", "portico", now() + 300)),
            ),
            ("expired", sign(&claims("portico", "portico", now() - 60))),
            ("tampered payload", tampered),
            ("garbage", "not.a.token".to_owned()),
        ] {
            let answer = validate(&mut auth, &token).await;
            assert!(!answer.valid, "{name} was accepted");
            assert!(!answer.reason.is_empty(), "{name} has a reason");
            assert_eq!(
                me(&suite, &token).await.status(),
                StatusCode::UNAUTHORIZED,
                "{name} at /me"
            );
        }

        // Revoked by jti through the admin route.
        let tokens = register_and_login(&suite, "ivan@example.com").await;
        let access = tokens["accessToken"].as_str().expect("access");
        let jti = validate(&mut auth, access).await.jti;
        let revoke = suite
            .http
            .post(suite.url("/api/v1/admin/auth/revoke"))
            .header("x-admin-key", "admin-secret-for-tests-0123456789abcdef")
            .json(&json!({"jti": jti}))
            .send()
            .await
            .expect("edge");
        assert_eq!(revoke.status(), StatusCode::OK);
        assert!(!validate(&mut auth, access).await.valid);
        assert_eq!(me(&suite, access).await.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn rotated_keys_keep_old_tokens_valid_while_listed() {
        let old_key = harness::new_signing_key();
        let (addr, db, stop) = harness::spawn_auth(
            &[("JWT_SIGNING_KEY_FILE", &old_key)],
            portico_auth::Options::default(),
        )
        .await;
        let mut auth = grpc(addr).await;
        auth.register(pb::RegisterRequest {
            email: "jo@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("register");
        let old_token = auth
            .login(pb::LoginRequest {
                email: "jo@example.com".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token;
        stop.cancel();

        // Rotation: a new signing key, the old one still listed for verification.
        let new_key = harness::new_signing_key();
        let (addr, _, stop) = harness::spawn_auth(
            &[
                ("JWT_SIGNING_KEY_FILE", &new_key),
                ("JWT_VERIFY_KEY_FILES", &old_key),
                ("DATABASE_URL", &db),
            ],
            portico_auth::Options::default(),
        )
        .await;
        let mut rotated = grpc(addr).await;
        assert!(
            validate(&mut rotated, &old_token).await.valid,
            "old tokens stay valid while listed"
        );
        let jwks: Value = serde_json::from_str(
            &rotated
                .get_jwks(pb::GetJwksRequest {})
                .await
                .expect("jwks")
                .into_inner()
                .jwks_json,
        )
        .expect("json");
        assert_eq!(
            jwks["keys"].as_array().map(Vec::len),
            Some(2),
            "both keys published"
        );
        let new_token = rotated
            .login(pb::LoginRequest {
                email: "jo@example.com".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("login")
            .into_inner()
            .access_token;
        stop.cancel();

        // Retirement: the old key is no longer listed.
        let (addr, _, _stop) = harness::spawn_auth(
            &[("JWT_SIGNING_KEY_FILE", &new_key), ("DATABASE_URL", &db)],
            portico_auth::Options::default(),
        )
        .await;
        let mut retired = grpc(addr).await;
        assert!(
            !validate(&mut retired, &old_token).await.valid,
            "refused after retirement"
        );
        assert!(validate(&mut retired, &new_token).await.valid);
    }
}

#[tokio::test]
async fn admin_jwt_is_accepted_by_other_services_and_a_user_jwt_is_not() {
    let suite = TestSuite::builder()
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await;
    let admin = suite.login_admin("root@example.com").await;
    let admin = json!({ "accessToken": admin });
    let user = register_and_login(&suite, "kim@example.com").await;
    let reset = |token: &str| {
        suite
            .http
            .post(suite.url("/api/v1/admin/ratelimit/reset"))
            .bearer_auth(token)
            .json(&json!({"prefix": "global:"}))
            .send()
    };
    let by_admin = reset(admin["accessToken"].as_str().expect("token"))
        .await
        .expect("edge");
    assert_eq!(
        by_admin.status(),
        StatusCode::OK,
        "the ratelimit service verified the admin JWT"
    );
    let by_user = reset(user["accessToken"].as_str().expect("token"))
        .await
        .expect("edge");
    assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
    let forged = reset("not-a-token").await.expect("edge");
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_runbooks_redis_keys_unlock_and_revoke() {
    use fred::prelude::*;

    let redis = harness::PrivateRedis::start().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let (addr, _db, _stop) = harness::spawn_auth(
        &[
            ("REDIS_URL", &redis.url),
            ("REDIS_KEY_PREFIX", &prefix),
            ("AUTH_LOGIN_MAX_ATTEMPTS", "1"),
        ],
        portico_auth::Options::default(),
    )
    .await;
    let client = Builder::from_config(Config::from_url(&redis.url).expect("url"))
        .build()
        .expect("client");
    client.init().await.expect("connect");
    let mut auth = grpc(addr).await;
    auth.register(pb::RegisterRequest {
        email: "lee@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let login = |password: &str| {
        from_ip(
            pb::LoginRequest {
                email: "lee@example.com".into(),
                password: password.into(),
            },
            "192.0.2.9",
        )
    };

    auth.login(login("wrong password"))
        .await
        .expect_err("wrong");
    let key = format!("{prefix}lockout:lee@example.com:192.0.2.9");
    let locked_until: Option<String> = client.get(&key).await.expect("get");
    assert!(locked_until.is_some(), "lockout:{{email}}:{{ip}} exists");
    assert_eq!(
        auth.login(login(PASSWORD))
            .await
            .expect_err("locked")
            .code(),
        tonic::Code::ResourceExhausted
    );
    let _: u64 = client.del(&key).await.expect("del");
    let pair = auth
        .login(login(PASSWORD))
        .await
        .expect("redis-cli del unlocked it")
        .into_inner();

    let jti = auth
        .validate_token(pb::ValidateTokenRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .expect("validate")
        .into_inner()
        .jti;
    let _: () = client
        .set(
            format!("{prefix}token:blacklist:{jti}"),
            "1",
            Some(Expiration::EX(900)),
            None,
            false,
        )
        .await
        .expect("setex");
    let answer = auth
        .validate_token(pb::ValidateTokenRequest {
            access_token: pair.access_token.clone(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(
        !answer.valid,
        "redis-cli setex token:blacklist:<jti> revoked it"
    );

    // The shared verifier other services use sees the same denylist.
    let verifier = portico_tokens::Verifier::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy(),
        "portico",
        "portico",
        Some(
            portico_redis::Redis::connect(
                &redis.url,
                &prefix,
                Duration::from_millis(500),
                None,
                tokio_util::sync::CancellationToken::new(),
            )
            .expect("redis"),
        ),
    );
    assert!(verifier.verify(&pair.access_token).await.is_err());
}

#[tokio::test]
async fn a_weak_stored_hash_is_upgraded_on_login() {
    use sea_orm::ConnectionTrait as _;

    let (addr, database_url, _stop) =
        harness::spawn_auth(&[], portico_auth::Options::default()).await;
    let mut auth = grpc(addr).await;
    auth.register(pb::RegisterRequest {
        email: "mo@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    // A hash from an older, weaker configuration (argon2id m=8 MiB, t=1).
    let weak = {
        use argon2::{
            password_hash::{PasswordHasher as _, SaltString},
            Algorithm, Argon2, Params, Version,
        };
        let params = Params::new(8 * 1024, 1, 1, None).expect("params");
        let salt = SaltString::encode_b64(b"sixteen byte salt").expect("salt");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(PASSWORD.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    };
    let db = sea_orm::Database::connect(&database_url).await.expect("db");
    let backend = db.get_database_backend();
    let placeholder = if backend == sea_orm::DbBackend::Postgres {
        "$1"
    } else {
        "?"
    };
    db.execute(sea_orm::Statement::from_sql_and_values(
        backend,
        format!("UPDATE users SET password_hash = {placeholder}"),
        [weak.clone().into()],
    ))
    .await
    .expect("downgrade");

    auth.login(pb::LoginRequest {
        email: "mo@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("login with the weak hash");
    let stored: String = db
        .query_one(sea_orm::Statement::from_string(
            backend,
            "SELECT password_hash FROM users",
        ))
        .await
        .expect("query")
        .expect("row")
        .try_get("", "password_hash")
        .expect("column");
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "rehashed: {stored}"
    );
}

#[tokio::test]
async fn rs256_keys_sign_verify_and_publish_rsa_jwks() {
    let path =
        std::env::temp_dir().join(format!("portico-rsa-{}.pem", uuid::Uuid::new_v4().simple()));
    let generated = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .output()
        .expect("openssl runs (the runbook's RSA procedure)");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let key = path.display().to_string();
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("JWT_SIGNING_KEY_FILE", &key)],
        portico_auth::Options::default(),
    )
    .await;
    let mut auth = grpc(addr).await;
    let jwks: Value = serde_json::from_str(
        &auth
            .get_jwks(pb::GetJwksRequest {})
            .await
            .expect("jwks")
            .into_inner()
            .jwks_json,
    )
    .expect("json");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert_eq!(jwks["keys"][0]["e"], "AQAB");

    auth.register(pb::RegisterRequest {
        email: "rsa@example.com".into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
    let token = auth
        .login(pb::LoginRequest {
            email: "rsa@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .access_token;
    let header: Value = serde_json::from_slice(
        &B64.decode(token.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
    let answer = auth
        .validate_token(pb::ValidateTokenRequest {
            access_token: token,
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(answer.valid, "{}", answer.reason);
}

/// Lockouts in force with their remaining time (`ListLockouts`, `GET /api/v1/admin/auth/lockouts`).
mod lockouts {
    use super::*;

    const ADMIN_KEY: &str = "admin-secret-for-tests-0123456789abcdef";

    fn list(email: &str, admin_key: Option<&str>) -> tonic::Request<pb::ListLockoutsRequest> {
        let mut request = tonic::Request::new(pb::ListLockoutsRequest {
            email: email.into(),
            limit: 0,
        });
        if let Some(key) = admin_key {
            request
                .metadata_mut()
                .insert("x-admin-key", key.parse().expect("ascii"));
        }
        request
    }

    #[tokio::test]
    async fn lockouts_are_listed_with_the_time_they_have_left_until_they_end() {
        let clock = portico_limiter::ManualClock::new(1_800_000_000_000_000);
        let options = portico_auth::Options {
            clock: clock.clone(),
            ..Default::default()
        };
        let (addr, _db, _stop) = harness::spawn_auth(
            &[
                ("AUTH_LOGIN_MAX_ATTEMPTS", "2"),
                ("AUTH_LOGIN_LOCKOUT_MINUTES", "15"),
                ("ADMIN_API_KEY", ADMIN_KEY),
            ],
            options,
        )
        .await;
        let mut auth = grpc(addr).await;
        let wrong = |email: &str, ip: &str| {
            from_ip(
                pb::LoginRequest {
                    email: email.into(),
                    password: "wrong password".into(),
                },
                ip,
            )
        };
        // erin: locked out of one IPv4 address now, and of an IPv6 /64 a minute later.
        for _ in 0..2 {
            let _ = auth.login(wrong("erin@example.com", "198.51.100.4")).await;
        }
        clock.advance(Duration::from_secs(60));
        for _ in 0..2 {
            let _ = auth
                .login(wrong("erin@example.com", "2001:db8:1:2::7"))
                .await;
        }
        // frank: one failure only, so not locked out.
        let _ = auth.login(wrong("frank@example.com", "198.51.100.9")).await;
        clock.advance(Duration::from_secs(30));

        let listed = auth
            .list_lockouts(list("Erin@Example.com", Some(ADMIN_KEY)))
            .await
            .expect("list")
            .into_inner();
        let seen: Vec<(&str, &str, u64)> = listed
            .lockouts
            .iter()
            .map(|l| (l.email.as_str(), l.network.as_str(), l.remaining_ms))
            .collect();
        assert_eq!(
            seen,
            [
                ("erin@example.com", "2001:db8:1:2::/64", 870_000),
                ("erin@example.com", "198.51.100.4", 810_000),
            ],
            "the latest to end first, by the service's clock"
        );
        assert!(!listed.truncated);
        assert!(
            listed.lockouts[1]
                .locked_until
                .starts_with("2027-01-15T08:1"),
            "{}",
            listed.lockouts[1].locked_until
        );
        let everyone = auth
            .list_lockouts(list("", Some(ADMIN_KEY)))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(everyone.lockouts.len(), 2, "frank is not locked out");

        // Unlocking one network leaves the other; a lockout that ended is not listed.
        auth.unlock_account({
            let mut request = tonic::Request::new(pb::UnlockAccountRequest {
                email: "erin@example.com".into(),
                ip: "2001:db8:1:2::1".into(),
            });
            request
                .metadata_mut()
                .insert("x-admin-key", ADMIN_KEY.parse().expect("ascii"));
            request
        })
        .await
        .expect("unlock");
        let left = auth
            .list_lockouts(list("erin@example.com", Some(ADMIN_KEY)))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(left.lockouts.len(), 1);
        assert_eq!(left.lockouts[0].network, "198.51.100.4");
        clock.advance(Duration::from_millis(810_000));
        let ended = auth
            .list_lockouts(list("erin@example.com", Some(ADMIN_KEY)))
            .await
            .expect("list")
            .into_inner();
        assert!(ended.lockouts.is_empty(), "{:?}", ended.lockouts);
    }

    #[tokio::test]
    async fn listing_lockouts_needs_admin_and_a_valid_email() {
        let (addr, _db, _stop) = harness::spawn_auth(
            &[("ADMIN_API_KEY", ADMIN_KEY)],
            portico_auth::Options::default(),
        )
        .await;
        let mut auth = grpc(addr).await;
        let status = auth
            .list_lockouts(list("", None))
            .await
            .expect_err("no credentials");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = auth
            .list_lockouts(list("", Some("not the admin key, long enough to be one")))
            .await
            .expect_err("wrong key");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let status = auth
            .list_lockouts(list("not an email", Some(ADMIN_KEY)))
            .await
            .expect_err("bad email");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let mut too_many = list("", Some(ADMIN_KEY));
        too_many.get_mut().limit = 5000;
        let status = auth.list_lockouts(too_many).await.expect_err("limit");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn the_admin_route_lists_a_locked_account_with_its_remaining_seconds() {
        let suite = TestSuite::builder()
            .env("AUTH_LOGIN_MAX_ATTEMPTS", "3")
            .env("ADMIN_API_KEY", ADMIN_KEY)
            .env("RATE_LIMIT_AUTH_MAX", "100")
            .spawn()
            .await;
        register_and_login(&suite, "gina@example.com").await;
        for _ in 0..3 {
            let r = suite
                .post(
                    "/api/v1/auth/login",
                    json!({"email": "gina@example.com", "password": "wrong password"}),
                )
                .await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        let lockouts = |query: &str, key: Option<&str>| {
            let mut request = suite
                .http
                .get(suite.url(&format!("/api/v1/admin/auth/lockouts{query}")));
            if let Some(key) = key {
                request = request.header("x-admin-key", key);
            }
            request.send()
        };
        let response = lockouts("?email=Gina%40Example.com", Some(ADMIN_KEY))
            .await
            .expect("edge");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        let listed = body["lockouts"].as_array().expect("lockouts");
        assert_eq!(listed.len(), 1, "{body}");
        let lockout = &listed[0];
        assert_eq!(lockout["email"], "gina@example.com");
        assert_eq!(lockout["network"], "127.0.0.1");
        assert_eq!(lockout["scope"], "network");
        let seconds = lockout["remainingSeconds"].as_u64().expect("seconds");
        assert!((890..=900).contains(&seconds), "{lockout}");
        assert!(
            lockout["lockedUntil"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{lockout}"
        );
        assert_eq!(body["truncated"], false);

        let all: Value = lockouts("", Some(ADMIN_KEY))
            .await
            .expect("edge")
            .json()
            .await
            .expect("json");
        assert_eq!(all["lockouts"].as_array().map(Vec::len), Some(1), "{all}");
        // The schema's pattern takes ASCII whitespace alone as no filter, and nothing else: an
        // ideographic space is a bad address, not "every email".
        for (query, status) in [
            ("?email=%20%09", StatusCode::OK),
            ("?email=%E3%80%80", StatusCode::BAD_REQUEST),
            // An integer as the document writes one: no `+`.
            ("?limit=%2B5", StatusCode::BAD_REQUEST),
            ("?limit=5", StatusCode::OK),
        ] {
            let response = lockouts(query, Some(ADMIN_KEY)).await.expect("edge");
            assert_eq!(response.status(), status, "{query}");
        }

        // An admin bearer token works too; a user's does not; no credentials are a 401.
        let admin = suite.login_admin("ops@example.com").await;
        let by_admin = suite
            .http
            .get(suite.url("/api/v1/admin/auth/lockouts"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("edge");
        assert_eq!(by_admin.status(), StatusCode::OK);
        let user = suite.login("user@example.com").await;
        let by_user = suite
            .http
            .get(suite.url("/api/v1/admin/auth/lockouts"))
            .bearer_auth(&user)
            .send()
            .await
            .expect("edge");
        assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            lockouts("", None).await.expect("edge").status(),
            StatusCode::UNAUTHORIZED
        );
        for bad in [
            "?email=nope",
            "?limit=1001",
            "?limit=many",
            "?mail=gina%40example.com",
        ] {
            let response = lockouts(bad, Some(ADMIN_KEY)).await.expect("edge");
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }

        // After an unlock the list is empty.
        let unlock = suite
            .http
            .post(suite.url("/api/v1/admin/auth/unlock"))
            .header("x-admin-key", ADMIN_KEY)
            .json(&json!({"email": "gina@example.com", "ip": "127.0.0.1"}))
            .send()
            .await
            .expect("edge");
        assert_eq!(unlock.status(), StatusCode::OK);
        let after: Value = lockouts("?email=gina%40example.com", Some(ADMIN_KEY))
            .await
            .expect("edge")
            .json()
            .await
            .expect("json");
        assert_eq!(after["lockouts"], json!([]), "{after}");
    }
}
