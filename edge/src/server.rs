//! The edge's HTTP server: HTTP/1.1 and h2c on one port, a header-read timeout against slow
//! clients, and a graceful drain on shutdown.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use portico_config::Settings;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{Edge, EdgeError};

/// A running edge.
#[derive(Debug)]
pub struct EdgeHandle {
    /// Address the edge listens on.
    pub local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl EdgeHandle {
    /// Stops accepting and waits, at most `timeout`, for in-flight requests to finish.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.shutdown.cancel();
        self.wait(timeout).await
    }

    /// Waits for the edge to stop after its shutdown token fired, at most `timeout`.
    pub async fn wait(self, timeout: Duration) -> bool {
        let abort = self.task.abort_handle();
        match tokio::time::timeout(timeout, self.task).await {
            Ok(result) => result.is_ok(),
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "edge drain deadline passed; closing remaining connections"
                );
                abort.abort();
                false
            }
        }
    }
}

/// Serves the edge on `listener` until `shutdown` is cancelled.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<EdgeHandle, EdgeError> {
    let edge = Edge::new(settings, shutdown.clone()).await?;
    let local_addr = listener.local_addr()?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.edge.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let edge = edge.clone();
            let service = service_fn(move |request| {
                let edge = edge.clone();
                async move { Ok::<_, Infallible>(edge.handle(request, peer).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %peer, "connection closed with an error");
                }
            });
        }
        drop(listener);
        tracing::info!("edge: stopped accepting, draining in-flight requests");
        graceful.shutdown().await;
    });
    tracing::info!(%local_addr, "edge listening");
    Ok(EdgeHandle {
        local_addr,
        shutdown,
        task,
    })
}
