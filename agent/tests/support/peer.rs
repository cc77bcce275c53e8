//! A scripted controller built on drover-protocol and rumqttc: it holds the
//! test keys, answers Hello with the key list, signs commands, serves chunks
//! from artifact bytes (with an optional budget, to stall a download),
//! acknowledges telemetry when told to, and records everything it receives.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_agent::Agent;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Notify;

use drover_protocol::codec;
use drover_protocol::messages::{
    BoundTelemetryAck, Chunk, CommandAck, DeployPhase, DeployStatus, Down, Status, TelemetryAck, Up,
};
use drover_protocol::telemetry::TelemetryWindow;
use drover_protocol::testkit::TestKeys;
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::{Action, Command, DeviceId, FleetId, Sha256, Signed};

use super::now;

/// What the peer saw and how it behaves.
#[derive(Default)]
pub struct PeerState {
    /// Every `up` message, in arrival order.
    pub ups: Vec<Up>,
    /// Every `status` message.
    pub statuses: Vec<Status>,
    /// Artifacts served, by the digest chunks claim.
    pub artifacts: HashMap<Sha256, Vec<u8>>,
    /// Chunks served: (digest, offset, len).
    pub served: Vec<(Sha256, u64, u64)>,
    /// Chunk requests received: (digest, offset, len).
    pub requested: Vec<(Sha256, u64, u32)>,
    /// Chunks still to serve; `None` = unlimited.
    pub chunk_budget: Option<usize>,
    /// Acknowledge telemetry windows as they arrive.
    pub auto_ack: bool,
    /// Window sequences acknowledged.
    pub acked: BTreeSet<u64>,
    /// Times the peer's own session came up.
    pub connects: u64,
    subscribed: bool,
}

