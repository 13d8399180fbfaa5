//! Fault rehearsals with real servers that the test stops, starts or cuts off: a private
//! `redis-server` (with and without persistence), and PostgreSQL behind a TCP proxy that
//! black-holes connections. Each test names the finding it guards against.

use std::time::{Duration, Instant};

use portico::Component;
use portico_faultproxy::FaultProxy;
use portico_proto::{
    auth::{self as auth_pb, auth_service_client::AuthServiceClient},
    content::{self as pb, content_service_client::ContentServiceClient},
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::harness::{self, PrivateRedis, TestSuite};

const KEY: &str = "fault-tests-admin-key-0123456789abcdef";
const PASSWORD: &str = "correct horse battery";
/// What "fails fast" means here: far below the 250 ms Redis command timeout and the 3 s
/// database acquire timeout that a call used to wait out, with room for a loaded CI machine.
const FAST: Duration = Duration::from_millis(150);
/// Longest a test waits for a dependency's state to be noticed.
const NOTICE: Duration = Duration::from_secs(15);

async fn content_client(addr: std::net::SocketAddr) -> ContentServiceClient<Channel> {
    ContentServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("content connects")
}

async fn auth_client(addr: std::net::SocketAddr) -> AuthServiceClient<Channel> {
    AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("auth connects")
}

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-admin-key", KEY.parse().expect("ascii"));
    request
}

async fn register(auth: &mut AuthServiceClient<Channel>, email: &str) {
    auth.register(auth_pb::RegisterRequest {
        email: email.into(),
        password: PASSWORD.into(),
    })
    .await
    .expect("register");
}

fn login(email: &str) -> auth_pb::LoginRequest {
    auth_pb::LoginRequest {
        email: email.into(),
        password: PASSWORD.into(),
    }
}

/// `url` with its `host:port` replaced by `addr` (a proxy in front of the same server).
fn through(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url has a scheme");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let userinfo = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    format!("{scheme}://{userinfo}{addr}/{path}")
}

/// The PostgreSQL server under test (`TEST_DATABASE_URL`), or `None` on the embedded run:
/// a SQLite file has no connection to cut.
fn postgres() -> Option<String> {
    let url = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"));
    if url.is_none() {
        eprintln!("skipped: needs TEST_DATABASE_URL (PostgreSQL) to cut its connections");
    }
    url
}

fn postgres_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().expect("authority");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&host_port)
        .expect("resolvable")
        .next()
        .expect("an address")
}

