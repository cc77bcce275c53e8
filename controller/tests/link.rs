//! The controller's MQTT side against a scripted device peer: inventory from
//! Hello and status, telemetry dedupe and acks, chunk serving, and refusal
//! of malformed input without dying.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_controller::DeviceEvent;
use drover_controller::registry::PushRequest;
use drover_controller::telemetry::query::TelemetryFilter;
use drover_protocol::codec;
use drover_protocol::labels::Selector;
use drover_protocol::messages::{ChunkRequest, Down, Hello, Up};
use drover_protocol::testkit::{labels, realistic_window};
use drover_protocol::topic::Channel;
use drover_protocol::{ModelName, ModelRef, Sha256, Status, Version};
use support::{Peer, STEP, TestController, fixture};

/// The controller's commands key: it signs telemetry acks.
fn commands_key(c: &drover_controller::Controller) -> drover_protocol::PublicKey {
    drover_protocol::PublicKey::from_hex(&c.keys_info().commands_public_key).unwrap()
}

async fn wait_event(
    rx: &mut tokio::sync::broadcast::Receiver<DeviceEvent>,
    pick: impl Fn(&DeviceEvent) -> bool,
) -> DeviceEvent {
    tokio::time::timeout(STEP, async {
        loop {
            let e = rx.recv().await.unwrap();
            if pick(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event did not arrive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_and_status_build_the_inventory() {
    let t = TestController::start().await;
    let c = t.running.handle();
    let mut events = c.subscribe();
    // Registered with its labels; what the device says about itself is
    // recorded but never selects it.
    let id = drover_protocol::DeviceId::new("dev-1").unwrap();
    let bundle = c
        .register_device(&id, labels(&[("site", "a"), ("region", "eu")]))
        .await
        .unwrap();
    let mut peer = Peer::connect(
        t.running.mqtt_addr(),
        &t.fleet,
        "dev-1",
        (bundle.username.clone(), bundle.password.clone()),
    )
    .await;
    peer.set_key(&bundle.device_key);
    let hello = Hello {
        agent_version: "0.1.0".into(),
        arch: "aarch64".into(),
        hardware: "pi4".into(),
        labels: labels(&[("site", "b")]),
        active: Some(ModelRef {
            name: ModelName::new("sensor").unwrap(),
            version: Version(2),
        }),
        last_command_seq: 7,
        key_list_version: 0,
        outbox_depth: 3,
        ..Hello::default()
    };
    peer.send_up(&Up::Hello(hello.clone())).await;
    let e = wait_event(&mut events, |e| matches!(e, DeviceEvent::Hello { .. })).await;
    assert_eq!(
        e,
        DeviceEvent::Hello {
            device: peer.device.clone(),
            hello
        }
    );
    // Behind on key lists: the controller sends the current one.
    let list = peer
        .wait_for(|d| match d {
            Down::KeyList(l) => Some(l),
            _ => None,
        })
        .await;
    assert_eq!(list, c.key_list().1);

    let d = c.device(&peer.device).await.unwrap().unwrap();
    // Only registered devices get past the embedded broker's gate.
    assert!(d.registered);
    assert!(d.online);
    assert_eq!(d.arch.as_deref(), Some("aarch64"));
    assert_eq!(d.agent_version.as_deref(), Some("0.1.0"));
    assert_eq!(
        d.active, None,
        "sensor@2 was never pushed nor commanded: not taken on the device's word"
    );
    assert_eq!(
        c.metrics().uplinks_refused_of("uncommanded_model"),
        1,
        "{:?}",
        c.metrics().uplinks_refused_counts()
    );
    assert_eq!((d.reported_seq, d.issued_seq, d.outbox_depth), (7, 7, 3));
    assert!(d.last_seen.is_some());
    let sel = Selector::parse("site=a").unwrap();
    assert_eq!(c.devices(&sel).await.unwrap().len(), 1);
    assert!(
        c.devices(&Selector::parse("site=b").unwrap())
            .await
            .unwrap()
            .is_empty(),
        "labels come from the registry, not from Hello"
    );

    peer.send_status(&Status::Offline).await;
    wait_event(&mut events, |e| matches!(e, DeviceEvent::Offline { .. })).await;
    assert!(!c.device(&peer.device).await.unwrap().unwrap().online);
    peer.send_status(&Status::Online {
        agent_version: "0.1.1".into(),
        active: None,
    })
    .await;
    wait_event(&mut events, |e| matches!(e, DeviceEvent::Online { .. })).await;
    let d = c.device(&peer.device).await.unwrap().unwrap();
    assert!(d.online);
    assert_eq!(d.agent_version.as_deref(), Some("0.1.1"));
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_is_stored_once_and_acknowledged_every_time() {
    let t = TestController::start().await;
    let c = t.running.handle();
    let mut peer = Peer::enroll(&t.running, "dev-2").await;
    let w = realistic_window(41);
    for _ in 0..2 {
        peer.send_up(&Up::Telemetry(w.clone())).await;
        let acked = peer
            .wait_for(|d| match d {
                Down::SignedTelemetryAck(a) => Some(a.verify(&commands_key(&c)).unwrap().seqs),
                _ => None,
            })
            .await;
        assert_eq!(acked, vec![41]);
    }
    let m = c.metrics();
    assert_eq!(m.windows_ingested.load(Ordering::Relaxed), 1);
    assert_eq!(m.windows_deduped.load(Ordering::Relaxed), 1);
    let s = c
        .telemetry_summary(TelemetryFilter {
            model: Some("sensor".into()),
            version: Some(3),
            per_device: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(s.merged.windows, 1);
    assert_eq!(s.merged.count, 6000);
    assert_eq!(s.devices["dev-2"].labelled, 300);
    // Visible over HTTP as well.
    let body: serde_json::Value = support::get(format!(
        "{}/v1/telemetry?model=sensor@3&device=dev-2",
        t.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(body["merged"]["count"], 6000);
    assert!(body["merged"]["p95_us"].as_u64().unwrap() > 0);
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_served_and_reassemble_to_the_artifact() {
    let t = TestController::start().await;
    let c = t.running.handle();
    // The 4 MB fixture: 17 chunks of at most 256 KiB.
    let onnx = fixture("models/sensor_clf_slow.onnx");
    let stored = c
        .push_model(PushRequest {
            name: Some(ModelName::new("slow").unwrap()),
            onnx: onnx.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sha = stored.manifest.artifact.sha256;
    let size = stored.manifest.artifact.size;
    let mut peer = Peer::enroll(&t.running, "dev-3").await;
    // Chunks are served only for a deploy in flight to the device.
    c.send_command(
        &peer.device,
        drover_protocol::Action::Deploy {
            manifest: stored.signed.clone(),
        },
    )
    .await
    .unwrap();

    // Refused: unknown artifact, offset past the end. Nothing comes back.
    peer.send_up(&Up::ChunkRequest(ChunkRequest {
        sha256: Sha256::of(b"unknown"),
        offset: 0,
        len: 1000,
    }))
    .await;
    peer.send_up(&Up::ChunkRequest(ChunkRequest {
        sha256: sha,
        offset: size,
        len: 1000,
    }))
    .await;

    let started = Instant::now();
    let window = 8u64;
    let chunk = codec::MAX_CHUNK_DATA as u64;
    let mut next_offset = 0u64;
    let mut in_flight = 0u64;
    let mut got = vec![0u8; size as usize];
    let mut received = 0u64;
    while received < size {
        while in_flight < window && next_offset < size {
            peer.send_up(&Up::ChunkRequest(ChunkRequest {
                sha256: sha,
                offset: next_offset,
                len: u32::MAX, // the controller clamps to MAX_CHUNK_DATA
            }))
            .await;
            next_offset += chunk;
            in_flight += 1;
        }
        let ch = peer
            .wait_for(|d| match d {
                Down::Chunk(ch) => Some(ch),
                _ => None,
            })
            .await;
        assert_eq!(ch.sha256, sha);
        assert_eq!(ch.total, size);
        assert!(ch.data.len() as u64 <= chunk);
        got[ch.offset as usize..ch.offset as usize + ch.data.len()].copy_from_slice(&ch.data);
        received += ch.data.len() as u64;
        in_flight -= 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "served {size} bytes in {:.3} s ({:.1} MB/s) over MQTT",
        secs,
        size as f64 / secs / 1e6
    );
    assert_eq!(Sha256::of(&got), sha);
    assert_eq!(got, onnx);
    let m = c.metrics();
    assert_eq!(m.chunk_bytes.load(Ordering::Relaxed), size);
    assert_eq!(m.chunks_refused.load(Ordering::Relaxed), 1);
    assert_eq!(m.uplinks_refused_of("chunk_not_in_flight"), 1);
    assert!(
        peer.quiet_for(Duration::from_millis(200)).await,
        "refused requests get no answer"
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_counted_and_the_controller_lives_on() {
    let t = TestController::start().await;
    let c = t.running.handle();
    let mut events = c.subscribe();
    let peer = Peer::enroll(&t.running, "dev-4").await;
    let up = peer.topic(Channel::Up);
    let status = peer.topic(Channel::Status);
    peer.send_raw(&up, vec![]).await; // empty
    peer.send_raw(&up, vec![1, 0xff, 0xff, 0xff, 0xff]).await; // malformed
    peer.send_raw(&up, vec![9, 0]).await; // unsupported version
    peer.send_raw(&status, vec![1, 0xff, 0xff]).await; // malformed status
    peer.send_raw(&up, vec![1; codec::MAX_UP_PAYLOAD + 1]).await; // too large
    let mut trailing = codec::encode_up(&Up::Hello(Hello::default())).unwrap();
    trailing.push(0);
    peer.send_raw(&up, trailing).await;
    // (A topic of another or an invalid device never gets here: the gate
    // disconnects the client, see tests/tests/attack_broker.rs; the
    // controller's own check is unit-tested in fleet::link.)
    // The device id is from the topic: a payload cannot claim to be another device.
    peer.send_up(&Up::Hello(Hello {
        agent_version: "0.1.0".into(),
        ..Hello::default()
    }))
    .await;
    // The embedded broker may reorder topics against each other (not within
    // one), so end each topic with a valid message and await both.
    peer.send_status(&Status::Online {
        agent_version: "0.1.0".into(),
        active: None,
    })
    .await;
    let mut seen = (false, false);
    while seen != (true, true) {
        match wait_event(&mut events, |e| {
            matches!(e, DeviceEvent::Hello { .. } | DeviceEvent::Online { .. })
        })
        .await
        {
            DeviceEvent::Hello { device, .. } => {
                assert_eq!(device.as_str(), "dev-4");
                seen.0 = true;
            }
            _ => seen.1 = true,
        }
    }
    let counts = c.metrics().malformed_counts();
    assert_eq!(counts.get("empty"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("malformed"), Some(&2), "{counts:?}");
    assert_eq!(counts.values().sum::<u64>(), 6, "{counts:?}");
    assert_eq!(counts.get("unsupported_version"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("too_large"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("trailing_bytes"), Some(&1), "{counts:?}");
    let metrics = support::get(format!("{}/metrics", t.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("drover_malformed_payloads_total{kind=\"too_large\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_devices_online 1"), "{metrics}");
    let health = support::get(format!("{}/healthz", t.url())).await.unwrap();
    assert!(health.status().is_success());
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_reaches_devices_and_manifests_follow() {
    let t = TestController::start().await;
    let c = t.running.handle();
    let stored = c
        .push_model(PushRequest {
            name: Some(ModelName::new("sensor").unwrap()),
            onnx: fixture("models/sensor_clf_v1.onnx"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut peer = Peer::enroll(&t.running, "dev-5").await;
    let mut events = c.subscribe();
    peer.send_up(&Up::Hello(Hello {
        key_list_version: 1,
        ..Hello::default()
    }))
    .await;
    wait_event(&mut events, |e| matches!(e, DeviceEvent::Hello { .. })).await;
    let root = drover_protocol::PublicKey::from_hex(&c.keys_info().root_public_key).unwrap();
    let mut trust = drover_protocol::TrustState::new(root, peer.device.clone());
    trust.handle_key_list(&c.key_list().1, c.now()).unwrap();
    trust.verify_manifest(&stored.signed, c.now()).unwrap();

    let out = c.rotate_key(drover_protocol::Role::Models).await.unwrap();
    assert_eq!(out.key_list_version, 2);
    assert_eq!(out.devices_notified, 1);
    assert_eq!(out.manifests_resigned, 1);
    let list = peer
        .wait_for(|d| match d {
            Down::KeyList(l) => Some(l),
            _ => None,
        })
        .await;
    trust.handle_key_list(&list, c.now()).unwrap();
    assert!(
        trust.verify_manifest(&stored.signed, c.now()).is_err(),
        "the old key is retired"
    );
    let resigned = c.manifest(&stored.manifest.name, Version(1)).await.unwrap();
    assert_eq!(
        trust.verify_manifest(&resigned, c.now()).unwrap(),
        stored.manifest
    );
    t.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_chunk_rate_cap_holds_across_devices() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = support::unique_fleet();
    let mut cfg = support::config(dir.path(), &fleet);
    let rate = 4_000_000u64;
    cfg.chunk_rate_bytes_per_sec = rate;
    let running = drover_controller::serve::start(cfg).await.unwrap();
    let c = running.handle();
    let onnx = fixture("models/sensor_clf_slow.onnx");
    let stored = c
        .push_model(PushRequest {
            name: Some(ModelName::new("slow").unwrap()),
            onnx: onnx.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sha = stored.manifest.artifact.sha256;
    let size = stored.manifest.artifact.size;
    let started = Instant::now();
    let mut fetchers = Vec::new();
    for i in 0..2 {
        let mut peer = Peer::enroll(&running, &format!("cap-{i}")).await;
        c.send_command(
            &peer.device,
            drover_protocol::Action::Deploy {
                manifest: stored.signed.clone(),
            },
        )
        .await
        .unwrap();
        fetchers.push(tokio::spawn(async move {
            let chunk = codec::MAX_CHUNK_DATA as u64;
            // Ask for everything at once: the controller queues and paces.
            let mut offset = 0;
            while offset < size {
                peer.send_up(&Up::ChunkRequest(ChunkRequest {
                    sha256: sha,
                    offset,
                    len: chunk as u32,
                }))
                .await;
                offset += chunk;
            }
            let mut received = 0u64;
            while received < size {
                if let Down::Chunk(ch) = peer.next_down().await {
                    received += ch.data.len() as u64;
                }
            }
        }));
    }
    for f in fetchers {
        f.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let total = 2 * size;
    let burst = (rate / 10).max(codec::MAX_CHUNK_DATA as u64);
    let floor = (total - burst) as f64 / rate as f64;
    println!("two devices, {total} bytes at a {rate} B/s cap: {secs:.2} s (floor {floor:.2} s)");
    assert!(
        secs >= floor * 0.95,
        "cap exceeded: {secs:.2} s < {floor:.2} s"
    );
    assert!(
        secs < floor * 3.0 + 2.0,
        "far slower than the cap: {secs:.2} s"
    );
    assert_eq!(c.metrics().chunk_bytes.load(Ordering::Relaxed), total);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_windows_is_stored_in_batches_and_fully_acknowledged() {
    let t = TestController::start().await;
    let c = t.running.handle();
    let mut peer = Peer::enroll(&t.running, "burst").await;
    let n = 1000u64;
    let template = realistic_window(0);
    let windows: Vec<_> = (1..=n)
        .map(|seq| {
            let mut w = template.clone();
            w.seq = seq;
            w
        })
        .collect();
    let started = Instant::now();
    for w in &windows {
        peer.send_up(&Up::Telemetry(w.clone())).await;
    }
    let mut acked = std::collections::BTreeSet::new();
    let mut acks = 0;
    while (acked.len() as u64) < n {
        let seqs = peer
            .wait_for(|d| match d {
                Down::SignedTelemetryAck(a) => Some(a.verify(&commands_key(&c)).unwrap().seqs),
                _ => None,
            })
            .await;
        acks += 1;
        acked.extend(seqs);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} windows stored and acknowledged in {secs:.2} s ({:.0} windows/s, {acks} ack messages)",
        n as f64 / secs
    );
    assert_eq!(acked, (1..=n).collect());
    assert!(
        acks <= n,
        "acks are batched per device, never more than one per window"
    );
    assert_eq!(c.metrics().windows_ingested.load(Ordering::Relaxed), n);
    t.running.shutdown().await;
}
