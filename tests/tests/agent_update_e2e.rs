//! An agent update with real processes: a controller, a `drover-agent`
//! child run the way its systemd unit runs it (`boot-check` as
//! ExecStartPre by the packaged binary, then `bin/current run
//! --boot-checked`, restarted whenever it exits, like `Restart=on-failure`),
//! and a bad release (an ELF header that cannot execute). The agent
//! fetches, verifies and stages it and restarts into it; the new binary
//! never comes up, so after three counted starts the link goes back to the
//! packaged binary by itself, the agent runs again and reports why. The
//! device never ends without a running agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::self_update::BinDir;
use drover_controller::DeviceEvent;
use drover_controller::serve::{self, ServeConfig};
use drover_protocol::manifest::AgentVersion;
use drover_protocol::messages::{AgentUpdatePhase, ReasonCode};
use drover_protocol::release::Arch;
use drover_sim::procs::ProcAgent;
use drover_sim::service::AgentService;

const AGENT_BIN: &str = env!("CARGO_BIN_EXE_drover-sim-agent");
const STEP: Duration = Duration::from_secs(60);

async fn online(agent: &ProcAgent) {
    tokio::time::timeout(STEP, async {
        loop {
            if agent.status().await.is_some_and(|s| s.link.connected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for the agent online:\n{}", agent.log()))
}

fn host_arch() -> Arch {
    Arch::parse(std::env::consts::ARCH).unwrap()
}

/// An ELF header for this machine that the kernel refuses to execute.
fn unexecutable_elf() -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if host_arch() == Arch::Armv7 { 1 } else { 2 };
    h[5] = 1;
    h[16..18].copy_from_slice(&3u16.to_le_bytes());
    h[18..20].copy_from_slice(&host_arch().elf_machine().to_le_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_release_falls_back_to_the_packaged_binary_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let running = serve::start(ServeConfig::ephemeral(dir.path().join("controller")))
        .await
        .unwrap();
    let ctl = running.handle();
    let mqtt = running.mqtt_addr().to_string();
    let agent = ProcAgent::register(
        &ctl,
        Path::new(AGENT_BIN),
        &dir.path().join("dev"),
        "dev-upd",
        &mqtt,
    )
    .await
    .unwrap();
    let bin = BinDir::new(&agent.config.data_dir);
    let service = AgentService::start(
        PathBuf::from(AGENT_BIN),
        bin.current(),
        agent.config_path.clone(),
        agent.log_path.clone(),
    );
    online(&agent).await;
    // The controller knows the device's arch once its Hello is in.
    tokio::time::timeout(STEP, async {
        loop {
            let d = ctl.device(&agent.id).await.unwrap();
            if d.and_then(|d| d.arch).is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_link(bin.current()).unwrap(),
        PathBuf::from(AGENT_BIN)
    );

    let mut events = ctl.subscribe();
    let bad = AgentVersion::parse("0.2.0").unwrap();
    ctl.push_agent(unexecutable_elf(), bad, host_arch())
        .await
        .unwrap();
    ctl.update_agent(&agent.id, bad, false).await.unwrap();

    // Staged, restarted into, failed three times, switched back, running
    // again on the packaged binary, fallback reported and cleared.
    let record = tokio::time::timeout(STEP, async {
        loop {
            if let Ok(Some(r)) = bin.load()
                && r.trial.is_none()
                && r.report.is_none()
                && service.exec_failures() >= 3
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no fallback:\n{}", agent.log()));
    assert_eq!(service.exec_failures(), 3);
    assert_eq!(record.good.file, PathBuf::from(AGENT_BIN));
    assert_eq!(
        std::fs::read_link(bin.current()).unwrap(),
        PathBuf::from(AGENT_BIN)
    );
    online(&agent).await;
    let log = agent.log();
    assert!(
        log.contains("agent binary staged; restarting into it"),
        "{log}"
    );

    // The controller heard the whole story: downloading, restarting, and
    // the fallback with its reason, from the device back on its old version.
    let mut phases = Vec::new();
    let fell_back = tokio::time::timeout(STEP, async {
        loop {
            if let Ok(DeviceEvent::AgentUpdate { device, status }) = events.recv().await
                && device == agent.id
            {
                phases.push(status.phase.clone());
                if let AgentUpdatePhase::FellBack { running, reason } = status.phase {
                    assert_eq!(status.version, bad);
                    return (running, reason);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no fallback reported:\n{log}"));
    assert_eq!(fell_back.0.to_string(), drover_agent::AGENT_VERSION);
    assert_eq!(fell_back.1.code, ReasonCode::AgentStartFailed);
    assert!(
        matches!(phases.first(), Some(AgentUpdatePhase::Downloading { .. })),
        "{phases:?}"
    );
    assert!(phases.contains(&AgentUpdatePhase::Restarting), "{phases:?}");

    service.stop().await.unwrap();
    running.shutdown().await;
}
