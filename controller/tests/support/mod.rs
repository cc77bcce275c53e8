//! Shared pieces of the controller's integration tests: an in-process
//! controller on free ports (embedded broker, or the broker named by
//! `DROVER_TEST_BROKER` with a unique fleet), and a scripted device peer
//! built on drover-protocol + rumqttc.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::serve::{RunningController, ServeConfig, start};
use drover_protocol::codec;
use drover_protocol::messages::{Down, Up};
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::uplink::{self, Counter};
use drover_protocol::{DeviceId, Ed25519Signer, FleetId, Status, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// How long any single awaited step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(20);

/// The external broker under test, if any (`mqtt://HOST:PORT`).
pub fn external_broker() -> Option<(String, u16)> {
    let url = std::env::var("DROVER_TEST_BROKER").ok()?;
    match BrokerChoice::parse(&url, "127.0.0.1:0".parse().unwrap()).ok()? {
        BrokerChoice::External { host, port, .. } => Some((host, port)),
        BrokerChoice::Embedded { .. } => None,
    }
}

/// A fleet name no other test (or earlier run) uses.
pub fn unique_fleet() -> FleetId {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).unwrap();
    FleetId::new(format!("t{}", hex::encode(b))).unwrap()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap()
}

/// Test config on free ports in `dir`.
pub fn config(dir: &Path, fleet: &FleetId) -> ServeConfig {
    let mut cfg = ServeConfig::ephemeral(dir);
    cfg.fleet = fleet.clone();
    cfg.shutdown_grace = Duration::from_secs(2);
    if let Some((host, port)) = external_broker() {
        cfg.broker = BrokerChoice::External {
            host,
            port,
            tls: false,
        };
    }
    cfg
}

/// A controller in a fresh tempdir.
pub struct TestController {
    pub dir: tempfile::TempDir,
    pub running: RunningController,
    pub fleet: FleetId,
}

impl TestController {
    pub async fn start() -> TestController {
        let dir = tempfile::tempdir().unwrap();
        let fleet = unique_fleet();
        let running = start(config(dir.path(), &fleet)).await.unwrap();
        register(&running);
        TestController {
            dir,
            running,
            fleet,
        }
    }

    pub fn url(&self) -> String {
        self.running.http_url()
    }

    /// Registers `device` (no labels) and connects a peer signing with its
    /// new device key.
    pub async fn registered_peer(&self, device: &str) -> Peer {
        let id = DeviceId::new(device).unwrap();
        let bundle = self
            .running
            .handle()
            .register_device(&id, Default::default())
            .await
            .unwrap();
        let mut peer = Peer::connect(
            self.running.mqtt_addr(),
            &self.fleet,
            device,
            (bundle.username.clone(), bundle.password.clone()),
        )
        .await;
        peer.set_key(&bundle.device_key);
        peer
    }
}

/// The device key in a bundle directory written by `drover device add --out`.
pub fn bundle_key(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["device_key"].as_str().unwrap().to_string()
}

/// A scripted device: a rumqttc client subscribed to its own down/chunk.
pub struct Peer {
    pub device: DeviceId,
    pub fleet: FleetId,
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// The device key `send_up` signs with (none: unsigned, as an impostor).
    key: Option<Ed25519Signer>,
    counter: std::sync::Mutex<Counter>,
}

fn host_port(url: &str) -> (String, u16) {
    match BrokerChoice::parse(url, "127.0.0.1:0".parse().unwrap()).unwrap() {
        BrokerChoice::External { host, port, .. } => (host, port),
        BrokerChoice::Embedded { .. } => panic!("not a URL: {url}"),
    }
}

/// The MQTT username and password in a bundle `drover device add --out DIR` wrote.
pub fn bundle_credentials(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    (
        v["username"].as_str().unwrap().to_string(),
        v["password"].as_str().unwrap().to_string(),
    )
}

impl Peer {
    /// Registers `device` with the controller and connects with the
    /// credentials it issued (what an agent with its bundle does).
    pub async fn enroll(running: &RunningController, device: &str) -> Peer {
        let id = DeviceId::new(device).unwrap();
        let bundle = running
            .handle()
            .register_device(&id, Default::default())
            .await
            .unwrap();
        let mut peer = Peer::connect(
            running.mqtt_addr(),
            running.fleet(),
            device,
            (bundle.username, bundle.password),
        )
        .await;
        peer.set_key(&bundle.device_key);
        peer
    }