/// Waits on the gRPC health Watch stream until `""` reports `wanted`.
async fn health_becomes(channel: Channel, wanted: ServingStatus) {
    let mut client = HealthClient::new(channel);
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(NOTICE, async {
        while let Some(status) = stream.message().await.expect("health stream") {
            if status.status == wanted as i32 {
                return;
            }
        }
        panic!("health stream ended before {wanted:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("health never became {wanted:?}"));
}

/// Polls `/readyz` until its `check` says `status`: readiness is the outside view of whether
/// a dependency is known down.
async fn readiness_becomes(suite: &TestSuite, check: &str, status: &str) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let body: Value = suite.get("/readyz").await.json().await.expect("json");
        if body["checks"][check]["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{check} never became {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logins_work_with_lockouts_in_the_database() {
    // Finding: with PostgreSQL and no Redis every login answered 500 (INT4 decoded as i64).
    // Runs on whichever database this run uses: SQLite on the embedded run, PostgreSQL when
    // `TEST_DATABASE_URL` is set.
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("REDIS_URL", ""), ("AUTH_LOGIN_MAX_ATTEMPTS", "3")],
        portico_auth::Options::default(),
    )
    .await;
    let mut auth = auth_client(addr).await;
    register(&mut auth, "ivy@example.com").await;
    auth.login(login("ivy@example.com"))
        .await
        .expect("the right password logs in");
    let wrong = || auth_pb::LoginRequest {
        email: "ivy@example.com".into(),
        password: "wrong password".into(),
    };
    for _ in 0..3 {
        let refused = auth.login(wrong()).await.expect_err("wrong password");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    let locked = auth
        .login(login("ivy@example.com"))
        .await
        .expect_err("locked out after three wrong passwords");
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
}

#[tokio::test]
async fn concurrent_logins_of_one_account_all_succeed_on_the_database_lockout_store() {
    // Finding: a success deleting the lockout row raced another login's update of it
    // (`RecordNotFound Error: lockouts`, answered 500).
    // A budget above the concurrency: reservations in flight must not refuse anyone here.
    let (addr, _db, _stop) = harness::spawn_auth(
        &[("REDIS_URL", ""), ("AUTH_LOGIN_MAX_ATTEMPTS", "100")],
        portico_auth::Options::default(),
    )
    .await;
    let mut auth = auth_client(addr).await;
    register(&mut auth, "jay@example.com").await;
    // One login first: the owner's network is then known, as for any account in use (the
    // per-account back-off of unknown networks is tested in security.rs).
    auth.login(login("jay@example.com"))
        .await
        .expect("first login");
    let logins = (0..48).map(|_| {
        let mut auth = auth.clone();
        tokio::spawn(async move { auth.login(login("jay@example.com")).await })
    });
    for outcome in futures_util::future::join_all(logins).await {
        outcome
            .expect("task")
            .expect("every concurrent correct login succeeds");
    }
}

#[tokio::test]
async fn a_database_outage_fails_fast_and_never_locks_out_the_right_password() {
    // Findings: logins during a PostgreSQL outage counted as failed attempts (afterwards the
    // right password got 429), and every call waited the pool's 3 s even once the service
    // reported NOT_SERVING.
    let Some(admin_url) = postgres() else { return };
    let database = harness::fresh_database().await;
    let proxy = FaultProxy::start(postgres_addr(&admin_url))
        .await
        .expect("proxy");
    let suite = TestSuite::builder()
        .env("DATABASE_URL", &through(&database, proxy.addr()))
        .env("AUTH_LOGIN_MAX_ATTEMPTS", "3")
        .env("ADMIN_API_KEY", KEY)
        .spawn()
        .await;
    let mut auth = auth_client(suite.service_addr(Component::Auth)).await;
    register(&mut auth, "kim@example.com").await;

    proxy.blackhole();
    health_becomes(
        suite.channel(Component::Auth).await,
        ServingStatus::NotServing,
    )
    .await;
    for _ in 0..5 {
        let started = Instant::now();
        let refused = auth
            .login(login("kim@example.com"))
            .await
            .expect_err("no database, no login");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            started.elapsed() < FAST,
            "a known-down database fails fast, took {:?}",
            started.elapsed()
        );
        assert_eq!(
            refused
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("1"),
            "{refused:?}"
        );
    }
    // Over REST too: 503 + Retry-After, fast, and /healthz is not held up behind it.
    let started = Instant::now();
    let write = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", KEY)
        .json(&json!({"slug": "outage", "title": "t", "body": "b", "status": "draft"}))
        .send()
        .await
        .expect("edge answers");
    assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(write.headers().contains_key("retry-after"));
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
    readiness_becomes(&suite, "auth", "unhealthy").await;
    let started = Instant::now();
    let ready = suite.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < FAST,
        "/readyz took {:?}",
        started.elapsed()
    );
    assert_eq!(suite.get("/healthz").await.status(), StatusCode::OK);

    proxy.restore();
    health_becomes(suite.channel(Component::Auth).await, ServingStatus::Serving).await;
    auth.login(login("kim@example.com"))
        .await
        .expect("the right password still logs in after the outage");
}

#[tokio::test]
async fn a_redis_restart_with_its_data_never_serves_what_a_write_replaced() {
    // Finding: a PUT during an outage answered 200, and once Redis came back with its data
    // every read served the version that PUT replaced.
    let mut redis = PrivateRedis::start_persistent().await;
    let suite = TestSuite::builder()
        .env("REDIS_URL", &redis.url)
        .env("ADMIN_API_KEY", KEY)
        .spawn()
        .await;
    let create = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", KEY)
        .json(&json!({"slug": "kept", "title": "v1", "body": "b", "status": "published"}))
        .send()
        .await
        .expect("edge answers");
    assert_eq!(create.status(), StatusCode::CREATED);
    for _ in 0..2 {
        // Cached now: the edge's copy, the service's L1 and Redis all hold v1.
        let read: Value = suite
            .get("/api/v1/content/kept")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(read["title"], "v1");
    }

    redis.stop();
    let update = |title: &'static str, version: u64| {
        suite
            .http
            .put(suite.url("/api/v1/admin/content/kept"))
            .header("x-admin-key", KEY)
            .header("if-match", format!("\"{version}\""))
            .json(&json!({"title": title, "body": "b", "status": "published"}))
            .send()
    };
    let during = update("v2", 1).await.expect("edge answers");
    assert_eq!(
        during.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a write whose invalidation cannot be recorded must not succeed"
    );
    assert!(during.headers().contains_key("retry-after"));

    redis.restart().await;
    // Right after the heal and until the services see Redis back: what is served is what
    // the database holds.
    for _ in 0..20 {
        let read: Value = suite
            .get("/api/v1/content/kept")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(read["title"], "v1", "{read}");
        assert_eq!(read["version"], 1, "{read}");
    }
    readiness_becomes(&suite, "cache", "ok").await;
    let deadline = Instant::now() + NOTICE;
    loop {
        let after = update("v2", 1).await.expect("edge answers");
        if after.status() == StatusCode::OK {
            break;
        }
        assert_eq!(after.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read: Value = suite
        .get("/api/v1/content/kept")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["title"], "v2", "{read}");
}

