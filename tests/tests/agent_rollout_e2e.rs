//! Agent releases rolled out through the staged engine, with real agent
//! processes run the way their systemd unit runs them
//! ([`AgentService`]: `boot-check`, `bin/current`, restart on exit).
//!
//! Two builds of the agent that differ in version (`drover-sim-agent` and
//! `drover-sim-agent-next`) and a bad one (`drover-sim-agent-bad`, which
//! exits at every start): the devices serve a model under inference
//! traffic; `agent@NEXT` goes out in waves gated on the model's error rate
//! (new agents against control devices) and reaches every device; then the
//! bad release is installed on the canary, which falls back by itself to
//! the previous binary, and the rollout fails its canary wave and rolls
//! back. No device ever ends without a running agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use drover_agent::self_update::BinDir;
use drover_controller::http::rollouts::StartBody;
use drover_controller::serve::{self, ServeConfig};
use drover_protocol::manifest::AgentVersion;
use drover_protocol::release::Arch;
use drover_sim::data::SensorStream;
use drover_sim::demo::{push, rollout_and_wait, train_model};
use drover_sim::procs::ProcAgent;
use drover_sim::service::{AgentService, NEXT_AGENT_VERSION};

const PACKAGED: &str = env!("CARGO_BIN_EXE_drover-sim-agent");
const NEXT: &str = env!("CARGO_BIN_EXE_drover-sim-agent-next");
const BAD: &str = env!("CARGO_BIN_EXE_drover-sim-agent-bad");
const DEVICES: usize = 4;
const BAD_VERSION: &str = "0.1.2";

