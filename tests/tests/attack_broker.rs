//! The transport attack suite: a real controller with its real embedded
//! broker (rumqttd behind Drover's MQTT gate), real device credentials from
//! `register_device`, raw rumqttc clients and raw TCP as the attacker. Every
//! case asserts the refusal AND that nothing changed: no message reached the
//! controller, the device inventory is what it was, the victim stays
//! connected, and the gate counted the refusal under its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use drover_controller::fleet::devices::DeviceBundle;
use drover_controller::serve::{RunningController, ServeConfig, ServeError, start};
use drover_protocol::labels::Selector;
use drover_protocol::messages::{Hello, Up};
use drover_protocol::topic::{Channel, Topic};
use drover_protocol::{DeviceId, codec};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Upper bound for any awaited step (the machine may be loaded).
const STEP: Duration = Duration::from_secs(20);

fn config(dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::ephemeral(dir);
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg.mqtt_connect_timeout = Duration::from_millis(500);
    cfg
}

struct World {
    running: RunningController,
    _dir: tempfile::TempDir,
    addr: SocketAddr,
}

/// What must not change when an attack is refused.
#[derive(Debug, PartialEq)]
struct Snapshot {
    devices: String,
    mqtt_messages: u64,
    windows: u64,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let running = start(config(dir.path())).await.unwrap();
        let addr = running
            .mqtt_addr()
            .trim_start_matches("mqtt://")
            .parse()
            .unwrap();
        World {
            running,
            _dir: dir,
            addr,
        }
    }

    async fn enroll(&self, id: &str) -> DeviceBundle {
        self.running
            .handle()
            .register_device(&DeviceId::new(id).unwrap(), Default::default())
            .await
            .unwrap()
    }

    fn client_id(&self, device: &str) -> String {
        format!("drover-{}-{device}", self.running.fleet())
    }

    fn topic(&self, device: &str, channel: Channel) -> String {
        Topic::new(
            self.running.fleet(),
            &DeviceId::new(device).unwrap(),
            channel,
        )
        .to_string()
    }

    async fn snapshot(&self) -> Snapshot {
        let c = self.running.handle();
        let mut devices = c.devices(&Selector::default()).await.unwrap();
        for d in &mut devices {
            d.last_seen = None;
        }
        let m = c.metrics();
        Snapshot {
            devices: serde_json::to_string(&devices).unwrap(),
            mqtt_messages: m.mqtt_messages.load(Ordering::Relaxed),
            windows: m.windows_ingested.load(Ordering::Relaxed),
        }
    }

    fn refused(&self, reason: &str) -> u64 {
        let g = self.running.gate_counters().unwrap();
        g.refused().get(reason).copied().unwrap_or(0)
    }

    /// Waits until the gate has counted `n` refusals for `reason`.
    async fn wait_refused(&self, reason: &str, n: u64) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.refused(reason) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "gate never counted {reason}: {:?}",
                self.running.gate_counters().unwrap().refused()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A raw MQTT client; `connect` polls until the CONNACK (or the refusal).
struct Raw {
    client: AsyncClient,
    el: EventLoop,
}

