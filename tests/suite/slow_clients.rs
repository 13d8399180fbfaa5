//! Slow and greedy clients at the edge, over raw sockets: none may hold a connection past its
//! timeout (the attack review's idle socket, half an HTTP/2 preface, an HTTP/2 connection that
//! only sent SETTINGS, a body that stops arriving, an idle keep-alive connection), and one client
//! address may not take every connection.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::harness::TestSuite;

/// Every timeout of these tests: short, so the suite stays fast.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How long past its timeout a connection may linger (the watchdog looks every 250 ms; CI is
/// slow).
const SLACK: Duration = Duration::from_secs(3);

async fn suite() -> TestSuite {
    TestSuite::builder()
        .env("EDGE_HEADER_READ_TIMEOUT", "1s")
        .env("EDGE_IDLE_TIMEOUT", "1s")
        .env("EDGE_BODY_READ_TIMEOUT", "1s")
        .env("EDGE_MAX_CONNECTIONS_PER_IP", "4")
        .spawn()
        .await
}

/// Reads until the server closes `stream`; returns what it sent and when it closed.
async fn until_closed(stream: &mut TcpStream, started: Instant) -> (Vec<u8>, Duration) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(TIMEOUT + SLACK + SLACK, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the edge never closed the connection");
    (received, started.elapsed())
}

fn closed_in_time(elapsed: Duration) {
    assert!(
        elapsed >= TIMEOUT.mul_f32(0.9) && elapsed <= TIMEOUT + SLACK,
        "closed after {elapsed:?}, expected about {TIMEOUT:?}"
    );
}

#[tokio::test]
async fn connections_that_send_no_request_are_closed_after_the_header_timeout() {
    let suite = suite().await;
    // Never a byte; half of the HTTP/2 preface; the whole preface and SETTINGS, then nothing.
    let openings: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    ];
    for opening in openings {
        let started = Instant::now();
        let mut stream = TcpStream::connect(suite.edge_addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let (_, elapsed) = until_closed(&mut stream, started).await;
        closed_in_time(elapsed);
    }
    // And the edge still serves everyone else.
    assert_eq!(
        suite.get("/healthz").await.status(),
        reqwest::StatusCode::OK
    );
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let suite = suite().await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(suite.edge_addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .expect("write");
    let (received, elapsed) = until_closed(&mut stream, started).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    closed_in_time(elapsed);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let suite = suite().await;
    let mut stream = TcpStream::connect(suite.edge_addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    let (_, elapsed) = until_closed(&mut stream, started).await;
    closed_in_time(elapsed);
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_connections() {
    let suite = suite().await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(suite.edge_addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "within the cap");
        held.push(stream);
    }
    let started = Instant::now();
    let mut fifth = TcpStream::connect(suite.edge_addr).await.expect("accepted");
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await;
    let (received, elapsed) = until_closed(&mut fifth, started).await;
    assert!(
        received.is_empty(),
        "over the cap: closed without an answer"
    );
    assert!(elapsed < TIMEOUT, "closed at once, took {elapsed:?}");

    drop(held);
    // Slots come back when connections close (the edge notices each close on its own).
    let deadline = Instant::now() + SLACK;
    loop {
        let mut stream = TcpStream::connect(suite.edge_addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        if matches!(stream.read(&mut buf).await, Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200")) {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_oversized_request_head_is_431() {
    let suite = suite().await;
    let huge = "x".repeat(100 * 1024);
    let answer = suite
        .http
        .get(suite.url("/healthz"))
        .header("x-padding", huge)
        .send()
        .await
        .expect("answered");
    assert_eq!(
        answer.status(),
        reqwest::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[tokio::test]
async fn grpc_servers_announce_a_bound_on_concurrent_streams() {
    // tonic's default is no bound: one client could open streams without limit.
    let suite = TestSuite::spawn().await;
    let addr = suite.service_addr(portico::Component::Auth);
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(request, false).expect("send");
    // One empty HealthCheckRequest: no compression, length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("body");
    let response = response.await.expect("answer");
    assert_eq!(response.status(), http::StatusCode::OK);
    // The server's SETTINGS have arrived by now.
    let client = client.ready().await.expect("ready");
    assert_eq!(
        client.current_max_send_streams(),
        portico_grpc::MAX_CONCURRENT_STREAMS as usize
    );
}
