//! Network pieces for fault injection: free ports, a spawned Mosquitto broker
//! that can be stopped and restarted on the same port, and a TCP proxy whose
//! link can be cut and restored (a device losing its uplink) or stalled and
//! resumed (connections stay up, nothing gets through until the stall ends,
//! then everything held arrives late).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A loopback port that was free a moment ago (bind to port 0, read, release).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Where the Mosquitto binary lives on Debian, or on the PATH.
fn mosquitto_binary() -> anyhow::Result<PathBuf> {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("mosquitto not found: install the 'mosquitto' package (scripts/test.sh does)")
}

/// A Mosquitto child process on a loopback port of its own.
pub struct SpawnedMosquitto {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl SpawnedMosquitto {
    /// Starts Mosquitto on a free port, anonymous access, no persistence.
    pub async fn start() -> anyhow::Result<SpawnedMosquitto> {
        let dir = tempfile::tempdir()?;
        let mut m = SpawnedMosquitto {
            port: free_port()?,
            child: None,
            dir,
        };
        m.launch().await?;
        Ok(m)
    }

    async fn launch(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n",
                self.port
            ),
        )?;
        let child = Command::new(mosquitto_binary()?)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning mosquitto")?;
        self.child = Some(child);
        wait_listening(self.addr(), Duration::from_secs(10)).await
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the broker (SIGKILL: in-flight state is lost, like a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch().await
    }
}

impl Drop for SpawnedMosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nothing listening on {addr} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of the broker for one device. `cut()` drops every
/// open connection and refuses new ones until `restore()`; `stall()` keeps
/// the connections but delivers nothing either way until `unstall()`.
#[derive(Clone)]
pub struct LinkProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
    bytes: Arc<AtomicU64>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<LinkProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let proxy = LinkProxy {
            addr,
            up: Arc::new(AtomicBool::new(true)),
            cuts,
            stalled,
            bytes: Arc::new(AtomicU64::new(0)),
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !p.up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let p = p.clone();
                tokio::spawn(async move { p.forward(inbound, upstream).await });
            }
        });
        Ok(proxy)
    }

    async fn forward(&self, inbound: TcpStream, upstream: SocketAddr) {
        let Ok(outbound) = TcpStream::connect(upstream).await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let mut cut = self.cuts.subscribe();
        let (in_r, in_w) = inbound.into_split();
        let (out_r, out_w) = outbound.into_split();
        tokio::select! {
            _ = self.pump(in_r, out_w) => {}
            _ = self.pump(out_r, in_w) => {}
            _ = cut.changed() => {}
        }
    }

    /// Copies one direction; while the link is stalled, what was read waits
    /// (and TCP's buffers fill behind it).
    async fn pump(
        &self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) -> std::io::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        let mut stalled = self.stalled.subscribe();
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            if stalled.wait_for(|s| !*s).await.is_err() {
                return Ok(());
            }
            to.write_all(&buf[..n]).await?;
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// `mqtt://` URL of the proxy (what the device connects to).
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Drops all connections and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Holds everything in flight both ways; connections stay open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Delivers what the stall held, and everything after it.
    pub fn unstall(&self) {
        self.stalled.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn proxy_forwards_cuts_and_restores() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = LinkProxy::start(echo_addr).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");

        proxy.cut();
        // The open connection is closed by the cut.
        let n = c.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert!(!proxy.is_up());

        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"yo").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"yo");

        // A stall holds the bytes on an open connection; they arrive after.
        proxy.stall();
        c.write_all(b"ok").await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(held.is_err(), "nothing gets through a stalled link");
        proxy.unstall();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }
}
