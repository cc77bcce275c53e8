//! The boot check of the real `drover-agent run` process: a new binary on
//! trial is confirmed once it reaches the broker, falls back (exit 75, the
//! `current` link back on the good binary, the reason recorded) when it
//! cannot reach the broker in time or has already failed to start three
//! times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_agent::AGENT_VERSION;
use drover_agent::core::self_update::{BootRecord, Slot, Trial};
use drover_agent::self_update::{BinDir, EX_RESTART};
use drover_protocol::Sign as _;
use drover_protocol::manifest::AgentVersion;
use drover_protocol::messages::ReasonCode;
use drover_protocol::testkit::TestKeys;

use crate::support::{TestBroker, bin_command, eventually, tokio_bin_command, unique_fleet};

const BIN: &str = env!("CARGO_BIN_EXE_drover-agent");

fn running() -> AgentVersion {
    AgentVersion::parse(AGENT_VERSION).unwrap()
}

/// A config for `dev-1` against `broker`, a data dir whose record has the
/// good binary at 0.0.1 and this build on trial after `starts` starts.
fn setup(dir: &Path, broker: &str, starts: u32) -> (PathBuf, BinDir, Slot, Slot) {
    let keys = TestKeys::new(7);
    let key_file = dir.join("root.pub");
    std::fs::write(&key_file, keys.root.public_key().to_hex()).unwrap();
    let cfg = dir.join("agent.toml");
    let data = dir.join("data");
    let out = bin_command(BIN)
        .args(["init", "--device-id", "dev-1"])
        .args(["--fleet", unique_fleet("upd").as_str(), "--broker", broker])
        .arg("--root-key")
        .arg(&key_file)
        .arg("--data-dir")
        .arg(&data)
        // Any free port: the tests run side by side.
        .args(["--api", "127.0.0.1:0"])
        .arg("--out")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = BinDir::new(&data);
    let good = Slot {
        version: AgentVersion::parse("0.0.1").unwrap(),
        file: dir.join("packaged-drover-agent"),
    };
    std::fs::write(&good.file, b"the packaged binary").unwrap();
    let trial = Slot {
        version: running(),
        file: data.join("bin").join("agent-trial"),
    };
    let mut record = BootRecord::initial(good.clone());
    record.trial = Some(Trial {
        slot: trial.clone(),
        starts,
    });
    bin.save(&record).unwrap();
    std::fs::write(&trial.file, b"stands for this build").unwrap();
    bin.point_current(&trial.file).unwrap();
    (cfg, bin, good, trial)
}

async fn run_to_exit(cfg: &Path, confirm_ms: &str) -> std::process::ExitStatus {
    let mut child = tokio_bin_command(BIN)
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .env("DROVER_AGENT_UPDATE_CONFIRM_MS", confirm_ms)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the agent exits by itself")
        .unwrap()
}

fn assert_fell_back(bin: &BinDir, good: &Slot, trial: &Slot, code: ReasonCode) {
    assert_eq!(std::fs::read_link(bin.current()).unwrap(), good.file);
    let r = bin.load().unwrap().unwrap();
    assert_eq!(r.trial, None);
    assert_eq!(r.good, *good);
    assert_eq!(r.floor, good.version);
    let report = r.report.expect("the reason is kept for the controller");
    assert_eq!(report.reason.code, code, "{}", report.reason);
    assert_eq!((report.from, report.to), (trial.version, good.version));
    assert!(!trial.file.exists());
    assert!(good.file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_that_cannot_reach_the_broker_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1.
    let (cfg, bin, good, trial) = setup(dir.path(), "mqtt://127.0.0.1:1", 0);
    let exit = run_to_exit(&cfg, "300").await;
    assert_eq!(exit.code(), Some(i32::from(EX_RESTART)));
    assert_fell_back(&bin, &good, &trial, ReasonCode::AgentUnconfirmed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_started_three_times_falls_back_on_the_fourth() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, bin, good, trial) = setup(dir.path(), "mqtt://127.0.0.1:1", 3);
    let exit = run_to_exit(&cfg, "60000").await;
    assert_eq!(exit.code(), Some(i32::from(EX_RESTART)));
    assert_fell_back(&bin, &good, &trial, ReasonCode::AgentStartFailed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trial_that_reaches_the_broker_becomes_the_good_binary() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start().await;
    let (cfg, bin, good, trial) = setup(dir.path(), &broker.url(), 1);
    let mut child = tokio_bin_command(BIN)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("DROVER_AGENT_UPDATE_CONFIRM_MS", "60000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let r = eventually("the trial confirmed", Duration::from_secs(30), || async {
        bin.load().unwrap().filter(|r| r.trial.is_none())
    })
    .await;
    assert_eq!(r.good, trial);
    assert_eq!(r.previous, Some(good));
    assert_eq!(r.floor, running());
    assert_eq!(r.report, None);
    assert_eq!(std::fs::read_link(bin.current()).unwrap(), trial.file);
    assert_eq!(child.try_wait().unwrap(), None, "still running");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_check_subcommand_counts_starts_of_a_binary_that_never_runs() {
    // As the unit's ExecStartPre: the packaged binary counts each start of
    // the new one, which here never gets to run at all.
    let dir = tempfile::tempdir().unwrap();
    let (cfg, bin, good, trial) = setup(dir.path(), "mqtt://127.0.0.1:1", 0);
    let check = || {
        let out = bin_command(BIN)
            .arg("boot-check")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for starts in 1..=3 {
        check();
        let r = bin.load().unwrap().unwrap();
        assert_eq!(r.trial.unwrap().starts, starts);
        assert_eq!(std::fs::read_link(bin.current()).unwrap(), trial.file);
    }
    check();
    assert_fell_back(&bin, &good, &trial, ReasonCode::AgentStartFailed);
}
