//! Fault matrix, agent side: a real `drover-agent` process (the tests
//! crate's `drover-sim-agent`, built with the `sim` fault points) aborted
//! (SIGABRT, what `kill -9` leaves: no flush, no Offline) at an exact phase
//! by `DROVER_SIM_FAULT`, then started again on its data dir. Each cell runs
//! its own controller (in-process), Mosquitto and two agents: the faulted
//! one and a bystander in the same rollout. Afterwards the rollout must
//! finish and the shared invariants (`drover_sim::invariants`) must hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_controller::fleet::broker::BrokerChoice;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, RunningController, ServeConfig};
use drover_protocol::Version;
use drover_protocol::messages::Action;
use drover_sim::data::SensorStream;
use drover_sim::demo::{push, train_model};
use drover_sim::invariants::{self, DeviceState};
use drover_sim::net::SpawnedMosquitto;
use drover_sim::procs::{ProcAgent, died_by_signal};
use tokio::sync::Mutex;

const AGENT_BIN: &str = env!("CARGO_BIN_EXE_drover-sim-agent");

struct World {
    _broker: SpawnedMosquitto,
    _dir: tempfile::TempDir,
    running: RunningController,
    /// `[faulted, bystander]`.
    agents: Arc<Mutex<Vec<ProcAgent>>>,
    traffic: Arc<AtomicBool>,
}

