//! Attack suite, device side (issue #13): nothing is taken on a device's
//! word. A real controller, real brokers (the embedded one, and a Mosquitto
//! of our own with `allow_anonymous true` and no ACLs: a broker that
//! protects nothing) and real agents. Each case asserts the refusal (a
//! counter naming it) AND that no state changed: device list, deployments,
//! stored windows, active versions, agents' outboxes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_agent::{Agent, AgentConfig};
use drover_controller::DeviceEvent;
use drover_controller::core::uplink::UplinkPolicy;
use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::registry::PushRequest;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_protocol::codec;
use drover_protocol::labels::Selector;
use drover_protocol::messages::{
    BoundTelemetryAck, ChunkRequest, CommandAck, DeployPhase, DeployStatus, Down, Hello,
    TelemetryAck, Up,
};
use drover_protocol::testkit::realistic_window;
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::uplink;
use drover_protocol::{
    DeviceId, Ed25519Signer, FleetId, ModelName, ModelRef, Signed, Status, Timestamp, Version,
};
use drover_sim::net::SpawnedMosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const STEP: Duration = Duration::from_secs(60);

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(rel),
    )
    .unwrap()
}

fn unique_fleet() -> FleetId {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).unwrap();
    FleetId::new(format!("atk{}", hex::encode(b))).unwrap()
}

fn now_us() -> u64 {
    Timestamp::from_system(std::time::SystemTime::now()).0 * 1000
}

fn key_of(seed_hex: &str) -> Ed25519Signer {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(seed_hex, &mut seed).unwrap();
    Ed25519Signer::from_seed(seed)
}

/// Polls `cond` until it holds (state another process changes; nothing to
/// await directly). The timeout is an upper bound only.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A controller on a broker of the test's choosing.
struct Rig {
    _dir: tempfile::TempDir,
    running: RunningController,
    fleet: FleetId,
    _mosquitto: Option<SpawnedMosquitto>,
}

