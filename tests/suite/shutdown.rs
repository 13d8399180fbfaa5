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