impl World {
    async fn start() -> World {
        let broker = SpawnedMosquitto::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut c = ServeConfig::ephemeral(dir.path().join("controller"));
        c.broker = BrokerChoice::External {
            host: "127.0.0.1".into(),
            port: broker.addr().port(),
            tls: false,
        };
        let running = serve::start(c).await.unwrap();
        let ctl = running.handle();
        let mut agents = Vec::new();
        for name in ["faulted", "bystander"] {
            agents.push(
                ProcAgent::register(
                    &ctl,
                    Path::new(AGENT_BIN),
                    &dir.path().join(name),
                    &format!("dev-{name}"),
                    &broker.url(),
                )
                .await
                .unwrap(),
            );
        }
        World {
            _broker: broker,
            _dir: dir,
            running,
            agents: Arc::new(Mutex::new(agents)),
            traffic: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts both agents, the first armed with `fault`, and a traffic loop
    /// (inference requests over each agent's HTTP API).
    async fn start_agents(&self, fault: &str) {
        {
            let mut a = self.agents.lock().await;
            a[0].start(Some(fault)).await.unwrap();
            a[1].start(None).await.unwrap();
        }
        let (agents, on) = (self.agents.clone(), self.traffic.clone());
        tokio::spawn(async move {
            let mut s = SensorStream::new(7);
            while on.load(Ordering::SeqCst) {
                let f: Vec<f32> = s.next_sample().features.to_vec();
                {
                    let a = agents.lock().await;
                    for a in a.iter() {
                        a.infer(&f).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    async fn push(&self, seed: u64) -> Version {
        let samples = drover_sim::data::reference_samples(1000, seed);
        let (onnx, csv, _) = train_model(&samples, false).unwrap();
        push(&self.running.handle(), "sensor", onnx, csv, None, None)
            .await
            .unwrap()
    }

    /// A rollout in waves 50,100. An upgrade (not a first install) is gated
    /// on the error rate only, with a low sample floor: the cells test
    /// faults, not gate statistics; with a shadow phase, a shadow gate any
    /// agreement passes.
    async fn rollout(&self, id: &str, version: Version, shadow: Option<Duration>) {
        let upgrade = version.0 > 1;
        let mut gates = Vec::new();
        if upgrade {
            gates.push("error_rate_delta<=1.0".to_string());
            if shadow.is_some() {
                gates.push("shadow_agreement>=0.0".to_string());
            }
        }
        let body = StartBody {
            gates,
            min_samples: upgrade.then_some(5),
            model: format!("sensor@{version}"),
            id: Some(id.into()),
            waves: Some("50,100".into()),
            bake: Some(Duration::from_secs(1)),
            shadow,
            device_timeout: Some(Duration::from_secs(60)),
            metrics_interval: Some(Duration::from_millis(500)),
            ..StartBody::default()
        };
        self.running
            .rollouts()
            .create(body.to_spec().map_err(|e| e.body.detail).unwrap())
            .await
            .unwrap();
    }

    async fn wait_completed(&self, id: &str) {
        let r = self.running.rollouts();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let d = r.detail(id, 1).await.unwrap();
            if d.status.phase.name() == "completed" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} stayed {:?}; faulted agent log:\n{}",
                d.status.phase,
                self.agents.lock().await[0].log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the armed agent to abort at its fault point, then starts it
    /// again (unarmed) on the same data dir. Returns when it was restarted.
    async fn crash_and_restart(&self) -> Instant {
        let mut a = self.agents.lock().await;
        let st = a[0]
            .wait_exit(Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| {
                panic!("{e:#}; log:\n{}", a[0].log());
            });
        assert!(died_by_signal(&st), "not aborted: {st:?}\n{}", a[0].log());
        assert!(a[0].log().contains("DROVER_SIM_FAULT: abort at"));
        let at = Instant::now();
        a[0].start(None).await.unwrap();
        at
    }

    async fn states(&self) -> Vec<DeviceState> {
        let a = self.agents.lock().await;
        let mut out = Vec::new();
        for a in a.iter() {
            out.push(DeviceState {
                id: a.id.to_string(),
                status: a.status().await,
            });
        }
        out
    }

    async fn assert_converged(&self, what: &str, fault_at: Instant) {
        // Both agents answer first: a down agent is skipped by the checker.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.states().await.iter().all(|s| s.status.is_some()) {
            assert!(
                Instant::now() < deadline,
                "{what}: an agent is not answering after the restart"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ctl = self.running.handle();
        let rollouts = self.running.rollouts();
        let r = invariants::converge_with(&ctl, Some(&rollouts), Duration::from_secs(30), || {
            self.states()
        })
        .await;
        match r {
            Ok(_) => {
                let states = self.states().await;
                assert!(
                    states.iter().all(|s| s.status.is_some()),
                    "{what}: an agent is not answering after the restart"
                );
                eprintln!(
                    "[faults] {what}: converged {:?} after the fault",
                    fault_at.elapsed()
                );
            }
            Err(v) => panic!(
                "{what}: invariants broken: {v:#?}\nfaulted agent log:\n{}",
                self.agents.lock().await[0].log()
            ),
        }
    }

    async fn finish(self) {
        self.traffic.store(false, Ordering::SeqCst);
        for a in self.agents.lock().await.iter_mut() {
            a.kill().await;
        }
        self.running.shutdown().await;
    }
}

/// The agent dies at `point` during the first install; the install must
/// still complete on both devices after the restart.
async fn install_cell(point: &str) {
    let w = World::start().await;
    w.start_agents(point).await;
    let v1 = w.push(1).await;
    w.rollout("r1", v1, None).await;
    let fault_at = w.crash_and_restart().await;
    w.wait_completed("r1").await;
    w.assert_converged(point, fault_at).await;
    let a = w.agents.lock().await;
    for a in a.iter() {
        let s = a.status().await.unwrap();
        assert_eq!(s.active.as_deref(), Some(format!("sensor@{v1}").as_str()));
        assert!(s.downloads.is_empty(), "{:?}", s.downloads);
    }
    drop(a);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_during_download() {
    // A chunk written and its progress recorded: the restart resumes there.
    install_cell("deploy.download").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_right_after_accepting_the_command() {
    // Accepted and acknowledged, its sequence stored, but no download
    // recorded yet: the restart carries the stored command out (the Hello's
    // sequence says "accepted", so the controller does not send it again).
    install_cell("command.accepted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_at_verify() {
    install_cell("deploy.verify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_at_load() {
    install_cell("deploy.load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_at_health_check() {
    install_cell("deploy.health_check").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_at_activate() {
    install_cell("deploy.activate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_between_window_commit_and_send() {
    // Power-loss cell, agent side: the window is in the outbox (committed),
    // not yet published. After the restart it is sent, stored once.
    install_cell("telemetry.outbox@3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_in_guard_window() {
    // The first window the local guard judges after the install went active.
    install_cell("guard.window").await;
}

// The agent dies as a window takes the shadow comparisons. After the
// restart the candidate is shadowed again, the shadow gate gets its
// `shadow_agreement` samples and the rollout completes; the invariants hold.
// (It used to pause Inconclusive with 0 samples: the agent put the
// comparisons on the active model's window, the gate reads the candidate's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_during_shadow_evaluation() {
    let w = World::start().await;
    w.start_agents("shadow.window").await;
    let v1 = w.push(1).await;
    w.rollout("r1", v1, None).await;
    w.wait_completed("r1").await;
    let v2 = w.push(2).await;
    w.rollout("r2", v2, Some(Duration::from_secs(2))).await;
    let fault_at = w.crash_and_restart().await;
    let r = w.running.rollouts();
    let deadline = Instant::now() + Duration::from_secs(90);
    let phase = loop {
        let d = r.detail("r2", 1).await.unwrap();
        if !d.status.active || d.status.phase.name() == "paused" {
            break d.status.phase;
        }
        assert!(Instant::now() < deadline, "r2 stayed {:?}", d.status.phase);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("[faults] shadow.window: r2 ended {phase:?}");
    assert_eq!(phase.name(), "completed", "{phase:?}");
    w.assert_converged("shadow.window", fault_at).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_during_capture_upload() {
    let w = World::start().await;
    w.start_agents("capture.upload").await;
    let v1 = w.push(1).await;
    w.rollout("r1", v1, None).await;
    w.wait_completed("r1").await;
    let ctl = w.running.handle();
    let id = w.agents.lock().await[0].id.clone();
    let capture = Action::Capture {
        max_samples: 100,
        max_bytes: 64 * 1024,
    };
    ctl.send_command(&id, capture.clone()).await.unwrap();
    let fault_at = w.crash_and_restart().await;
    w.assert_converged("capture.upload", fault_at).await;
    // The restarted agent takes the next capture (a fresh sequence number).
    let seq = ctl.send_command(&id, capture).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = w.agents.lock().await[0].status().await;
        if s.is_some_and(|s| s.last_command_seq >= seq) {
            break;
        }
        assert!(Instant::now() < deadline, "capture {seq} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.assert_converged("capture.upload (after)", fault_at).await;
    w.finish().await;
}

/// Device clocks hours off. The agent judges command expiry against the
/// controller's clock carried by the newest accepted command, not its own
/// wall clock (ARCHITECTURE.md, "Device clocks"): a device 3 h ahead (every
/// command an hour past its expiry by its own clock) and one 3 h behind
/// both take a first install and an upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_clocks_hours_ahead_and_behind() {
    let w = World::start().await;
    {
        let mut a = w.agents.lock().await;
        let hours = 3 * 3_600_000i64;
        a[0].env
            .push(("DROVER_SIM_CLOCK_OFFSET_MS".into(), hours.to_string()));
        a[1].env
            .push(("DROVER_SIM_CLOCK_OFFSET_MS".into(), (-hours).to_string()));
    }
    // Nothing armed: the fault is the clock.
    w.start_agents("none").await;
    let fault_at = Instant::now();
    let v1 = w.push(1).await;
    w.rollout("r1", v1, None).await;
    w.wait_completed("r1").await;
    let v2 = w.push(2).await;
    w.rollout("r2", v2, None).await;
    w.wait_completed("r2").await;
    w.assert_converged("clock skew", fault_at).await;
    let a = w.agents.lock().await;
    for a in a.iter() {
        let s = a.status().await.unwrap();
        assert_eq!(s.active.as_deref(), Some(format!("sensor@{v2}").as_str()));
        assert_eq!(
            s.counters.get("rejected_commands.command_expired"),
            None,
            "{}",
            a.log()
        );
    }
    drop(a);
    w.finish().await;
}