    /// Connects as `device` with `credentials` and waits until its
    /// subscription is in place.
    pub async fn connect(
        mqtt_url: &str,
        fleet: &FleetId,
        device: &str,
        credentials: (String, String),
    ) -> Peer {
        let device = DeviceId::new(device).unwrap();
        let (host, port) = host_port(mqtt_url);
        // The gate binds the client id to the username.
        let mut opts = MqttOptions::new(format!("drover-{fleet}-{device}"), host, port);
        opts.set_credentials(credentials.0, credentials.1);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(4 * codec::MAX_PAYLOAD, 4 * codec::MAX_PAYLOAD);
        let (client, mut el) = AsyncClient::new(opts, 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let filters = vec![
            rumqttc::SubscribeFilter::new(
                Topic::new(fleet, &device, Channel::Down).to_string(),
                QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new(
                Topic::new(fleet, &device, Channel::Chunk).to_string(),
                QoS::AtLeastOnce,
            ),
        ];
        let sub_client = client.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub_client.try_subscribe_many(filters.clone());
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
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
        tokio::time::timeout(STEP, sub_rx.recv())
            .await
            .expect("peer subscription timed out")
            .unwrap();
        Peer {
            device,
            fleet: fleet.clone(),
            client,
            rx,
            key: None,
            counter: std::sync::Mutex::new(Counter::new(0)),
        }
    }

    /// Signs every later `send_up` with this device key (hex seed, as in the
    /// bundle).
    pub fn set_key(&mut self, seed_hex: &str) {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(seed_hex.trim(), &mut seed).unwrap();
        self.key = Some(Ed25519Signer::from_seed(seed));
    }

    /// The next counter, microseconds of the system clock (what agents use).
    pub fn next_counter(&self) -> u64 {
        let now = Timestamp::from_system(std::time::SystemTime::now()).0 * 1000;
        self.counter.lock().unwrap().next(now)
    }

    /// `msg` sealed with `key` and `counter` (for tests that forge or replay).
    pub fn sealed_with(&self, key: &Ed25519Signer, counter: u64, msg: &Up) -> Vec<u8> {
        uplink::seal(
            key,
            &self.fleet,
            &self.device,
            counter,
            codec::encode_up(msg).unwrap(),
        )
        .unwrap()
    }

    pub fn topic(&self, channel: Channel) -> String {
        Topic::new(&self.fleet, &self.device, channel).to_string()
    }

    pub async fn send_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Sends `msg`, sealed with the device key if the peer has one.
    pub async fn send_up(&self, msg: &Up) {
        let payload = match &self.key {
            Some(k) => self.sealed_with(k, self.next_counter(), msg),
            None => codec::encode_up(msg).unwrap(),
        };
        self.send_raw(&self.topic(Channel::Up), payload).await;
    }

    pub async fn send_status(&self, status: &Status) {
        self.send_raw(
            &self.topic(Channel::Status),
            codec::encode_status(status).unwrap(),
        )
        .await;
    }

    /// The next message on down/chunk.
    pub async fn next_down(&mut self) -> Down {
        let (topic, payload) = tokio::time::timeout(STEP, self.rx.recv())
            .await
            .expect("no message from the controller")
            .unwrap();
        let t = Topic::parse(&topic).unwrap();
        assert_eq!(
            t.device, self.device,
            "a message for another device reached us"
        );
        codec::decode_down(&payload, t.channel).unwrap()
    }

    /// Skips messages until `pick` returns Some.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(Down) -> Option<T>) -> T {
        loop {
            if let Some(t) = pick(self.next_down().await) {
                return t;
            }
        }
    }

    /// True if nothing arrives within `d` (only for asserting absence).
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.rx.recv()).await.is_err()
    }
}

/// Runs the `drover` binary with `args` against `url`.
static TOKENS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
    std::sync::LazyLock::new(Default::default);

/// Remembers the admin token of `running`, so [`drover`] and [`get`] calls
/// against its URL authenticate.
pub fn register(running: &RunningController) {
    if let Some(t) = running.admin_token() {
        TOKENS
            .lock()
            .unwrap()
            .insert(running.http_url(), t.to_string());
    }
}

/// The admin token registered for `url`.
pub fn token_for(url: &str) -> String {
    let base = url.split("/v1").next().unwrap_or(url);
    let tokens = TOKENS.lock().unwrap();
    tokens
        .iter()
        .find(|(u, _)| base.starts_with(u.as_str()))
        .map(|(_, t)| t.clone())
        .unwrap_or_default()
}

/// GET `url` with the admin token of the controller it belongs to.
pub async fn get(url: String) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(token_for(&url))
        .send()
        .await
}

pub async fn drover(url: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .env("DROVER_CONTROLLER", url)
        .env("DROVER_TOKEN", token_for(url))
        .env("DROVER_CREDENTIALS", "/nonexistent/drover-test-credentials")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
