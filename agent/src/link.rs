//! The MQTT link (rumqttc, MQTT 3.1.1): one task polls the event loop and
//! nothing else (it is never cancelled mid-poll); a manager task owns the
//! client, re-subscribes and announces itself (retained Online status, Hello)
//! on every ConnAck, hands publishes to rumqttc with `try_publish` only, and
//! keeps reports (acks, deploy status, captures) until the broker
//! acknowledges them, re-sending them after a reconnect. Every `up` payload
//! is sealed with the device key as it is handed over (a fresh counter per
//! publish); retained messages on `down`/`chunk` are ignored. Reconnects back off
//! exponentially with jitter. The last will marks the device Offline.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use drover_protocol::codec::{self, MAX_PAYLOAD};
use drover_protocol::messages::{Hello, Status, Up};
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::uplink::{self, Counter};
use drover_protocol::{DeviceId, Ed25519Signer, FleetId, ModelRef, Timestamp};

use crate::metrics::Metrics;

/// Reports kept while offline, at most.
const OFFLINE_QUEUE: usize = 1000;
/// Requests rumqttc buffers between the manager and the event loop.
const REQUEST_CHANNEL: usize = 64;

/// Connection settings.
#[derive(Debug, Clone)]
pub(crate) struct LinkConfig {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) fleet: FleetId,
    pub(crate) device: DeviceId,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    /// Signs every `up` message (None: sent unsigned, which a controller
    /// refuses for a registered device).
    pub(crate) device_key: Option<Arc<Ed25519Signer>>,
    pub(crate) keep_alive: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    /// TLS (mqtts://): the pinned CA and an optional client certificate.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the link tells the driver.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A session is up (subscribed, Hello sent).
    Connected,
    /// The session is gone.
    Disconnected,
    /// A payload arrived on `down` or `chunk`.
    Message {
        /// Which of the two.
        channel: Channel,
        /// The bytes, not yet decoded.
        payload: Vec<u8>,
    },
}

/// How hard the link tries to deliver a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Kept until the broker's PubAck, re-sent after a reconnect, queued
    /// (bounded) while offline.
    Reliable,
    /// Dropped if offline or lost with the session: the sender has its own
    /// end-to-end retry (outbox windows, chunk requests).
    BestEffort,
}

/// What the driver asks of the link.
#[derive(Debug)]
pub(crate) enum LinkRequest {
    /// Publish an `up` payload.
    Publish {
        /// Encoded [`Up`].
        payload: Vec<u8>,
        /// Delivery class.
        delivery: Delivery,
    },
    /// Publish Offline, disconnect, stop.
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the link's tasks.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    tx: mpsc::UnboundedSender<LinkRequest>,
}

