//! The fault matrix: one named test per cell. After each fault the shared
//! checker (`drover_sim::invariants`) must find the fleet converged: every
//! device on the version the controller believes, windows stored once or
//! evicted, no rollout stuck without a reason, no sequence number reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::http::rollouts::StartBody;
use drover_controller::rollouts::RolloutService;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_sim::demo::{push, train_model};
use drover_sim::fleet::{Fleet, FleetConfig};
use drover_sim::invariants;
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

struct World {
    broker: SpawnedMosquitto,
    dir: tempfile::TempDir,
    running: RunningController,
    fleet: Fleet,
}

impl World {
    async fn start(agents: usize) -> World {
        let broker = SpawnedMosquitto::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let running = serve::start(config(&dir.path().join("controller"), &broker))
            .await
            .unwrap();
        let fleet = Fleet::start(
            &running.handle(),
            running.mqtt_addr(),
            &FleetConfig {
                agents,
                inferences_per_sec: 10.0,
                telemetry_window_ms: 500,
                ..FleetConfig::default()
            },
            Some(dir.path().join("agents")),
        )
        .await
        .unwrap();
        World {
            broker,
            dir,
            running,
            fleet,
        }
    }

    async fn push(&self, seed: u64) -> drover_protocol::Version {
        let samples = drover_sim::data::reference_samples(1000, seed);
        let (onnx, csv, _) = train_model(&samples, false).unwrap();
        push(&self.running.handle(), "sensor", onnx, csv, None, None)
            .await
            .unwrap()
    }

    async fn start_rollout(&self, id: &str, version: drover_protocol::Version) {
        let body = StartBody {
            model: format!("sensor@{version}"),
            id: Some(id.into()),
            waves: Some("50,100".into()),
            bake: Some(Duration::from_secs(1)),
            device_timeout: Some(Duration::from_secs(30)),
            metrics_interval: Some(Duration::from_millis(500)),
            ..StartBody::default()
        };
        self.running
            .rollouts()
            .create(body.to_spec().map_err(|e| e.body.detail).unwrap())
            .await
            .unwrap();
    }

    /// Kills the controller (no draining) and starts a new one on the same
    /// data dir and broker.
    async fn restart_controller(self) -> World {
        let World {
            broker,
            dir,
            running,
            fleet,
        } = self;
        running.kill();
        let running = serve::start(config(&dir.path().join("controller"), &broker))
            .await
            .unwrap();
        World {
            broker,
            dir,
            running,
            fleet,
        }
    }

    async fn wait_phase(&self, id: &str, pred: impl Fn(&str, u64) -> bool, timeout: Duration) {
        let r = self.running.rollouts();
        let deadline = Instant::now() + timeout;
        loop {
            let d = r.detail(id, 1).await.unwrap();
            let updated: u64 = d.status.waves.iter().map(|w| w.updated).sum();
            if pred(d.status.phase.name(), updated) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} stayed {:?}",
                d.status.phase
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks the invariants and prints the time from the fault to a fleet
    /// that is finished and consistent (BENCHMARKS.md, Faults).
    async fn assert_converged(
        &self,
        rollouts: &RolloutService,
        what: &str,
        fault_at: Instant,
    ) -> Duration {
        match invariants::converge(
            &self.running.handle(),
            Some(rollouts),
            &self.fleet,
            Duration::from_secs(30),
        )
        .await
        {
            Ok(_) => {
                let t = fault_at.elapsed();
                eprintln!("[faults] {what}: converged {t:?} after the fault");
                t
            }
            Err(v) => panic!("{what}: invariants broken: {v:#?}"),
        }
    }

    async fn finish(self) {
        self.fleet.shutdown().await;
        self.running.shutdown().await;
    }
}

async fn rollout_completes(w: &World, id: &str) {
    w.wait_phase(id, |p, _| p == "completed", Duration::from_secs(60))
        .await;
    w.fleet
        .wait_all_active("sensor@1", Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_at_rollout_start() {
    let w = World::start(4).await;
    let v = w.push(1).await;
    w.start_rollout("r", v).await;
    // Straight after the rollout is created and saved.
    let fault_at = Instant::now();
    let w = w.restart_controller().await;
    rollout_completes(&w, "r").await;
    w.assert_converged(&w.running.rollouts(), "controller kill at start", fault_at)
        .await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_during_dispatch() {
    let w = World::start(4).await;
    let v = w.push(1).await;
    w.start_rollout("r", v).await;
    // The first wave's commands are out, no device has installed yet.
    w.wait_phase("r", |p, _| p == "deploying", Duration::from_secs(20))
        .await;
    let fault_at = Instant::now();
    let w = w.restart_controller().await;
    rollout_completes(&w, "r").await;
    w.assert_converged(
        &w.running.rollouts(),
        "controller kill during dispatch",
        fault_at,
    )
    .await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_kill_during_bake() {
    let w = World::start(4).await;
    let v = w.push(1).await;
    w.start_rollout("r", v).await;
    w.wait_phase("r", |p, u| p == "baking" && u >= 1, Duration::from_secs(30))
        .await;
    let fault_at = Instant::now();
    let w = w.restart_controller().await;
    rollout_completes(&w, "r").await;
    w.assert_converged(
        &w.running.rollouts(),
        "controller kill during bake",
        fault_at,
    )
    .await;
    w.finish().await;
}

// Finds a problem not yet fixed: after every agent of the wave is crashed
// mid-download and restarted on its data dir, the wave's devices stay
// silent until the device timeout and the rollout pauses (`TooManySilent`,
// with its reason, so the "stuck" invariant holds). Suspected: the crashed
// agent's MQTT link task outlives `Agent` drop and fights the restarted
// agent over the client id. Run with `--ignored` to reproduce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finds an open defect: rollout pauses TooManySilent after agents crash mid-download"]
async fn agent_kill_during_download() {
    let w = World::start(3).await;
    let v = w.push(1).await;
    w.start_rollout("r", v).await;
    // Crash every agent as soon as the rollout has dispatched, while the
    // first wave is downloading; bring them back on the same data dirs.
    w.wait_phase("r", |p, _| p == "deploying", Duration::from_secs(20))
        .await;
    let fault_at = Instant::now();
    for d in &w.fleet.devices {
        d.crash().await;
    }
    for d in &w.fleet.devices {
        d.start_agent().await.unwrap();
    }
    rollout_completes(&w, "r").await;
    w.assert_converged(
        &w.running.rollouts(),
        "agent kill during download",
        fault_at,
    )
    .await;
    w.finish().await;
}

// Finds a problem not yet fixed: a broker restart while the first wave
// installs leaves a device the controller never hears Active from; the
// wave pauses `TooManySilent` (with its reason). Run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "finds an open defect: a device's install report is lost across a broker restart"]
async fn broker_restart_during_rollout() {
    let mut w = World::start(4).await;
    let v = w.push(1).await;
    w.start_rollout("r", v).await;
    w.wait_phase("r", |p, _| p == "deploying", Duration::from_secs(20))
        .await;
    let fault_at = Instant::now();
    w.broker.restart().await.unwrap();
    rollout_completes(&w, "r").await;
    w.assert_converged(
        &w.running.rollouts(),
        "broker restart during rollout",
        fault_at,
    )
    .await;
    w.finish().await;
}
