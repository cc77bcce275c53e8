//! A controller killed mid-rollout resumes it correctly, and the demo's
//! whole story (drift → retraining → canary promotion → bad version rolled
//! back) runs end to end on a small fleet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, ServeConfig};
use drover_sim::demo::{push, train_model};
use drover_sim::fleet::{Fleet, FleetConfig};
use drover_sim::net::SpawnedMosquitto;

fn config(dir: &std::path::Path, broker: &SpawnedMosquitto) -> ServeConfig {
    let mut c = ServeConfig::ephemeral(dir);
    c.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    c
}

/// Deploy commands per device, from the controller's command log.
fn deploys(db: &std::path::Path) -> BTreeMap<String, u64> {
    let conn = rusqlite_open(db);
    let mut out = BTreeMap::new();
    let mut stmt = conn
        .prepare("SELECT device, COUNT(*) FROM commands WHERE kind = 'deploy' AND model = 'sensor@2' GROUP BY device")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    for r in rows {
        let (d, n) = r.unwrap();
        out.insert(d, n as u64);
    }
    out
}

fn rusqlite_open(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_rollout_resumes_without_resending_or_skipping_gates() {
    let broker = SpawnedMosquitto::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    let running = serve::start(config(&data, &broker)).await.unwrap();
    let ctl = running.handle();
    let fleet = Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &FleetConfig {
            agents: 8,
            inferences_per_sec: 25.0,
            telemetry_window_ms: 1_000,
            ..FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await
    .unwrap();
    let samples = drover_sim::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx, csv.clone(), None, Some("production"))
        .await
        .unwrap();
    for d in &fleet.devices {
        ctl.deploy(&format!("sensor@{v1}").parse().unwrap(), &d.id, false)
            .await
            .unwrap();
    }
    fleet
        .wait_all_active("sensor@1", Duration::from_secs(60))
        .await
        .unwrap();
    let (onnx, _, _) = train_model(&drover_sim::data::reference_samples(2000, 2), false).unwrap();
    let v2 = push(&ctl, "sensor", onnx, csv, Some(v1), None)
        .await
        .unwrap();
    assert_eq!(v2.0, 2);

    let body = StartBody {
        model: format!("sensor@{v2}"),
        id: Some("resume-me".into()),
        waves: Some("25,100".into()),
        bake: Some(Duration::from_secs(4)),
        gates: vec!["error_rate_delta<=0.05".into()],
        min_samples: Some(50),
        device_timeout: Some(Duration::from_secs(30)),
        metrics_interval: Some(Duration::from_secs(1)),
        ..StartBody::default()
    };
    let rollouts = running.rollouts();
    rollouts
        .create(body.to_spec().map_err(|e| e.body.detail).unwrap())
        .await
        .unwrap();
    // Wait until the canary is updated and baking, then kill the controller.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = rollouts.detail("resume-me", 1).await.unwrap();
        if d.status.phase.name() == "baking" && d.status.waves[0].updated >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "canary never baked: {:?}",
            d.status.phase
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let canary_before = deploys(&data.join("drover.db"));
    running.kill();

    // A new controller on the same data dir picks the rollout up.
    let running = serve::start(config(&data, &broker)).await.unwrap();
    let rollouts = running.rollouts();
    let deadline = Instant::now() + Duration::from_secs(90);
    let detail = loop {
        let d = rollouts.detail("resume-me", 200).await.unwrap();
        if !d.status.active {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "resumed rollout never finished: {:?}",
            d.status.phase
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        detail.status.phase.name(),
        "completed",
        "{:?}",
        detail.status.phase
    );
    fleet
        .wait_all_active("sensor@2", Duration::from_secs(30))
        .await
        .unwrap();
    // Finished work was not resent: canary devices got exactly one deploy.
    let after = deploys(&data.join("drover.db"));
    for (device, n) in &canary_before {
        assert_eq!(
            after.get(device),
            Some(n),
            "{device} was commanded again after the restart"
        );
    }
    // No gate was skipped: the restart is audited, and both waves were
    // gated on data evaluated after it.
    let kinds: Vec<String> = detail
        .audit
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap_or("").to_string())
        .collect();
    let restarted = kinds
        .iter()
        .position(|k| k == "restarted")
        .expect("restart audited");
    let gated_after = kinds[restarted..]
        .iter()
        .filter(|k| *k == "gates_evaluated")
        .count();
    assert!(gated_after >= 2, "gates after restart: {kinds:?}");
    fleet.shutdown().await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrain_canary_and_bad_version_story_runs_end_to_end() {
    let summary = drover_sim::demo::run(drover_sim::demo::DemoOptions {
        agents: 12,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        summary.rollouts.get("sensor@1").map(String::as_str),
        Some("completed")
    );
    assert_eq!(
        summary.rollouts.get("sensor@2").map(String::as_str),
        Some("completed")
    );
    assert_eq!(
        summary.rollouts.get("sensor@3").map(String::as_str),
        Some("rolled_back")
    );
    assert!(summary.retrain_job.is_some());
    assert_eq!(
        summary.versions.get("sensor@2"),
        Some(&12),
        "{:?}",
        summary.versions
    );
    assert!(summary.windows > 0 && summary.totals.0 > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_retraining_hook_leaves_the_fleet_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("controller");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("controller.toml"),
        r#"[retrain.sensor]
psi_threshold = 0.1
consecutive = 2
min_samples = 200
interval = "1s"
window = "4s"
cohort_key = "region"

[retrain.sensor.capture]
devices = 2
samples_per_device = 100
timeout = "10s"

[retrain.sensor.hook]
kind = "exec"
command = "sh"
args = ["-c", "echo training blew up >&2; exit 3"]
timeout = "20s"

[retrain.sensor.auto_rollout]
enabled = true
waves = [50, 100]
bake = "2s"
"#,
    )
    .unwrap();
    let running = serve::start(ServeConfig::ephemeral(&data)).await.unwrap();
    let ctl = running.handle();
    let fleet = Fleet::start(
        &ctl,
        running.mqtt_addr(),
        &FleetConfig {
            agents: 6,
            inferences_per_sec: 30.0,
            telemetry_window_ms: 1_000,
            ..FleetConfig::default()
        },
        Some(dir.path().join("agents")),
    )
    .await
    .unwrap();
    let samples = drover_sim::data::reference_samples(2000, 1);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx, csv, None, Some("production"))
        .await
        .unwrap();
    for d in &fleet.devices {
        ctl.deploy(&format!("sensor@{v1}").parse().unwrap(), &d.id, false)
            .await
            .unwrap();
    }
    fleet
        .wait_all_active("sensor@1", Duration::from_secs(60))
        .await
        .unwrap();
    for d in fleet.with_label("region", "eu") {
        d.set_drift(Some(drover_sim::data::Drift {
            feature: 1,
            shift_sigma: 2.0,
        }));
    }
    let retrain = running.retrain();
    let model = drover_protocol::ModelName::new("sensor").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let job = loop {
        let jobs = retrain.jobs(Some(model.clone()), 5).await.unwrap();
        if let Some(j) = jobs.first() {
            let job = retrain.job(j.id).await.unwrap().unwrap();
            if job.state == drover_controller::retraining::JobState::Failed {
                break job;
            }
            assert!(
                !matches!(
                    job.state,
                    drover_controller::retraining::JobState::Pushed
                        | drover_controller::retraining::JobState::RolledOut
                ),
                "a failing hook must not push: {job:?}"
            );
        }
        assert!(Instant::now() < deadline, "no failed retraining job");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let why = job.failure.clone().unwrap_or_default();
    assert!(why.contains('3') || why.contains("blew up"), "{why}");
    // Nothing reached the fleet: no new version, no rollout, v1 everywhere.
    let models = ctl.models().await.unwrap();
    assert_eq!(models.len(), 1, "only v1 in the registry: {models:?}");
    assert!(running.rollouts().list().await.is_empty());
    for d in &fleet.devices {
        assert_eq!(d.active().await.as_deref(), Some("sensor@1"));
    }
    fleet.shutdown().await;
    running.shutdown().await;
}
