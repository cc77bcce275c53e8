//! The broker gate: Drover's own MQTT listener in front of the embedded
//! rumqttd, which has neither per-topic ACLs nor a device store.
//!
//! Per connection: read the CONNECT (bounded time and size), check the
//! device's credentials against the controller's store (devices added at
//! runtime work at once), bind the client id to the username, then forward
//! to rumqttd on a loopback port with the gate's internal credential
//! (rumqttd refuses everybody else there). Every later client packet is
//! framed and checked: PUBLISH only on the device's own `up`/`status`,
//! SUBSCRIBE only to its own `down`/`chunk`. Broker-to-client bytes are
//! copied as they are. Refusals are a CONNACK with the matching code
//! (connect) or a disconnect (later packets), and each is counted by reason.
//!
//! - `frame`: MQTT 3.1.1 framing (sans-IO).
//! - `policy`: what a device may do.

mod frame;
mod policy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_protocol::{DeviceId, FleetId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::db::Db;
use crate::fleet::credentials::{self, Verified, VerifiedCache};
use frame::{Connect, FrameError, Kind, Refusal};

/// How the gate runs.
#[derive(Clone)]
pub(crate) struct GateConfig {
    /// Fleet whose topics devices are confined to.
    pub(crate) fleet: FleetId,
    /// rumqttd's internal loopback address.
    pub(crate) upstream: SocketAddr,
    /// The internal credential rumqttd accepts (username, password).
    pub(crate) internal: (String, String),
    /// Largest packet a client may send.
    pub(crate) max_packet: usize,
    /// The CONNECT must arrive within this (also bounds the TLS handshake).
    pub(crate) connect_timeout: Duration,
    /// Iterations for hashes upgraded on the fly.
    pub(crate) kdf_iterations: u32,
    /// TLS for the public listener (None: plaintext).
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What the gate refused or let through, by reason (for tests and `/metrics`).
#[derive(Debug, Default)]
pub struct GateCounters {
    accepted: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl GateCounters {
    fn refuse(&self, reason: &'static str) {
        let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason).or_default() += 1;
    }
    /// Connections authenticated and forwarded.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Refusals so far, by reason (`anonymous`, `bad_password`,
    /// `unknown_user`, `client_id`, `publish_topic`, `subscribe_topic`,
    /// `too_large`, `malformed`, `timeout`, ...).
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Sum of [`GateCounters::refused`].
    pub fn refused_total(&self) -> u64 {
        self.refused().values().sum()
    }
}

struct Ctx {
    cfg: GateConfig,
    db: Db,
    cache: VerifiedCache,
    /// KDF runs at once: a storm of wrong passwords costs at most this many
    /// cores; known devices reconnecting hit the cache instead.
    kdf: Semaphore,
    counters: Arc<GateCounters>,
}

/// Why a connection ended early.
#[derive(Debug)]
enum End {
    /// Refused (counted under this reason).
    Refused(&'static str),
    /// The peer or the broker closed, or an I/O error: not a refusal.
    Closed,
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> End {
        End::Refused(e.kind())
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn run(
    listener: TcpListener,
    cfg: GateConfig,
    db: Db,
    counters: Arc<GateCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Ctx {
        cfg,
        db,
        cache: VerifiedCache::default(),
        kdf: Semaphore::new(2),
        counters,
    });
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT gate accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let end = tokio::select! {
                _ = stop.changed() => End::Closed,
                e = connection(stream, &ctx) => e,
            };
            if let End::Refused(reason) = end {
                ctx.counters.refuse(reason);
                tracing::debug!(%peer, reason, "MQTT gate refused a client");
            }
        });
    }
}

async fn connection(stream: TcpStream, ctx: &Ctx) -> End {
    match &ctx.cfg.tls {
        None => session(stream, ctx).await,
        Some(acceptor) => {
            match tokio::time::timeout(ctx.cfg.connect_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => session(tls, ctx).await,
                Ok(Err(_)) => End::Refused("tls_handshake"),
                Err(_) => End::Refused("timeout"),
            }
        }
    }
}

/// Reads one packet: its fixed header bytes and body.
async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<(frame::Header, Vec<u8>), End> {
    let mut head = Vec::with_capacity(5);
    let h = loop {
        let b = r.read_u8().await.map_err(|_| End::Closed)?;
        head.push(b);
        if let Some(h) = frame::header(&head, limit)? {
            break h;
        }
    };
    let mut packet = head;
    packet.resize(h.header_len + h.remaining, 0);
    r.read_exact(&mut packet[h.header_len..])
        .await
        .map_err(|_| End::Closed)?;
    Ok((h, packet))
}

async fn session<S>(stream: S, ctx: &Ctx) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let first = tokio::time::timeout(
        ctx.cfg.connect_timeout,
        read_packet(&mut rd, ctx.cfg.max_packet),
    )
    .await;
    let (h, packet) = match first {
        Ok(Ok(p)) => p,
        Ok(Err(End::Closed)) => return End::Refused("closed_before_connect"),
        Ok(Err(e)) => return e,
        Err(_) => return End::Refused("timeout"),
    };
    if h.kind != Kind::Connect {
        return End::Refused("not_connect");
    }
    let connect = match frame::connect(&packet[h.header_len..]) {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let device = match admit(&connect, ctx).await {
        Ok(d) => d,
        Err((code, reason)) => {
            let _ = wr.write_all(&frame::connack(code)).await;
            let _ = wr.shutdown().await;
            return End::Refused(reason);
        }
    };
    let Ok(upstream) = TcpStream::connect(ctx.cfg.upstream).await else {
        return End::Closed;
    };
    let _ = upstream.set_nodelay(true);
    let (mut up_rd, mut up_wr) = upstream.into_split();
    let forwarded = Connect {
        username: Some(ctx.cfg.internal.0.clone()),
        password: Some(ctx.cfg.internal.1.as_bytes().to_vec()),
        ..connect.clone()
    };
    if up_wr
        .write_all(&frame::encode_connect(&forwarded))
        .await
        .is_err()
    {
        return End::Closed;
    }
    ctx.counters.accepted.fetch_add(1, Ordering::Relaxed);
    // The server side of MQTT keep-alive: nothing from the client for 1.5x
    // its keep-alive ends the session (rumqttd refuses keep-alive 0).
    let idle = Duration::from_millis(u64::from(connect.keep_alive.max(1)) * 1500);
    let inbound = async {
        loop {
            let (h, packet) =
                match tokio::time::timeout(idle, read_packet(&mut rd, ctx.cfg.max_packet)).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => return e,
                    Err(_) => return End::Refused("timeout"),
                };
            if let Err(reason) = check(&ctx.cfg.fleet, &device, h, &packet[h.header_len..]) {
                return End::Refused(reason);
            }
            if up_wr.write_all(&packet).await.is_err() {
                return End::Closed;
            }
            if h.kind == Kind::Disconnect {
                return End::Closed;
            }
        }
    };
    let outbound = async {
        let _ = tokio::io::copy(&mut up_rd, &mut wr).await;
        let _ = wr.shutdown().await;
        End::Closed
    };
    tokio::select! {
        e = inbound => e,
        e = outbound => e,
    }
}

