//! Fault matrix, controller side: a real `drover serve` process (the tests
//! crate's `drover-sim-controller`, built with the `sim` fault points)
//! aborts (SIGABRT: what `kill -9` leaves is what SQLite committed) at an
//! exact rollout phase named by `DROVER_SIM_FAULT`; a controller started
//! again on the same data dir (in-process, so the test can read its state)
//! must finish the rollout, and the shared invariants must hold. The fleet
//! is in-process agents on a Mosquitto broker both controllers use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_protocol::Version;
use drover_sim::demo::{push, train_model};
use drover_sim::fleet::{Fleet, FleetConfig};
use drover_sim::invariants;
use drover_sim::net::{SpawnedMosquitto, free_port};
use drover_sim::procs::{ProcController, died_by_signal};
use serde_json::json;

const CONTROLLER_BIN: &str = env!("CARGO_BIN_EXE_drover-sim-controller");

fn config(dir: &Path, broker: &SpawnedMosquitto) -> ServeConfig {
    let mut c = ServeConfig::ephemeral(dir);
    c.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    c
}

struct World {
    broker: SpawnedMosquitto,
    _dir: tempfile::TempDir,
    data: PathBuf,
    token: String,
    fleet: Fleet,
    http: reqwest::Client,
}

impl World {
    /// Mosquitto, a controller (in-process) that registers `agents` devices
    /// and pushes v1 and v2, and the fleet. The controller is stopped
    /// cleanly before returning; the cell's process takes over its data dir.
    async fn start(agents: usize, install_v1: bool) -> (World, Version, Version) {
        World::start_with(agents, install_v1, None).await
    }

