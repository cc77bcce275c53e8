//! One emulated device: the agent's wire behaviour without tract or SQLite.
//!
//! Two tasks, as in the agent's `link`: a poller that only drives rumqttc's
//! event loop and forwards what it saw, and the device task that owns the
//! client (publishing with `try_publish` only, so it never waits on a full
//! request channel) and the state: trust (`TrustState` pinning the bundle's
//! root key), the deploy job (the agent's own `core::deploy::DeployJob`,
//! with the artifact held in memory and only hashed, never loaded), the
//! active/previous/shadow models, and the unacknowledged telemetry windows
//! (sequence numbers only: a window's bytes are re-made from its template).
//! Every `up` payload is sealed with the device key as it is handed to
//! rumqttc, with a fresh counter.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use drover_agent::core::deploy::{DeployAction, DeployConfig, DeployJob, JobKind, RangeSet};
use drover_protocol::codec::{self, MAX_PAYLOAD};
use drover_protocol::messages::{
    AgentUpdatePhase, AgentUpdateStatus, CaptureUpload, Chunk, CommandAck, DeployPhase,
    DeployStatus, Hello,
};
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::uplink::{self, Counter};
use drover_protocol::{
    Action, Command, DeviceId, Down, Ed25519Signer, FleetId, ModelRef, PublicKey, Reason,
    ReasonCode, Sha256, Signed, Status, Timestamp, TrustError, TrustState, Up,
};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, NetworkOptions, Outgoing, Packet, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::shared::{Counters, Phase, Shared};
use super::template::WindowTemplate;

/// Requests rumqttc buffers between the device task and the event loop.
const REQUEST_CHANNEL: usize = 32;
/// Reports (acks, deploy status) kept while offline or blocked, at most.
const MAX_PENDING: usize = 256;
/// Unacknowledged windows kept at most (the oldest is dropped, counted).
const MAX_UNACKED: usize = 1_000;
/// Windows re-sent per wake-up at most.
const RESEND_BATCH: usize = 64;
/// Largest artifact an emulated device downloads (held in memory).
const MAX_ARTIFACT: u64 = 64 * 1024 * 1024;

/// Who a device is: what its registration bundle says.
pub struct Identity {
    /// Fleet.
    pub fleet: FleetId,
    /// Device id.
    pub device: DeviceId,
    /// MQTT username.
    pub username: String,
    /// MQTT password.
    pub password: String,
    /// The pinned root key.
    pub root: PublicKey,
    /// The device's signing key.
    pub key: Ed25519Signer,
    /// Labels reported in Hello.
    pub labels: BTreeMap<String, String>,
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
    Error,
    Closed,
}

/// A publish waiting for room in rumqttc's request channel.
enum Out {
    /// Retained, on `status`, unsealed.
    Status(Vec<u8>),
    /// An encoded `Up`, sealed when handed over.
    Up(Vec<u8>),
}

struct Unacked {
    due: Instant,
    /// Times sent: the resend timeout doubles with each (up to 8×), so an
    /// overloaded controller is not buried under resends.
    sends: u32,
    template: Arc<WindowTemplate>,
}

struct Job {
    core: DeployJob,
    bytes: Vec<u8>,
}

struct Topics {
    up: String,
    status: String,
    down: String,
    chunk: String,
}

fn now_ts() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

fn jitter(span: Duration) -> Duration {
    let mut b = [0u8; 8];
    let r = if getrandom::fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        0
    };
    let span = u64::try_from(span.as_micros()).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(r % span)
}

