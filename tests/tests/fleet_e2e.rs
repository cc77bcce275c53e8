//! End-to-end scenarios on a real controller, a real broker and real agents
//! (the simulator's fleet): rollouts promoted and rolled back, a device
//! offline during a rollout, an agent killed mid-download, a broker restart,
//! a tampered artifact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_controller::telemetry::query::TelemetryFilter;
use drover_sim::demo::{push, rollout_and_wait, train_model};
use drover_sim::fleet::{Fleet, FleetConfig};
use drover_sim::net::SpawnedMosquitto;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct World {
    running: RunningController,
    fleet: Fleet,
    _dir: tempfile::TempDir,
}

async fn world(
    agents: usize,
    cfg: impl FnOnce(&mut ServeConfig),
    fleet_cfg: impl FnOnce(&mut FleetConfig),
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let mut sc = ServeConfig::ephemeral(dir.path().join("controller"));
    cfg(&mut sc);
    let running = serve::start(sc).await.unwrap();
    let mut fc = FleetConfig {
        agents,
        inferences_per_sec: 25.0,
        telemetry_window_ms: 1_000,
        ..FleetConfig::default()
    };
    fleet_cfg(&mut fc);
    let fleet = Fleet::start(
        &running.handle(),
        running.mqtt_addr(),
        &fc,
        Some(dir.path().join("agents")),
    )
    .await
    .unwrap();
    wait_online(&running, agents).await;
    World {
        running,
        fleet,
        _dir: dir,
    }
}

async fn wait_online(running: &RunningController, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (online, _) = running.handle().devices_online().await.unwrap();
        if online as usize >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {online}/{n} agents online");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quick(model: String) -> StartBody {
    StartBody {
        model,
        waves: Some("25,100".into()),
        bake: Some(Duration::from_secs(3)),
        device_timeout: Some(Duration::from_secs(20)),
        metrics_interval: Some(Duration::from_secs(1)),
        ..StartBody::default()
    }
}