/// A later packet from an admitted device: allowed, or the refusal reason.
fn check(
    fleet: &FleetId,
    device: &DeviceId,
    h: frame::Header,
    body: &[u8],
) -> Result<(), &'static str> {
    match h.kind {
        Kind::Publish => {
            let topic = frame::publish_topic(h.flags, body).map_err(|e| e.kind())?;
            if policy::may_publish(fleet, device, topic) {
                Ok(())
            } else {
                Err("publish_topic")
            }
        }
        Kind::Subscribe => {
            let filters = frame::filters(body, true).map_err(|e| e.kind())?;
            if filters
                .iter()
                .all(|f| policy::may_subscribe(fleet, device, f))
            {
                Ok(())
            } else {
                Err("subscribe_topic")
            }
        }
        Kind::Unsubscribe => frame::filters(body, false)
            .map(|_| ())
            .map_err(|e| e.kind()),
        Kind::PubAck | Kind::PubRec | Kind::PubRel | Kind::PubComp | Kind::PingReq => Ok(()),
        Kind::Disconnect => Ok(()),
        Kind::Connect => Err("second_connect"),
        Kind::Other(_) => Err("packet_type"),
    }
}

/// Checks a CONNECT: protocol, credentials, client id, will topic.
async fn admit(c: &Connect, ctx: &Ctx) -> Result<DeviceId, (Refusal, &'static str)> {
    if c.level != 4 {
        return Err((Refusal::ProtocolVersion, "protocol_version"));
    }
    let (Some(user), Some(password)) = (&c.username, &c.password) else {
        return Err((Refusal::NotAuthorized, "anonymous"));
    };
    // Same code for an unknown user and a wrong password: the gate does not
    // confirm which device ids exist.
    let Ok(device) = DeviceId::new(user.as_str()) else {
        return Err((Refusal::BadCredentials, "unknown_user"));
    };
    let id = device.to_string();
    let stored = ctx
        .db
        .call(move |conn| credentials::stored_hash(conn, &id))
        .await;
    let stored = match stored {
        Ok(Some(h)) => h,
        Ok(None) => return Err((Refusal::BadCredentials, "unknown_user")),
        Err(e) => {
            tracing::error!(error = %e, "MQTT gate cannot read device credentials");
            return Err((Refusal::NotAuthorized, "store_error"));
        }
    };
    if !ctx.cache.hit(user, &stored, password) {
        let verified = {
            let Ok(_permit) = ctx.kdf.acquire().await else {
                return Err((Refusal::NotAuthorized, "store_error"));
            };
            let (pw, st) = (password.clone(), stored.clone());
            tokio::task::spawn_blocking(move || credentials::verify(&pw, &st))
                .await
                .unwrap_or(Verified::Unsupported)
        };
        match verified {
            Verified::Yes { iterations } => {
                ctx.cache.insert(user, &stored, password);
                if iterations < ctx.cfg.kdf_iterations {
                    upgrade(ctx, &device, &stored, password).await;
                }
            }
            Verified::No => return Err((Refusal::BadCredentials, "bad_password")),
            Verified::Unsupported => return Err((Refusal::BadCredentials, "unsupported_hash")),
        }
    }
    if !policy::client_id_bound(&ctx.cfg.fleet, &device, &c.client_id) {
        return Err((Refusal::IdentifierRejected, "client_id"));
    }
    if let Some(w) = &c.will
        && !policy::may_publish(&ctx.cfg.fleet, &device, &w.topic)
    {
        return Err((Refusal::NotAuthorized, "will_topic"));
    }
    Ok(device)
}

/// Re-hashes a password stored with an older, cheaper cost (the gate has
/// the plaintext only now). Failures leave the old hash in place.
async fn upgrade(ctx: &Ctx, device: &DeviceId, old: &str, password: &[u8]) {
    let Ok(pw) = String::from_utf8(password.to_vec()) else {
        return;
    };
    let iterations = ctx.cfg.kdf_iterations;
    let Ok(Ok(new)) =
        tokio::task::spawn_blocking(move || crate::fleet::devices::mosquitto_hash(&pw, iterations))
            .await
    else {
        return;
    };
    let (id, old_s, new_s) = (device.to_string(), old.to_string(), new.clone());
    match ctx
        .db
        .call(move |c| credentials::upgrade_hash(c, &id, &old_s, &new_s))
        .await
    {
        Ok(true) => {
            ctx.cache.insert(device.as_str(), &new, password);
            tracing::info!(%device, iterations, "upgraded a device password hash to the current cost");
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(%device, error = %e, "could not upgrade a device password hash"),
    }
}
