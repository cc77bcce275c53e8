//! The boot check on a real directory: links, records and staged files as
//! a service manager restarting the agent would leave them.

use drover_protocol::Timestamp;
use drover_protocol::messages::ReasonCode;
use drover_protocol::release::Arch;
use drover_protocol::testkit;

use super::*;

fn v(s: &str) -> AgentVersion {
    AgentVersion::parse(s).unwrap()
}

fn cfg() -> BootConfig {
    BootConfig {
        max_starts: 3,
        confirm_within_ms: 1_000,
    }
}

fn link_target(bin: &BinDir) -> PathBuf {
    std::fs::read_link(bin.current()).unwrap()
}

fn run(b: Boot) -> (SelfUpdate, Option<u64>) {
    match b {
        Boot::Run {
            machine,
            confirm_by,
        } => (*machine, confirm_by),
        Boot::Restart => panic!("restart"),
    }
}

#[test]
fn update_then_three_crashes_fall_back_to_the_packaged_binary() {
    let dir = tempfile::tempdir().unwrap();
    let packaged = dir.path().join("usr-bin-drover-agent");
    std::fs::write(&packaged, b"packaged").unwrap();
    let bin = BinDir::new(&dir.path().join("data"));

    // First start: the record and the link appear, pointing at the
    // packaged binary.
    let (mut m, by) = run(boot_check(&bin, cfg(), v("0.1.0"), &packaged, 0, false).unwrap());
    assert_eq!(by, None);
    assert_eq!(link_target(&bin), packaged);
    assert_eq!(bin.load().unwrap().unwrap().good.file, packaged);

    // A verified release is staged: current switches, restart asked.
    let binary = b"\x7fELF new agent".to_vec();
    let release = testkit::release("0.2.0", Arch::X86_64, &binary, Timestamp(1));
    let slot = bin.stage(&release, &binary).unwrap();
    assert_eq!(std::fs::read(&slot.file).unwrap(), binary);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&slot.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
    let actions = m.handle_staged(slot.clone());
    assert!(bin.apply(m.record(), &actions).unwrap());
    assert_eq!(link_target(&bin), slot.file);

    // Three starts of the new binary that never confirm.
    for i in 0..3u64 {
        let (_, by) = run(boot_check(&bin, cfg(), v("0.2.0"), &slot.file, i * 10, false).unwrap());
        assert_eq!(by, Some(i * 10 + 1_000));
        assert_eq!(
            bin.load().unwrap().unwrap().trial.unwrap().starts,
            i as u32 + 1,
            "each start is on disk before the agent runs"
        );
    }
    // The fourth start switches back and asks for a restart.
    assert!(matches!(
        boot_check(&bin, cfg(), v("0.2.0"), &slot.file, 100, false).unwrap(),
        Boot::Restart
    ));
    assert_eq!(link_target(&bin), packaged);
    assert!(!slot.file.exists(), "the failed binary is deleted");
    assert!(packaged.exists());
    // Back on the packaged binary: it runs and holds the report.
    let (mut m, by) = run(boot_check(&bin, cfg(), v("0.1.0"), &packaged, 200, false).unwrap());
    assert_eq!(by, None);
    let report = m.take_report().unwrap();
    assert_eq!(report.reason.code, ReasonCode::AgentStartFailed);
    assert_eq!((report.from, report.to), (v("0.2.0"), v("0.1.0")));
}

#[test]
fn a_confirmed_update_becomes_the_good_binary() {
    let dir = tempfile::tempdir().unwrap();
    let packaged = dir.path().join("drover-agent");
    std::fs::write(&packaged, b"packaged").unwrap();
    let bin = BinDir::new(&dir.path().join("data"));
    let (mut m, _) = run(boot_check(&bin, cfg(), v("0.1.0"), &packaged, 0, false).unwrap());
    let binary = b"\x7fELF 0.2.0".to_vec();
    let release = testkit::release("0.2.0", Arch::Aarch64, &binary, Timestamp(1));
    let slot = bin.stage(&release, &binary).unwrap();
    let actions = m.handle_staged(slot.clone());
    bin.apply(m.record(), &actions).unwrap();

    let (mut m, by) = run(boot_check(&bin, cfg(), v("0.2.0"), &slot.file, 0, false).unwrap());
    assert!(by.is_some());
    let actions = m.handle_confirmed(v("0.2.0"));
    assert!(!bin.apply(m.record(), &actions).unwrap());
    let r = bin.load().unwrap().unwrap();
    assert_eq!(r.good, slot);
    assert_eq!(r.floor, v("0.2.0"));
    assert_eq!(link_target(&bin), slot.file);
    // Later starts run without a deadline.
    let (_, by) = run(boot_check(&bin, cfg(), v("0.2.0"), &slot.file, 0, false).unwrap());
    assert_eq!(by, None);
}

#[test]
fn the_link_switch_replaces_an_existing_link() {
    let dir = tempfile::tempdir().unwrap();
    let bin = BinDir::new(dir.path());
    bin.point_current(Path::new("/a")).unwrap();
    bin.point_current(Path::new("/b")).unwrap();
    assert_eq!(link_target(&bin), PathBuf::from("/b"));
    let names: Vec<String> = std::fs::read_dir(dir.path().join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["current"], "no temporary link left behind");
}

#[test]
fn pre_start_check_counts_and_switches_back_before_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let packaged = dir.path().join("drover-agent");
    std::fs::write(&packaged, b"packaged").unwrap();
    let bin = BinDir::new(&dir.path().join("data"));
    // First start ever: the pre-start check creates the record and link.
    pre_start_check(&bin, cfg(), v("0.1.0"), &packaged).unwrap();
    assert_eq!(link_target(&bin), packaged);
    let (mut m, _) = run(boot_check(&bin, cfg(), v("0.1.0"), &packaged, 0, true).unwrap());
    let binary = b"\x7fELF cannot execute".to_vec();
    let release = testkit::release("0.2.0", Arch::X86_64, &binary, Timestamp(1));
    let slot = bin.stage(&release, &binary).unwrap();
    let actions = m.handle_staged(slot.clone());
    bin.apply(m.record(), &actions).unwrap();
    // The new binary never runs: only the pre-start checks count.
    for _ in 0..3 {
        pre_start_check(&bin, cfg(), v("0.1.0"), &packaged).unwrap();
        assert_eq!(link_target(&bin), slot.file);
    }
    pre_start_check(&bin, cfg(), v("0.1.0"), &packaged).unwrap();
    assert_eq!(link_target(&bin), packaged);
    let r = bin.load().unwrap().unwrap();
    assert_eq!(r.trial, None);
    assert_eq!(r.report.unwrap().reason.code, ReasonCode::AgentStartFailed);
}
