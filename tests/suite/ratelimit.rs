//! The ratelimit service over gRPC: exact admission with an injected clock, cost, whitelist,
//! validation, two replicas sharing Redis, Redis outages under both fail modes, reset, and
//! Envoy's RLS v3 built from Envoy's own message definitions.

use std::{sync::Arc, time::Duration};

use portico_limiter::{ManualClock, SystemClock};
use portico_proto::ratelimit::{
    rate_limit_service_client::RateLimitServiceClient, reset_request::Target, CheckRequest,
    ResetRequest,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::harness::{self, PrivateRedis};

const START_MICROS: u64 = 1_800_000_000_000_000;

async fn client(addr: std::net::SocketAddr) -> RateLimitServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    RateLimitServiceClient::new(channel)
}

fn check(policy: &str, key: &str, cost: u32) -> CheckRequest {
    CheckRequest {
        key: key.to_owned(),
        policy: policy.to_owned(),
        cost,
        client_ip: String::new(),
        ..Default::default()
    }
}

/// The backend under test: the shared Redis when configured (CI's second run), else memory.
async fn backend_vars() -> Vec<(&'static str, String)> {
    match harness::shared_redis().await {
        Some(url) => vec![("REDIS_URL", url)],
        None => Vec::new(),
    }
}

async fn spawn(
    vars: &[(&str, &str)],
    clock: Arc<dyn portico_limiter::Clock>,
) -> RateLimitServiceClient<Channel> {
    let backend = backend_vars().await;
    let mut all: Vec<(&str, &str)> = backend.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(vars);
    let (addr, _shutdown) = harness::spawn_ratelimit(&all, clock).await;
    client(addr).await
}