fn host_arch() -> Arch {
    Arch::parse(std::env::consts::ARCH).unwrap()
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every device connected and running `version`, by its own API.
async fn all_on(agents: &[ProcAgent], version: &str) -> bool {
    for a in agents {
        match a.status().await {
            Some(s) if s.link.connected && s.agent_version == version => {}
            _ => return false,
        }
    }
    true
}

fn agent_rollout(version: &str, waves: &str) -> StartBody {
    StartBody {
        model: format!("agent@{version}"),
        selector: Some(format!("arch={}", host_arch())),
        waves: Some(waves.into()),
        bake: Some(Duration::from_secs(3)),
        // A new agent binary has this long to reconnect and say Hello.
        device_timeout: Some(Duration::from_secs(60)),
        metrics_interval: Some(Duration::from_secs(1)),
        gates: vec!["error_rate_delta<=0.02".into()],
        min_samples: Some(20),
        on_fail: Some("rollback".into()),
        ..StartBody::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_upgraded_in_waves_and_a_bad_release_falls_back_and_rolls_back() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(ServeConfig::ephemeral(dir.path().join("controller")))
        .await
        .unwrap();
    let ctl = running.handle();
    let mqtt = running.mqtt_addr().to_string();

    let mut agents = Vec::new();
    let mut services = Vec::new();
    for i in 0..DEVICES {
        let mut a = ProcAgent::register(
            &ctl,
            Path::new(PACKAGED),
            &dir.path().join(format!("dev{i}")),
            &format!("dev-{i}"),
            &mqtt,
        )
        .await
        .unwrap();
        // A deeper chunk window than the default: the test's agent builds
        // are unoptimized (~120 MB), so fetching one is latency-bound.
        a.config.chunk_window = 32;
        std::fs::write(&a.config_path, a.config.to_commented_toml().unwrap()).unwrap();
        services.push(AgentService::start(
            PathBuf::from(PACKAGED),
            BinDir::new(&a.config.data_dir).current(),
            a.config_path.clone(),
            a.log_path.clone(),
        ));
        agents.push(a);
    }
    let packaged = drover_agent::AGENT_VERSION;
    eventually("every agent online", Duration::from_secs(60), async || {
        all_on(&agents, packaged).await.then_some(())
    })
    .await;
    // The controller knows each device's arch from its Hello.
    eventually("arches known", Duration::from_secs(30), async || {
        for a in &agents {
            ctl.device(&a.id).await.unwrap()?.arch?;
        }
        Some(())
    })
    .await;

    // The devices serve a model, under traffic: the agent rollout's gates
    // compare that model's error rate on new agents against old ones.
    let samples = drover_sim::data::reference_samples(1000, 3);
    let (onnx, csv, _) = train_model(&samples, false).unwrap();
    let v1 = push(&ctl, "sensor", onnx, csv, None, None).await.unwrap();
    let model_rollout = StartBody {
        model: format!("sensor@{v1}"),
        waves: Some("50,100".into()),
        bake: Some(Duration::from_secs(1)),
        device_timeout: Some(Duration::from_secs(30)),
        ..StartBody::default()
    };
    let (phase, status) = rollout_and_wait(
        &running.rollouts(),
        model_rollout,
        Duration::from_secs(90),
        "model",
    )
    .await
    .unwrap();
    assert_eq!(phase, "completed", "{status:#}");
    eprintln!("model on every device at {:?}", t0.elapsed());
    let agents = Arc::new(agents);
    let traffic = Arc::new(AtomicBool::new(true));
    let load = {
        let (agents, on) = (agents.clone(), traffic.clone());
        tokio::spawn(async move {
            let mut s = SensorStream::new(11);
            while on.load(Ordering::SeqCst) {
                let f: Vec<f32> = s.next_sample().features.to_vec();
                for a in agents.iter() {
                    // Refused while an agent restarts into a new binary.
                    a.infer(&f).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Releases: the next build, and a bad one that exits at start.
    let next = AgentVersion::parse(NEXT_AGENT_VERSION).unwrap();
    let bad = AgentVersion::parse(BAD_VERSION).unwrap();
    assert!(next > AgentVersion::parse(packaged).unwrap());
    ctl.push_agent(std::fs::read(NEXT).unwrap(), next, host_arch())
        .await
        .unwrap();
    ctl.push_agent(std::fs::read(BAD).unwrap(), bad, host_arch())
        .await
        .unwrap();

    // The upgrade: every wave passes, every device runs the next build.
    let (phase, status) = rollout_and_wait(
        &running.rollouts(),
        agent_rollout(NEXT_AGENT_VERSION, "50,100"),
        Duration::from_secs(240),
        "agent upgrade",
    )
    .await
    .unwrap();
    assert_eq!(phase, "completed", "{status:#}");
    eprintln!("agent upgrade completed at {:?}", t0.elapsed());
    assert_eq!(
        status["target_label"],
        format!("agent@{NEXT_AGENT_VERSION}")
    );
    let waves = status["waves"].as_array().unwrap();
    assert_eq!(waves.len(), 2);
    for w in waves {
        assert_eq!(
            w["versions"][NEXT_AGENT_VERSION], w["targeted"],
            "{status:#}"
        );
        assert_eq!(w["fallbacks"], 0, "{status:#}");
    }
    // The canary and wave 2 were gated on the model's error rate, with
    // windows on both sides.
    let gated = waves[0]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["decision"] == "pass" && g["gate"]["metric"] == "error_rate_delta");
    assert!(gated, "{status:#}");
    eventually(
        "all on the next build",
        Duration::from_secs(60),
        async || all_on(&agents, NEXT_AGENT_VERSION).await.then_some(()),
    )
    .await;
    for a in agents.iter() {
        let bin = BinDir::new(&a.config.data_dir);
        let record = bin.load().unwrap().unwrap();
        assert_eq!(record.good.version, next, "{}", a.id);
        assert_eq!(record.floor, next);
        assert_eq!(std::fs::read_link(bin.current()).unwrap(), record.good.file);
        assert_eq!(
            std::fs::read(&record.good.file).unwrap(),
            std::fs::read(NEXT).unwrap()
        );
        let d = ctl.device(&a.id).await.unwrap().unwrap();
        assert_eq!(d.agent_version.as_deref(), Some(NEXT_AGENT_VERSION));
    }

    eprintln!("devices checked at {:?}", t0.elapsed());
    // The bad release: the canary installs it, it never comes up, the
    // device goes back to the next build by itself and says why; the
    // canary wave fails on that and the rollout rolls back.
    let (phase, status) = rollout_and_wait(
        &running.rollouts(),
        agent_rollout(BAD_VERSION, "25,50,100"),
        Duration::from_secs(240),
        "bad agent",
    )
    .await
    .unwrap();
    assert_eq!(phase, "rolled_back", "{status:#}");
    eprintln!("bad release rolled back at {:?}", t0.elapsed());
    let waves = status["waves"].as_array().unwrap();
    assert_eq!(waves[0]["fallbacks"], 1, "{status:#}");
    assert_eq!(waves[0]["failed"], 1, "{status:#}");
    for w in &waves[1..] {
        assert_eq!(w["updated"], 0, "later waves never got it: {status:#}");
    }
    let id = status["id"].as_str().unwrap();
    let audit = running.rollouts().detail(id, 200).await.unwrap().audit;
    let kinds: Vec<&str> = audit
        .iter()
        .filter_map(|e| e["event"]["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"stage_failed"), "{kinds:?}");
    assert!(kinds.contains(&"rollback_started"), "{kinds:?}");
    assert!(kinds.contains(&"rolled_back"), "{kinds:?}");
    let fell_back = audit.iter().any(|e| {
        e["event"]["kind"] == "device_failed"
            && e["event"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("fell back") && r.contains("agent_start_failed"))
    });
    assert!(fell_back, "{audit:#?}");

    // No device ends without a running agent: all on the next build,
    // connected, the bad binary gone from the canary's bin/.
    eventually(
        "all back on the next build",
        Duration::from_secs(60),
        async || all_on(&agents, NEXT_AGENT_VERSION).await.then_some(()),
    )
    .await;
    for (a, s) in agents.iter().zip(&services) {
        assert!(s.is_running(), "{}", a.id);
        let record = BinDir::new(&a.config.data_dir).load().unwrap().unwrap();
        assert_eq!(record.good.version, next);
        assert!(record.trial.is_none());
    }
    let canary_logs: usize = agents
        .iter()
        .filter(|a| a.log().contains("this build fails at start"))
        .count();
    assert_eq!(canary_logs, 1, "only the canary ever ran the bad build");

    traffic.store(false, Ordering::SeqCst);
    load.await.unwrap();
    for s in services {
        s.stop().await.unwrap();
    }
    running.shutdown().await;
}
