//! A TCP proxy between the agent and the broker whose link can be cut and
//! restored: the device goes offline while the controller stays connected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy.
#[derive(Clone)]
pub struct LinkProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl LinkProxy {
    /// Listens on a free port and forwards to `upstream` (`mqtt://host:port`).
    pub async fn start(upstream: &str) -> LinkProxy {
        let hostport = upstream.strip_prefix("mqtt://").unwrap();
        let upstream: SocketAddr = tokio::net::lookup_host(hostport)
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, _) = watch::channel(0u64);
        let p = LinkProxy {
            addr,
            up: Arc::new(AtomicBool::new(true)),
            cuts,
        };
        let proxy = p.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !proxy.up.load(Ordering::SeqCst) {
                    continue;
                }
                let proxy = proxy.clone();
                tokio::spawn(async move { proxy.forward(inbound, upstream).await });
            }
        });
        p
    }

    async fn forward(&self, mut inbound: TcpStream, upstream: SocketAddr) {
        let Ok(mut outbound) = TcpStream::connect(upstream).await else {
            return;
        };
        let mut cut = self.cuts.subscribe();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = cut.changed() => {}
        }
    }

    /// `mqtt://` address of the proxy.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
