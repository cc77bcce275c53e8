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

fn config(dir: &std::path::Path, broker: &SpawnedMosquitto, validity: Duration) -> ServeConfig {
    let mut c = ServeConfig::ephemeral(dir);
    c.broker = BrokerChoice::External {
        host: "127.0.0.1".into(),
        port: broker.addr().port(),
        tls: false,
    };
    c.command_validity = validity;
    c
}

/// How a cell's world differs from the default.
#[derive(Clone)]
struct Opts {
    agents: usize,
    proxies: bool,
    validity: Duration,
    agent_root: Option<std::path::PathBuf>,
}

impl Opts {
    fn agents(agents: usize) -> Opts {
        Opts {
            agents,
            proxies: false,
            validity: Duration::from_secs(3600),
            agent_root: None,
        }
    }
}

struct World {
    broker: SpawnedMosquitto,
    dir: tempfile::TempDir,
    running: RunningController,
    fleet: Fleet,
    validity: Duration,
}

impl World {
    async fn start(agents: usize) -> World {
        World::start_with(Opts::agents(agents)).await
    }

    async fn start_with(o: Opts) -> World {
        let broker = SpawnedMosquitto::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let running = serve::start(config(&dir.path().join("controller"), &broker, o.validity))
            .await
            .unwrap();
        let fleet = Fleet::start(
            &running.handle(),
            running.mqtt_addr(),
            &FleetConfig {
                agents: o.agents,
                inferences_per_sec: 10.0,
                telemetry_window_ms: 500,
                with_proxies: o.proxies,
                ..FleetConfig::default()
            },
            Some(o.agent_root.unwrap_or_else(|| dir.path().join("agents"))),
        )
        .await
        .unwrap();
        World {
            broker,
            dir,
            running,
            fleet,
            validity: o.validity,
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
        self.start_rollout_with(id, version, StartBody::default())
            .await;
    }

    /// An upgrade: one loose gate on few samples (faults are tested here,
    /// not gate statistics; a few devices for a second make too few
    /// samples for the default gates).
    async fn start_upgrade(&self, id: &str, version: drover_protocol::Version) {
        let body = StartBody {
            gates: vec!["error_rate_delta<=1.0".into()],
            min_samples: Some(5),
            ..StartBody::default()
        };
        self.start_rollout_with(id, version, body).await;
    }

    async fn start_rollout_with(
        &self,
        id: &str,
        version: drover_protocol::Version,
        base: StartBody,
    ) {
        let body = StartBody {
            model: format!("sensor@{version}"),
            id: Some(id.into()),
            waves: Some("50,100".into()),
            bake: Some(Duration::from_secs(1)),
            device_timeout: Some(Duration::from_secs(30)),
            metrics_interval: Some(Duration::from_millis(500)),
            ..base
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
            validity,
        } = self;
        running.kill();
        let running = serve::start(config(&dir.path().join("controller"), &broker, validity))
            .await
            .unwrap();
        World {
            broker,
            dir,
            running,
            fleet,
            validity,
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

// Every agent of the wave crashes (in-process: its tasks dropped, no
// Offline) right after the rollout dispatched, and comes back on its data
// dir. The commands went out while the agents were going down: lost with
// their clean sessions, or accepted (the sequence stored) by an agent that
// died before it started the job. Either way the agent's Hello on its new
// session, with no report on the command, tells the rollout, which sends
// fresh commands at once. It used to wait out the device timeout and pause
// `TooManySilent` (the second case still failed 2 runs in 3 before session 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

// A broker restart (SIGKILL, no persistence) while the first wave installs:
// commands the broker held are gone; the agents' Hello on the new broker
// shows which, and the rollout sends them again (it used to pause
// `TooManySilent` after the device timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

// A device's link is down for longer than a command stays valid (2 s here),
// from before the rollout starts. Either the controller already knows the
// device is offline when its wave starts (it is silent, the wave pauses
// `TooManySilent`, and the pause lifts itself once the device is back), or
// the command goes out and is lost with the link (the device's Hello shows
// it, a fresh command goes out at once). A command that reaches the device
// after its expiry is refused with its own sequence and replaced by a fresh
// one, never counted as a failed install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_longer_than_command_expiry() {
    let w = World::start_with(Opts {
        proxies: true,
        validity: Duration::from_secs(2),
        ..Opts::agents(3)
    })
    .await;
    let v = w.push(1).await;
    let proxy = w.fleet.devices[0].proxy.clone().unwrap();
    proxy.cut();
    w.start_rollout("r", v).await;
    // The cut outlasts the command validity.
    tokio::time::sleep(w.validity * 2).await;
    let fault_at = Instant::now();
    proxy.restore();
    rollout_completes(&w, "r").await;
    w.assert_converged(
        &w.running.rollouts(),
        "link cut longer than command expiry",
        fault_at,
    )
    .await;
    w.finish().await;
}

/// The newest command sequence sent to `device`, and its result.
async fn last_command(w: &World, device: &str) -> Option<(i64, Option<String>)> {
    let device = device.to_string();
    w.running
        .handle()
        .db()
        .call(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row(
                "SELECT seq, result FROM commands WHERE device = ?1 ORDER BY seq DESC LIMIT 1",
                [device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
        .unwrap()
}

// A device's link stalls (the connection stays up, nothing gets through
// either way) for longer than a command stays valid, while its wave is
// deployed: the command reaches it after the stall, expired. It verifies, is
// addressed to the device and is newer than anything it accepted, so the
// device refuses it under its own sequence with `command_expired`, and the
// rollout sends a fresh command at once instead of counting a failed install
// (before: the device was failed for good, `command_expired` not retryable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_stalled_past_command_expiry() {
    let w = World::start_with(Opts {
        proxies: true,
        validity: Duration::from_secs(2),
        ..Opts::agents(3)
    })
    .await;
    // A first rollout, so the devices know the controller's clock: before
    // its first command of a run an agent judges expiry by the command's own
    // issue time, and nothing is expired.
    let v1 = w.push(1).await;
    w.start_rollout("r1", v1).await;
    rollout_completes(&w, "r1").await;
    let v2 = w.push(2).await;
    let dev = &w.fleet.devices[0];
    let id = dev.id.to_string();
    let proxy = dev.proxy.clone().unwrap();
    let (before, _) = last_command(&w, &id).await.unwrap();
    proxy.stall();
    w.start_upgrade("r2", v2).await;
    // Once its command is out (its wave may be the second), past its validity.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sent = loop {
        let (seq, _) = last_command(&w, &id).await.unwrap();
        if seq > before {
            break seq;
        }
        assert!(Instant::now() < deadline, "{id} was never commanded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(w.validity * 2).await;
    let fault_at = Instant::now();
    proxy.unstall();
    w.wait_phase("r2", |p, _| p == "completed", Duration::from_secs(60))
        .await;
    w.fleet
        .wait_all_active(&format!("sensor@{v2}"), Duration::from_secs(30))
        .await
        .unwrap();
    // The late command was refused as expired, under its own sequence; a
    // fresh one after it was accepted and installed.
    let result: Option<String> = {
        let id = id.clone();
        w.running
            .handle()
            .db()
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT result FROM commands WHERE device = ?1 AND seq = ?2",
                    rusqlite::params![id, sent],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap()
    };
    assert!(
        result
            .as_deref()
            .is_some_and(|r| r.contains("command_expired")),
        "{result:?}"
    );
    let (last, last_result) = last_command(&w, &id).await.unwrap();
    assert!(last > sent);
    assert_eq!(last_result.as_deref(), Some("active"));
    w.assert_converged(
        &w.running.rollouts(),
        "link stalled past command expiry",
        fault_at,
    )
    .await;
    w.finish().await;
}

// The agents' data dirs are on a small filesystem that is then filled. The
// devices must refuse what they cannot store (a readable reason, the
// rollout retrying, not stuck), and install once the space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_disk_full() {
    let disk = drover_sim::disk::SmallDisk::mount(16 * 1024)
        .unwrap_or_else(|e| panic!("full-disk cell cannot run: {e:#}"));
    let w = World::start_with(Opts {
        agent_root: Some(disk.path().join("agents")),
        ..Opts::agents(2)
    })
    .await;
    // The disk fills after the agents stored the key list (filling it before
    // leaves an agent that could not store the list refusing every command
    // until it reconnects: see BENCHMARKS.md, Faults).
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in &w.fleet.devices {
        while d.with_agent(|a| a.status().key_list_version).await != Some(1) {
            assert!(Instant::now() < deadline, "{}: no key list", d.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let filled = disk.fill().unwrap();
    assert!(filled > 0);
    let v1 = w.push(1).await;
    w.start_rollout("r1", v1).await;
    // While the disk is full the devices refuse the command (they cannot
    // store the sequence number: `store_failed`, retryable) and the rollout
    // retries: it is moving, not stuck; the invariants hold.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = w.running.rollouts();
    let d = r.detail("r1", 1).await.unwrap();
    assert_ne!(d.status.phase.name(), "completed", "{:?}", d.status.phase);
    let fault_at = Instant::now();
    w.assert_converged(&r, "disk full (while full)", fault_at)
        .await;
    disk.free().unwrap();
    w.wait_phase("r1", |p, _| p == "completed", Duration::from_secs(90))
        .await;
    w.fleet
        .wait_all_active(&format!("sensor@{v1}"), Duration::from_secs(30))
        .await
        .unwrap();
    w.assert_converged(&r, "disk full (after freeing)", fault_at)
        .await;
    w.finish().await;
    drop(disk);
}