impl Raw {
    async fn connect(
        addr: SocketAddr,
        client_id: &str,
        creds: Option<(&str, &str)>,
    ) -> Result<Raw, ConnectionError> {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some((u, p)) = creds {
            opts.set_credentials(u, p);
        }
        let (client, mut el) = AsyncClient::new(opts, 16);
        loop {
            match tokio::time::timeout(STEP, el.poll())
                .await
                .expect("connect hung")
            {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(Raw { client, el }),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    async fn device(w: &World, bundle: &DeviceBundle) -> Raw {
        Raw::connect(
            w.addr,
            &w.client_id(&bundle.device_id),
            Some((&bundle.username, &bundle.password)),
        )
        .await
        .unwrap()
    }

    /// Polls until the connection ends; fails if `forbidden` arrives first.
    async fn expect_closed(&mut self, forbidden: fn(&Packet) -> bool) {
        loop {
            match tokio::time::timeout(STEP, self.el.poll())
                .await
                .expect("the gate did not close the connection")
            {
                Ok(Event::Incoming(p)) => assert!(!forbidden(&p), "got {p:?}"),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Subscribes and waits for the SubAck (a legitimate subscription).
    async fn subscribe_ok(&mut self, topic: &str) {
        self.client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match tokio::time::timeout(STEP, self.el.poll()).await.unwrap() {
                Ok(Event::Incoming(Packet::SubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("legitimate subscription failed: {e}"),
            }
        }
    }

    /// True if the session is still up: a legitimate subscription to
    /// `own` round-trips without a reconnect in between.
    async fn alive(&mut self, own: &str) -> bool {
        if self.client.subscribe(own, QoS::AtLeastOnce).await.is_err() {
            return false;
        }
        loop {
            match tokio::time::timeout(STEP, self.el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return true,
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) | Ok(Err(_)) | Err(_) => return false,
                Ok(Ok(_)) => {}
            }
        }
    }
}

fn refused_with(r: Result<Raw, ConnectionError>, code: ConnectReturnCode) {
    match r {
        Err(ConnectionError::ConnectionRefused(c)) => assert_eq!(c, code),
        Err(e) => panic!("expected a CONNACK {code:?}, got {e}"),
        Ok(_) => panic!("expected a CONNACK {code:?}, got a session"),
    }
}

fn hello_bytes() -> Vec<u8> {
    codec::encode_up(&Up::Hello(Hello {
        agent_version: "6.6.6".into(),
        active: Some("evil@1".parse().unwrap()),
        ..Hello::default()
    }))
    .unwrap()
}

/// What the device's agent sends: a Hello sealed with its bundle's device
/// key (the controller refuses unsigned uplinks from registered devices).
fn signed_hello(w: &World, dev: &DeviceBundle, device: &str) -> Vec<u8> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(dev.device_key.trim(), &mut seed).unwrap();
    let key = drover_protocol::Ed25519Signer::from_seed(seed);
    let body = codec::encode_up(&Up::Hello(Hello {
        agent_version: "6.6.6".into(),
        ..Hello::default()
    }))
    .unwrap();
    let counter = drover_protocol::Timestamp::from_system(std::time::SystemTime::now()).0 * 1000;
    drover_protocol::uplink::seal(
        &key,
        w.running.fleet(),
        &DeviceId::new(device).unwrap(),
        counter,
        body,
    )
    .unwrap()
}

#[tokio::test]
async fn anonymous_wrong_password_and_unknown_user_are_refused() {
    let w = World::start().await;
    let dev = w.enroll("dev-1").await;
    let before = w.snapshot().await;
    refused_with(
        Raw::connect(w.addr, &w.client_id("dev-1"), None).await,
        ConnectReturnCode::NotAuthorized,
    );
    refused_with(
        Raw::connect(w.addr, &w.client_id("dev-1"), Some(("dev-1", "wrong"))).await,
        ConnectReturnCode::BadUserNamePassword,
    );
    refused_with(
        Raw::connect(
            w.addr,
            &w.client_id("ghost"),
            Some(("ghost", &dev.password)),
        )
        .await,
        ConnectReturnCode::BadUserNamePassword,
    );
    // A username that is not even a device id.
    refused_with(
        Raw::connect(w.addr, "x", Some(("../../etc", "x"))).await,
        ConnectReturnCode::BadUserNamePassword,
    );
    assert_eq!(w.refused("anonymous"), 1);
    assert_eq!(w.refused("bad_password"), 1);
    assert_eq!(w.refused("unknown_user"), 2);
    assert_eq!(w.running.gate_counters().unwrap().accepted(), 0);
    assert_eq!(w.snapshot().await, before);
    // The real credentials work (the refusals were not a broken gate).
    Raw::device(&w, &dev).await;
}

#[tokio::test]
async fn client_id_takeover_of_another_device_is_refused_and_the_victim_stays() {
    let w = World::start().await;
    let victim = w.enroll("victim").await;
    let attacker = w.enroll("attacker").await;
    let mut v = Raw::device(&w, &victim).await;
    v.subscribe_ok(&w.topic("victim", Channel::Down)).await;
    let before = w.snapshot().await;
    for cid in [w.client_id("victim"), "victim".to_string()] {
        refused_with(
            Raw::connect(w.addr, &cid, Some((&attacker.username, &attacker.password))).await,
            ConnectReturnCode::BadClientId,
        );
    }
    assert_eq!(w.refused("client_id"), 2);
    assert!(
        v.alive(&w.topic("victim", Channel::Down)).await,
        "the victim was kicked off"
    );
    assert_eq!(w.snapshot().await, before);
}

#[tokio::test]
async fn subscribing_to_another_device_or_the_whole_fleet_is_refused() {
    let w = World::start().await;
    let victim = w.enroll("victim").await;
    let attacker = w.enroll("attacker").await;
    let mut v = Raw::device(&w, &victim).await;
    v.subscribe_ok(&w.topic("victim", Channel::Down)).await;
    let before = w.snapshot().await;
    let filters = [
        w.topic("victim", Channel::Down),
        w.topic("victim", Channel::Chunk),
        "drover/#".to_string(),
        "#".to_string(),
        format!("drover/{}/d/+/down", w.running.fleet()),
        w.topic("attacker", Channel::Up),
    ];
    for (i, f) in filters.iter().enumerate() {
        let mut a = Raw::device(&w, &attacker).await;
        a.client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
        a.expect_closed(|p| matches!(p, Packet::SubAck(_) | Packet::Publish(_)))
            .await;
        w.wait_refused("subscribe_topic", i as u64 + 1).await;
    }
    assert!(v.alive(&w.topic("victim", Channel::Down)).await);
    assert_eq!(w.snapshot().await, before);
    // Its own topics are fine.
    let mut a = Raw::device(&w, &attacker).await;
    a.subscribe_ok(&w.topic("attacker", Channel::Down)).await;
    a.subscribe_ok(&w.topic("attacker", Channel::Chunk)).await;
}

#[tokio::test]
async fn publishing_as_another_device_or_on_a_down_topic_is_refused() {
    let w = World::start().await;
    let victim = w.enroll("victim").await;
    let attacker = w.enroll("attacker").await;
    let mut v = Raw::device(&w, &victim).await;
    v.subscribe_ok(&w.topic("victim", Channel::Down)).await;
    let before = w.snapshot().await;
    let topics = [
        w.topic("victim", Channel::Up),
        w.topic("victim", Channel::Status),
        w.topic("victim", Channel::Down),
        w.topic("attacker", Channel::Down),
        w.topic("attacker", Channel::Chunk),
        "drover/other-fleet/d/attacker/up".to_string(),
        "$SYS/broker".to_string(),
    ];
    for (i, t) in topics.iter().enumerate() {
        let mut a = Raw::device(&w, &attacker).await;
        a.client
            .publish(t, QoS::AtLeastOnce, true, hello_bytes())
            .await
            .unwrap();
        a.expect_closed(|p| matches!(p, Packet::PubAck(_))).await;
        w.wait_refused("publish_topic", i as u64 + 1).await;
    }
    // Nothing reached the controller or the victim.
    assert_eq!(w.snapshot().await, before);
    assert!(v.alive(&w.topic("victim", Channel::Down)).await);
}

#[tokio::test]
async fn a_will_on_another_devices_topic_is_refused() {
    let w = World::start().await;
    let attacker = w.enroll("attacker").await;
    let before = w.snapshot().await;
    let mut opts = MqttOptions::new(w.client_id("attacker"), "127.0.0.1", w.addr.port());
    opts.set_credentials(attacker.username.clone(), attacker.password.clone());
    opts.set_last_will(rumqttc::LastWill::new(
        w.topic("victim", Channel::Status),
        vec![1],
        QoS::AtLeastOnce,
        true,
    ));
    let (_c, mut el) = AsyncClient::new(opts, 4);
    match tokio::time::timeout(STEP, el.poll()).await.unwrap() {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => {}
        other => panic!("expected NotAuthorized, got {other:?}"),
    }
    assert_eq!(w.refused("will_topic"), 1);
    assert_eq!(w.snapshot().await, before);
}

/// Sends raw bytes to the gate and returns what it answered before closing.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("the gate kept a bad connection open")
        .ok();
    out
}

#[tokio::test]
async fn malformed_and_oversized_packets_are_counted_without_harm() {
    let w = World::start().await;
    let dev = w.enroll("dev-1").await;
    let before = w.snapshot().await;
    // Not a CONNECT first.
    assert!(raw_exchange(w.addr, &[0xc0, 0x00]).await.is_empty());
    w.wait_refused("not_connect", 1).await;
    // A remaining length over five bytes.
    assert!(
        raw_exchange(w.addr, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01])
            .await
            .is_empty()
    );
    w.wait_refused("bad_length", 1).await;
    // A 256 MiB CONNECT: refused on the header, nothing allocated.
    assert!(
        raw_exchange(w.addr, &[0x10, 0xff, 0xff, 0xff, 0x7f])
            .await
            .is_empty()
    );
    w.wait_refused("too_large", 1).await;
    // A CONNECT whose client id runs past the packet.
    let bad = [
        0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1e, 0x00, 0x50, b'a',
        b'b',
    ];
    assert!(raw_exchange(w.addr, &bad).await.is_empty());
    w.wait_refused("malformed", 1).await;
    // MQTT 5 (level 5): CONNACK "unacceptable protocol version".
    let v5 = [
        0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1e, 0x00, 0x01, b'a',
    ];
    assert_eq!(
        raw_exchange(w.addr, &v5).await,
        vec![0x20, 0x02, 0x00, 0x01]
    );
    w.wait_refused("protocol_version", 1).await;
    // After a good CONNECT: an oversized PUBLISH and a server-only packet type.
    for (bytes, reason) in [
        (vec![0x30u8, 0xff, 0xff, 0xff, 0x7f], "too_large"),
        (vec![0x90u8, 0x03, 0x00, 0x01, 0x00], "packet_type"),
        (vec![0x36u8, 0x03, 0x00, 0x01, b'a'], "malformed"),
    ] {
        let n = w.refused(reason);
        let mut s = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        s.write_all(&connect_bytes(&w.client_id("dev-1"), &dev))
            .await
            .unwrap();
        let mut ack = [0u8; 4];
        tokio::time::timeout(STEP, s.read_exact(&mut ack))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "legit CONNECT accepted");
        s.write_all(&bytes).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(STEP, s.read_to_end(&mut rest))
            .await
            .expect("the gate kept a bad session open")
            .ok();
        w.wait_refused(reason, n + 1).await;
    }
    assert_eq!(w.snapshot().await, before);
    // The gate still serves.
    Raw::device(&w, &dev).await;
}

/// A CONNECT (3.1.1, clean session, keep-alive 30) with the bundle's credentials.
fn connect_bytes(client_id: &str, b: &DeviceBundle) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &[u8]) {
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
    let mut body = Vec::new();
    s(&mut body, b"MQTT");
    body.extend_from_slice(&[0x04, 0xc2, 0x00, 0x1e]);
    s(&mut body, client_id.as_bytes());
    s(&mut body, b.username.as_bytes());
    s(&mut body, b.password.as_bytes());
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn silent_and_half_sent_connections_are_cut_off() {
    let w = World::start().await;
    let before = w.snapshot().await;
    // Says nothing.
    let mut idle = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    // Sends half a CONNECT and stalls.
    let mut half = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    half.write_all(&[0x10, 0x20, 0x00, 0x04, b'M'])
        .await
        .unwrap();
    for s in [&mut idle, &mut half] {
        let mut buf = Vec::new();
        tokio::time::timeout(STEP, s.read_to_end(&mut buf))
            .await
            .expect("a silent connection stayed open")
            .ok();
        assert!(buf.is_empty());
    }
    w.wait_refused("timeout", 2).await;
    assert_eq!(w.snapshot().await, before);
}

#[tokio::test]
async fn the_internal_broker_port_cannot_be_used_to_bypass_the_gate() {
    let w = World::start().await;
    let dev = w.enroll("dev-1").await;
    let internal = w.running.internal_mqtt_addr().unwrap();
    assert_ne!(internal, w.addr);
    assert!(internal.ip().is_loopback());
    let before = w.snapshot().await;
    for creds in [
        None,
        Some((dev.username.as_str(), dev.password.as_str())),
        Some(("drover-internal", "guess")),
    ] {
        let r = Raw::connect(internal, &w.client_id("dev-1"), creds).await;
        assert!(
            r.is_err(),
            "rumqttd accepted {creds:?} on its internal port"
        );
    }
    assert_eq!(w.snapshot().await, before);
}

#[tokio::test]
async fn devices_added_at_runtime_connect_and_old_hashes_are_upgraded() {
    let w = World::start().await;
    // Registered after the broker started: works without a restart.
    let dev = w.enroll("late").await;
    let mut d = Raw::device(&w, &dev).await;
    d.subscribe_ok(&w.topic("late", Channel::Down)).await;
    d.client
        .publish(
            w.topic("late", Channel::Up),
            QoS::AtLeastOnce,
            false,
            signed_hello(&w, &dev, "late"),
        )
        .await
        .unwrap();
    let c = w.running.handle();
    let deadline = tokio::time::Instant::now() + STEP;
    while c
        .device(&DeviceId::new("late").unwrap())
        .await
        .unwrap()
        .unwrap()
        .agent_version
        .as_deref()
        != Some("6.6.6")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "own Hello never arrived"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), d.el.poll()).await;
    }
    // A hash from before the cost increase (101 iterations) still verifies
    // and is replaced by one at the configured cost on first use.
    let old = drover_controller::fleet::devices::mosquitto_hash_with_salt(
        &dev.password,
        b"0123456789ab",
        101,
    );
    let old2 = old.clone();
    c.db()
        .call(move |conn| {
            conn.execute(
                "UPDATE devices SET password_hash = ?1 WHERE id = 'late'",
                [old2],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    drop(d);
    Raw::device(&w, &dev).await;
    let stored: String = c
        .db()
        .call(|conn| {
            Ok(conn.query_row(
                "SELECT password_hash FROM devices WHERE id = 'late'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_ne!(stored, old);
    assert!(
        stored.starts_with(&format!(
            "$7${}$",
            drover_controller::fleet::credentials::SIMULATION_KDF_ITERATIONS
        )),
        "{stored}"
    );
}

#[tokio::test]
async fn device_hashes_use_the_configured_cost_and_drover_serve_defaults_to_600k() {
    // `drover serve` (ServeConfig::new) hashes at the current cost; running
    // 600,000 iterations here would only measure a debug build's SHA-512, so
    // this checks the cost flows from the config into the stored `$7$` hash.
    let defaults = ServeConfig::new("unused");
    assert_eq!(
        defaults.device_kdf_iterations,
        drover_controller::fleet::credentials::DEFAULT_KDF_ITERATIONS
    );
    assert!(defaults.device_kdf_iterations >= 600_000);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.device_kdf_iterations = 2_345;
    let running = start(cfg).await.unwrap();
    let b = running
        .handle()
        .register_device(&DeviceId::new("d").unwrap(), Default::default())
        .await
        .unwrap();
    let acl = running.handle().broker_acl().await.unwrap();
    assert!(
        acl.password_file.contains("d:$7$2345$"),
        "{}",
        acl.password_file
    );
    assert!(!acl.password_file.contains(&b.password));
    running.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_broker_on_a_public_address_needs_an_explicit_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.broker = drover_controller::fleet::broker::BrokerChoice::Embedded {
        listen: "0.0.0.0:0".parse().unwrap(),
    };
    match start(cfg).await {
        Err(e @ ServeError::Config(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("--insecure-mqtt"), "{msg}");
            assert_eq!(e.exit_code(), 64);
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a public plaintext broker started without --insecure-mqtt"),
    }
}

/// `/metrics` (read with the admin token) as `series -> value`.
async fn scrape(w: &World) -> std::collections::BTreeMap<String, f64> {
    drover_sim::metrics::scrape(&w.running.http_url(), w.running.admin_token().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn gate_refusals_rise_on_the_metrics_endpoint() {
    let w = World::start().await;
    // Registered, so a wrong password for it is `bad_password`.
    let _dev = w.enroll("dev-1").await;
    let attacker = w.enroll("attacker").await;
    let series = |reason: &str| format!("drover_mqtt_gate_refused_total{{reason=\"{reason}\"}}");
    let before = scrape(&w).await;
    // Every class is exported from zero, before it first happens.
    for reason in [
        "anonymous",
        "bad_password",
        "client_id",
        "publish_topic",
        "subscribe_topic",
    ] {
        assert_eq!(before.get(&series(reason)), Some(&0.0), "{reason}");
    }
    let snapshot = w.snapshot().await;
    // Connect refusals.
    refused_with(
        Raw::connect(w.addr, &w.client_id("dev-1"), None).await,
        ConnectReturnCode::NotAuthorized,
    );
    refused_with(
        Raw::connect(w.addr, &w.client_id("dev-1"), Some(("dev-1", "wrong"))).await,
        ConnectReturnCode::BadUserNamePassword,
    );
    refused_with(
        Raw::connect(
            w.addr,
            &w.client_id("dev-1"),
            Some((&attacker.username, &attacker.password)),
        )
        .await,
        ConnectReturnCode::BadClientId,
    );
    // A publish and a subscribe outside the attacker's own topics.
    let mut a = Raw::device(&w, &attacker).await;
    a.client
        .publish(
            w.topic("dev-1", Channel::Up),
            QoS::AtLeastOnce,
            false,
            hello_bytes(),
        )
        .await
        .unwrap();
    a.expect_closed(|p| matches!(p, Packet::PubAck(_))).await;
    w.wait_refused("publish_topic", 1).await;
    let mut a = Raw::device(&w, &attacker).await;
    a.client
        .subscribe(w.topic("dev-1", Channel::Down), QoS::AtLeastOnce)
        .await
        .unwrap();
    a.expect_closed(|p| matches!(p, Packet::SubAck(_))).await;
    w.wait_refused("subscribe_topic", 1).await;
    let after = scrape(&w).await;
    for reason in [
        "anonymous",
        "bad_password",
        "client_id",
        "publish_topic",
        "subscribe_topic",
    ] {
        assert_eq!(
            after.get(&series(reason)),
            Some(&1.0),
            "{reason}: {after:?}"
        );
    }
    // The attacker's two sessions were accepted before their refusals.
    assert_eq!(after.get("drover_mqtt_gate_accepted_total"), Some(&2.0));
    assert_eq!(w.snapshot().await, snapshot);
}
