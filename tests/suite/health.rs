//! gRPC health and reflection on every service; REST liveness, startup and readiness with
//! aggregation (README, REST contract; docs/RUNBOOK.md §1).

use portico::Component;
use serde_json::Value;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

use crate::harness::TestSuite;

const SERVICES: [(Component, &[&str]); 4] = [
    (Component::Auth, &[portico_proto::names::AUTH]),
    (Component::Content, &[portico_proto::names::CONTENT]),
    (Component::Chat, &[portico_proto::names::CHAT]),
    (
        Component::RateLimit,
        &[
            portico_proto::names::RATELIMIT,
            portico_proto::names::ENVOY_RLS,
        ],
    ),
];

#[tokio::test]
async fn every_service_reports_serving_for_the_server_and_its_full_names() {
    let suite = TestSuite::spawn().await;
    for (component, names) in SERVICES {
        let mut client = HealthClient::new(suite.channel(component).await);
        for service in std::iter::once("").chain(names.iter().copied()) {
            let response = client
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .unwrap_or_else(|e| panic!("{} health {service:?}: {e}", component.name()));
            assert_eq!(
                response.get_ref().status,
                ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        let unknown = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("unknown service");
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn reflection_lists_each_service_without_proto_files() {
    let suite = TestSuite::spawn().await;
    for (component, names) in SERVICES {
        let mut client = ServerReflectionClient::new(suite.channel(component).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection answers")
            .into_inner();
        let response = stream
            .message()
            .await
            .expect("stream")
            .expect("one response");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("expected a service list from {}", component.name());
        };
        let listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        // Envoy's API comes from envoy-types without a descriptor set; Portico's own are listed.
        assert!(listed.contains(&names[0].to_owned()), "{listed:?}");
        assert!(
            listed.contains(&"grpc.health.v1.Health".to_owned()),
            "{listed:?}"
        );
    }
}

#[tokio::test]
async fn liveness_answers_on_every_alias() {
    let suite = TestSuite::spawn().await;
    for path in [
        "/health",
        "/healthz",
        "/livez",
        "/api/health",
        "/api/health/live",
    ] {
        let response = suite.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "ok", "{path}");
        assert!(body["uptime"].is_number());
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}

#[tokio::test]
async fn readiness_is_ok_when_everything_is_up() {
    let suite = TestSuite::spawn().await;
    for path in [
        "/ready",
        "/readyz",
        "/api/health/ready",
        "/api/v1/health/ready",
    ] {
        let response = suite.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["status"], "ok", "{path}: {body}");
        for check in ["auth", "content", "chat", "ratelimit", "cache"] {
            assert_eq!(body["checks"][check]["status"], "ok", "{check}: {body}");
        }
        // The edge has no database: each service's health reports its own (README changelog).
        assert!(body["checks"]["database"].is_null(), "{body}");
        let cache_type = if suite.redis_url.is_some() {
            "redis"
        } else {
            "memory"
        };
        assert_eq!(body["checks"]["cache"]["type"], cache_type);
        assert!(body["checks"]["auth"]["latencyMs"].is_u64());
    }
    let startup = suite.get("/api/health/startup").await;
    assert_eq!(startup.status(), 200);
}

#[tokio::test]
async fn critical_backend_down_makes_readiness_unhealthy_503() {
    let mut suite = TestSuite::spawn().await;
    suite.stop(Component::Auth).await;

    let response = suite.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["checks"]["auth"]["status"], "unhealthy");
    assert_eq!(body["checks"]["content"]["status"], "ok");
    // Liveness is about the edge process itself and stays up.
    assert_eq!(suite.get("/livez").await.status(), 200);
}

#[tokio::test]
async fn non_critical_backend_down_makes_readiness_degraded_200() {
    let mut suite = TestSuite::spawn().await;
    suite.stop(Component::Chat).await;

    let response = suite.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["chat"]["status"], "degraded");
    assert_eq!(body["checks"]["auth"]["status"], "ok");
}

#[tokio::test]
async fn startup_waits_for_every_service() {
    let mut suite = TestSuite::spawn().await;
    suite.stop(Component::RateLimit).await;
    let response = suite.get("/api/health/startup").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "starting");
}

#[tokio::test]
async fn a_service_sees_and_echoes_the_callers_correlation_id() {
    let suite = TestSuite::spawn().await;
    let mut client = HealthClient::new(suite.channel(Component::Content).await);
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-correlation-id", "abc-123".parse().expect("ascii"));
    let response = client.check(request).await.expect("health answers");
    assert_eq!(
        response
            .metadata()
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok()),
        Some("abc-123")
    );

    // An error answer carries it too, and an invalid ID is replaced by a fresh one.
    let mut client = portico_proto::content::content_service_client::ContentServiceClient::new(
        suite.channel(Component::Content).await,
    );
    let mut request =
        tonic::Request::new(portico_proto::content::GetContentRequest { slug: "x".into() });
    request
        .metadata_mut()
        .insert("x-correlation-id", "bad id!".parse().expect("ascii"));
    let status = client
        .get_content(request)
        .await
        .expect_err("not implemented yet");
    let echoed = status
        .metadata()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(!echoed.is_empty() && echoed != "bad id!", "{echoed:?}");
}

#[tokio::test]
async fn unreachable_cache_makes_readiness_degraded() {
    // Port 1 refuses connections: Redis is "down" for this suite only.
    let suite = TestSuite::builder()
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .spawn()
        .await;
    let response = suite.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["cache"]["status"], "degraded");
    assert_eq!(body["checks"]["cache"]["type"], "redis");
}

#[tokio::test]
async fn liveness_stays_serving_when_a_dependency_takes_the_server_out_of_rotation() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = portico_grpc::serve(
        "probe-test",
        listener,
        tonic::service::Routes::default(),
        &[portico_proto::names::CONTENT],
        portico_grpc::Transport::plaintext(),
        shutdown.clone(),
    )
    .await
    .expect("serves");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", handle.local_addr))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let client = HealthClient::new(channel);
    let status = |service: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .expect("check")
                .into_inner()
                .status
        }
    };
    // What the database watchdog does when the database stops answering.
    handle.health.set_serving(false).await;
    assert_eq!(
        status("").await,
        ServingStatus::NotServing as i32,
        "readiness fails"
    );
    assert_eq!(
        status(portico_proto::names::CONTENT).await,
        ServingStatus::NotServing as i32
    );
    assert_eq!(
        status(portico_grpc::LIVENESS).await,
        ServingStatus::Serving as i32,
        "liveness must not restart a pod whose database is down"
    );
    shutdown.cancel();
}