/// v1 from the reference trainer, rolled out to every device.
async fn install_v1(w: &World) -> drover_protocol::Version {
    let samples = drover_sim::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let ctl = w.running.handle();
    let v1 = push(&ctl, "sensor", onnx, csv, None, Some("production"))
        .await
        .unwrap();
    let (phase, status) = rollout_and_wait(
        &w.running.rollouts(),
        quick(format!("sensor@{v1}")),
        Duration::from_secs(60),
        "v1",
    )
    .await
    .unwrap();
    assert_eq!(phase, "completed", "{status:#}");
    w.fleet
        .wait_all_active(&format!("sensor@{v1}"), Duration::from_secs(30))
        .await
        .unwrap();
    v1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_version_is_promoted_and_bad_one_rolled_back_at_the_canary() {
    let w = world(8, |_| {}, |_| {}).await;
    let v1 = install_v1(&w).await;
    let ctl = w.running.handle();
    let samples = drover_sim::data::reference_samples(2000, 2);

    // A good v2 passes its gates and reaches every device.
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v2 = push(&ctl, "sensor", onnx, csv.clone(), Some(v1), None)
        .await
        .unwrap();
    let mut body = quick(format!("sensor@{v2}"));
    body.gates = vec![
        "p95_latency_ratio<=3.0".into(),
        "error_rate_delta<=0.02".into(),
        "accuracy_delta>=-0.15".into(),
    ];
    body.min_samples = Some(60);
    let (phase, status) =
        rollout_and_wait(&w.running.rollouts(), body, Duration::from_secs(90), "v2")
            .await
            .unwrap();
    assert_eq!(phase, "completed", "{status:#}");
    w.fleet
        .wait_all_active(&format!("sensor@{v2}"), Duration::from_secs(30))
        .await
        .unwrap();

    // A v3 that is less accurate (labels scrambled) fails the canary on
    // accuracy measured with label feedback, and is rolled back.
    let (onnx, _, _) = train_model(&samples, true).unwrap();
    let v3 = push(&ctl, "sensor", onnx, csv, Some(v2), None)
        .await
        .unwrap();
    let mut body = quick(format!("sensor@{v3}"));
    body.gates = vec!["accuracy_delta>=-0.15".into()];
    body.min_samples = Some(60);
    body.on_fail = Some("rollback".into());
    let (phase, status) =
        rollout_and_wait(&w.running.rollouts(), body, Duration::from_secs(90), "v3")
            .await
            .unwrap();
    assert_eq!(phase, "rolled_back", "{status:#}");
    let failed_gate = status["waves"][0]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["decision"] == "fail" && g["gate"]["metric"] == "accuracy_delta");
    assert!(failed_gate, "the canary failed on accuracy: {status:#}");
    // Only the canary ever ran v3, and every device serves v2 again.
    w.fleet
        .wait_all_active(&format!("sensor@{v2}"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status["waves"][1]["updated"], 0, "{status:#}");
    w.fleet.shutdown().await;
    w.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slower_version_fails_the_latency_gate() {
    let w = world(8, |_| {}, |_| {}).await;
    let ctl = w.running.handle();
    let csv = fixture("data/sensor_reference.csv");
    let v1 = push(
        &ctl,
        "sensor",
        fixture("models/sensor_clf_v1.onnx"),
        csv.clone(),
        None,
        None,
    )
    .await
    .unwrap();
    let (phase, _) = rollout_and_wait(
        &w.running.rollouts(),
        quick(format!("sensor@{v1}")),
        Duration::from_secs(60),
        "v1",
    )
    .await
    .unwrap();
    assert_eq!(phase, "completed");
    let slow = push(
        &ctl,
        "sensor",
        fixture("models/sensor_clf_slow.onnx"),
        csv,
        Some(v1),
        None,
    )
    .await
    .unwrap();
    let mut body = quick(format!("sensor@{slow}"));
    body.gates = vec!["p95_latency_ratio<=1.5".into()];
    body.min_samples = Some(60);
    let (phase, status) =
        rollout_and_wait(&w.running.rollouts(), body, Duration::from_secs(90), "slow")
            .await
            .unwrap();
    assert_eq!(phase, "rolled_back", "{status:#}");
    w.fleet
        .wait_all_active(&format!("sensor@{v1}"), Duration::from_secs(30))
        .await
        .unwrap();
    w.fleet.shutdown().await;
    w.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_offline_during_a_rollout_catches_up_when_back() {
    let w = world(6, |_| {}, |f| f.with_proxies = true).await;
    let v1 = install_v1(&w).await;
    let ctl = w.running.handle();
    let samples = drover_sim::data::reference_samples(2000, 3);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v2 = push(&ctl, "sensor", onnx, csv, Some(v1), None)
        .await
        .unwrap();

    // Cut one device's link, roll out to everyone else.
    let away = &w.fleet.devices[5];
    away.proxy.as_ref().unwrap().cut();
    let mut body = quick(format!("sensor@{v2}"));
    body.gates = vec!["error_rate_delta<=0.05".into()];
    body.min_samples = Some(30);
    // Whichever wave the absent device falls in, its silence must not stop
    // the others (a 2-device canary with it is 50 % silent).
    body.max_silent = Some("50%".into());
    let rollouts = w.running.rollouts();
    let spec = body.to_spec().map_err(|e| e.body.detail).unwrap();
    let id = rollouts.create(spec).await.unwrap().id;
    // The others update while it is away.
    for d in &w.fleet.devices[..5] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.active().await.as_deref() != Some(&format!("sensor@{v2}")) {
            assert!(Instant::now() < deadline, "{} never updated", d.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(away.active().await.unwrap(), format!("sensor@{v1}"));
    // Back online: it gets the version of its wave.
    away.proxy.as_ref().unwrap().restore();
    w.fleet
        .wait_all_active(&format!("sensor@{v2}"), Duration::from_secs(60))
        .await
        .unwrap();
    let detail = rollouts.detail(&id, 50).await.unwrap();
    assert!(detail.status.devices == 6);
    w.fleet.shutdown().await;
    w.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_download_resumes_after_restart() {
    // A slow artifact link (64 KiB/s) so the 4 MB model takes a while.
    let w = world(1, |c| c.chunk_rate_bytes_per_sec = 64 * 1024, |_| {}).await;
    let ctl = w.running.handle();
    let csv = fixture("data/sensor_reference.csv");
    let v = push(
        &ctl,
        "sensor",
        fixture("models/sensor_clf_slow.onnx"),
        csv,
        None,
        None,
    )
    .await
    .unwrap();
    let dev = &w.fleet.devices[0];
    ctl.deploy(&format!("sensor@{v}").parse().unwrap(), &dev.id, false)
        .await
        .unwrap();
    // Wait until part of it is on disk, then crash the agent.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = dev
            .with_agent(|a| a.status().downloads.first().map(|d| d.received))
            .await
            .flatten()
            .unwrap_or(0);
        if held > 256 * 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "download never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dev.crash().await;
    let served_before = served_bytes(&w.running).await;
    // Faster link for the rest, then restart on the same data dir.
    dev.start_agent().await.unwrap();
    w.fleet
        .wait_all_active(&format!("sensor@{v}"), Duration::from_secs(120))
        .await
        .unwrap();
    let served_total = served_bytes(&w.running).await;
    let size = fixture("models/sensor_clf_slow.onnx").len() as f64;
    // Part of it went out before the crash, and at least the whole model in
    // all; resumed, not restarted: everything served adds up to about one copy.
    assert!(
        served_before > 256 * 1024,
        "served before the crash: {served_before}"
    );
    assert!(
        served_total as f64 >= size,
        "served {served_total} bytes for a {size}-byte model"
    );
    assert!(
        (served_total as f64) < size * 1.5,
        "served {served_total} bytes for a {size}-byte model (before crash: {served_before})"
    );
    w.fleet.shutdown().await;
    w.running.shutdown().await;
}

async fn served_bytes(running: &RunningController) -> u64 {
    let text = running.handle().metrics_text().await;
    drover_sim::metrics::parse(&text)
        .get("drover_chunk_bytes_total")
        .map(|v| *v as u64)
        .unwrap_or_else(|| panic!("no drover_chunk_bytes_total on /metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_no_telemetry_window_and_counts_none_twice() {
    let mut broker = SpawnedMosquitto::start().await.unwrap();
    let url = broker.url();
    let w = world(
        4,
        |c| {
            c.broker = drover_controller::fleet::broker::BrokerChoice::External {
                host: "127.0.0.1".into(),
                port: broker.addr().port(),
                tls: false,
            }
        },
        |_| {},
    )
    .await;
    assert!(
        w.running
            .mqtt_addr()
            .contains(&broker.addr().port().to_string()),
        "{url}"
    );
    let v1 = install_v1(&w).await;
    let _ = v1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.stop();
    // Windows close while the broker is down; they wait in the outboxes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart().await.unwrap();
    wait_online(&w.running, 4).await;
    // Stop producing, let every outbox drain, then compare.
    for d in &w.fleet.devices {
        d.set_paused(true);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut depth = 0;
        for d in &w.fleet.devices {
            depth += d.with_agent(|a| a.status().outbox_depth).await.unwrap_or(0);
        }
        if depth == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "outboxes never drained ({depth} left)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every inference the devices made is in a stored window, once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for d in &w.fleet.devices {
        d.stop().await.unwrap();
    }
    let sum = w
        .running
        .handle()
        .telemetry_summary(TelemetryFilter {
            model: Some("sensor".into()),
            ..TelemetryFilter::default()
        })
        .await
        .unwrap();
    let (inferences, _, _, _) = w.fleet.totals();
    assert_eq!(
        sum.merged.count, inferences,
        "stored inference count equals what the devices did"
    );
    w.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_artifact_is_refused_fleet_wide_and_every_device_keeps_serving() {
    let w = world(5, |_| {}, |_| {}).await;
    let v1 = install_v1(&w).await;
    let ctl = w.running.handle();
    let samples = drover_sim::data::reference_samples(2000, 4);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v2 = push(&ctl, "sensor", onnx, csv, Some(v1), None)
        .await
        .unwrap();
    // Flip a byte of the stored artifact behind the registry's back.
    let m = ctl
        .model(&"sensor".parse().unwrap(), v2)
        .await
        .unwrap()
        .unwrap();
    let path = ctl
        .data_dir()
        .join("artifacts")
        .join(format!("{}.onnx", m.manifest.artifact.sha256));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let mut body = quick(format!("sensor@{v2}"));
    body.waves = Some("100".into());
    let _ = body;
    for d in &w.fleet.devices {
        ctl.deploy(&format!("sensor@{v2}").parse().unwrap(), &d.id, false)
            .await
            .unwrap();
    }
    // Every device reports the failure and still serves v1.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let devices = ctl.devices(&Default::default()).await.unwrap();
        let failed = devices
            .iter()
            .filter(|d| {
                d.deploy
                    .as_ref()
                    .is_some_and(|r| format!("{r:?}").contains("mismatch"))
            })
            .count();
        if failed == devices.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{failed}/{} devices refused the artifact",
            devices.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for d in &w.fleet.devices {
        assert_eq!(d.active().await.unwrap(), format!("sensor@{v1}"));
        let served = d
            .with_agent(|a| {
                a.infer(drover_agent::InferRequest::new(vec![45.0, 2.0, 12.0, 40.0]))
                    .is_ok()
            })
            .await
            .unwrap();
        assert!(served, "{} still serves", d.id);
    }
    w.fleet.shutdown().await;
    w.running.shutdown().await;
}
