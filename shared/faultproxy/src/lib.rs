//! A TCP proxy on loopback for fault rehearsals: it forwards to one upstream until told to
//! fail. [`FaultProxy::cut`] closes every open connection and closes each new one at once
//! (a dependency that is down: the client learns it fast); [`FaultProxy::blackhole`] keeps
//! accepting but never forwards a byte (a partition: the client learns it only from its own
//! timeouts); [`FaultProxy::restore`] forwards again.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const FORWARD: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

#[derive(Debug)]
struct State {
    mode: AtomicU8,
    /// Cancelled to end every connection opened before the last fault.
    connections: Mutex<CancellationToken>,
}

impl State {
    fn connections(&self) -> CancellationToken {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        if mode != FORWARD {
            let mut current = self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            current.cancel();
            *current = CancellationToken::new();
        }
    }
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            mode: AtomicU8::new(FORWARD),
            connections: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, Arc::clone(&state), stop.clone()));
        Ok(Self {
            addr,
            upstream,
            state,
            stop,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Ends every open connection; new ones are closed as soon as they are accepted.
    pub fn cut(&self) {
        self.state.set(CUT);
    }

    /// Ends every open connection; new ones are accepted and then left silent.
    pub fn blackhole(&self) {
        self.state.set(BLACKHOLE);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.set(FORWARD);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.set(CUT);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else { continue };
        let connections = state.connections();
        match state.mode.load(Ordering::SeqCst) {
            CUT => drop(client),
            BLACKHOLE => {
                tokio::spawn(async move {
                    connections.cancelled().await;
                    drop(client);
                });
            }
            _ => {
                tokio::spawn(forward(client, upstream, connections));
            }
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, cut: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        () = cut.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_cuts_and_restores() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut open).await.expect("forwarded"), b"ping");

        proxy.cut();
        assert!(
            round_trip(&mut open).await.is_err(),
            "open connection ended"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("accepted");
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "new connection closed"
        );

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut again).await.expect("forwarded"), b"ping");
    }

    #[tokio::test]
    async fn blackhole_answers_nothing() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        proxy.blackhole();
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("accepted");
        stream.write_all(b"ping").await.expect("written");
        let mut buf = [0u8; 4];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.read(&mut buf))
                .await;
        assert!(read.is_err(), "no byte comes back from a black hole");
    }
}
