//! The edge's HTTP server: HTTPS (rustls, ALPN `h2` and `http/1.1`, certificates re-read when
//! their files change) or plaintext on `EDGE_ADDR`, an optional plaintext listener beside
//! HTTPS, and a graceful drain on shutdown.
//!
//! Slow or greedy clients cannot hold connections: a connection must finish its TLS handshake
//! and send its first request head within `EDGE_HEADER_READ_TIMEOUT`; one with nothing in
//! flight and no bytes moving for `EDGE_IDLE_TIMEOUT` is closed (HTTP/1 keep-alive and HTTP/2
//! alike); a request body must arrive within `EDGE_BODY_READ_TIMEOUT` (408); each client
//! address may hold `EDGE_MAX_CONNECTIONS_PER_IP` connections; request heads are capped at
//! `EDGE_MAX_HEADER_BYTES` (431).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future as _,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use portico_config::{AppEnv, Settings};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{Edge, EdgeError};

/// How often a connection's watchdog looks at it.
const WATCHDOG_TICK: Duration = Duration::from_millis(250);

/// A running edge.
#[derive(Debug)]
pub struct EdgeHandle {
    /// Address the edge listens on (`EDGE_ADDR`).
    pub local_addr: SocketAddr,
    /// The extra plaintext listener's address (`EDGE_PLAINTEXT_ADDR`), when there is one.
    pub plaintext_addr: Option<SocketAddr>,
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

/// What every connection of the edge shares.
#[derive(Clone)]
struct Shared {
    /// The middleware stack over the dispatch, built once.
    stack: Arc<crate::Stack>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<portico_tls::Reloading<portico_tls::rustls::ServerConfig>>,
    limits: portico_config::Connections,
    first_request_timeout: Duration,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

/// Serves the edge on `listener` until `shutdown` is cancelled.
pub async fn serve(
    settings: &Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<EdgeHandle, EdgeError> {
    let transport = &settings.transport;
    if settings.app_env == AppEnv::Production
        && transport.edge_tls.is_none()
        && !transport.edge_tls_off
    {
        return Err(EdgeError::Config(
            "APP_ENV=production: the edge will not serve plaintext. Set EDGE_TLS_CERT_FILE and \
             EDGE_TLS_KEY_FILE, or EDGE_TLS=off when a load balancer in front of it terminates TLS"
                .into(),
        ));
    }
    let tls = match &transport.edge_tls {
        Some(files) => {
            let identity = portico_tls::Identity {
                cert: files.cert.clone(),
                key: files.key.clone(),
            };
            let config =
                portico_tls::server(&identity, None, &[b"h2", b"http/1.1"]).map_err(|e| {
                    EdgeError::Config(format!("EDGE_TLS_CERT_FILE/EDGE_TLS_KEY_FILE: {e}"))
                })?;
            config.spawn_watch(
                "EDGE_TLS_CERT_FILE",
                transport.reload_interval,
                shutdown.clone(),
            );
            Some(config)
        }
        None => None,
    };
    let plaintext = match transport.edge_plaintext_addr {
        Some(addr) if tls.is_some() => Some(TcpListener::bind(addr).await.map_err(|error| {
            EdgeError::Config(format!(
                "EDGE_PLAINTEXT_ADDR={addr}: cannot listen: {error}"
            ))
        })?),
        _ => None,
    };
    let edge = Edge::new(settings, shutdown.clone()).await?;
    let local_addr = listener.local_addr()?;
    let plaintext_addr = plaintext
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let limits = transport.connections.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.edge.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let shared = Shared {
        stack: Arc::new(edge.stack()),
        builder: Arc::new(builder),
        tls: tls.clone(),
        limits,
        first_request_timeout: settings.edge.header_read_timeout,
        per_ip: Arc::default(),
        tracker: TaskTracker::new(),
        stop: shutdown.clone(),
    };
    let task = tokio::spawn(async move {
        let main = tokio::spawn(accept(listener, shared.clone(), shared.tls.is_some()));
        let extra = plaintext.map(|listener| tokio::spawn(accept(listener, shared.clone(), false)));
        let _ = main.await;
        if let Some(extra) = extra {
            let _ = extra.await;
        }
        tracing::info!("edge: stopped accepting, draining in-flight requests");
        shared.tracker.close();
        shared.tracker.wait().await;
    });
    match plaintext_addr {
        Some(plain) => tracing::info!(%local_addr, %plain, "edge listening (HTTPS, plaintext)"),
        None if tls.is_some() => tracing::info!(%local_addr, "edge listening (HTTPS)"),
        None => tracing::info!(%local_addr, "edge listening"),
    }
    Ok(EdgeHandle {
        local_addr,
        plaintext_addr,
        shutdown,
        task,
    })
}

async fn accept(listener: TcpListener, shared: Shared, tls: bool) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shared.stop.cancelled() => return,
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
        let Some(slot) = Slot::take(&shared.per_ip, peer.ip(), shared.limits.max_per_ip) else {
            tracing::info!(%peer, "connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared_for_task = shared.clone();
        shared.tracker.spawn(async move {
            let _slot = slot;
            connection(stream, peer, tls, shared_for_task).await;
        });
    }
}

/// One client connection, TLS or not, until it ends, idles out or the edge drains.
async fn connection(stream: TcpStream, peer: SocketAddr, tls: bool, shared: Shared) {
    let accepted = Instant::now();
    let activity = Arc::new(Activity::default());
    let io = Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    if tls {
        let Some(config) = shared.tls.as_ref().map(portico_tls::Reloading::current) else {
            return;
        };
        let handshake = portico_tls::tokio_rustls::TlsAcceptor::from(config).accept(io);
        match tokio::time::timeout(shared.first_request_timeout, handshake).await {
            Ok(Ok(stream)) => serve_io(stream, peer, accepted, activity, shared).await,
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    } else {
        serve_io(io, peer, accepted, activity, shared).await;
    }
}

/// The stack's answer to one request, as one boxed future made here: `serve_io` is generic (its
/// callers' crates instantiate it), and the stack's future, nested ten layers deep, is laid out
/// once in this crate instead of in each of theirs (and within the default recursion limit).
fn answer(
    stack: Arc<crate::Stack>,
    request: http::Request<Deadline<Incoming>>,
    peer: SocketAddr,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::Response> + Send>> {
    Box::pin(async move { stack.serve(request, peer).await })
}

async fn serve_io<I>(
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    activity: Arc<Activity>,
    shared: Shared,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stack = Arc::clone(&shared.stack);
    let body_timeout = shared.limits.body_read_timeout;
    let counting = Arc::clone(&activity);
    let service = service_fn(move |request: http::Request<Incoming>| {
        let stack = Arc::clone(&stack);
        // Counted out when the request's future ends or is dropped (an HTTP/2 stream reset
        // drops it), so a reset can never keep a connection "busy" forever.
        let in_flight = InFlight::new(Arc::clone(&counting));
        async move {
            let _in_flight = in_flight;
            let request = request.map(|body| Deadline::new(body, body_timeout));
            Ok::<_, Infallible>(answer(stack, request, peer).await)
        }
    });
    let builder = Arc::clone(&shared.builder);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut closing = false;
    let mut ticker = tokio::time::interval(WATCHDOG_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "connection closed with an error");
                }
                return;
            }
            () = shared.stop.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = ticker.tick() => {
                match activity.verdict(accepted, shared.first_request_timeout, shared.limits.idle_timeout) {
                    Verdict::Keep => {}
                    // Never sent a request head: nothing to finish, close now.
                    Verdict::Drop => {
                        tracing::debug!(%peer, "no request within the header timeout: closed");
                        return;
                    }
                    Verdict::Idle if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    Verdict::Idle => {}
                }
            }
        }
    }
}

/// What a connection's watchdog sees.
#[derive(Default)]
struct Activity {
    /// Milliseconds since `EPOCH` of the last byte read or written, or request finished.
    last_ms: AtomicU64,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
}

enum Verdict {
    Keep,
    Drop,
    Idle,
}

fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn verdict(&self, accepted: Instant, first_request: Duration, idle: Duration) -> Verdict {
        if self.requests.load(Ordering::Relaxed) == 0 {
            // Idle sockets, half a preface, an HTTP/2 connection that only sent SETTINGS.
            return if accepted.elapsed() > first_request {
                Verdict::Drop
            } else {
                Verdict::Keep
            };
        }
        let quiet = now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
        if self.in_flight.load(Ordering::Acquire) == 0 && quiet > idle.as_millis() as u64 {
            Verdict::Idle
        } else {
            Verdict::Keep
        }
    }
}

/// One request in flight on a connection, for its watchdog.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// A socket that records when bytes move.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One of a client address's connection slots; given back when dropped.
struct Slot {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Slot {
    fn take(per_ip: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, max: usize) -> Option<Self> {
        let mut counts = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_default();
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            per_ip: Arc::clone(per_ip),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A request body that must arrive before its deadline ([`BodyTimeout`] after it).
pub struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadline<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The request body did not arrive within `EDGE_BODY_READ_TIMEOUT`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

impl<B> http_body::Body for Deadline<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