#[tokio::test]
async fn burst_then_exact_refill_with_an_injected_clock() {
    let clock = ManualClock::new(START_MICROS);
    let mut rl = spawn(
        &[
            ("RATE_LIMIT_CAPACITY", "5"),
            ("RATE_LIMIT_REFILL_RATE", "1"),
        ],
        clock.clone(),
    )
    .await;

    for expected in (0..5).rev() {
        let r = rl
            .check(check("chat", "user-1", 1))
            .await
            .expect("check")
            .into_inner();
        assert!(r.allowed);
        assert_eq!((r.limit, r.remaining), (5, expected));
    }
    let denied = rl
        .check(check("chat", "user-1", 1))
        .await
        .expect("check")
        .into_inner();
    assert!(!denied.allowed);
    assert_eq!(denied.retry_after_ms, 1000);
    assert_eq!(denied.reset_after_ms, 5000);

    clock.advance(Duration::from_millis(999));
    assert!(
        !rl.check(check("chat", "user-1", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    clock.advance(Duration::from_millis(1));
    assert!(
        rl.check(check("chat", "user-1", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    assert!(
        !rl.check(check("chat", "user-1", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );

    clock.advance(Duration::from_millis(2500));
    let admitted = {
        let mut n = 0;
        for _ in 0..10 {
            if rl
                .check(check("chat", "user-1", 1))
                .await
                .expect("check")
                .into_inner()
                .allowed
            {
                n += 1;
            }
        }
        n
    };
    assert_eq!(admitted, 2, "2.5 s refill exactly two whole tokens");
    assert!(
        rl.check(check("chat", "user-2", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed,
        "keys are independent"
    );
}

#[tokio::test]
async fn cost_takes_several_tokens_and_a_refusal_takes_none() {
    let mut rl = spawn(
        &[("RATE_LIMIT_GLOBAL_MAX", "10")],
        ManualClock::new(START_MICROS),
    )
    .await;
    let r = rl
        .check(check("global", "10.0.0.1", 7))
        .await
        .expect("check")
        .into_inner();
    assert!(r.allowed);
    assert_eq!(r.remaining, 3);
    let r = rl
        .check(check("global", "10.0.0.1", 4))
        .await
        .expect("check")
        .into_inner();
    assert!(!r.allowed);
    assert_eq!(r.remaining, 3);
    let r = rl
        .check(check("global", "10.0.0.1", 3))
        .await
        .expect("check")
        .into_inner();
    assert!(r.allowed);
    assert_eq!(r.remaining, 0);
}

#[tokio::test]
async fn whitelisted_clients_are_never_limited() {
    let mut rl = spawn(
        &[
            ("RATE_LIMIT_GLOBAL_MAX", "1"),
            ("RATE_LIMIT_WHITELIST", "10.1.0.0/16, 192.0.2.7"),
        ],
        ManualClock::new(START_MICROS),
    )
    .await;
    for ip in ["10.1.2.3", "192.0.2.7"] {
        for _ in 0..5 {
            let mut request = check("global", ip, 1);
            request.client_ip = ip.to_owned();
            assert!(
                rl.check(request).await.expect("check").into_inner().allowed,
                "{ip}"
            );
        }
    }
    let mut outsider = check("global", "10.2.0.1", 1);
    outsider.client_ip = "10.2.0.1".into();
    assert!(
        rl.check(outsider.clone())
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    assert!(
        !rl.check(outsider)
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_with_a_message() {
    let mut rl = spawn(
        &[("RATE_LIMIT_GLOBAL_MAX", "10")],
        ManualClock::new(START_MICROS),
    )
    .await;
    let mut bad_ip = check("global", "k", 1);
    bad_ip.client_ip = "not-an-ip".into();
    for (request, fragment) in [
        (check("weekly", "k", 1), "unknown policy"),
        (check("global", "", 1), "key must be"),
        (check("global", &"k".repeat(513), 1), "key must be"),
        (check("global", "k", 11), "exceeds"),
        (bad_ip, "not an IP address"),
    ] {
        let status = rl.check(request).await.expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(fragment), "{}", status.message());
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_admit_no_more_than_the_limit() {
    let redis = PrivateRedis::start().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let vars = [
        ("REDIS_URL", redis.url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("RATE_LIMIT_GLOBAL_MAX", "50"),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1h"),
    ];
    let (a, _sa) = harness::spawn_ratelimit(&vars, Arc::new(SystemClock)).await;
    let (b, _sb) = harness::spawn_ratelimit(&vars, Arc::new(SystemClock)).await;
    let clients = [client(a).await, client(b).await];

    let calls = (0..200).map(|i| {
        let mut rl = clients[i % 2].clone();
        async move {
            rl.check(check("global", "203.0.113.9", 1))
                .await
                .expect("check")
                .into_inner()
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let admitted = answers.iter().filter(|r| r.allowed).count();
    assert_eq!(admitted, 50, "200 concurrent calls over two replicas");
    assert!(answers.iter().all(|r| !r.degraded));
}

async fn redis_health(
    addr: std::net::SocketAddr,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: portico_proto::names::RATELIMIT_REDIS.into(),
        })
        .await
        .expect("watch")
        .into_inner()
}

async fn next_status(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    watch
        .message()
        .await
        .expect("stream")
        .expect("status")
        .status
}

#[tokio::test]
async fn redis_outage_fails_open_to_a_local_ceiling_and_recovers() {
    let mut redis = PrivateRedis::start().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let vars = [
        ("REDIS_URL", redis.url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("RATE_LIMIT_GLOBAL_MAX", "3"),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1h"),
        ("RATE_LIMIT_FAIL_MODE", "open"),
    ];
    let (addr, _shutdown) = harness::spawn_ratelimit(&vars, Arc::new(SystemClock)).await;
    let mut rl = client(addr).await;
    let mut health = redis_health(addr).await;
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::Serving as i32
    );
    let first = rl
        .check(check("global", "198.51.100.1", 1))
        .await
        .expect("check")
        .into_inner();
    assert!(first.allowed && !first.degraded);

    redis.stop();
    // Decisions go on without Redis, but under this replica's own buckets: a ceiling.
    let answers: Vec<_> = {
        let mut answers = Vec::new();
        for _ in 0..6 {
            answers.push(
                rl.check(check("global", "198.51.100.1", 1))
                    .await
                    .expect("check")
                    .into_inner(),
            );
        }
        answers
    };
    assert!(
        answers.iter().all(|r| r.degraded),
        "every decision says it was made without Redis"
    );
    assert_eq!(
        answers.iter().filter(|r| r.allowed).count(),
        3,
        "fail-open still limits"
    );
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::NotServing as i32
    );

    redis.restart().await;
    assert_eq!(
        next_status(&mut health).await,
        ServingStatus::Serving as i32
    );
    let back = rl
        .check(check("global", "198.51.100.1", 1))
        .await
        .expect("check")
        .into_inner();
    assert!(back.allowed && !back.degraded, "shared limiting resumed");
    let stored: Option<String> = {
        use fred::prelude::*;
        let redis_client = Builder::from_config(Config::from_url(&redis.url).expect("url"))
            .build()
            .expect("client");
        redis_client.init().await.expect("connect");
        redis_client
            .get(format!("{prefix}ratelimit:global:198.51.100.1"))
            .await
            .expect("get")
    };
    assert!(stored.is_some(), "the bucket lives in Redis again");
}

#[tokio::test]
async fn redis_outage_fails_closed_when_told_to() {
    let mut redis = PrivateRedis::start().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let vars = [
        ("REDIS_URL", redis.url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("RATE_LIMIT_FAIL_MODE", "closed"),
    ];
    let (addr, _shutdown) = harness::spawn_ratelimit(&vars, Arc::new(SystemClock)).await;
    let mut rl = client(addr).await;
    assert!(
        rl.check(check("global", "198.51.100.2", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    redis.stop();
    let denied = rl
        .check(check("global", "198.51.100.2", 1))
        .await
        .expect("check")
        .into_inner();
    assert!(!denied.allowed && denied.degraded);
    assert_eq!(denied.retry_after_ms, 1000);
}

#[tokio::test]
async fn reset_by_key_and_by_prefix_needs_the_admin_key() {
    let mut rl = spawn(
        &[
            ("RATE_LIMIT_GLOBAL_MAX", "1"),
            ("RATE_LIMIT_AUTH_MAX", "1"),
            ("ADMIN_API_KEY", "admin-secret-for-tests-0123456789abcdef"),
        ],
        ManualClock::new(START_MICROS),
    )
    .await;
    for key in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        assert!(
            rl.check(check("global", key, 1))
                .await
                .expect("check")
                .into_inner()
                .allowed
        );
        assert!(
            !rl.check(check("global", key, 1))
                .await
                .expect("check")
                .into_inner()
                .allowed
        );
    }
    assert!(
        rl.check(check("auth", "10.0.0.1", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );

    let reset = |target: Target, key: Option<&str>| {
        let mut request = tonic::Request::new(ResetRequest {
            target: Some(target),
        });
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("x-admin-key", key.parse().expect("ascii"));
        }
        request
    };
    let status = rl
        .reset(reset(Target::Key("global:10.0.0.1".into()), None))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = rl
        .reset(reset(Target::Key("global:10.0.0.1".into()), Some("wrong")))
        .await
        .expect_err("bad key");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    let removed = rl
        .reset(reset(
            Target::Key("global:10.0.0.1".into()),
            Some("admin-secret-for-tests-0123456789abcdef"),
        ))
        .await
        .expect("reset")
        .into_inner()
        .removed;
    assert_eq!(removed, 1);
    assert!(
        rl.check(check("global", "10.0.0.1", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    assert!(
        !rl.check(check("global", "10.0.0.2", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );

    let removed = rl
        .reset(reset(
            Target::Prefix("global:10.0.0.".into()),
            Some("admin-secret-for-tests-0123456789abcdef"),
        ))
        .await
        .expect("reset")
        .into_inner()
        .removed;
    assert_eq!(removed, 3);
    assert!(
        rl.check(check("global", "10.0.0.2", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed
    );
    assert!(
        !rl.check(check("auth", "10.0.0.1", 1))
            .await
            .expect("check")
            .into_inner()
            .allowed,
        "other policies untouched"
    );
}

mod envoy {
    use envoy_types::pb::{
        envoy::{
            extensions::common::ratelimit::v3::{
                rate_limit_descriptor::Entry, RateLimitDescriptor,
            },
            service::ratelimit::v3::{
                rate_limit_response::{Code, DescriptorStatus},
                rate_limit_service_client::RateLimitServiceClient,
                RateLimitRequest,
            },
        },
        google::protobuf::UInt64Value,
    };

    use super::*;

    const CONFIG: &str = r#"
domain: edge_proxy
descriptors:
  - key: remote_address
    rate_limit:
      unit: minute
      requests_per_unit: 3
  - key: path
    value: /static/*
    rate_limit:
      unlimited: true
  - key: plan
    value: free
    shadow_mode: true
    rate_limit:
      unit: hour
      requests_per_unit: 1
"#;

    fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: pairs
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: hits,
        }
    }

    async fn envoy_client() -> RateLimitServiceClient<Channel> {
        let path = std::env::temp_dir().join(format!(
            "portico-rls-{}.yaml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, CONFIG).expect("write config");
        let backend = backend_vars().await;
        let mut vars: Vec<(&str, &str)> = backend.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path = path.display().to_string();
        vars.push(("RATE_LIMIT_DESCRIPTORS_FILE", &path));
        let (addr, _shutdown) =
            harness::spawn_ratelimit(&vars, ManualClock::new(START_MICROS)).await;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        RateLimitServiceClient::new(channel)
    }

    fn code(status: &DescriptorStatus) -> Code {
        Code::try_from(status.code).unwrap_or(Code::Unknown)
    }

    #[tokio::test]
    async fn should_rate_limit_speaks_envoys_protocol() {
        let mut rls = envoy_client().await;
        let ip = [("remote_address", "203.0.113.1")];
        for remaining in [2, 1, 0] {
            let r = rls
                .should_rate_limit(request("edge_proxy", vec![descriptor(&ip)], 0))
                .await
                .expect("rls")
                .into_inner();
            assert_eq!(Code::try_from(r.overall_code), Ok(Code::Ok));
            assert_eq!(r.statuses.len(), 1);
            assert_eq!(r.statuses[0].limit_remaining, remaining);
            let limit = r.statuses[0].current_limit.as_ref().expect("limit");
            assert_eq!(limit.requests_per_unit, 3);
            assert!(r.statuses[0].duration_until_reset.is_some());
        }
        let over = rls
            .should_rate_limit(request("edge_proxy", vec![descriptor(&ip)], 0))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(Code::try_from(over.overall_code), Ok(Code::OverLimit));
        assert_eq!(code(&over.statuses[0]), Code::OverLimit);

        // Another address has its own bucket; a request-level hits_addend of 3 spends it at once.
        let other = [("remote_address", "203.0.113.2")];
        let r = rls
            .should_rate_limit(request("edge_proxy", vec![descriptor(&other)], 3))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(Code::try_from(r.overall_code), Ok(Code::Ok));
        assert_eq!(r.statuses[0].limit_remaining, 0);

        // A descriptor-level hits_addend overrides the request's.
        let third = [("remote_address", "203.0.113.3")];
        let mut heavy = descriptor(&third);
        heavy.hits_addend = Some(UInt64Value { value: 4 });
        let r = rls
            .should_rate_limit(request("edge_proxy", vec![heavy], 1))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(
            Code::try_from(r.overall_code),
            Ok(Code::OverLimit),
            "4 hits never fit a limit of 3"
        );
    }

    #[tokio::test]
    async fn unlimited_shadow_and_unknown_descriptors_never_refuse() {
        let mut rls = envoy_client().await;
        for _ in 0..5 {
            let r = rls
                .should_rate_limit(request(
                    "edge_proxy",
                    vec![
                        descriptor(&[("path", "/static/app.js")]),
                        descriptor(&[("plan", "free")]),
                        descriptor(&[("unknown", "x")]),
                    ],
                    0,
                ))
                .await
                .expect("rls")
                .into_inner();
            assert_eq!(Code::try_from(r.overall_code), Ok(Code::Ok));
            assert_eq!(r.statuses.len(), 3);
            assert!(r.statuses.iter().all(|s| code(s) == Code::Ok));
            assert!(
                r.statuses[0].current_limit.is_none(),
                "unlimited has no limit"
            );
            assert!(
                r.statuses[1].current_limit.is_some(),
                "shadow mode still reports its limit"
            );
        }
        let unknown_domain = rls
            .should_rate_limit(request(
                "nobody",
                vec![descriptor(&[("remote_address", "1.1.1.1")])],
                0,
            ))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(Code::try_from(unknown_domain.overall_code), Ok(Code::Ok));
        let status = rls
            .should_rate_limit(request("", vec![], 0))
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}

mod edge {
    use portico::Component;
    use serde_json::Value;

    use super::fields;
    use crate::harness::TestSuite;

    fn header(response: &reqwest::Response, name: &str) -> Option<String> {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The three draft-06 fields, which only `RATE_LIMIT_LEGACY_HEADERS=true` sends.
    const LEGACY: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

    #[tokio::test]
    async fn global_limit_answers_429_with_retry_after_and_ratelimit_headers() {
        let suite = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "3")
            .spawn()
            .await;
        for remaining in [2, 1, 0] {
            let response = suite.get("/api/openapi.json").await;
            assert_eq!(response.status(), 200);
            let policy = fields::field(&response, "ratelimit-policy");
            assert_eq!(
                policy,
                [fields::Member {
                    name: "global".to_owned(),
                    params: vec![("q".to_owned(), 3), ("w".to_owned(), 60)],
                }],
                "the route pays `global` only: 3 per 60 s"
            );
            let limit = fields::field(&response, "ratelimit");
            assert_eq!(limit.len(), 1);
            assert_eq!(limit[0].name, "global");
            assert_eq!(
                limit[0].param("r"),
                Some(remaining),
                "one token per request"
            );
            let t = limit[0].param("t").expect("t");
            assert!(
                (1..=60).contains(&t),
                "seconds until the bucket is full: {t}"
            );
            for name in LEGACY {
                assert!(header(&response, name).is_none(), "{name} is legacy only");
            }
        }
        let refused = suite.get("/api/openapi.json").await;
        assert_eq!(refused.status(), 429);
        let retry_after: i64 = header(&refused, "retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert_eq!(retry_after, 20, "one token per 60 s / 3 = 20 s");
        let limit = fields::member(&refused, "ratelimit", "global");
        assert_eq!(limit.param("r"), Some(0));
        assert_eq!(
            limit.param("t"),
            Some(retry_after),
            "on a refusal the effective window ends when Retry-After does"
        );
        assert_eq!(
            fields::member(&refused, "ratelimit-policy", "global").param("q"),
            Some(3)
        );
        assert!(header(&refused, "ratelimit-remaining").is_none());
        let body: Value = refused.json().await.expect("json");
        assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");

        // Health and metrics are never limited.
        assert_eq!(suite.get("/healthz").await.status(), 200);
        let metrics = suite.get("/metrics").await.text().await.expect("text");
        // The registry is process-wide (other tests count too): the series exists and counted.
        let refused: f64 = metrics
            .lines()
            .find_map(|line| line.strip_prefix("rate_limit_exceeded_total{policy=\"global\"} "))
            .and_then(|value| value.parse().ok())
            .expect("rate_limit_exceeded_total{policy=\"global\"}");
        assert!(refused >= 1.0);
    }

    #[tokio::test]
    async fn login_and_register_also_pass_the_auth_policy() {
        let suite = TestSuite::builder()
            .env("RATE_LIMIT_AUTH_MAX", "2")
            .spawn()
            .await;
        let body = serde_json::json!({"email": "x@example.com", "password": "whatever-password"});
        for _ in 0..2 {
            let response = suite
                .http
                .post(suite.url("/api/v1/auth/login"))
                .json(&body)
                .send()
                .await
                .expect("edge");
            assert_eq!(response.status(), 401);
            let names: Vec<String> = fields::field(&response, "ratelimit-policy")
                .into_iter()
                .map(|m| m.name)
                .collect();
            assert_eq!(
                names,
                ["global", "auth"],
                "both policies, in the order asked"
            );
            let auth = fields::member(&response, "ratelimit-policy", "auth");
            assert_eq!((auth.param("q"), auth.param("w")), (Some(2), Some(60)));
        }
        let refused = suite
            .http
            .post(suite.url("/api/v1/auth/register"))
            .json(&body)
            .send()
            .await
            .expect("edge");
        // Register shares the auth bucket.
        crate::harness::assert_error(refused, reqwest::StatusCode::TOO_MANY_REQUESTS, "`auth`")
            .await;
        assert_eq!(
            suite.get("/.well-known/jwks.json").await.status(),
            200,
            "other routes only pay `global`"
        );
    }

    #[tokio::test]
    async fn the_legacy_variable_brings_back_the_three_draft_06_fields_instead() {
        let suite = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "3")
            .env("RATE_LIMIT_LEGACY_HEADERS", "true")
            .spawn()
            .await;
        for remaining in ["2", "1", "0"] {
            let response = suite.get("/api/openapi.json").await;
            assert_eq!(response.status(), 200);
            assert_eq!(header(&response, "ratelimit-limit").as_deref(), Some("3"));
            assert_eq!(
                header(&response, "ratelimit-remaining").as_deref(),
                Some(remaining)
            );
            let reset: u64 = header(&response, "ratelimit-reset")
                .and_then(|v| v.parse().ok())
                .expect("RateLimit-Reset in seconds");
            assert!((1..=60).contains(&reset), "{reset}");
            assert!(header(&response, "ratelimit-policy").is_none());
            assert!(header(&response, "ratelimit").is_none());
        }
        let refused = suite.get("/api/openapi.json").await;
        assert_eq!(refused.status(), 429);
        assert_eq!(header(&refused, "retry-after").as_deref(), Some("20"));
        assert_eq!(
            header(&refused, "ratelimit-remaining").as_deref(),
            Some("0")
        );
        assert!(header(&refused, "ratelimit").is_none());
    }

    #[tokio::test]
    async fn whitelisted_client_is_never_limited_at_the_edge() {
        let suite = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "1")
            .env("RATE_LIMIT_WHITELIST", "127.0.0.0/8")
            .spawn()
            .await;
        for _ in 0..5 {
            let response = suite.get("/api/openapi.json").await;
            assert_eq!(response.status(), 200);
            for name in ["ratelimit-policy", "ratelimit"].into_iter().chain(LEGACY) {
                assert!(header(&response, name).is_none(), "{name}");
            }
        }
    }

    #[tokio::test]
    async fn clients_are_keyed_by_peer_and_by_forwarded_for_only_through_trusted_proxies() {
        let untrusted = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "1")
            .spawn()
            .await;
        let first = untrusted
            .http
            .get(untrusted.url("/api/openapi.json"))
            .header("x-forwarded-for", "192.0.2.1")
            .send()
            .await
            .expect("edge");
        assert_eq!(first.status(), 200);
        let spoofed = untrusted
            .http
            .get(untrusted.url("/api/openapi.json"))
            .header("x-forwarded-for", "192.0.2.2")
            .send()
            .await
            .expect("edge");
        assert_eq!(
            spoofed.status(),
            429,
            "a made-up X-Forwarded-For does not buy a new bucket"
        );

        let proxied = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "1")
            .env("TRUSTED_PROXIES", "127.0.0.1")
            .spawn()
            .await;
        for client in ["192.0.2.1", "192.0.2.2"] {
            let response = proxied
                .http
                .get(proxied.url("/api/openapi.json"))
                .header("x-forwarded-for", client)
                .send()
                .await
                .expect("edge");
            assert_eq!(
                response.status(),
                200,
                "{client} has its own bucket behind a trusted proxy"
            );
        }
        let again = proxied
            .http
            .get(proxied.url("/api/openapi.json"))
            .header("x-forwarded-for", "192.0.2.1")
            .send()
            .await
            .expect("edge");
        assert_eq!(again.status(), 429);
    }

    #[tokio::test]
    async fn admin_reset_route_clears_a_bucket() {
        let suite = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "2")
            .env("ADMIN_API_KEY", "admin-secret-for-tests-0123456789abcdef")
            .spawn()
            .await;
        // The reset call itself is a request under the global policy too: spend the rest here.
        assert_eq!(suite.get("/api/openapi.json").await.status(), 200);
        let reset = |body: Value, key: Option<&str>| {
            let mut request = suite
                .http
                .post(suite.url("/api/v1/admin/ratelimit/reset"))
                .json(&body);
            if let Some(key) = key {
                request = request.header("x-admin-key", key);
            }
            request.send()
        };
        let missing = reset(serde_json::json!({"key": "global:127.0.0.1"}), None)
            .await
            .expect("edge");
        assert_eq!(missing.status(), 401);
        assert_eq!(suite.get("/api/openapi.json").await.status(), 429);

        let wrong = reset(serde_json::json!({"key": "global:127.0.0.1"}), Some("nope"))
            .await
            .expect("edge");
        assert_eq!(
            wrong.status(),
            429,
            "limited before the key is even looked at"
        );

        // Whitelisted admin tooling is how operators reset while limited; here: reset over gRPC
        // first to get room, then prove the route works end to end.
        let mut rl =
            portico_proto::ratelimit::rate_limit_service_client::RateLimitServiceClient::new(
                suite.channel(Component::RateLimit).await,
            );
        let mut request = tonic::Request::new(portico_proto::ratelimit::ResetRequest {
            target: Some(portico_proto::ratelimit::reset_request::Target::Prefix(
                String::new(),
            )),
        });
        request.metadata_mut().insert(
            "x-admin-key",
            "admin-secret-for-tests-0123456789abcdef"
                .parse()
                .expect("ascii"),
        );
        rl.reset(request).await.expect("reset everything");

        let bad = reset(
            serde_json::json!({"key": "a", "prefix": "b"}),
            Some("admin-secret-for-tests-0123456789abcdef"),
        )
        .await
        .expect("edge");
        assert_eq!(bad.status(), 400);
        let ok = reset(
            serde_json::json!({"key": "global:127.0.0.1"}),
            Some("admin-secret-for-tests-0123456789abcdef"),
        )
        .await
        .expect("edge");
        assert_eq!(ok.status(), 200);
        let body: Value = ok.json().await.expect("json");
        assert_eq!(body["removed"], 1);
        assert_eq!(
            suite.get("/api/openapi.json").await.status(),
            200,
            "the bucket is full again"
        );
    }

    #[tokio::test]
    async fn unknown_fields_in_the_reset_body_are_refused() {
        let suite = TestSuite::builder()
            .env("ADMIN_API_KEY", "admin-secret-for-tests-0123456789abcdef")
            .spawn()
            .await;
        let response = suite
            .http
            .post(suite.url("/api/v1/admin/ratelimit/reset"))
            .header("x-admin-key", "admin-secret-for-tests-0123456789abcdef")
            .json(&serde_json::json!({"key": "global:1.2.3.4", "force": true}))
            .send()
            .await
            .expect("edge");
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown field")),
            "{body}"
        );
    }

    #[tokio::test]
    async fn ratelimit_service_down_fails_open_with_a_local_ceiling() {
        let mut suite = TestSuite::builder()
            .env("RATE_LIMIT_GLOBAL_MAX", "2")
            .spawn()
            .await;
        suite.stop(Component::RateLimit).await;
        assert_eq!(suite.get("/api/openapi.json").await.status(), 200);
        assert_eq!(suite.get("/api/openapi.json").await.status(), 200);
        assert_eq!(
            suite.get("/api/openapi.json").await.status(),
            429,
            "the edge's own buckets still limit"
        );
        let ready: Value = suite.get("/readyz").await.json().await.expect("json");
        assert_eq!(ready["status"], "degraded");
    }

    #[tokio::test]
    async fn ratelimit_service_down_fails_closed_with_503() {
        let mut suite = TestSuite::builder()
            .env("RATE_LIMIT_FAIL_MODE", "closed")
            .spawn()
            .await;
        suite.stop(Component::RateLimit).await;
        let response = suite.get("/api/openapi.json").await;
        assert_eq!(response.status(), 503);
        assert_eq!(header(&response, "retry-after").as_deref(), Some("1"));
        assert_eq!(suite.get("/healthz").await.status(), 200);
    }
}

#[tokio::test]
async fn the_edge_admitting_ahead_still_spends_every_token_in_the_service() {
    // 40 per minute: the edge admits most of them without waiting, yet the service counts each.
    let suite = crate::harness::TestSuite::builder()
        .env("RATE_LIMIT_GLOBAL_MAX", "40")
        .env("RATE_LIMIT_GLOBAL_WINDOW", "60s")
        .spawn()
        .await;
    let mut admitted = 0;
    let mut last_remaining = None;
    for _ in 0..60 {
        let response = suite.get("/api/openapi.json").await;
        match response.status().as_u16() {
            200 => {
                admitted += 1;
                let remaining = fields::member(&response, "ratelimit", "global")
                    .param("r")
                    .expect("r");
                if let Some(last) = last_remaining {
                    assert!(
                        remaining < last,
                        "remaining only goes down: {last} then {remaining}"
                    );
                }
                last_remaining = Some(remaining);
            }
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    // Exact accounting for one edge: every admitted request spent a token in the service.
    assert_eq!(
        admitted, 40,
        "the bucket admits its capacity, no more and no less"
    );
    // And the service agrees that the bucket is empty.
    let mut ratelimit = client(suite.service_addr(portico::Component::RateLimit)).await;
    let mut request = tonic::Request::new(CheckRequest {
        key: "127.0.0.1".into(),
        policy: "global".into(),
        cost: 1,
        client_ip: String::new(),
        ..Default::default()
    });
    crate::harness::as_edge(&mut request, "127.0.0.1");
    let check = ratelimit.check(request).await.expect("check").into_inner();
    assert!(!check.allowed, "{check:?}");
}

/// Bucket lookups (`GetBucket`, `GET /api/v1/admin/ratelimit/buckets`): read-only on both
/// backends.
mod lookup {
    use portico_proto::ratelimit::{GetBucketRequest, GetBucketResponse};
    use serde_json::Value;

    use super::*;
    use crate::harness::TestSuite;

    const ADMIN_KEY: &str = "admin-secret-for-tests-0123456789abcdef";

    fn get_bucket(
        policy: &str,
        key: &str,
        admin_key: Option<&str>,
    ) -> tonic::Request<GetBucketRequest> {
        let mut request = tonic::Request::new(GetBucketRequest {
            policy: policy.into(),
            key: key.into(),
        });
        if let Some(admin_key) = admin_key {
            request
                .metadata_mut()
                .insert("x-admin-key", admin_key.parse().expect("ascii"));
        }
        request
    }

    async fn bucket(
        rl: &mut RateLimitServiceClient<Channel>,
        policy: &str,
        key: &str,
    ) -> GetBucketResponse {
        rl.get_bucket(get_bucket(policy, key, Some(ADMIN_KEY)))
            .await
            .expect("get bucket")
            .into_inner()
    }

    /// Memory always; Redis too when `TEST_REDIS_URL` is reachable.
    async fn backends() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
        let mut backends = vec![("memory", Vec::new())];
        if let Some(url) = harness::shared_redis().await {
            backends.push(("redis", vec![("REDIS_URL", url)]));
        }
        backends
    }

    #[tokio::test]
    async fn a_bucket_is_read_without_spending_a_token_on_both_backends() {
        for (backend, vars) in backends().await {
            let clock = ManualClock::new(START_MICROS);
            let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            all.extend([
                ("RATE_LIMIT_CAPACITY", "5"),
                ("RATE_LIMIT_REFILL_RATE", "1"),
                ("ADMIN_API_KEY", ADMIN_KEY),
            ]);
            let (addr, _shutdown) = harness::spawn_ratelimit(&all, clock.clone()).await;
            let mut rl = client(addr).await;

            let fresh = bucket(&mut rl, "chat", "user-1").await;
            assert_eq!(
                (
                    fresh.limit,
                    fresh.remaining,
                    fresh.reset_after_ms,
                    fresh.retry_after_ms
                ),
                (5, 5, 0, 0),
                "{backend}: a bucket never used is full"
            );
            assert_eq!(fresh.bucket, "ratelimit:chat:user-1", "{backend}");
            for _ in 0..3 {
                assert!(
                    rl.check(check("chat", "user-1", 1))
                        .await
                        .expect("check")
                        .into_inner()
                        .allowed
                );
            }
            let after = bucket(&mut rl, "chat", "user-1").await;
            assert_eq!(
                (after.remaining, after.reset_after_ms, after.retry_after_ms),
                (2, 3000, 0),
                "{backend}: three spent, three seconds to full"
            );
            assert_eq!(
                bucket(&mut rl, "chat", "user-1").await,
                after,
                "{backend}: looking took nothing"
            );

            for _ in 0..2 {
                assert!(
                    rl.check(check("chat", "user-1", 1))
                        .await
                        .expect("check")
                        .into_inner()
                        .allowed
                );
            }
            let empty = bucket(&mut rl, "chat", "user-1").await;
            assert_eq!(
                (empty.remaining, empty.reset_after_ms, empty.retry_after_ms),
                (0, 5000, 1000),
                "{backend}: empty, one token in a second"
            );
            clock.advance(Duration::from_millis(1500));
            let refilled = bucket(&mut rl, "chat", "user-1").await;
            assert_eq!(
                (
                    refilled.remaining,
                    refilled.reset_after_ms,
                    refilled.retry_after_ms
                ),
                (1, 3500, 0),
                "{backend}: refilled by the clock"
            );
            // Exactly the token the lookup reported is there to spend.
            assert!(
                rl.check(check("chat", "user-1", 1))
                    .await
                    .expect("check")
                    .into_inner()
                    .allowed
            );
            assert!(
                !rl.check(check("chat", "user-1", 1))
                    .await
                    .expect("check")
                    .into_inner()
                    .allowed
            );
            assert_eq!(
                bucket(&mut rl, "chat", "user-2").await.remaining,
                5,
                "{backend}: another key is its own bucket"
            );
        }
    }

    #[tokio::test]
    async fn a_bucket_lookup_needs_admin_and_a_known_policy_and_key() {
        let mut rl = spawn(
            &[("ADMIN_API_KEY", ADMIN_KEY)],
            ManualClock::new(START_MICROS),
        )
        .await;
        let status = rl
            .get_bucket(get_bucket("chat", "user-1", None))
            .await
            .expect_err("no credentials");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        let status = rl
            .get_bucket(get_bucket("chat", "user-1", Some("wrong")))
            .await
            .expect_err("a wrong key");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let status = rl
            .get_bucket(get_bucket("nope", "user-1", Some(ADMIN_KEY)))
            .await
            .expect_err("unknown policy");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("unknown policy `nope`"),
            "{}",
            status.message()
        );
        let status = rl
            .get_bucket(get_bucket("chat", "", Some(ADMIN_KEY)))
            .await
            .expect_err("empty key");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn the_admin_route_reads_the_bucket_the_edge_spends() {
        // A small auth bucket (decided synchronously by the edge) that barely refills, so
        // every spend shows at once and no refill lands between two reads.
        let suite = TestSuite::builder()
            .env("RATE_LIMIT_AUTH_MAX", "9")
            .env("RATE_LIMIT_GLOBAL_WINDOW", "3600s")
            .env("ADMIN_API_KEY", ADMIN_KEY)
            .spawn()
            .await;
        let lookup = |query: &str, key: Option<&str>| {
            let mut request = suite
                .http
                .get(suite.url(&format!("/api/v1/admin/ratelimit/buckets?{query}")));
            if let Some(key) = key {
                request = request.header("x-admin-key", key);
            }
            request.send()
        };
        let read = || async {
            let response = lookup("policy=auth&key=127.0.0.1", Some(ADMIN_KEY))
                .await
                .expect("edge");
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.expect("json")
        };
        let before = read().await;
        assert_eq!(before["limit"], 9);
        assert_eq!(before["bucket"], "ratelimit:auth:127.0.0.1");
        let wrong = suite
            .post(
                "/api/v1/auth/login",
                serde_json::json!({"email": "nobody@example.com", "password": "not the password"}),
            )
            .await;
        assert_eq!(wrong.status(), 401);
        let after = read().await;
        let spent = |v: &Value| v["remaining"].as_u64().expect("remaining");
        assert_eq!(
            spent(&after),
            spent(&before) - 1,
            "the login spent one: {before} {after}"
        );
        assert!(
            after["resetAfterSeconds"].as_u64().is_some_and(|s| s > 0),
            "{after}"
        );
        assert_eq!(
            read().await["remaining"],
            after["remaining"],
            "reading spends nothing"
        );
        // The URL-encoded form the console sends decodes to the same bucket.
        let encoded = lookup("policy=auth&key=127%2E0%2E0%2E1", Some(ADMIN_KEY))
            .await
            .expect("edge");
        assert_eq!(
            encoded.json::<Value>().await.expect("json")["remaining"],
            after["remaining"]
        );

        // An admin bearer token works too; a user's does not; no credentials are a 401.
        let admin = suite.login_admin("ops@example.com").await;
        let by_jwt = suite
            .http
            .get(suite.url("/api/v1/admin/ratelimit/buckets?policy=global&key=127.0.0.1"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("edge");
        assert_eq!(by_jwt.status(), 200);
        let user = suite.login("user@example.com").await;
        let by_user = suite
            .http
            .get(suite.url("/api/v1/admin/ratelimit/buckets?policy=global&key=127.0.0.1"))
            .bearer_auth(&user)
            .send()
            .await
            .expect("edge");
        assert_eq!(by_user.status(), 403);
        assert_eq!(
            lookup("policy=auth&key=127.0.0.1", None)
                .await
                .expect("edge")
                .status(),
            401
        );
        for bad in [
            "policy=auth",
            "policy=nope&key=1.2.3.4",
            "policy=auth&key=1.2.3.4&cost=1",
        ] {
            let response = lookup(bad, Some(ADMIN_KEY)).await.expect("edge");
            assert_eq!(response.status(), 400, "{bad}");
            let body: Value = response.json().await.expect("json");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{bad}: {body}"
            );
        }
    }
}

/// The edge's `RateLimit-Policy` and `RateLimit` fields read as RFC 8941 structured fields:
/// a List of Items whose bare item is a String (the policy's name, as
/// draft-ietf-httpapi-ratelimit-headers-11 requires) with Integer parameters. Anything else, a
/// Token for the name included, is a parse error, so a test that reads a value has also checked
/// the syntax.
pub(crate) mod fields {
    /// One list member: the policy's name and its parameters, in order.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Member {
        pub(crate) name: String,
        pub(crate) params: Vec<(String, i64)>,
    }

    impl Member {
        /// The parameter called `key`.
        pub(crate) fn param(&self, key: &str) -> Option<i64> {
            self.params.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
        }
    }

    /// Parses `input` as an sf-list (RFC 8941 §4.2.1) of the shape above.
    pub(crate) fn parse_list(input: &str) -> Result<Vec<Member>, String> {
        let mut rest = input.trim_start_matches(' ');
        let mut members = Vec::new();
        while !rest.is_empty() {
            let (member, after) = parse_item(rest)?;
            members.push(member);
            rest = after.trim_start_matches([' ', '\t']);
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix(',')
                .ok_or_else(|| format!("expected `,` at `{rest}`"))?
                .trim_start_matches([' ', '\t']);
            if rest.is_empty() {
                return Err("trailing comma".to_owned());
            }
        }
        if members.is_empty() {
            return Err("an empty list".to_owned());
        }
        Ok(members)
    }

    fn parse_item(input: &str) -> Result<(Member, &str), String> {
        let (name, mut rest) = parse_string(input)?;
        let mut params: Vec<(String, i64)> = Vec::new();
        while let Some(after) = rest.strip_prefix(';') {
            let after = after.trim_start_matches(' ');
            let (key, after) = parse_key(after)?;
            let after = after
                .strip_prefix('=')
                .ok_or_else(|| format!("parameter `{key}` has no Integer value"))?;
            let (value, after) = parse_integer(after)?;
            // A repeated key overwrites the earlier value (§4.2.3.2).
            params.retain(|(k, _)| k != &key);
            params.push((key, value));
            rest = after;
        }
        Ok((Member { name, params }, rest))
    }

    fn parse_string(input: &str) -> Result<(String, &str), String> {
        let mut chars = input
            .strip_prefix('"')
            .ok_or_else(|| format!("expected an sf-string at `{input}`"))?
            .char_indices();
        let body = &input[1..];
        let mut value = String::new();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                    _ => return Err("a bad escape in an sf-string".to_owned()),
                },
                '"' => return Ok((value, &body[at + 1..])),
                ' '..='~' => value.push(c),
                _ => return Err(format!("{c:?} is not allowed in an sf-string")),
            }
        }
        Err("an unterminated sf-string".to_owned())
    }

    fn parse_key(input: &str) -> Result<(String, &str), String> {
        let first_ok = input
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '*');
        if !first_ok {
            return Err(format!("expected a key at `{input}`"));
        }
        let end = input
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c)))
            .unwrap_or(input.len());
        Ok((input[..end].to_owned(), &input[end..]))
    }

    fn parse_integer(input: &str) -> Result<(i64, &str), String> {
        let (sign, digits) = match input.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, input),
        };
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        if end == 0 || end > 15 {
            return Err(format!("expected an Integer (1 to 15 digits) at `{input}`"));
        }
        if digits[end..].starts_with('.') {
            return Err("a Decimal where an Integer belongs".to_owned());
        }
        let value: i64 = digits[..end].parse().map_err(|e| format!("{e}"))?;
        Ok((sign * value, &digits[end..]))
    }

    /// The response's `name` field parsed; panics with the reason when absent or malformed.
    pub(crate) fn field(response: &reqwest::Response, name: &str) -> Vec<Member> {
        let raw = response
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} field"))
            .to_str()
            .expect("ascii");
        parse_list(raw).unwrap_or_else(|e| panic!("{name}: {raw:?} is not a valid field: {e}"))
    }

    /// The member of the response's `name` field for `policy`.
    pub(crate) fn member(response: &reqwest::Response, name: &str, policy: &str) -> Member {
        field(response, name)
            .into_iter()
            .find(|m| m.name == policy)
            .unwrap_or_else(|| panic!("{name} has no `{policy}` member"))
    }

    #[test]
    fn the_parser_reads_lists_and_refuses_malformed_fields() {
        let parsed = parse_list(r#""global";q=100;w=60, "auth";q=10;w=60"#).expect("valid");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].name, "global");
        assert_eq!(parsed[0].param("q"), Some(100));
        assert_eq!(parsed[1].param("w"), Some(60));
        assert_eq!(
            parse_list(r#""a\"b";r=0"#).expect("escapes")[0].name,
            "a\"b"
        );
        // RFC 8941 refuses all but the first two; those are outside the shape above.
        for bad in [
            "",
            r#""global";r"#,
            "global;r=1",
            r#""global";r=1,"#,
            r#""global" ;r=1"#,
            r#""global";R=1"#,
            r#""global";r=1.5"#,
            r#""global";r=1 "auth";r=2"#,
            r#""global"#,
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?} must not parse");
        }
    }
}