impl Rig {
    async fn start(mosquitto: bool, policy: UplinkPolicy) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let fleet = unique_fleet();
        let mut cfg = ServeConfig::ephemeral(dir.path().join("controller"));
        cfg.fleet = fleet.clone();
        cfg.shutdown_grace = Duration::from_secs(2);
        cfg.uplink_policy = policy;
        let mosq = if mosquitto {
            let m = SpawnedMosquitto::start().await.unwrap();
            cfg.broker = BrokerChoice::External {
                host: "127.0.0.1".into(),
                port: m.addr().port(),
                tls: false,
            };
            Some(m)
        } else {
            None
        };
        let running = serve::start(cfg).await.unwrap();
        Rig {
            _dir: dir,
            running,
            fleet,
            _mosquitto: mosq,
        }
    }

    fn ctl(&self) -> drover_controller::Controller {
        self.running.handle()
    }

    fn url(&self) -> String {
        let addr = self.running.mqtt_addr();
        if addr.starts_with("mqtt://") {
            addr.to_string()
        } else {
            format!("mqtt://{addr}")
        }
    }

    fn topic(&self, device: &str, c: Channel) -> String {
        Topic::new(&self.fleet, &DeviceId::new(device).unwrap(), c).to_string()
    }

    /// Registers `id` and returns its bundle.
    async fn register(
        &self,
        id: &str,
        labels: &[(&str, &str)],
    ) -> drover_controller::fleet::devices::DeviceBundle {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.ctl()
            .register_device(&DeviceId::new(id).unwrap(), labels)
            .await
            .unwrap()
    }

    /// A real agent from `bundle` (HTTP API off).
    async fn agent(
        &self,
        bundle: &drover_controller::fleet::devices::DeviceBundle,
        window_ms: u64,
    ) -> (Agent, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = AgentConfig::from_toml(&bundle.agent_toml).unwrap();
        cfg.broker = self.url();
        cfg.data_dir = dir.path().to_path_buf();
        cfg.api = None;
        cfg.telemetry_window_ms = window_ms;
        let id = cfg.device_id.clone();
        let agent = Agent::start(cfg).await.unwrap();
        // Ready: the controller heard its Hello and it holds the key list
        // (a command published before it subscribed would be lost).
        let c = self.ctl();
        let deadline = Instant::now() + STEP;
        while !(agent.status().key_list_version >= 1
            && c.device(&id).await.unwrap().is_some_and(|d| d.online))
        {
            assert!(Instant::now() < deadline, "agent {id} never came up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (agent, dir)
    }

    async fn push_sensor(&self, file: &str) -> ModelRef {
        self.ctl()
            .push_model(PushRequest {
                name: Some(ModelName::new("sensor").unwrap()),
                onnx: fixture(file),
                ..PushRequest::default()
            })
            .await
            .unwrap()
            .manifest
            .model_ref()
    }

    fn refused(&self, kind: &str) -> u64 {
        self.ctl().metrics().uplinks_refused_of(kind)
    }

    /// What a device's word must never change.
    async fn snapshot(&self) -> Snapshot {
        let c = self.ctl();
        let mut devices: Vec<_> = c
            .devices(&Selector::default())
            .await
            .unwrap()
            .into_iter()
            .map(|d| {
                (
                    d.id,
                    d.registered,
                    d.labels,
                    d.active,
                    d.previous,
                    d.shadow,
                    d.issued_seq,
                )
            })
            .collect();
        devices.sort();
        let all_known = c.devices_online().await.unwrap().1;
        let windows = c
            .metrics()
            .windows_ingested
            .load(std::sync::atomic::Ordering::Relaxed);
        let deployments = c
            .db()
            .call(|conn| {
                let mut stmt = conn.prepare("SELECT id, state FROM deployments ORDER BY id")?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap()
            .into_iter()
            .map(|(id, state)| {
                // updated_at moves with legitimate progress only; compare the
                // parts an attacker would want to change.
                let v: serde_json::Value = serde_json::from_str(&state).unwrap();
                (
                    id,
                    v["state"].to_string(),
                    v["done"].to_string(),
                    v["ok"].to_string(),
                )
            })
            .collect();
        Snapshot {
            devices,
            all_known,
            windows,
            deployments,
        }
    }

    /// Deploys `model` to `device` and waits until it is active.
    /// Returns the deployment id.
    async fn deploy_active(&self, model: &ModelRef, device: &str) -> u64 {
        let c = self.ctl();
        let id = DeviceId::new(device).unwrap();
        let d = c.deploy(model, &id, false).await.unwrap();
        let deadline = Instant::now() + STEP;
        while !c.deployment(d.id).await.unwrap().unwrap().done {
            assert!(
                Instant::now() < deadline,
                "deploy did not finish: {:?} / {:?} / refused {:?}",
                c.deployment(d.id).await.unwrap(),
                c.device(&id).await.unwrap(),
                c.metrics().uplinks_refused_counts()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d = c.deployment(d.id).await.unwrap().unwrap();
        assert!(d.ok, "{d:?}");
        d.id
    }
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    #[allow(clippy::type_complexity)]
    devices: Vec<(
        String,
        bool,
        BTreeMap<String, String>,
        Option<String>,
        Option<String>,
        Option<String>,
        u64,
    )>,
    all_known: u64,
    windows: u64,
    deployments: Vec<(i64, String, String, String)>,
}

/// A raw MQTT client: the attacker (or a device's own compromised client).
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Client {
    async fn connect(
        url: &str,
        id: &str,
        creds: Option<(&str, &str)>,
        subscribe: &[String],
    ) -> Client {
        let rest = url.strip_prefix("mqtt://").unwrap();
        let (host, port) = rest.rsplit_once(':').unwrap();
        let mut opts = MqttOptions::new(id, host, port.parse().unwrap());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(4 * codec::MAX_PAYLOAD, 4 * codec::MAX_PAYLOAD);
        if let Some((u, p)) = creds {
            opts.set_credentials(u, p);
        }
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        let subs: Vec<_> = subscribe
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce))
            .collect();
        let c2 = client.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if subs.is_empty() {
                            let _ = ready_tx.send(());
                        } else {
                            let _ = c2.try_subscribe_many(subs.clone());
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(STEP, ready_rx.recv())
            .await
            .expect("attacker client did not connect")
            .unwrap();
        Client { client, rx }
    }

    async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    /// Next message whose topic ends with `suffix`.
    async fn next_on(&mut self, suffix: &str) -> (String, Vec<u8>) {
        tokio::time::timeout(STEP, async {
            loop {
                let (t, p) = self.rx.recv().await.unwrap();
                if t.ends_with(suffix) {
                    return (t, p);
                }
            }
        })
        .await
        .expect("no message captured")
    }
}

fn up(msg: &Up) -> Vec<u8> {
    codec::encode_up(msg).unwrap()
}

fn sealed(key: &Ed25519Signer, fleet: &FleetId, device: &str, counter: u64, msg: &Up) -> Vec<u8> {
    uplink::seal(
        key,
        fleet,
        &DeviceId::new(device).unwrap(),
        counter,
        up(msg),
    )
    .unwrap()
}

fn lying_hello(active: Option<ModelRef>) -> Up {
    Up::Hello(Hello {
        agent_version: "9.9.9".into(),
        arch: "x86_64".into(),
        labels: [("region".to_string(), "us".to_string())].into(),
        active,
        key_list_version: 1,
        last_command_seq: 500,
        ..Hello::default()
    })
}

fn sensor(v: u64) -> ModelRef {
    ModelRef {
        name: ModelName::new("sensor").unwrap(),
        version: Version(v),
    }
}

fn fake_active(seq: u64, model: ModelRef) -> Up {
    Up::DeployStatus(DeployStatus {
        seq,
        model,
        phase: DeployPhase::Active,
    })
}

/// Impersonation through a broker with no ACLs: unsigned uplinks, a key the
/// controller never saw, and another registered device's key (as that
/// device, and relabelled as the victim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_through_mosquitto_without_acls_is_refused() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    let victim = rig.register("victim", &[("region", "eu")]).await;
    let mallory = rig.register("mallory", &[]).await;
    let v1 = rig.push_sensor("models/sensor_clf_v1.onnx").await;
    let (_agent, _d) = rig.agent(&victim, 600_000).await;
    let c = rig.ctl();
    eventually("victim online", async || {
        c.device(&DeviceId::new("victim").unwrap())
            .await
            .unwrap()
            .unwrap()
            .online
    })
    .await;
    let before = rig.snapshot().await;
    let attacker = Client::connect(&rig.url(), "anon-1", None, &[]).await;
    let t = rig.topic("victim", Channel::Up);
    let fleet = rig.fleet.clone();

    // 1. Unsigned: a Hello that lies, an "active" report, a window.
    attacker
        .publish(&t, up(&lying_hello(Some(v1.clone()))), false)
        .await;
    attacker
        .publish(&t, up(&fake_active(1, v1.clone())), false)
        .await;
    attacker
        .publish(&t, up(&Up::Telemetry(realistic_window(7))), false)
        .await;
    eventually("3 unsigned refusals", async || rig.refused("unsigned") >= 3).await;

    // 2. Sealed with a key the controller never registered.
    let stranger = Ed25519Signer::from_seed([66; 32]);
    for msg in [lying_hello(Some(v1.clone())), fake_active(1, v1.clone())] {
        attacker
            .publish(
                &t,
                sealed(&stranger, &fleet, "victim", now_us(), &msg),
                false,
            )
            .await;
    }
    eventually("2 bad signatures", async || {
        rig.refused("bad_signature") >= 2
    })
    .await;

    // 3. Mallory's own (registered) key: as mallory on the victim's topic,
    //    and relabelled as the victim.
    let mk = key_of(&mallory.device_key);
    attacker
        .publish(
            &t,
            sealed(&mk, &fleet, "mallory", now_us(), &lying_hello(None)),
            false,
        )
        .await;
    attacker
        .publish(
            &t,
            sealed(&mk, &fleet, "victim", now_us(), &lying_hello(None)),
            false,
        )
        .await;
    eventually("wrong device + bad signature", async || {
        rig.refused("wrong_device") >= 1 && rig.refused("bad_signature") >= 3
    })
    .await;
    assert_eq!(rig.snapshot().await, before, "an impostor changed state");
    let d = c
        .device(&DeviceId::new("victim").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.agent_version.as_deref(),
        Some(drover_agent::AGENT_VERSION)
    );
    assert_eq!(d.active, None);
    rig.running.shutdown().await;
}

/// Impersonation through the embedded broker: a registered device (with
/// its own credentials and key) publishing as another device. Refused by
/// the controller's signature check (or, where the broker confines topics,
/// dropped before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_through_the_embedded_broker_is_refused() {
    let rig = Rig::start(false, UplinkPolicy::default()).await;
    let _victim = rig.register("victim", &[("region", "eu")]).await;
    let mallory = rig.register("mallory", &[]).await;
    let v1 = rig.push_sensor("models/sensor_clf_v1.onnx").await;
    let c = rig.ctl();
    let before = rig.snapshot().await;
    let messages_before = c
        .metrics()
        .mqtt_messages
        .load(std::sync::atomic::Ordering::Relaxed);
    let refused_before = rig.refused("bad_signature") + rig.refused("unsigned");
    let client_id = format!("drover-{}-mallory", rig.fleet);
    let m = Client::connect(
        &rig.url(),
        &client_id,
        Some((&mallory.username, &mallory.password)),
        &[],
    )
    .await;
    let mk = key_of(&mallory.device_key);
    let t = rig.topic("victim", Channel::Up);
    m.publish(
        &t,
        sealed(
            &mk,
            &rig.fleet,
            "victim",
            now_us(),
            &fake_active(1, v1.clone()),
        ),
        false,
    )
    .await;
    m.publish(&t, up(&lying_hello(Some(v1.clone()))), false)
        .await;
    // A barrier: mallory's own signed Hello on its own topic, on a fresh
    // connection (the embedded broker's gate disconnects a client that
    // publishes on another device's topic).
    let mut events = c.subscribe();
    let m = Client::connect(
        &rig.url(),
        &client_id,
        Some((&mallory.username, &mallory.password)),
        &[],
    )
    .await;
    m.publish(
        &rig.topic("mallory", Channel::Up),
        sealed(
            &mk,
            &rig.fleet,
            "mallory",
            now_us() + 10,
            &lying_hello(None),
        ),
        false,
    )
    .await;
    tokio::time::timeout(STEP, async {
        loop {
            if let Ok(DeviceEvent::Hello { device, .. }) = events.recv().await
                && device.as_str() == "mallory"
            {
                return;
            }
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = rig.refused("bad_signature") + rig.refused("unsigned") - refused_before;
        let delivered = c
            .metrics()
            .mqtt_messages
            .load(std::sync::atomic::Ordering::Relaxed)
            - messages_before;
        if refused == 2 || (Instant::now() > deadline && delivered == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "{refused} refused, {delivered} delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = rig.snapshot().await;
    // Mallory's own Hello is allowed to update mallory (but not its labels
    // or models): compare the victim and everything else.
    let victim = |s: &Snapshot| s.devices.iter().find(|d| d.0 == "victim").cloned();
    assert_eq!(victim(&after), victim(&before));
    assert_eq!(after.deployments, before.deployments);
    assert_eq!(after.windows, before.windows);
    let md = c
        .device(&DeviceId::new("mallory").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(md.labels.is_empty(), "labels from Hello: {:?}", md.labels);
    rig.running.shutdown().await;
}

/// A captured signed uplink replayed, and a device's own message with a
/// counter older than the freshness window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_uplinks_are_refused() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    let victim = rig.register("victim", &[]).await;
    let mallory = rig.register("mallory", &[]).await;
    let c = rig.ctl();
    let mut spy = Client::connect(
        &rig.url(),
        "spy",
        None,
        &[format!("drover/{}/#", rig.fleet)],
    )
    .await;
    let (_agent, _d) = rig.agent(&victim, 600_000).await;
    // The agent's Hello, as it crossed the broker.
    let (topic, hello) = spy.next_on("/victim/up").await;
    eventually("victim online", async || {
        c.device(&DeviceId::new("victim").unwrap())
            .await
            .unwrap()
            .unwrap()
            .online
    })
    .await;
    let before = rig.snapshot().await;
    let replays = rig.refused("replay");
    for _ in 0..3 {
        spy.publish(&topic, hello.clone(), false).await;
    }
    eventually("3 replays refused", async || {
        rig.refused("replay") >= replays + 3
    })
    .await;
    assert_eq!(rig.snapshot().await, before);

    // Stale: correctly signed by mallory, but from 20 minutes ago.
    let mk = key_of(&mallory.device_key);
    let stale = now_us() - 20 * 60 * 1_000_000;
    let mut w = realistic_window(1);
    w.end = Timestamp(stale / 1000);
    spy.publish(
        &rig.topic("mallory", Channel::Up),
        sealed(&mk, &rig.fleet, "mallory", stale, &Up::Telemetry(w)),
        false,
    )
    .await;
    eventually("stale refused", async || rig.refused("stale") >= 1).await;
    assert_eq!(rig.snapshot().await, before, "a stale window was stored");
    rig.running.shutdown().await;
}

/// 50 made-up devices say Hello: none joins the inventory or a selector;
/// they are listed as unregistered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phantom_devices_never_join_inventory_or_selectors() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    rig.register("real-1", &[("region", "eu")]).await;
    let c = rig.ctl();
    let before = rig.snapshot().await;
    let attacker = Client::connect(&rig.url(), "anon-phantoms", None, &[]).await;
    let phantom_key = Ed25519Signer::from_seed([9; 32]);
    for i in 0..50 {
        let id = format!("phantom-{i}");
        let hello = lying_hello(None);
        let payload = if i % 2 == 0 {
            up(&hello)
        } else {
            sealed(&phantom_key, &rig.fleet, &id, now_us(), &hello)
        };
        attacker
            .publish(&rig.topic(&id, Channel::Up), payload, false)
            .await;
        attacker
            .publish(
                &rig.topic(&id, Channel::Status),
                codec::encode_status(&Status::Online {
                    agent_version: "1".into(),
                    active: None,
                })
                .unwrap(),
                false,
            )
            .await;
    }
    eventually("50 phantoms listed", async || {
        c.unregistered_devices().len() == 50
    })
    .await;
    assert!(rig.refused("unregistered") >= 100);
    assert_eq!(rig.snapshot().await, before, "a phantom joined");
    for sel in ["", "region=us", "region=eu"] {
        let ids: Vec<_> = c
            .devices(&Selector::parse(sel).unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert!(ids.iter().all(|id| id == "real-1"), "{sel}: {ids:?}");
    }
    rig.running.shutdown().await;
}

/// A registered device (its own key: a compromised device) lies on its own
/// topic: labels, an "active" version that does not exist, one that exists
/// but was never commanded to it, a rollback to an uncommanded model, a
/// chunk request with no deployment in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_lying_on_its_own_topic_changes_nothing() {
    let rig = Rig::start(false, UplinkPolicy::default()).await;
    let liar = rig.register("liar", &[("region", "eu")]).await;
    let v1 = rig.push_sensor("models/sensor_clf_v1.onnx").await;
    let c = rig.ctl();
    let sha = c
        .model(&v1.name, v1.version)
        .await
        .unwrap()
        .unwrap()
        .manifest
        .artifact
        .sha256;
    let mut m = Client::connect(
        &rig.url(),
        &format!("drover-{}-liar", rig.fleet),
        Some((&liar.username, &liar.password)),
        &[
            rig.topic("liar", Channel::Chunk),
            rig.topic("liar", Channel::Down),
        ],
    )
    .await;
    let k = key_of(&liar.device_key);
    let t = rig.topic("liar", Channel::Up);
    let f = rig.fleet.clone();
    let mut counter = now_us();
    let mut next = || {
        counter += 1;
        counter
    };
    // A Hello (accepted: it is the device) claiming region=us and sensor@99.
    let mut events = c.subscribe();
    m.publish(
        &t,
        sealed(&k, &f, "liar", next(), &lying_hello(Some(sensor(99)))),
        false,
    )
    .await;
    tokio::time::timeout(STEP, async {
        while !matches!(events.recv().await, Ok(DeviceEvent::Hello { .. })) {}
    })
    .await
    .unwrap();
    let before = rig.snapshot().await;
    let uncommanded = rig.refused("uncommanded_model");
    assert_eq!(uncommanded, 1, "the Hello's sensor@99");
    assert!(
        c.devices(&Selector::parse("region=us").unwrap())
            .await
            .unwrap()
            .is_empty(),
        "labels come from the registry"
    );
    assert_eq!(
        c.devices(&Selector::parse("region=eu").unwrap())
            .await
            .unwrap()
            .len(),
        1
    );

    // "Active" for a version that does not exist, and for one that exists
    // but was never commanded; a rollback onto it; a Hello naming it.
    m.publish(
        &t,
        sealed(&k, &f, "liar", next(), &fake_active(1, sensor(99))),
        false,
    )
    .await;
    m.publish(
        &t,
        sealed(&k, &f, "liar", next(), &fake_active(1, v1.clone())),
        false,
    )
    .await;
    m.publish(
        &t,
        sealed(&k, &f, "liar", next(), &fake_active(0, v1.clone())),
        false,
    )
    .await;
    m.publish(
        &t,
        sealed(
            &k,
            &f,
            "liar",
            next(),
            &Up::DeployStatus(DeployStatus {
                seq: 0,
                model: sensor(99),
                phase: DeployPhase::RolledBack {
                    to: Some(v1.clone()),
                    reason: drover_protocol::Reason::new(
                        drover_protocol::ReasonCode::Internal,
                        "lie",
                    ),
                },
            }),
        ),
        false,
    )
    .await;
    m.publish(
        &t,
        sealed(&k, &f, "liar", next(), &lying_hello(Some(v1.clone()))),
        false,
    )
    .await;
    eventually("5 uncommanded reports refused", async || {
        rig.refused("uncommanded_model") >= uncommanded + 5
    })
    .await;
    // A chunk request with no deployment in flight: no chunk comes back.
    m.publish(
        &t,
        sealed(
            &k,
            &f,
            "liar",
            next(),
            &Up::ChunkRequest(ChunkRequest {
                sha256: sha,
                offset: 0,
                len: 1024,
            }),
        ),
        false,
    )
    .await;
    eventually("chunk request refused", async || {
        rig.refused("chunk_not_in_flight") >= 1
    })
    .await;
    assert_eq!(rig.snapshot().await, before);
    let d = c
        .device(&DeviceId::new("liar").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((d.active, d.previous, d.shadow), (None, None, None));
    assert_eq!(
        c.metrics()
            .chunks_served
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), m.next_on("/chunk"))
            .await
            .is_err(),
        "a chunk was served"
    );
    rig.running.shutdown().await;
}

/// Forged telemetry acks: unsigned, signed by a stranger, and a genuine
/// ack captured for another device. The agent keeps every window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_telemetry_acks_do_not_delete_windows() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    let victim = rig.register("victim", &[]).await;
    let other = rig.register("other", &[]).await;
    let v1 = rig.push_sensor("models/sensor_clf_v1.onnx").await;
    let mut spy = Client::connect(
        &rig.url(),
        "spy",
        None,
        &[format!("drover/{}/#", rig.fleet)],
    )
    .await;
    let (agent, _d1) = rig.agent(&victim, 100).await;
    let (agent2, _d2) = rig.agent(&other, 100).await;
    rig.deploy_active(&v1, "victim").await;
    rig.deploy_active(&v1, "other").await;
    // A genuine ack for "other", captured off the wire.
    agent2
        .infer(drover_agent::InferRequest::new(vec![0.1, 0.2, 0.3, 0.4]))
        .unwrap();
    let (_, others_ack) = spy.next_on("/other/down").await;
    let others_ack = loop {
        if matches!(
            codec::decode_down(&others_ack, Channel::Down),
            Ok(Down::SignedTelemetryAck(_))
        ) {
            break others_ack;
        }
        let (_, p) = spy.next_on("/other/down").await;
        if matches!(
            codec::decode_down(&p, Channel::Down),
            Ok(Down::SignedTelemetryAck(_))
        ) {
            break p;
        }
    };
    // The controller goes away (the broker stays): windows pile up unacked.
    let fleet = rig.fleet.clone();
    let url = rig.url();
    let Rig {
        running,
        _mosquitto,
        _dir,
        ..
    } = rig;
    running.shutdown().await;
    for _ in 0..5 {
        agent
            .infer(drover_agent::InferRequest::new(vec![0.1, 0.2, 0.3, 0.4]))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let deadline = Instant::now() + STEP;
    while agent.status().outbox_depth == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait until every window has been handed to the link at least once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let depth = agent.status().outbox_depth;
    let counters = |a: &Agent, k: &str| a.status().counters.get(k).copied().unwrap_or(0);
    let attacker = Client::connect(&url, "anon-acker", None, &[]).await;
    let down = Topic::new(&fleet, &DeviceId::new("victim").unwrap(), Channel::Down).to_string();
    let seqs: Vec<u64> = (0..1000).collect();
    attacker
        .publish(
            &down,
            codec::encode_down(&Down::TelemetryAck(TelemetryAck { seqs: seqs.clone() })).unwrap(),
            false,
        )
        .await;
    let forged = Signed::sign(
        &BoundTelemetryAck {
            fleet: fleet.clone(),
            device: DeviceId::new("victim").unwrap(),
            seqs: seqs.clone(),
        },
        &Ed25519Signer::from_seed([5; 32]),
    )
    .unwrap();
    attacker
        .publish(
            &down,
            codec::encode_down(&Down::SignedTelemetryAck(forged)).unwrap(),
            false,
        )
        .await;
    attacker.publish(&down, others_ack, false).await;
    eventually("three acks refused", async || {
        counters(&agent, "malformed.unsigned_telemetry_ack") == 1
            && counters(&agent, "malformed.telemetry_ack_refused") == 1
            && counters(&agent, "malformed.telemetry_ack_other_device") == 1
    })
    .await;
    // The last window may still close meanwhile (depth + 1); a forged ack
    // of seqs 0..1000 honoured would have emptied the outbox.
    let after = agent.status().outbox_depth;
    assert!(
        (depth..=depth + 1).contains(&after),
        "windows were deleted: {depth} before the forged acks, {after} after"
    );
    agent.shutdown().await.unwrap();
    agent2.shutdown().await.unwrap();
}

/// A retained message waiting on a device's `down` topic (left by anyone)
/// is ignored by the agent when it subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_on_down_are_ignored() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    let victim = rig.register("victim", &[]).await;
    let attacker = Client::connect(&rig.url(), "anon-retain", None, &[]).await;
    attacker
        .publish(
            &rig.topic("victim", Channel::Down),
            codec::encode_down(&Down::TelemetryAck(TelemetryAck {
                seqs: vec![1, 2, 3],
            }))
            .unwrap(),
            true,
        )
        .await;
    let (agent, _d) = rig.agent(&victim, 600_000).await;
    let deadline = Instant::now() + STEP;
    while agent
        .status()
        .counters
        .get("malformed.retained_down")
        .copied()
        != Some(1)
    {
        assert!(Instant::now() < deadline, "{:?}", agent.status().counters);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = agent.status();
    assert_eq!(
        st.counters.get("malformed.unsigned_telemetry_ack"),
        None,
        "it was not even looked at"
    );
    assert_eq!((st.outbox_depth, st.last_command_seq), (0, 0));
    agent.shutdown().await.unwrap();
    rig.running.shutdown().await;
}

/// Captured signed commands replayed to a device after its deployment
/// finished: the agent refuses them as replays (ack with sequence 0), the
/// finished deployment stays a success, the device keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_commands_cannot_fail_a_finished_deployment() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    let victim = rig.register("victim", &[]).await;
    let v1 = rig.push_sensor("models/sensor_clf_v1.onnx").await;
    let mut spy = Client::connect(
        &rig.url(),
        "spy",
        None,
        &[format!("drover/{}/#", rig.fleet)],
    )
    .await;
    let (agent, _d) = rig.agent(&victim, 600_000).await;
    let d = rig.deploy_active(&v1, "victim").await;
    let (topic, command) = loop {
        let (t, p) = spy.next_on("/victim/down").await;
        if matches!(codec::decode_down(&p, Channel::Down), Ok(Down::Command(_))) {
            break (t, p);
        }
    };
    let c = rig.ctl();
    let before = rig.snapshot().await;
    let rejected = c
        .metrics()
        .commands_rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        spy.publish(&topic, command.clone(), false).await;
    }
    eventually("5 replays refused and reported", async || {
        c.metrics()
            .commands_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
            >= rejected + 5
    })
    .await;
    assert_eq!(
        agent
            .status()
            .counters
            .get("rejected_commands.replayed_command"),
        Some(&5)
    );
    assert_eq!(rig.snapshot().await, before);
    let after = c.deployment(d).await.unwrap().unwrap();
    assert!(
        after.done && after.ok && after.state == "active",
        "{after:?}"
    );
    assert_eq!(agent.active_model(), Some(v1));
    agent.shutdown().await.unwrap();
    rig.running.shutdown().await;
}

/// A replayer fires every captured command at every device while a rollout
/// runs: the rollout still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_replay_during_a_rollout_does_not_fail_it() {
    use drover_controller::http::rollouts::StartBody;
    let broker = SpawnedMosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::ephemeral(dir.path().join("controller"));
    cfg.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    let running = serve::start(cfg).await.unwrap();
    let ctl = running.handle();
    let fleet = drover_sim::fleet::Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &drover_sim::fleet::FleetConfig {
            agents: 2,
            inferences_per_sec: 10.0,
            telemetry_window_ms: 500,
            ..drover_sim::fleet::FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await
    .unwrap();
    let mut spy = Client::connect(
        &broker.url(),
        "replayer",
        None,
        &[format!("drover/{}/#", ctl.fleet())],
    )
    .await;
    eventually("both agents online with the key list", async || {
        let devices = ctl.devices(&Selector::default()).await.unwrap();
        let mut keyed = 0;
        for d in &fleet.devices {
            if d.with_agent(|a| a.status().key_list_version).await >= Some(1) {
                keyed += 1;
            }
        }
        devices.len() == 2 && devices.iter().all(|d| d.online) && keyed == 2
    })
    .await;
    let v1 = ctl
        .push_model(PushRequest {
            name: Some(ModelName::new("sensor").unwrap()),
            onnx: fixture("models/sensor_clf_v1.onnx"),
            ..PushRequest::default()
        })
        .await
        .unwrap()
        .manifest
        .model_ref();
    let body = StartBody {
        model: v1.to_string(),
        id: Some("replayed".into()),
        waves: Some("50,100".into()),
        bake: Some(Duration::from_secs(2)),
        device_timeout: Some(Duration::from_secs(30)),
        metrics_interval: Some(Duration::from_millis(500)),
        ..StartBody::default()
    };
    let rollouts = running.rollouts();
    rollouts
        .create(body.to_spec().map_err(|e| e.body.detail).unwrap())
        .await
        .unwrap();
    // Replay every command seen, three times, while the rollout runs.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut replayed = 0;
    let mut captured = std::collections::HashSet::new();
    loop {
        let d = rollouts.detail("replayed", 1).await.unwrap();
        if !d.status.active {
            assert_eq!(d.status.phase.name(), "completed", "{:?}", d.status.phase);
            break;
        }
        if Instant::now() >= deadline || d.status.phase.name() == "paused" {
            let cmds = ctl
                .db()
                .call(|c| {
                    let mut st =
                        c.prepare("SELECT device, seq, kind, model, result FROM commands")?;
                    let rows = st
                        .query_map([], |r| {
                            Ok(format!(
                                "{}:{}:{}:{:?}:{:?}",
                                r.get::<_, String>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, Option<String>>(3)?,
                                r.get::<_, Option<String>>(4)?
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(rows)
                })
                .await
                .unwrap();
            panic!(
                "rollout did not finish: {:?}\n{:?}\n{:?}\n{cmds:?}",
                d.status.phase,
                ctl.metrics().uplinks_refused_counts(),
                ctl.devices(&Selector::default()).await.unwrap()
            );
        }
        if let Ok(Some((t, p))) =
            tokio::time::timeout(Duration::from_millis(200), spy.rx.recv()).await
            && t.ends_with("/down")
            && matches!(codec::decode_down(&p, Channel::Down), Ok(Down::Command(_)))
            // The spy hears its own replays too (MQTT 3.1.1 has no
            // no-local): replay each captured command once, three times.
            && captured.insert(p.clone())
        {
            for _ in 0..3 {
                spy.publish(&t, p.clone(), false).await;
                replayed += 1;
            }
        }
    }
    assert!(replayed >= 6, "only {replayed} replays");
    let rejected = ctl
        .metrics()
        .commands_rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        rejected >= 1,
        "the replays reached the agents and were refused"
    );
    fleet.wait_all_active(&v1.to_string(), STEP).await.unwrap();
    fleet.shutdown().await;
    running.shutdown().await;
}

/// A device flooding its own topic is throttled and counted; another
/// device's telemetry still gets through and is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_device_is_throttled_and_others_are_not() {
    let policy = UplinkPolicy {
        burst: 50,
        per_second: 10,
        ..UplinkPolicy::default()
    };
    let rig = Rig::start(false, policy).await;
    let flood = rig.register("flood", &[]).await;
    let good = rig.register("good", &[]).await;
    let c = rig.ctl();
    let f = Client::connect(
        &rig.url(),
        &format!("drover-{}-flood", rig.fleet),
        Some((&flood.username, &flood.password)),
        &[],
    )
    .await;
    let fk = key_of(&flood.device_key);
    let t = rig.topic("flood", Channel::Up);
    let base = now_us();
    let started = Instant::now();
    for i in 1..=1000u64 {
        let mut w = realistic_window(i);
        w.end = Timestamp(base / 1000);
        f.publish(
            &t,
            sealed(&fk, &rig.fleet, "flood", base + i, &Up::Telemetry(w)),
            false,
        )
        .await;
    }
    // Every flooded message is accounted for: stored, throttled, or
    // dropped at the controller's inbound queue (also counted).
    let m = c.metrics();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the flood to be handled", async || {
        load(&m.windows_ingested)
            + rig.refused("throttled")
            + load(&m.inbound_dropped)
            + load(&m.ingest_dropped)
            >= 1000
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let flood_windows = load(&m.windows_ingested);
    assert!(
        rig.refused("throttled") >= 100,
        "{:?}",
        m.uplinks_refused_counts()
    );
    assert!(
        (flood_windows as f64) <= 50.0 + 10.0 * (secs + 1.0),
        "{flood_windows} windows in {secs:.1} s passed the bucket"
    );
    // The other device is unaffected.
    let mut g = Client::connect(
        &rig.url(),
        &format!("drover-{}-good", rig.fleet),
        Some((&good.username, &good.password)),
        &[rig.topic("good", Channel::Down)],
    )
    .await;
    let gk = key_of(&good.device_key);
    let mut w = realistic_window(1);
    w.end = Timestamp(now_us() / 1000);
    g.publish(
        &rig.topic("good", Channel::Up),
        sealed(&gk, &rig.fleet, "good", now_us(), &Up::Telemetry(w)),
        false,
    )
    .await;
    let (_, ack) = g.next_on("/good/down").await;
    let Ok(Down::SignedTelemetryAck(ack)) = codec::decode_down(&ack, Channel::Down) else {
        panic!("expected a telemetry ack")
    };
    let commands =
        drover_protocol::PublicKey::from_hex(&c.keys_info().commands_public_key).unwrap();
    let ack = ack.verify(&commands).unwrap();
    assert_eq!(
        (ack.device.as_str(), ack.seqs.as_slice()),
        ("good", &[1u64][..])
    );
    rig.running.shutdown().await;
}

/// The status topic is unsigned (the broker publishes the last will): a
/// forged Online status never sets the serving model, and an unregistered
/// device's status creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_never_sets_the_serving_model() {
    let rig = Rig::start(true, UplinkPolicy::default()).await;
    rig.register("victim", &[]).await;
    let v1 = rig.push_sensor("models/sensor_clf_v1.onnx").await;
    let c = rig.ctl();
    let before = rig.snapshot().await;
    let mut events = c.subscribe();
    let attacker = Client::connect(&rig.url(), "anon-status", None, &[]).await;
    attacker
        .publish(
            &rig.topic("victim", Channel::Status),
            codec::encode_status(&Status::Online {
                agent_version: "0.1.0".into(),
                active: Some(v1.clone()),
            })
            .unwrap(),
            true,
        )
        .await;
    tokio::time::timeout(STEP, async {
        while !matches!(events.recv().await, Ok(DeviceEvent::Online { .. })) {}
    })
    .await
    .unwrap();
    assert_eq!(rig.snapshot().await, before, "the status set a model");
    // An Ack and a DeployStatus from nobody in particular: refused too.
    attacker
        .publish(
            &rig.topic("victim", Channel::Up),
            up(&Up::Ack(CommandAck {
                seq: 1,
                result: Err(drover_protocol::Reason::new(
                    drover_protocol::ReasonCode::Downgrade,
                    "forged",
                )),
            })),
            false,
        )
        .await;
    eventually("unsigned ack refused", async || {
        rig.refused("unsigned") >= 1
    })
    .await;
    assert_eq!(rig.snapshot().await, before);
    rig.running.shutdown().await;
}

/// A device whose clock is hours off is not bricked: its first Hello
/// re-learns the offset, later uplinks follow its clock, a replay of its
/// Hello is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_a_skewed_clock_resyncs_and_replays_stay_refused() {
    let rig = Rig::start(false, UplinkPolicy::default()).await;
    let dev = rig.register("skewed", &[]).await;
    let c = rig.ctl();
    let mut cl = Client::connect(
        &rig.url(),
        &format!("drover-{}-skewed", rig.fleet),
        Some((&dev.username, &dev.password)),
        &[rig.topic("skewed", Channel::Down)],
    )
    .await;
    let k = key_of(&dev.device_key);
    let t = rig.topic("skewed", Channel::Up);
    let skew = 3 * 3_600_000_000u64; // three hours behind
    let mut w = realistic_window(1);
    w.end = Timestamp(now_us() / 1000);
    // Telemetry before any Hello: refused as stale.
    cl.publish(
        &t,
        sealed(
            &k,
            &rig.fleet,
            "skewed",
            now_us() - skew,
            &Up::Telemetry(w.clone()),
        ),
        false,
    )
    .await;
    eventually("stale", async || rig.refused("stale") >= 1).await;
    let hello = sealed(
        &k,
        &rig.fleet,
        "skewed",
        now_us() - skew,
        &lying_hello(None),
    );
    cl.publish(&t, hello.clone(), false).await;
    eventually("resync", async || {
        c.metrics()
            .uplink_clock_resyncs
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    cl.publish(
        &t,
        sealed(&k, &rig.fleet, "skewed", now_us() - skew, &Up::Telemetry(w)),
        false,
    )
    .await;
    let (_, ack) = cl.next_on("/skewed/down").await;
    assert!(matches!(
        codec::decode_down(&ack, Channel::Down),
        Ok(Down::SignedTelemetryAck(_) | Down::KeyList(_))
    ));
    eventually("window stored", async || {
        c.metrics()
            .windows_ingested
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let before = rig.snapshot().await;
    cl.publish(&t, hello, false).await;
    eventually("replayed hello refused", async || {
        rig.refused("replay") >= 1
    })
    .await;
    assert_eq!(rig.snapshot().await, before);
    rig.running.shutdown().await;
}

/// `/metrics` (read with the admin token) as `series -> value`.
async fn scrape(rig: &Rig) -> std::collections::BTreeMap<String, f64> {
    drover_sim::metrics::scrape(&rig.running.http_url(), rig.running.admin_token().unwrap())
        .await
        .unwrap()
}

/// Each refusal class of the uplink guard (forged, unsigned, stale, future,
/// replayed, throttled) is a labelled counter on `/metrics`, and rises when
/// a device (here with valid broker credentials, on its own topic) tries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplink_refusals_rise_on_the_metrics_endpoint() {
    let policy = UplinkPolicy {
        burst: 10,
        per_second: 1,
        ..UplinkPolicy::default()
    };
    let rig = Rig::start(false, policy).await;
    let mallory = rig.register("mallory", &[]).await;
    let m = Client::connect(
        &rig.url(),
        &format!("drover-{}-mallory", rig.fleet),
        Some((&mallory.username, &mallory.password)),
        &[],
    )
    .await;
    let series = |kind: &str| format!("drover_uplinks_refused_total{{kind=\"{kind}\"}}");
    let kinds = [
        "bad_signature",
        "unsigned",
        "stale",
        "future",
        "replay",
        "throttled",
    ];
    let before = scrape(&rig).await;
    for kind in kinds {
        assert_eq!(before.get(&series(kind)), Some(&0.0), "{kind}: {before:?}");
    }
    let snapshot = rig.snapshot().await;
    let t = rig.topic("mallory", Channel::Up);
    let key = key_of(&mallory.device_key);
    let window = |i: u64| Up::Telemetry(realistic_window(i));
    // Forged: signed with a key that is not mallory's.
    let forger = Ed25519Signer::from_seed([7; 32]);
    m.publish(
        &t,
        sealed(&forger, &rig.fleet, "mallory", now_us(), &window(1)),
        false,
    )
    .await;
    // Unsigned.
    m.publish(&t, up(&window(2)), false).await;
    // Stale and future: correctly signed, counters 20 minutes off.
    let skew = 20 * 60 * 1_000_000;
    m.publish(
        &t,
        sealed(&key, &rig.fleet, "mallory", now_us() - skew, &window(3)),
        false,
    )
    .await;
    m.publish(
        &t,
        sealed(&key, &rig.fleet, "mallory", now_us() + skew, &window(4)),
        false,
    )
    .await;
    // Replayed: a message the controller already took, again.
    let msg = sealed(&key, &rig.fleet, "mallory", now_us(), &window(5));
    m.publish(&t, msg.clone(), false).await;
    m.publish(&t, msg, false).await;
    // Throttled: far over a burst of 10 at 1 per second.
    let base = now_us();
    for i in 0..30u64 {
        m.publish(
            &t,
            sealed(&key, &rig.fleet, "mallory", base + 1 + i, &window(10 + i)),
            false,
        )
        .await;
    }
    eventually("every class counted", async || {
        let now = scrape(&rig).await;
        let at_least = |k: &str| now.get(&series(k)).copied().unwrap_or(0.0);
        kinds.iter().all(|k| at_least(k) >= 1.0) && at_least("throttled") >= 10.0
    })
    .await;
    let after = scrape(&rig).await;
    for kind in ["bad_signature", "unsigned", "stale", "future", "replay"] {
        assert_eq!(after.get(&series(kind)), Some(&1.0), "{kind}: {after:?}");
    }
    assert!(after[&series("throttled")] >= 10.0, "{after:?}");
    // The refusals changed nothing else (the accepted windows are mallory's
    // own, legitimately stored).
    let mut now = rig.snapshot().await;
    now.windows = snapshot.windows;
    assert_eq!(now, snapshot);
    rig.running.shutdown().await;
}