    /// As [`World::start`]; `controller_toml` goes to
    /// `DATA_DIR/controller.toml`, which every controller on the data dir reads.
    async fn start_with(
        agents: usize,
        install_v1: bool,
        controller_toml: Option<&str>,
    ) -> (World, Version, Version) {
        let broker = SpawnedMosquitto::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("controller");
        if let Some(t) = controller_toml {
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("controller.toml"), t).unwrap();
        }
        let running = serve::start(config(&data, &broker)).await.unwrap();
        let token = running.admin_token().unwrap().to_string();
        let ctl = running.handle();
        let fleet = Fleet::start(
            &ctl,
            running.mqtt_addr(),
            &FleetConfig {
                agents,
                inferences_per_sec: 20.0,
                feedback_rate: 0.5,
                telemetry_window_ms: 500,
                ..FleetConfig::default()
            },
            Some(dir.path().join("agents")),
        )
        .await
        .unwrap();
        let mut versions = Vec::new();
        for seed in [1, 2] {
            let samples = drover_sim::data::reference_samples(1000, seed);
            let (onnx, csv, _) = train_model(&samples, false).unwrap();
            versions.push(push(&ctl, "sensor", onnx, csv, None, None).await.unwrap());
        }
        let (v1, v2) = (versions[0], versions[1]);
        if install_v1 {
            let body = StartBody {
                model: format!("sensor@{v1}"),
                id: Some("r1".into()),
                waves: Some("50,100".into()),
                bake: Some(Duration::from_millis(500)),
                device_timeout: Some(Duration::from_secs(30)),
                metrics_interval: Some(Duration::from_millis(500)),
                ..StartBody::default()
            };
            let r = running.rollouts();
            r.create(body.to_spec().map_err(|e| e.body.detail).unwrap())
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while r.detail("r1", 1).await.unwrap().status.phase.name() != "completed" {
                assert!(Instant::now() < deadline, "r1 never completed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            fleet
                .wait_all_active(&format!("sensor@{v1}"), Duration::from_secs(30))
                .await
                .unwrap();
        }
        running.shutdown().await;
        let w = World {
            broker,
            _dir: dir,
            data,
            token,
            fleet,
            http: reqwest::Client::new(),
        };
        (w, v1, v2)
    }

    /// Starts `drover serve` on the data dir, armed with `fault`.
    async fn spawn(&self, fault: &str) -> (ProcController, String) {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let p = ProcController::start(
            Path::new(CONTROLLER_BIN),
            &self.data,
            &self.broker.url(),
            http,
            Some(fault),
        )
        .unwrap();
        let base = format!("http://{http}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "controller never listened:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (p, base)
    }

    /// `POST` to the process's API; errors are fine (it may die mid-call).
    async fn post(&self, url: String, body: serde_json::Value) -> Option<serde_json::Value> {
        let r = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn phase_of(&self, base: &str, id: &str) -> Option<String> {
        let r = self
            .http
            .get(format!("{base}/v1/rollouts/{id}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        // The phase serializes tagged (`{"phase": "baking", ...}`).
        Some(v["status"]["phase"].to_string())
    }

    /// Waits for the process to abort at its fault point; then starts the
    /// controller again on the same data dir (in-process).
    async fn crash_and_restart(&self, mut p: ProcController) -> (RunningController, Instant) {
        let st = p.wait_exit(Duration::from_secs(90)).await.unwrap();
        assert!(died_by_signal(&st), "not aborted: {st:?}\n{}", p.log());
        assert!(
            p.log().contains("DROVER_SIM_FAULT: abort at"),
            "{}",
            p.log()
        );
        let at = Instant::now();
        let running = serve::start(config(&self.data, &self.broker))
            .await
            .unwrap();
        (running, at)
    }

    async fn wait_phase(&self, running: &RunningController, id: &str, phase: &str) {
        let r = running.rollouts();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let d = r.detail(id, 1).await.unwrap();
            if d.status.phase.name() == phase {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} stayed {:?}, wanted {phase}",
                d.status.phase
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn assert_converged(&self, running: &RunningController, what: &str, at: Instant) {
        match invariants::converge(
            &running.handle(),
            Some(&running.rollouts()),
            &self.fleet,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(_) => eprintln!(
                "[faults] {what}: converged {:?} after the fault",
                at.elapsed()
            ),
            Err(v) => panic!("{what}: invariants broken: {v:#?}"),
        }
    }

    async fn finish(self, running: RunningController) {
        self.fleet.shutdown().await;
        running.shutdown().await;
    }
}

fn start_body(id: &str, v: Version, bake: &str) -> serde_json::Value {
    json!({
        "model": format!("sensor@{v}"),
        "id": id,
        "waves": "50,100",
        "bake": bake,
        // The cells test faults, not gate statistics.
        "gates": ["error_rate_delta<=1.0"],
        "min_samples": 5,
        "device_timeout": "30s",
        "metrics_interval": "500ms",
    })
}

/// The process dies at `point` during v2's rollout; the restarted
/// controller finishes it and every device runs v2.
async fn rollout_cell(point: &str) {
    let (w, _v1, v2) = World::start(4, true).await;
    let (p, base) = w.spawn(point).await;
    w.post(format!("{base}/v1/rollouts"), start_body("r2", v2, "1s"))
        .await;
    let (running, at) = w.crash_and_restart(p).await;
    w.wait_phase(&running, "r2", "completed").await;
    w.fleet
        .wait_all_active(&format!("sensor@{v2}"), Duration::from_secs(30))
        .await
        .unwrap();
    w.assert_converged(&running, point, at).await;
    w.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_at_rollout_start() {
    rollout_cell("rollout.start").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_during_dispatch() {
    rollout_cell("rollout.dispatch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_during_bake() {
    rollout_cell("rollout.bake").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_at_gate_evaluation() {
    rollout_cell("rollout.gate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_between_telemetry_commit_and_ack() {
    // Power-loss cell, controller side: windows committed, no ack sent. The
    // agents resend; the primary key stores each window once.
    rollout_cell("telemetry.stored@5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_during_rollback() {
    let (w, v1, v2) = World::start(4, true).await;
    let (p, base) = w.spawn("rollout.rollback").await;
    // A long bake holds the first wave so the operator can roll it back.
    w.post(format!("{base}/v1/rollouts"), start_body("r2", v2, "60s"))
        .await
        .expect("rollout started");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ph = w.phase_of(&base, "r2").await.unwrap_or_default();
        if ph.contains("baking") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r2 never baked: {ph}\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.post(format!("{base}/v1/rollouts/r2/rollback"), json!({}))
        .await;
    let (running, at) = w.crash_and_restart(p).await;
    w.wait_phase(&running, "r2", "rolled_back").await;
    w.fleet
        .wait_all_active(&format!("sensor@{v1}"), Duration::from_secs(30))
        .await
        .unwrap();
    w.assert_converged(&running, "rollout.rollback", at).await;
    w.finish(running).await;
}

/// Retraining that runs on a manual request: capture from every device,
/// the builtin trainer, an automatic one-wave rollout of the result.
const RETRAIN_TOML: &str = r#"[retrain.sensor]
psi_threshold = 10.0
consecutive = 1000
min_samples = 1000000
interval = "1h"
window = "1h"

[retrain.sensor.capture]
devices = 4
samples_per_device = 200
max_bytes_per_device = 262144
timeout = "5s"

[retrain.sensor.dataset]
label_column = "label"
min_labelled_rows = 20
max_reference_rows = 3000

[retrain.sensor.hook]
kind = "builtin"

[retrain.sensor.auto_rollout]
enabled = true
waves = [50, 100]
bake = "1s"
gates = ["error_rate_delta<=1.0"]
"#;

/// The process dies at a retraining `point` of a manual run; the restarted
/// controller must finish the job (rolled out, or failed with a reason an
/// operator can read), leave no rollout stuck, and keep the invariants.
async fn retrain_cell(point: &str) {
    use drover_controller::retraining::JobState;
    let (w, _v1, _v2) = World::start_with(4, true, Some(RETRAIN_TOML)).await;
    let (p, base) = w.spawn(point).await;
    w.post(format!("{base}/v1/retrain"), json!({ "model": "sensor" }))
        .await;
    let (running, at) = w.crash_and_restart(p).await;
    let retrain = running.retrain();
    let model = drover_protocol::ModelName::new("sensor").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let jobs = retrain.jobs(Some(model.clone()), 5).await.unwrap();
        let j = jobs.into_iter().next().expect("the manual job was saved");
        let j = retrain.job(j.id).await.unwrap().unwrap();
        match j.state {
            // Automatic rollouts are on: `pushed` is a step, not an end; a
            // job that stays there (its rollout never recorded) is stuck.
            JobState::RolledOut => break j,
            JobState::Failed => {
                let why = j.failure.clone().unwrap_or_default();
                assert!(
                    !why.trim().is_empty(),
                    "{point}: job failed without a reason"
                );
                break j;
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{point}: job {} stuck {}",
            j.id,
            j.state.as_str()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One job, at most one version: a restart must not push it twice.
    let c = running.handle();
    let mut of_job = vec![];
    for m in c.models().await.unwrap() {
        if m.name != "sensor" {
            continue;
        }
        let v = drover_protocol::Version(m.version);
        let stored = c.model(&model, v).await.unwrap().unwrap();
        if stored.manifest.lineage.retrain_job == Some(job.id) {
            of_job.push(m.version);
        }
    }
    assert!(
        of_job.len() <= 1,
        "{point}: job {} pushed versions {of_job:?}",
        job.id
    );
    if job.state == JobState::RolledOut {
        assert_eq!(of_job, vec![job.result_version.unwrap().0], "{point}");
    }
    // The rollout the job started (if any) is left to the invariants: moving,
    // ended, or stopped with a reason.
    if let Some(id) = &job.rollout_id {
        let st = running.rollouts().detail(id, 1).await.unwrap().status;
        eprintln!("[faults] {point}: rollout {id} {}", st.phase.name());
    }
    eprintln!(
        "[faults] {point}: job {} ended {} (version {:?}, rollout {:?}, failure {:?})",
        job.id,
        job.state.as_str(),
        job.result_version,
        job.rollout_id,
        job.failure
    );
    w.assert_converged(&running, point, at).await;
    w.finish(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_during_retrain_capture() {
    retrain_cell("retrain.capture").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_while_retrain_hook_runs() {
    retrain_cell("retrain.hook").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_after_retrain_push() {
    retrain_cell("retrain.push").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_at_retrain_auto_rollout_start() {
    retrain_cell("retrain.auto_rollout").await;
}
