//! `/metrics` for a service running as its own process (`METRICS_ADDR`): the process registry in
//! Prometheus text, behind the same `METRICS_GUARD` as the edge (the socket peer is the client;
//! there is no proxy in front of a pod's metrics port).

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use portico_config::MetricsGuard;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub fn serve_metrics(listener: TcpListener, guard: MetricsGuard, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let (stream, peer): (_, SocketAddr) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let guard = guard.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let guard = guard.clone();
                    async move {
                        let response = if request.uri().path() != "/metrics" {
                            answer(
                                StatusCode::NOT_FOUND,
                                "text/plain",
                                "only /metrics here\n".into(),
                            )
                        } else if !guard.allows(
                            request
                                .headers()
                                .get("x-metrics-secret")
                                .map(|v| v.as_bytes()),
                            peer.ip(),
                        ) {
                            tracing::warn!(metrics_guard = true, client_ip = %peer.ip(), "metrics_guard refused a scrape");
                            answer(
                                StatusCode::FORBIDDEN,
                                "text/plain",
                                "metrics are not available to this caller\n".into(),
                            )
                        } else {
                            use portico_telemetry::metrics::{encode_as, Format};
                            let format = Format::negotiate(
                                request
                                    .headers()
                                    .get(hyper::header::ACCEPT)
                                    .and_then(|v| v.to_str().ok()),
                            );
                            answer(StatusCode::OK, format.content_type(), encode_as(format))
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