impl PeerState {
    /// Telemetry windows received (duplicates included).
    pub fn windows(&self) -> Vec<&TelemetryWindow> {
        self.ups
            .iter()
            .filter_map(|u| match u {
                Up::Telemetry(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    /// Acks received for `seq`.
    pub fn acks(&self, seq: u64) -> Vec<&CommandAck> {
        self.ups
            .iter()
            .filter_map(|u| match u {
                Up::Ack(a) if a.seq == seq => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Deploy statuses for command `seq` (0 = the local guard's).
    pub fn statuses_for(&self, seq: u64) -> Vec<&DeployStatus> {
        self.ups
            .iter()
            .filter_map(|u| match u {
                Up::DeployStatus(s) if s.seq == seq => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The last phase reported for command `seq`.
    pub fn last_phase(&self, seq: u64) -> Option<&DeployPhase> {
        self.statuses_for(seq).last().map(|s| &s.phase)
    }

    /// Number of Hello messages.
    pub fn hellos(&self) -> usize {
        self.ups
            .iter()
            .filter(|u| matches!(u, Up::Hello(_)))
            .count()
    }
}

/// The scripted controller for one device.
pub struct Peer {
    /// Signing keys.
    pub keys: Arc<TestKeys>,
    /// The device's fleet.
    pub fleet: FleetId,
    /// The device.
    pub device: DeviceId,
    client: AsyncClient,
    state: Arc<Mutex<PeerState>>,
    notify: Arc<Notify>,
    seq: AtomicU64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn topic(fleet: &FleetId, device: &DeviceId, c: Channel) -> String {
    Topic::new(fleet, device, c).to_string()
}

impl Peer {
    /// Connects to `url` and subscribes to the device's `up` and `status`.
    pub async fn start(url: &str, fleet: &FleetId, device: &DeviceId, keys: TestKeys) -> Peer {
        let rest = url.strip_prefix("mqtt://").unwrap();
        let (host, port) = rest.rsplit_once(':').unwrap();
        let mut opts = MqttOptions::new(
            format!("peer-{fleet}-{device}"),
            host.to_string(),
            port.parse().unwrap(),
        );
        opts.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let state = Arc::new(Mutex::new(PeerState::default()));
        let notify = Arc::new(Notify::new());
        let (st, nt, cl) = (state.clone(), notify.clone(), client.clone());
        let (f, d) = (fleet.clone(), device.clone());
        let key_list = keys.key_list(1, now().plus_ms(3_600_000));
        let keys = Arc::new(keys);
        let k = keys.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let subs = [
                            rumqttc::SubscribeFilter::new(
                                topic(&f, &d, Channel::Up),
                                QoS::AtLeastOnce,
                            ),
                            rumqttc::SubscribeFilter::new(
                                topic(&f, &d, Channel::Status),
                                QoS::AtLeastOnce,
                            ),
                        ];
                        let _ = cl.try_subscribe_many(subs);
                        st.lock().unwrap().connects += 1;
                        nt.notify_waiters();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        st.lock().unwrap().subscribed = true;
                        nt.notify_waiters();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        handle(&cl, &st, &f, &d, &key_list, &k, &p.topic, &p.payload);
                        nt.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let peer = Peer {
            keys,
            fleet: fleet.clone(),
            device: device.clone(),
            client,
            state,
            notify,
            seq: AtomicU64::new(0),
            task,
        };
        peer.wait("peer subscription", Duration::from_secs(10), |s| {
            s.subscribed.then_some(())
        })
        .await;
        peer
    }

    /// The recorded state.
    pub fn state(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap()
    }

    /// Waits until `f` returns `Some`, re-checking whenever the peer's state
    /// changes (every received message, subscription and connect): no polling.
    pub async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&PeerState) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = f(&self.state()) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Serves chunks of `bytes` under its own digest.
    pub fn add_artifact(&self, bytes: &[u8]) {
        self.add_artifact_as(Sha256::of(bytes), bytes.to_vec());
    }

    /// Serves `bytes` as the artifact with digest `sha` (tampering).
    pub fn add_artifact_as(&self, sha: Sha256, bytes: Vec<u8>) {
        self.state().artifacts.insert(sha, bytes);
    }

    /// Acknowledge telemetry as it arrives, or not.
    pub fn set_auto_ack(&self, on: bool) {
        self.state().auto_ack = on;
    }

    /// Serve at most `n` more chunks (`None` = unlimited).
    pub fn set_chunk_budget(&self, n: Option<usize>) {
        self.state().chunk_budget = n;
    }

    /// Signs and sends a command; returns its sequence.
    pub async fn command(&self, action: Action) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let cmd = self.command_with_seq(seq, action);
        self.send_down(&Down::Command(self.keys.sign_command(&cmd)))
            .await;
        seq
    }

    /// A command for this device (unsigned).
    pub fn command_with_seq(&self, seq: u64, action: Action) -> Command {
        let now = now();
        Command {
            fleet: self.fleet.clone(),
            target: self.device.clone(),
            seq,
            issued_at: now,
            expires_at: now.plus_ms(600_000),
            action,
        }
    }

    /// Takes the next sequence number without sending anything.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Signs and sends a Deploy of `manifest`.
    pub async fn deploy(&self, manifest: &drover_protocol::ModelManifest) -> u64 {
        let signed = self.keys.sign_manifest(manifest);
        self.command(Action::Deploy { manifest: signed }).await
    }

    /// Publishes a down message on its channel.
    pub async fn send_down(&self, msg: &Down) {
        let bytes = codec::encode_down(msg).unwrap();
        self.send_raw(codec::down_channel(msg), bytes).await;
    }

    /// Publishes raw bytes on the device's `down` or `chunk` topic.
    pub async fn send_raw(&self, channel: Channel, bytes: Vec<u8>) {
        self.client
            .publish(
                topic(&self.fleet, &self.device, channel),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await
            .unwrap();
    }

    /// Sends a signed command as-is (tampered, replayed, foreign-signed).
    pub async fn send_signed(&self, signed: Signed<Command>) {
        self.send_down(&Down::Command(signed)).await;
    }

    /// Acknowledges windows the way the controller does: bound to the
    /// device and signed with the commands key.
    pub async fn ack(&self, seqs: Vec<u64>) {
        self.state().acked.extend(seqs.iter().copied());
        self.send_down(&signed_ack(&self.keys, &self.fleet, &self.device, seqs))
            .await;
    }

    /// An unsigned (forgeable) acknowledgement, which agents ignore.
    pub async fn unsigned_ack(&self, seqs: Vec<u64>) {
        self.send_down(&Down::TelemetryAck(TelemetryAck { seqs }))
            .await;
    }

    /// Waits for the final status of command `seq` (Active, Shadowing,
    /// Failed or RolledBack) and returns it.
    pub async fn outcome(&self, seq: u64) -> DeployPhase {
        self.wait(
            &format!("outcome of command {seq}"),
            Duration::from_secs(60),
            |s| {
                s.last_phase(seq)
                    .filter(|p| {
                        matches!(
                            p,
                            DeployPhase::Active
                                | DeployPhase::Shadowing
                                | DeployPhase::Failed(_)
                                | DeployPhase::RolledBack { .. }
                        )
                    })
                    .cloned()
            },
        )
        .await
    }

    /// Waits for the Ack of command `seq`.
    pub async fn ack_of(&self, seq: u64) -> CommandAck {
        self.wait(
            &format!("ack of command {seq}"),
            Duration::from_secs(20),
            |s| s.acks(seq).first().map(|a| (*a).clone()),
        )
        .await
    }
}

/// A telemetry ack bound to `device` and signed with the commands key.
pub fn signed_ack(keys: &TestKeys, fleet: &FleetId, device: &DeviceId, seqs: Vec<u64>) -> Down {
    let ack = BoundTelemetryAck {
        fleet: fleet.clone(),
        device: device.clone(),
        seqs,
    };
    Down::SignedTelemetryAck(Signed::sign(&ack, &keys.commands).unwrap())
}

#[allow(clippy::too_many_arguments)]
fn handle(
    client: &AsyncClient,
    st: &Mutex<PeerState>,
    fleet: &FleetId,
    device: &DeviceId,
    key_list: &Signed<drover_protocol::KeyList>,
    keys: &TestKeys,
    t: &str,
    payload: &[u8],
) {
    let Ok(parsed) = Topic::parse(t) else { return };
    let mut s = st.lock().unwrap();
    match parsed.channel {
        Channel::Status => {
            if let Ok(status) = codec::decode_status(payload) {
                s.statuses.push(status);
            }
        }
        Channel::Up => {
            let Ok(up) = codec::decode_up(payload) else {
                return;
            };
            match &up {
                Up::Hello(h) if h.key_list_version < 1 => {
                    let msg = codec::encode_down(&Down::KeyList(key_list.clone())).unwrap();
                    let _ = client.try_publish(
                        topic(fleet, device, Channel::Down),
                        QoS::AtLeastOnce,
                        false,
                        msg,
                    );
                }
                Up::ChunkRequest(r) => {
                    s.requested.push((r.sha256, r.offset, r.len));
                    let budget_ok = match &mut s.chunk_budget {
                        None => true,
                        Some(0) => false,
                        Some(n) => {
                            *n -= 1;
                            true
                        }
                    };
                    if let (true, Some(a)) = (budget_ok, s.artifacts.get(&r.sha256)) {
                        let from = (r.offset as usize).min(a.len());
                        let to = (from + r.len as usize).min(a.len());
                        let chunk = Chunk {
                            sha256: r.sha256,
                            offset: r.offset,
                            total: a.len() as u64,
                            data: a[from..to].to_vec(),
                        };
                        let msg = codec::encode_down(&Down::Chunk(chunk)).unwrap();
                        let _ = client.try_publish(
                            topic(fleet, device, Channel::Chunk),
                            QoS::AtLeastOnce,
                            false,
                            msg,
                        );
                        s.served.push((r.sha256, r.offset, (to - from) as u64));
                    }
                }
                Up::Telemetry(w) if s.auto_ack => {
                    s.acked.insert(w.seq);
                    let msg =
                        codec::encode_down(&signed_ack(keys, fleet, device, vec![w.seq])).unwrap();
                    let _ = client.try_publish(
                        topic(fleet, device, Channel::Down),
                        QoS::AtLeastOnce,
                        false,
                        msg,
                    );
                }
                _ => {}
            }
            s.ups.push(up);
        }
        _ => {}
    }
}

/// Waits until `f` returns `Some`, re-checking whenever the agent publishes
/// a change ([`Agent::changed`]): no polling, no sleeps.
pub async fn until<T>(
    agent: &Agent,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let changed = agent.changed();
        tokio::pin!(changed);
        // Registered before the check, so a change in between still wakes us.
        changed.as_mut().enable();
        if let Some(t) = f() {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

/// Polls `f` every 20 ms until it returns `Some`, for conditions nothing
/// announces: another process's answer, or a loop that also generates load.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