impl Link {
    /// Queues an `up` message.
    pub(crate) fn send(&self, msg: &Up, delivery: Delivery) {
        match codec::encode_up(msg) {
            Ok(payload) => {
                // The manager only stops at shutdown, when nobody sends any more.
                let _ = self.tx.send(LinkRequest::Publish { payload, delivery });
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an up message"),
        }
    }

    /// Queues an already encoded `up` payload.
    pub(crate) fn send_encoded(&self, payload: Vec<u8>, delivery: Delivery) {
        let _ = self.tx.send(LinkRequest::Publish { payload, delivery });
    }

    /// Publishes Offline, disconnects and stops the tasks (bounded wait).
    pub(crate) async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(LinkRequest::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

/// What the poller saw.
#[derive(Debug)]
enum Polled {
    ConnAck,
    Publish {
        topic: String,
        payload: Vec<u8>,
        retained: bool,
    },
    PubAck(u16),
    Published(u16),
    Closed,
    Error(String),
}

fn jittered(attempt: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let mut b = [0u8; 8];
    let r = if getrandom::fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        0
    };
    // Full jitter over the upper half: spreads a fleet's reconnects after a
    // broker restart while keeping the delay at least half the nominal one.
    let half = exp / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_micros(r % span)
}

/// Starts the link. Events go to `events`; `hello` is re-read on every connect.
pub(crate) fn spawn(
    cfg: LinkConfig,
    hello: watch::Receiver<Hello>,
    events: mpsc::Sender<LinkEvent>,
    metrics: Arc<Metrics>,
) -> Link {
    let topic = |c| Topic::new(&cfg.fleet, &cfg.device, c).to_string();
    let topics = Topics {
        up: topic(Channel::Up),
        status: topic(Channel::Status),
        down: topic(Channel::Down),
        chunk: topic(Channel::Chunk),
    };
    let mut opts = MqttOptions::new(
        format!("drover-{}-{}", cfg.fleet, cfg.device),
        cfg.host.clone(),
        cfg.port,
    );
    opts.set_keep_alive(cfg.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(MAX_PAYLOAD + 16 * 1024, MAX_PAYLOAD + 16 * 1024);
    if let Ok(offline) = codec::encode_status(&Status::Offline) {
        opts.set_last_will(LastWill::new(
            topics.status.clone(),
            offline,
            QoS::AtLeastOnce,
            true,
        ));
    }
    if let Some(u) = &cfg.username {
        opts.set_credentials(u.clone(), cfg.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &cfg.tls {
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);

    let (poll_tx, poll_rx) = mpsc::channel(64);
    let poller = tokio::spawn(poll_loop(
        eventloop,
        poll_tx,
        cfg.reconnect_min,
        cfg.reconnect_max,
    ));
    let (tx, rx) = mpsc::unbounded_channel();
    let manager = Manager {
        client,
        topics,
        queue: VecDeque::new(),
        handed: VecDeque::new(),
        inflight: BTreeMap::new(),
        next_id: 0,
        connected: false,
        need_subscribe: false,
        announced: None,
        hello,
        events,
        metrics,
        sealer: cfg.device_key.clone().map(|key| Sealer {
            key,
            fleet: cfg.fleet.clone(),
            device: cfg.device.clone(),
            counter: Counter::new(0),
        }),
    };
    tokio::spawn(manager.run(poll_rx, rx, poller));
    Link { tx }
}

async fn poll_loop(mut el: EventLoop, tx: mpsc::Sender<Polled>, min: Duration, max: Duration) {
    let mut failures: u32 = 0;
    loop {
        let polled = match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                Polled::ConnAck
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Publish {
                topic: p.topic,
                payload: p.payload.to_vec(),
                retained: p.retain,
            },
            Ok(Event::Incoming(Packet::PubAck(a))) => Polled::PubAck(a.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Polled::Published(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(Polled::Closed).await;
                return;
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Polled::Error(e.to_string())).await;
                let delay = jittered(failures, min, max);
                failures = failures.saturating_add(1);
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if tx.send(polled).await.is_err() {
            return;
        }
    }
}

#[derive(Debug, Clone)]
struct Topics {
    up: String,
    status: String,
    down: String,
    chunk: String,
}

#[derive(Debug, Clone)]
struct Out {
    id: u64,
    status_topic: bool,
    retain: bool,
    payload: Vec<u8>,
    delivery: Delivery,
}

struct Manager {
    client: AsyncClient,
    topics: Topics,
    queue: VecDeque<Out>,
    handed: VecDeque<Out>,
    inflight: BTreeMap<u16, Out>,
    next_id: u64,
    connected: bool,
    need_subscribe: bool,
    /// The active model the last retained Online status named.
    announced: Option<Option<ModelRef>>,
    hello: watch::Receiver<Hello>,
    events: mpsc::Sender<LinkEvent>,
    metrics: Arc<Metrics>,
    sealer: Option<Sealer>,
}

/// Seals `up` payloads with the device key as they are handed to the
/// broker, so a report re-sent after a reconnect gets a fresh counter (the
/// controller refuses a counter it has seen).
struct Sealer {
    key: Arc<Ed25519Signer>,
    fleet: FleetId,
    device: DeviceId,
    counter: Counter,
}

impl Sealer {
    fn seal(&mut self, body: Vec<u8>) -> Option<Vec<u8>> {
        let now_us = Timestamp::from_system(std::time::SystemTime::now())
            .0
            .saturating_mul(1000);
        let counter = self.counter.next(now_us);
        match uplink::seal(self.key.as_ref(), &self.fleet, &self.device, counter, body) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot seal an up message; dropped");
                None
            }
        }
    }
}

impl Manager {
    fn out(&mut self, payload: Vec<u8>, delivery: Delivery, status_topic: bool) -> Out {
        self.next_id += 1;
        Out {
            id: self.next_id,
            status_topic,
            retain: status_topic,
            payload,
            delivery,
        }
    }

    fn online_status(&mut self) -> Option<Vec<u8>> {
        let active = self.hello.borrow().active.clone();
        self.announced = Some(active.clone());
        codec::encode_status(&Status::Online {
            agent_version: crate::version::agent_version().to_string(),
            active,
        })
        .ok()
    }

    fn enqueue(&mut self, o: Out) {
        if !self.connected && o.delivery == Delivery::BestEffort {
            return;
        }
        if self.queue.len() >= OFFLINE_QUEUE {
            // Oldest first: the newest report says the most about the present.
            self.queue.pop_front();
            self.metrics.link_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.queue.push_back(o);
    }

    fn flush(&mut self) {
        if !self.connected {
            return;
        }
        if self.need_subscribe {
            let subs = [
                rumqttc::SubscribeFilter::new(self.topics.down.clone(), QoS::AtLeastOnce),
                rumqttc::SubscribeFilter::new(self.topics.chunk.clone(), QoS::AtLeastOnce),
            ];
            if self.client.try_subscribe_many(subs).is_err() {
                return;
            }
            self.need_subscribe = false;
        }
        while let Some(o) = self.queue.front() {
            let topic = if o.status_topic {
                self.topics.status.clone()
            } else {
                self.topics.up.clone()
            };
            let (retain, status_topic) = (o.retain, o.status_topic);
            let mut payload = o.payload.clone();
            if !status_topic && let Some(sealer) = self.sealer.as_mut() {
                match sealer.seal(payload) {
                    Some(p) => payload = p,
                    None => {
                        self.queue.pop_front();
                        self.metrics.link_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            match self
                .client
                .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            {
                Ok(()) => {
                    if let Some(mut o) = self.queue.pop_front() {
                        if o.delivery == Delivery::BestEffort {
                            o.payload = Vec::new();
                        }
                        self.handed.push_back(o);
                    }
                }
                Err(_) => return,
            }
        }
    }

    fn requeue_unacked(&mut self) {
        let mut lost: Vec<Out> = std::mem::take(&mut self.inflight)
            .into_values()
            .chain(self.handed.drain(..))
            .filter(|o| o.delivery == Delivery::Reliable && !o.status_topic)
            .collect();
        lost.sort_by_key(|o| o.id);
        for o in lost.into_iter().rev() {
            self.queue.push_front(o);
        }
        self.queue
            .retain(|o| o.delivery == Delivery::Reliable && !o.status_topic);
        while self.queue.len() > OFFLINE_QUEUE {
            self.queue.pop_front();
            self.metrics.link_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn handle_polled(&mut self, p: Polled) {
        match p {
            Polled::ConnAck => {
                tracing::info!("mqtt connected");
                self.connected = true;
                self.need_subscribe = true;
                self.metrics.link_connected.store(true, Ordering::Relaxed);
                self.metrics.touch();
                let hello = self.hello.borrow().clone();
                if let Ok(h) = codec::encode_up(&Up::Hello(hello)) {
                    let o = self.out(h, Delivery::BestEffort, false);
                    self.queue.push_front(o);
                }
                if let Some(s) = self.online_status() {
                    let o = self.out(s, Delivery::BestEffort, true);
                    self.queue.push_front(o);
                }
                let _ = self.events.send(LinkEvent::Connected).await;
            }
            Polled::Error(e) => {
                if self.connected {
                    tracing::warn!(error = %e, "mqtt connection lost");
                    self.metrics.link_reconnects.fetch_add(1, Ordering::Relaxed);
                    self.metrics.link_connected.store(false, Ordering::Relaxed);
                    self.metrics.touch();
                    self.connected = false;
                    self.requeue_unacked();
                    let _ = self.events.send(LinkEvent::Disconnected).await;
                } else {
                    tracing::debug!(error = %e, "mqtt connect failed");
                    self.requeue_unacked();
                }
            }
            Polled::Published(pkid) => {
                if let Some(o) = self.handed.pop_front()
                    && o.delivery == Delivery::Reliable
                {
                    self.inflight.insert(pkid, o);
                }
            }
            Polled::PubAck(pkid) => {
                self.inflight.remove(&pkid);
            }
            Polled::Publish {
                topic,
                payload,
                retained,
            } => {
                // Retained messages on `down` or `chunk` were stored by the
                // broker for whoever subscribes next: the controller never
                // retains, so they come from someone else. Ignored, counted.
                if retained {
                    self.metrics.malformed("retained_down");
                    tracing::warn!(%topic, "ignored a retained message on a device topic");
                    return;
                }
                let channel = if topic == self.topics.down {
                    Channel::Down
                } else if topic == self.topics.chunk {
                    Channel::Chunk
                } else {
                    self.metrics.malformed("unexpected_topic");
                    tracing::warn!(%topic, "message on a topic this agent did not subscribe to");
                    return;
                };
                let _ = self
                    .events
                    .send(LinkEvent::Message { channel, payload })
                    .await;
            }
            Polled::Closed => {}
        }
    }

    async fn run(
        mut self,
        mut polled: mpsc::Receiver<Polled>,
        mut requests: mpsc::UnboundedReceiver<LinkRequest>,
        poller: JoinHandle<()>,
    ) {
        let mut hello_alive = true;
        let done = loop {
            self.flush();
            tokio::select! {
                p = polled.recv() => match p {
                    Some(p) => self.handle_polled(p).await,
                    None => break None,
                },
                r = requests.recv() => match r {
                    Some(LinkRequest::Publish { payload, delivery }) => {
                        let o = self.out(payload, delivery, false);
                        self.enqueue(o);
                    }
                    Some(LinkRequest::Shutdown(done)) => break Some(done),
                    None => break None,
                },
                changed = self.hello.changed(), if hello_alive => {
                    hello_alive = changed.is_ok();
                    // Hello changes with every window (outbox depth); the
                    // retained status only needs to follow the active model.
                    let active = self.hello.borrow().active.clone();
                    if changed.is_ok()
                        && self.connected
                        && self.announced.as_ref() != Some(&active)
                        && let Some(s) = self.online_status()
                    {
                        let o = self.out(s, Delivery::BestEffort, true);
                        self.enqueue(o);
                    }
                }
            }
        };
        // Without a Shutdown request the agent was dropped (a crash, for the
        // simulator): the connection just dies and the broker's will fires.
        if let Some(done) = done {
            self.graceful_close(&mut polled).await;
            poller.abort();
            let _ = done.send(());
        } else {
            poller.abort();
        }
    }

    /// Publishes a retained Offline (the broker would fire the will only on
    /// an unclean loss), waits briefly for it to be acknowledged, disconnects.
    async fn graceful_close(&mut self, polled: &mut mpsc::Receiver<Polled>) {
        if !self.connected {
            return;
        }
        let Ok(offline) = codec::encode_status(&Status::Offline) else {
            return;
        };
        let o = self.out(offline, Delivery::Reliable, true);
        let id = o.id;
        self.queue.push_back(o);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            self.flush();
            let pending = self
                .queue
                .iter()
                .chain(self.handed.iter())
                .chain(self.inflight.values())
                .any(|o| o.id == id);
            if !pending || !self.connected {
                break;
            }
            tokio::select! {
                p = polled.recv() => match p {
                    Some(p) => self.handle_polled(p).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        if self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(p) = polled.recv().await {
                    if matches!(p, Polled::Closed | Polled::Error(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        self.connected = false;
        self.metrics.link_connected.store(false, Ordering::Relaxed);
        self.metrics.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_the_upper_half() {
        let min = Duration::from_millis(200);
        let max = Duration::from_secs(30);
        for attempt in 0..40 {
            let nominal = min.saturating_mul(1u32 << attempt.min(20)).min(max);
            let d = jittered(attempt, min, max);
            assert!(d >= nominal / 2 && d <= nominal, "{attempt}: {d:?}");
        }
        assert!(jittered(100, min, max) <= max);
    }
}