/// Runs one device until the worker's phase says close (or, draining,
/// until every window it sent is acknowledged).
pub async fn run(id: Identity, shared: Arc<Shared>, phase: watch::Receiver<Phase>) {
    let topic = |c| Topic::new(&id.fleet, &id.device, c).to_string();
    let topics = Topics {
        up: topic(Channel::Up),
        status: topic(Channel::Status),
        down: topic(Channel::Down),
        chunk: topic(Channel::Chunk),
    };
    let mut opts = MqttOptions::new(
        format!("drover-{}-{}", id.fleet, id.device),
        shared.cfg.host.clone(),
        shared.cfg.port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PAYLOAD + 16 * 1024, MAX_PAYLOAD + 16 * 1024)
        .set_credentials(id.username.clone(), id.password.clone());
    if let Ok(offline) = codec::encode_status(&Status::Offline) {
        opts.set_last_will(LastWill::new(
            topics.status.clone(),
            offline,
            QoS::AtLeastOnce,
            true,
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CHANNEL);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    let (tx, rx) = mpsc::channel(16);
    let poller = tokio::spawn(poll_loop(eventloop, tx));
    let window = Duration::from_millis(shared.cfg.window_ms.max(1));
    let trust = TrustState::new(id.root, id.device.clone());
    let mut d = Device {
        client,
        topics,
        counter: Counter::new(0),
        shared,
        trust,
        controller_time: None,
        connected: false,
        ever_connected: false,
        need_subscribe: false,
        blocked_until: None,
        pending: VecDeque::new(),
        unacked: BTreeMap::new(),
        next_seq: 1,
        window,
        // Spread the fleet's windows over the period.
        next_window: Instant::now() + jitter(window),
        active: None,
        previous: None,
        shadow: None,
        job: None,
        phase: *phase.borrow(),
        id,
    };
    d.run(rx, phase).await;
    poller.abort();
}

async fn poll_loop(mut el: EventLoop, tx: mpsc::Sender<Polled>) {
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
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tx.send(Polled::Closed).await;
                return;
            }
            Ok(_) => continue,
            Err(_) => {
                if tx.send(Polled::Error).await.is_err() {
                    return;
                }
                // Backoff with full jitter: a fleet reconnecting after a
                // broker restart spreads out.
                let nominal = Duration::from_millis(200).saturating_mul(1 << failures.min(5));
                failures = failures.saturating_add(1);
                tokio::time::sleep(nominal / 2 + jitter(nominal / 2)).await;
                continue;
            }
        };
        if tx.send(polled).await.is_err() {
            return;
        }
    }
}

struct Device {
    id: Identity,
    client: AsyncClient,
    topics: Topics,
    counter: Counter,
    shared: Arc<Shared>,
    trust: TrustState,
    /// The newest accepted command's `issued_at` and when it arrived.
    controller_time: Option<(Timestamp, Timestamp)>,
    connected: bool,
    ever_connected: bool,
    need_subscribe: bool,
    /// rumqttc's request channel was full: try again then.
    blocked_until: Option<Instant>,
    pending: VecDeque<Out>,
    unacked: BTreeMap<u64, Unacked>,
    next_seq: u64,
    window: Duration,
    next_window: Instant,
    active: Option<ModelRef>,
    previous: Option<ModelRef>,
    shadow: Option<ModelRef>,
    job: Option<Job>,
    phase: Phase,
}

impl Device {
    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn count(&self, f: impl Fn(&Counters) -> &std::sync::atomic::AtomicU64) {
        f(&self.shared.counters).fetch_add(1, Ordering::Relaxed);
    }