#[tokio::test]
async fn a_replica_cut_off_from_redis_refuses_writes_and_no_replica_serves_stale() {
    // The partition form of the finding: replica A cannot reach Redis, replica B can. If A's
    // write succeeded, B would serve the replaced version from its cache indefinitely.
    let redis = PrivateRedis::start().await;
    let proxy = FaultProxy::start(redis.addr()).await.expect("proxy");
    let database = harness::fresh_database().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let via_proxy = format!("redis://{}", proxy.addr());
    let replica = |redis_url: String| {
        let database = database.clone();
        let prefix = prefix.clone();
        async move {
            harness::spawn_content(&[
                ("DATABASE_URL", database.as_str()),
                ("REDIS_URL", redis_url.as_str()),
                ("REDIS_KEY_PREFIX", prefix.as_str()),
                ("ADMIN_API_KEY", KEY),
            ])
            .await
        }
    };
    let (a_addr, _a_stop) = replica(via_proxy).await;
    let (b_addr, _b_stop) = replica(redis.url.clone()).await;
    let mut a = content_client(a_addr).await;
    let mut b = content_client(b_addr).await;
    a.create_content(admin(pb::CreateContentRequest {
        slug: "split".into(),
        title: "before".into(),
        status: pb::Status::Published as i32,
        ..Default::default()
    }))
    .await
    .expect("create");
    let read = |mut client: ContentServiceClient<Channel>| async move {
        client
            .get_content(pb::GetContentRequest {
                slug: "split".into(),
            })
            .await
            .expect("read")
            .into_inner()
    };
    assert_eq!(read(b.clone()).await.title, "before");

    proxy.blackhole();
    let update = |title: &str| {
        admin(pb::UpdateContentRequest {
            slug: "split".into(),
            expected_version: 1,
            title: title.into(),
            status: pb::Status::Published as i32,
            ..Default::default()
        })
    };
    let refused = a
        .update_content(update("during the partition"))
        .await
        .expect_err("a write that cannot bump content:rev is refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let started = Instant::now();
    let again = a
        .update_content(update("during the partition"))
        .await
        .expect_err("still cut off");
    assert_eq!(again.code(), Code::Unavailable);
    assert!(
        started.elapsed() < FAST,
        "known down: refused at once, took {:?}",
        started.elapsed()
    );
    let seen = read(b.clone()).await;
    assert_eq!((seen.title.as_str(), seen.version), ("before", 1));

    proxy.restore();
    let deadline = Instant::now() + NOTICE;
    loop {
        match a.update_content(update("after the partition")).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "writes never resumed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(read(b.clone()).await.title, "after the partition");
    b.get_content(pb::GetContentRequest {
        slug: "split".into(),
    })
    .await
    .expect("b still reads");
}

#[tokio::test]
async fn a_known_down_redis_answers_readiness_and_writes_at_once() {
    // Finding: during a Redis outage every content write and every /readyz took ~250 ms.
    let mut redis = PrivateRedis::start().await;
    let suite = TestSuite::builder()
        .env("REDIS_URL", &redis.url)
        .env("ADMIN_API_KEY", KEY)
        .spawn()
        .await;
    redis.stop();
    readiness_becomes(&suite, "cache", "degraded").await;
    // The content service learns it from its own probe or first failed command.
    let mut content = content_client(suite.service_addr(Component::Content)).await;
    let deadline = Instant::now() + NOTICE;
    let mut fast_refusals = 0;
    while fast_refusals < 3 {
        let started = Instant::now();
        let refused = content
            .create_content(admin(pb::CreateContentRequest {
                slug: "paused".into(),
                title: "t".into(),
                ..Default::default()
            }))
            .await
            .expect_err("writes pause while Redis is down");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        if started.elapsed() < FAST {
            fast_refusals += 1;
        }
        assert!(Instant::now() < deadline, "writes never failed fast");
    }
    for _ in 0..5 {
        let started = Instant::now();
        let ready = suite.get("/readyz").await;
        assert!(
            started.elapsed() < FAST,
            "/readyz took {:?}",
            started.elapsed()
        );
        // Redis is not critical: the suite stays ready, degraded.
        assert_eq!(ready.status(), StatusCode::OK);
    }
    let read = suite.get("/api/v1/content/paused").await;
    assert_eq!(read.status(), StatusCode::NOT_FOUND, "nothing was written");
}
