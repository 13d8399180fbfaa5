//! Graceful shutdown: health flips to NOT_SERVING, then the servers drain and stop within
//! the deadline.

use portico::Component;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::harness::TestSuite;

#[tokio::test]
async fn shutdown_flips_health_to_not_serving_then_drains() {
    let suite = TestSuite::spawn().await;
    let mut client = HealthClient::new(suite.channel(Component::Auth).await);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: portico_proto::names::AUTH.to_owned(),
        })
        .await
        .expect("watch starts")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let edge_addr = suite.edge_addr;
    let shutdown = tokio::spawn(suite.shutdown());
    let next = watch.message().await.expect("stream").expect("status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Our watch stream is the last in-flight call; ending it lets the drain finish.
    drop(watch);
    drop(client);
    assert!(
        shutdown.await.expect("shutdown task"),
        "drained within the deadline"
    );
    assert!(
        tokio::net::TcpStream::connect(edge_addr).await.is_err(),
        "edge stopped listening"
    );
}

#[tokio::test]
async fn in_flight_requests_finish_during_the_drain() {
    // A "service" that accepts connections and never answers: readiness stays in flight until
    // its health-check deadline.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let stall_url = format!("http://{}", stall.local_addr().expect("addr"));
    // The content backend stalls too, but silently: the edge subscribes to its revision stream
    // as it starts, and that connection is not the in-flight request this test waits for.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = stall.accept().await {
            held.push(socket);
            let _ = accepted_tx.send(());
        }
    });
    let database = std::env::temp_dir().join(format!(
        "portico-drain-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let vars: std::collections::HashMap<String, String> = [
        ("AUTH_GRPC_URL", stall_url.as_str()),
        ("CONTENT_GRPC_URL", silent_url.as_str()),
        ("CHAT_GRPC_URL", stall_url.as_str()),
        ("RATELIMIT_GRPC_URL", stall_url.as_str()),
        ("HEALTH_CHECK_TIMEOUT", "1s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .chain([(
        "DATABASE_URL".to_owned(),
        format!("sqlite://{}?mode=rwc", database.display()),
    )])
    .collect();
    let settings = portico_config::Settings::from_source(&vars).expect("settings");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let edge = portico_edge::serve(&settings, listener, shutdown.clone())
        .await
        .expect("edge");
    let url = format!("http://{}/readyz", edge.local_addr);

    let in_flight = tokio::spawn(async move { reqwest::get(url).await });
    accepted_rx
        .recv()
        .await
        .expect("the request reached the backend");
    shutdown.cancel();

    let response = in_flight
        .await
        .expect("task")
        .expect("the in-flight request got its answer");
    assert_eq!(response.status(), 503, "backends never answered: unhealthy");
    assert!(
        edge.wait(std::time::Duration::from_secs(10)).await,
        "drained within the deadline"
    );
}