    async fn run(&mut self, mut rx: mpsc::Receiver<Polled>, mut phase: watch::Receiver<Phase>) {
        let mut phase_alive = true;
        loop {
            self.flush();
            match self.phase {
                Phase::Close => break,
                Phase::Drain if self.unacked.is_empty() && self.pending.is_empty() => break,
                _ => {}
            }
            let wake = self.next_wake();
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle_polled(ev),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => self.on_timer(),
                changed = phase.changed(), if phase_alive => {
                    phase_alive = changed.is_ok();
                    self.phase = if phase_alive { *phase.borrow() } else { Phase::Close };
                }
            }
        }
        self.close(&mut rx).await;
    }

    /// A clean DISCONNECT discards the will: say Offline first.
    async fn close(&mut self, rx: &mut mpsc::Receiver<Polled>) {
        if !self.connected {
            return;
        }
        if let Ok(offline) = codec::encode_status(&Status::Offline) {
            let _ = self
                .client
                .try_publish(&self.topics.status, QoS::AtLeastOnce, true, offline);
        }
        if self.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(p) = rx.recv().await {
                    if matches!(p, Polled::Closed | Polled::Error) {
                        break;
                    }
                }
            })
            .await;
        }
        self.set_connected(false);
    }

    fn set_connected(&mut self, up: bool) {
        if up != self.connected {
            let c = &self.counters().connected;
            if up {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.connected = up;
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if !self.connected {
            return wake;
        }
        if let Some(b) = self.blocked_until {
            wake = wake.min(b);
        }
        if self.phase == Phase::Run {
            wake = wake.min(self.next_window);
        }
        if let Some(due) = self.unacked.values().map(|u| u.due).min() {
            wake = wake.min(due);
        }
        if let Some((t, _)) = self.job.as_ref().and_then(|j| j.core.poll_timeout()) {
            let ms = t.0.saturating_sub(now_ts().0);
            wake = wake.min(now + Duration::from_millis(ms));
        }
        wake
    }

    // ---- output ---------------------------------------------------------

    fn send(&mut self, msg: &Up) {
        match codec::encode_up(msg) {
            Ok(body) => self.queue(Out::Up(body)),
            Err(_) => self.count(|c| &c.errors),
        }
    }

    fn queue(&mut self, o: Out) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.count(|c| &c.dropped);
        }
        self.pending.push_back(o);
    }

    fn seal(&mut self, body: Vec<u8>) -> Option<Vec<u8>> {
        let now_us = now_ts().0.saturating_mul(1000);
        let counter = self.counter.next(now_us);
        uplink::seal(&self.id.key, &self.id.fleet, &self.id.device, counter, body).ok()
    }

    fn flush(&mut self) {
        if !self.connected {
            return;
        }
        if self.blocked_until.is_some_and(|b| Instant::now() < b) {
            return;
        }
        self.blocked_until = None;
        let blocked = Some(Instant::now() + Duration::from_millis(10));
        if self.need_subscribe {
            let subs = [
                rumqttc::SubscribeFilter::new(self.topics.down.clone(), QoS::AtLeastOnce),
                rumqttc::SubscribeFilter::new(self.topics.chunk.clone(), QoS::AtLeastOnce),
            ];
            if self.client.try_subscribe_many(subs).is_err() {
                self.blocked_until = blocked;
                return;
            }
            self.need_subscribe = false;
        }
        while let Some(o) = self.pending.pop_front() {
            let (topic, retain, payload) = match &o {
                Out::Status(s) => (&self.topics.status, true, s.clone()),
                Out::Up(body) => {
                    let body = body.clone();
                    match self.seal(body) {
                        Some(p) => (&self.topics.up, false, p),
                        None => {
                            self.count(|c| &c.errors);
                            continue;
                        }
                    }
                }
            };
            if self
                .client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, retain, payload)
                .is_err()
            {
                self.pending.push_front(o);
                self.blocked_until = blocked;
                return;
            }
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            agent_version: drover_agent::version::agent_version().to_string(),
            arch: std::env::consts::ARCH.to_string(),
            hardware: "load".to_string(),
            labels: self.id.labels.clone(),
            active: self.active.clone(),
            previous: self.previous.clone(),
            shadow: self.shadow.clone(),
            last_command_seq: self.trust.last_command_seq(),
            key_list_version: self.trust.key_list().map_or(0, |k| k.version),
            outbox_depth: self.unacked.len() as u64,
        }
    }

    fn online_status(&self) -> Option<Vec<u8>> {
        codec::encode_status(&Status::Online {
            agent_version: drover_agent::version::agent_version().to_string(),
            active: self.active.clone(),
        })
        .ok()
    }

    // ---- input ----------------------------------------------------------

    fn handle_polled(&mut self, p: Polled) {
        match p {
            Polled::ConnAck => {
                self.set_connected(true);
                self.count(|c| &c.connects);
                self.need_subscribe = true;
                // Whatever rumqttc held went with the old session.
                self.pending.retain(|o| matches!(o, Out::Up(_)));
                if let Ok(h) = codec::encode_up(&Up::Hello(self.hello())) {
                    self.pending.push_front(Out::Up(h));
                }
                if let Some(s) = self.online_status() {
                    self.pending.push_front(Out::Status(s));
                }
                let now = Instant::now();
                if !self.ever_connected {
                    self.ever_connected = true;
                    self.next_window = now + jitter(self.window);
                }
                // Windows unacknowledged when the last session went go again.
                for u in self.unacked.values_mut() {
                    u.due = now;
                }
                let ts = now_ts();
                if let Some(j) = self.job.as_mut() {
                    j.core.handle_link(true, ts);
                }
                self.drive_job();
            }
            Polled::Error => {
                if self.connected {
                    self.count(|c| &c.disconnects);
                    self.set_connected(false);
                    if let Some(j) = self.job.as_mut() {
                        j.core.handle_link(false, now_ts());
                    }
                } else {
                    self.count(|c| &c.connect_errors);
                }
            }
            Polled::Closed => self.set_connected(false),
            Polled::Publish {
                topic,
                payload,
                retained,
            } => {
                // The controller never retains on down/chunk.
                if retained {
                    tracing::warn!(device = %self.id.device, %topic, "ignored a retained message");
                    self.count(|c| &c.errors);
                    return;
                }
                let channel = if topic == self.topics.down {
                    Channel::Down
                } else if topic == self.topics.chunk {
                    Channel::Chunk
                } else {
                    self.count(|c| &c.errors);
                    return;
                };
                match codec::decode_down(&payload, channel) {
                    Ok(msg) if codec::down_channel(&msg) == channel => self.handle_down(msg),
                    other => {
                        tracing::warn!(device = %self.id.device, ?channel, ok = other.is_ok(), "undecodable or misrouted payload");
                        self.count(|c| &c.errors);
                    }
                }
            }
        }
    }

    fn handle_down(&mut self, msg: Down) {
        let now = now_ts();
        match msg {
            Down::Command(signed) => self.handle_command(&signed, now),
            Down::TelemetryAck(_) => self.count(|c| &c.acks_refused),
            Down::SignedTelemetryAck(signed) => match self.trust.verify_controller(&signed, now) {
                Ok(ack) if ack.device == self.id.device && ack.fleet == self.id.fleet => {
                    let mut n = 0;
                    for seq in &ack.seqs {
                        if self.unacked.remove(seq).is_some() {
                            n += 1;
                        }
                    }
                    self.counters()
                        .windows_acked
                        .fetch_add(n, Ordering::Relaxed);
                }
                _ => self.count(|c| &c.acks_refused),
            },
            Down::Chunk(chunk) => self.handle_chunk(chunk, now),
            Down::KeyList(list) => {
                if let Err(e) = self.trust.handle_key_list(&list, now) {
                    tracing::warn!(device = %self.id.device, error = %e, "key list refused");
                    self.count(|c| &c.errors);
                }
            }
        }
    }

    fn handle_chunk(&mut self, chunk: Chunk, now: Timestamp) {
        // A late answer to a re-sent request, after the job finished.
        let Some(j) = self.job.as_mut() else {
            self.count(|c| &c.stray_chunks);
            return;
        };
        j.core.handle_chunk(chunk, now);
        self.count(|c| &c.chunks_received);
        self.drive_job();
    }

    /// The controller's clock as the newest accepted command carried it
    /// (the agent's rule: never the device's own wall clock).
    fn command_now(&self, signed: &Signed<Command>, now: Timestamp) -> Timestamp {
        match self.controller_time {
            Some((issued, at)) => issued.plus_ms(now.0.saturating_sub(at.0)),
            None => signed.decode_unverified().map_or(now, |c| c.issued_at),
        }
    }

    fn handle_command(&mut self, signed: &Signed<Command>, now: Timestamp) {
        let cmd = match self
            .trust
            .accept_command(signed, self.command_now(signed, now))
        {
            Ok(c) => c,
            Err(e) => {
                // As the agent: only a verified, fresh command of ours is
                // answered with its sequence.
                let attributable = matches!(
                    e,
                    TrustError::CommandExpired { .. }
                        | TrustError::ManifestExpired { .. }
                        | TrustError::Downgrade { .. }
                        | TrustError::ArtifactMismatch { .. }
                );
                let seq = if attributable {
                    signed.decode_unverified().map(|c| c.seq).unwrap_or(0)
                } else {
                    0
                };
                self.count(|c| &c.commands_refused);
                self.send(&Up::Ack(CommandAck {
                    seq,
                    result: Err(e.reason()),
                }));
                return;
            }
        };
        if self
            .controller_time
            .is_none_or(|(issued, _)| cmd.issued_at > issued)
        {
            self.controller_time = Some((cmd.issued_at, now));
        }
        self.count(|c| &c.commands_accepted);
        self.send(&Up::Ack(CommandAck {
            seq: cmd.seq,
            result: Ok(()),
        }));
        self.act(cmd, now);
    }

    fn report(&mut self, seq: u64, model: ModelRef, phase: DeployPhase) {
        self.send(&Up::DeployStatus(DeployStatus { seq, model, phase }));
    }

    fn act(&mut self, cmd: Command, now: Timestamp) {
        let seq = cmd.seq;
        match cmd.action {
            Action::Deploy { manifest } => self.start_job(seq, JobKind::Deploy, manifest, now),
            Action::Shadow {
                manifest,
                sample_per_mille,
            } => {
                let kind = JobKind::Shadow {
                    sample_per_mille: sample_per_mille.min(1000),
                };
                self.start_job(seq, kind, manifest, now);
            }
            Action::StopShadow => {
                if self
                    .job
                    .as_ref()
                    .is_some_and(|j| matches!(j.core.kind(), JobKind::Shadow { .. }))
                {
                    self.cancel_job(Reason::new(
                        ReasonCode::Cancelled,
                        format!("stopped by command {seq}"),
                    ));
                }
                self.shadow = None;
            }
            Action::Rollback { model, to, reason } => {
                if self
                    .job
                    .as_ref()
                    .is_some_and(|j| j.core.manifest().name == model)
                {
                    self.cancel_job(Reason::new(
                        ReasonCode::Cancelled,
                        format!("superseded by rollback command {seq}"),
                    ));
                }
                let target = match to {
                    Some(version) => Some(ModelRef {
                        name: model.clone(),
                        version,
                    }),
                    None => self.previous.clone().filter(|p| p.name == model),
                };
                let Some(target) = target else {
                    let r = Reason::new(
                        ReasonCode::NotInstalled,
                        format!("no previous version of {model} is installed"),
                    );
                    let m = self.active.clone().unwrap_or(ModelRef {
                        name: model,
                        version: to.unwrap_or_default(),
                    });
                    self.report(seq, m, DeployPhase::Failed(r));
                    return;
                };
                let from = self.active.clone();
                if from.as_ref() != Some(&target) {
                    self.previous = from.clone();
                    self.active = Some(target.clone());
                    self.announce();
                }
                self.count(|c| &c.rollbacks);
                let phase = DeployPhase::RolledBack {
                    to: Some(target.clone()),
                    reason: Reason::new(ReasonCode::Commanded, reason),
                };
                self.report(seq, from.unwrap_or(target), phase);
            }
            Action::Capture { .. } => {
                if let Some(model) = self.active.clone() {
                    self.send(&Up::Capture(CaptureUpload {
                        seq,
                        model,
                        part: 0,
                        last: true,
                        samples: Vec::new(),
                    }));
                }
            }
            Action::Configure(s) => {
                if let Some(ms) = s.telemetry_window_ms {
                    self.window = Duration::from_millis(ms.max(100));
                }
            }
            Action::UpdateAgent { release, .. } => {
                if let Ok(r) = release.decode_unverified() {
                    let reason = Reason::new(
                        ReasonCode::InstallFailed,
                        "an emulated device does not update its agent",
                    );
                    self.send(&Up::AgentUpdate(AgentUpdateStatus {
                        seq,
                        version: r.version,
                        phase: AgentUpdatePhase::Failed(reason),
                    }));
                }
            }
        }
    }

    fn start_job(
        &mut self,
        seq: u64,
        kind: JobKind,
        signed: Signed<drover_protocol::ModelManifest>,
        now: Timestamp,
    ) {
        // accept_command verified the manifest.
        let Ok(manifest) = signed.decode_unverified() else {
            self.count(|c| &c.errors);
            return;
        };
        let model = manifest.model_ref();
        if kind == JobKind::Deploy && self.active.as_ref() == Some(&model) {
            self.report(seq, model, DeployPhase::Active);
            return;
        }
        if manifest.artifact.size > MAX_ARTIFACT {
            let r = Reason::new(
                ReasonCode::ModelTooLarge,
                format!("an emulated device holds at most {MAX_ARTIFACT} bytes"),
            );
            self.report(seq, model, DeployPhase::Failed(r));
            return;
        }
        // A job for the same artifact hands its bytes over.
        let (held, bytes) = match self.job.as_mut() {
            Some(j) if j.core.sha256() == manifest.artifact.sha256 => {
                (j.core.held().clone(), std::mem::take(&mut j.bytes))
            }
            _ => (
                RangeSet::default(),
                vec![0u8; usize::try_from(manifest.artifact.size).unwrap_or(0)],
            ),
        };
        if self.job.is_some() {
            self.cancel_job(Reason::new(
                ReasonCode::Superseded,
                format!("superseded by command {seq}"),
            ));
        }
        let mut core = DeployJob::new(
            seq,
            kind,
            signed,
            manifest,
            held,
            DeployConfig::default(),
            now,
        );
        core.handle_link(self.connected, now);
        self.job = Some(Job { core, bytes });
        self.drive_job();
    }

    fn cancel_job(&mut self, reason: Reason) {
        if let Some(j) = self.job.as_mut() {
            j.core.cancel(reason, false);
        }
        self.drive_job();
        self.job = None;
    }

    fn announce(&mut self) {
        if let Some(s) = self.online_status() {
            self.queue(Out::Status(s));
        }
    }

    /// Carries out the job's actions: requests and reports go out, chunks
    /// land in memory, verification hashes, loading and health checks pass.
    fn drive_job(&mut self) {
        loop {
            let Some(j) = self.job.as_mut() else { return };
            let Some(action) = j.core.poll_action() else {
                if j.core.is_finished() {
                    self.job = None;
                }
                return;
            };
            match action {
                DeployAction::RequestChunk(r) => self.send(&Up::ChunkRequest(r)),
                DeployAction::WriteChunk { offset, data } => {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX);
                    match j.bytes.get_mut(start..start.saturating_add(data.len())) {
                        Some(dst) => dst.copy_from_slice(&data),
                        None => j.core.handle_write_failed("chunk outside the artifact"),
                    }
                }
                DeployAction::Verify => {
                    let digest = Sha256::of(&j.bytes);
                    j.core.handle_digest(digest, j.bytes.len() as u64);
                }
                DeployAction::Load => j.core.handle_loaded(Ok(())),
                DeployAction::RunHealthChecks => j.core.handle_health(Ok(())),
                DeployAction::Activate => {
                    j.bytes = Vec::new();
                    let model = j.core.model_ref();
                    let kind = j.core.kind();
                    j.core.handle_activated(Ok(()));
                    match kind {
                        JobKind::Deploy => {
                            self.trust.raise_floor(&model.name, model.version);
                            if self.active.as_ref() != Some(&model) {
                                self.previous = self.active.take();
                                self.active = Some(model);
                            }
                            self.announce();
                        }
                        JobKind::Shadow { .. } => self.shadow = Some(model),
                    }
                }
                DeployAction::Report(s) => {
                    match &s.phase {
                        DeployPhase::Active | DeployPhase::Shadowing => {
                            self.count(|c| &c.deploys_done)
                        }
                        DeployPhase::Failed(_) => self.count(|c| &c.deploys_failed),
                        _ => {}
                    }
                    self.send(&Up::DeployStatus(s));
                }
                DeployAction::Discard => j.bytes = Vec::new(),
            }
        }
    }

    // ---- timers ---------------------------------------------------------

    fn on_timer(&mut self) {
        if !self.connected {
            return;
        }
        let now = Instant::now();
        if self.phase == Phase::Run && now >= self.next_window {
            self.new_window(now);
            self.next_window += self.window;
            if self.next_window < now {
                self.next_window = now + self.window;
            }
        }
        let due: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.due <= now)
            .map(|(s, _)| *s)
            .take(RESEND_BATCH)
            .collect();
        let timeout = self.shared.cfg.ack_timeout;
        for seq in due {
            if let Some(u) = self.unacked.get_mut(&seq) {
                u.due = now + timeout * (1 << u.sends.min(3));
                u.sends = u.sends.saturating_add(1);
                let body = u.template.encode(seq);
                self.queue(Out::Up(body));
                self.count(|c| &c.windows_resent);
            }
        }
        let ts = now_ts();
        if let Some(j) = self.job.as_mut()
            && j.core.poll_timeout().is_some_and(|(t, _)| t <= ts)
        {
            j.core.handle_timeout(ts);
            self.drive_job();
        }
    }

    fn new_window(&mut self, now: Instant) {
        let model = self
            .active
            .clone()
            .unwrap_or_else(|| self.shared.cfg.idle_model.clone());
        let template = self.shared.templates.get(&model);
        let seq = self.next_seq;
        self.next_seq += 1;
        // Sent for the first time: queued now; resent only after a timeout
        // (or a reconnect).
        self.queue(Out::Up(template.encode(seq)));
        self.unacked.insert(
            seq,
            Unacked {
                due: now + self.shared.cfg.ack_timeout,
                sends: 1,
                template,
            },
        );
        self.count(|c| &c.windows_created);
        while self.unacked.len() > MAX_UNACKED {
            self.unacked.pop_first();
            self.count(|c| &c.windows_evicted);
        }
    }
}
