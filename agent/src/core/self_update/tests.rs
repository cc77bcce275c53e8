//! The boot counter and admission, driven with a fake clock (plain
//! milliseconds) and the record carried across "restarts" by value, as the
//! shell carries it through `boot.json`.

use std::path::PathBuf;

use drover_protocol::manifest::AgentVersion;
use drover_protocol::messages::ReasonCode;
use drover_protocol::release::Arch;
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{DeviceId, Sign as _, Signed, Timestamp, TrustState};

use super::*;

const NOW: Timestamp = Timestamp(1_750_000_000_000);

fn v(s: &str) -> AgentVersion {
    AgentVersion::parse(s).unwrap()
}

fn slot(version: &str) -> Slot {
    Slot {
        version: v(version),
        file: PathBuf::from(format!("/data/bin/agent-{version}")),
    }
}

fn packaged() -> Slot {
    Slot {
        version: v("0.1.0"),
        file: PathBuf::from("/usr/bin/drover-agent"),
    }
}

fn cfg() -> BootConfig {
    BootConfig {
        max_starts: 3,
        confirm_within_ms: 60_000,
    }
}

/// A process restart: a fresh machine over the persisted record.
fn restart(m: &SelfUpdate) -> SelfUpdate {
    SelfUpdate::new(cfg(), m.record().clone())
}

fn run_by(d: &StartDecision) -> Option<u64> {
    match d {
        StartDecision::Run { confirm_by, .. } => *confirm_by,
        StartDecision::FallBack(a) => panic!("fell back: {a:?}"),
    }
}

#[test]
fn no_trial_just_runs() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    assert_eq!(
        m.handle_start(v("0.1.0"), 0, false),
        StartDecision::Run {
            confirm_by: None,
            actions: vec![]
        }
    );
    assert_eq!(m.poll_timeout(), None);
    assert!(m.handle_confirmed(v("0.1.0")).is_empty());
    assert_eq!(m.handle_timeout(u64::MAX), None);
}

#[test]
fn staged_binary_is_tried_and_confirmed() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    let actions = m.handle_staged(slot("0.2.0"));
    assert_eq!(
        actions,
        [
            BootAction::Persist,
            BootAction::PointCurrent(slot("0.2.0").file),
            BootAction::Restart
        ]
    );
    let mut m = restart(&m);
    let by = run_by(&m.handle_start(v("0.2.0"), 1_000, false));
    assert_eq!(by, Some(61_000));
    assert_eq!(
        m.poll_timeout(),
        Some((61_000, "agent update confirmation"))
    );
    assert_eq!(m.handle_timeout(60_999), None);
    assert_eq!(m.handle_confirmed(v("0.2.0")), [BootAction::Persist]);
    let r = m.record();
    assert_eq!(r.good, slot("0.2.0"));
    assert_eq!(r.previous, Some(packaged()));
    assert_eq!(r.trial, None);
    assert_eq!(r.floor, v("0.2.0"));
    assert_eq!(r.report, None);
    // Confirmed: the deadline is gone, later starts run freely.
    assert_eq!(m.handle_timeout(1_000_000), None);
    let mut m = restart(&m);
    assert_eq!(run_by(&m.handle_start(v("0.2.0"), 0, false)), None);
}

#[test]
fn three_failed_starts_fall_back_and_report_once() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    // Three starts that crash before confirming (the record is persisted
    // at each start, so a crash still counts).
    for i in 1..=3 {
        m = restart(&m);
        assert!(run_by(&m.handle_start(v("0.2.0"), 0, false)).is_some());
        assert_eq!(m.record().trial.as_ref().unwrap().starts, i);
    }
    m = restart(&m);
    let StartDecision::FallBack(actions) = m.handle_start(v("0.2.0"), 0, false) else {
        panic!("the fourth start must fall back");
    };
    assert_eq!(
        actions,
        [
            BootAction::Persist,
            BootAction::PointCurrent(packaged().file),
            BootAction::Discard(slot("0.2.0").file),
            BootAction::Restart
        ]
    );
    let r = m.record();
    assert_eq!(r.trial, None);
    assert_eq!(r.good, packaged());
    assert_eq!(
        r.floor,
        v("0.1.0"),
        "a failed version never raises the floor"
    );
    // Back on the packaged binary: runs, and reports why exactly once.
    let mut m = restart(&m);
    assert_eq!(run_by(&m.handle_start(v("0.1.0"), 0, false)), None);
    let report = m.take_report().unwrap();
    assert_eq!(report.from, v("0.2.0"));
    assert_eq!(report.to, v("0.1.0"));
    assert_eq!(report.reason.code, ReasonCode::AgentStartFailed);
    assert!(
        report.reason.detail.contains("3 times"),
        "{}",
        report.reason
    );
    assert_eq!(m.take_report(), None);
    assert_eq!(restart(&m).take_report(), None);
    // The failed version is remembered: offered again (a command re-sent
    // after the fallback) it is refused, a newer one is not.
    assert_eq!(m.record().fell_back, [v("0.2.0")]);
    let keys = TestKeys::new(3);
    let t = trusted(&keys);
    let offer = |version: &str| {
        let release = signed(&keys, version, Arch::Aarch64);
        let running = v("0.1.0");
        admit(
            &t,
            &release,
            Arch::Aarch64,
            running,
            m.record(),
            false,
            1 << 20,
            NOW,
        )
    };
    assert_eq!(
        offer("0.2.0").unwrap_err().code,
        ReasonCode::AgentStartFailed
    );
    let newer = offer("0.2.1");
    assert!(matches!(newer, Ok(Admission::Install(_))));
}

#[test]
fn no_broker_confirmation_by_the_deadline_falls_back() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    let mut m = restart(&m);
    let by = run_by(&m.handle_start(v("0.2.0"), 5_000, false)).unwrap();
    let actions = m.handle_timeout(by).unwrap();
    assert_eq!(actions.first(), Some(&BootAction::Persist));
    assert!(actions.contains(&BootAction::PointCurrent(packaged().file)));
    assert_eq!(actions.last(), Some(&BootAction::Restart));
    // A confirmation arriving after the fallback changes nothing.
    assert!(m.handle_confirmed(v("0.2.0")).is_empty());
    assert_eq!(m.record().good, packaged());
    let report = m.take_report().unwrap();
    assert_eq!(report.reason.code, ReasonCode::AgentUnconfirmed);
}

#[test]
fn a_binary_reporting_another_version_is_not_the_trial() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    // The staged file says it is 0.3.0: it never counts as confirmed.
    let mut m = restart(&m);
    let StartDecision::FallBack(actions) = m.handle_start(v("0.3.0"), 0, false) else {
        panic!("a mislabelled binary must not run");
    };
    assert_eq!(actions.last(), Some(&BootAction::Restart));
    assert_eq!(
        m.take_report().unwrap().reason.code,
        ReasonCode::AgentStartFailed
    );
}

#[test]
fn good_binary_started_while_a_trial_was_pending_abandons_it_without_a_restart() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    // The service manager started the packaged binary (the link could not
    // be followed): no restart, the trial is dropped and reported.
    let mut m = restart(&m);
    let StartDecision::Run {
        confirm_by: None,
        actions,
    } = m.handle_start(v("0.1.0"), 0, false)
    else {
        panic!("the good binary runs");
    };
    assert!(!actions.contains(&BootAction::Restart));
    assert!(actions.contains(&BootAction::Persist));
    assert!(m.record().trial.is_none());
    assert!(m.take_report().is_some());
}

#[test]
fn confirmed_updates_keep_one_previous_and_discard_older() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    // The shell ignores a discard outside bin/ (the packaged binary).
    for (ver, discarded) in [
        ("0.2.0", None),
        ("0.3.0", Some(packaged().file)),
        ("0.4.0", Some(slot("0.2.0").file)),
    ] {
        m.handle_staged(slot(ver));
        m = restart(&m);
        run_by(&m.handle_start(v(ver), 0, false));
        let mut expected = vec![BootAction::Persist];
        expected.extend(discarded.map(BootAction::Discard));
        assert_eq!(m.handle_confirmed(v(ver)), expected, "{ver}");
    }
    assert_eq!(m.record().good, slot("0.4.0"));
    assert_eq!(m.record().previous, Some(slot("0.3.0")));
    assert_eq!(m.record().floor, v("0.4.0"));
}

#[test]
fn a_newer_staged_binary_replaces_an_unconfirmed_trial() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    let actions = m.handle_staged(slot("0.2.1"));
    assert_eq!(actions[0], BootAction::Discard(slot("0.2.0").file));
    assert_eq!(m.record().trial.as_ref().unwrap().slot, slot("0.2.1"));
    assert_eq!(m.record().trial.as_ref().unwrap().starts, 0);
}

// ---- admission ----

fn trusted(keys: &TestKeys) -> TrustState {
    let mut t = TrustState::new(keys.root.public_key(), DeviceId::new("dev-1").unwrap());
    t.handle_key_list(
        &keys.key_list(1, NOW.plus_ms(3 * 365 * 24 * 3600 * 1000)),
        NOW,
    )
    .unwrap();
    t
}

fn signed(keys: &TestKeys, version: &str, arch: Arch) -> Signed<AgentRelease> {
    keys.sign_release(&testkit::release(version, arch, b"\x7fELF new agent", NOW))
}

#[test]
fn admission_checks_signature_role_arch_floor_and_pending_trials() {
    let keys = TestKeys::new(3);
    let t = trusted(&keys);
    let record = BootRecord::initial(packaged());
    let admit_ = |s: &Signed<AgentRelease>, record: &BootRecord, rollback: bool| {
        admit(
            &t,
            s,
            Arch::Aarch64,
            v("0.1.0"),
            record,
            rollback,
            1 << 20,
            NOW,
        )
    };
    let good = signed(&keys, "0.2.0", Arch::Aarch64);
    assert!(matches!(
        admit_(&good, &record, false),
        Ok(Admission::Install(r)) if r.version == v("0.2.0")
    ));
    assert_eq!(
        admit_(&signed(&keys, "0.1.0", Arch::Aarch64), &record, false),
        Ok(Admission::AlreadyRunning)
    );
    let code = |r: Result<Admission, Reason>| r.unwrap_err().code;
    assert_eq!(
        code(admit_(
            &signed(&keys, "0.2.0", Arch::X86_64),
            &record,
            false
        )),
        ReasonCode::WrongArch
    );
    let by_models = Signed::sign(
        &testkit::release("0.2.0", Arch::Aarch64, b"x", NOW),
        &keys.models,
    )
    .unwrap();
    assert_eq!(
        code(admit_(&by_models, &record, false)),
        ReasonCode::MissingRole
    );
    let mut tampered = good.clone();
    let last = tampered.body.len() - 1;
    tampered.body[last] ^= 1;
    assert_eq!(
        code(admit_(&tampered, &record, false)),
        ReasonCode::BadSignature
    );
    // The floor is the highest confirmed version, even when an older
    // binary runs (after a fallback or a rollback).
    let mut raised = record.clone();
    raised.floor = v("0.3.0");
    assert_eq!(code(admit_(&good, &raised, false)), ReasonCode::Downgrade);
    assert!(matches!(
        admit_(&good, &raised, true),
        Ok(Admission::Install(_))
    ));
    // One trial at a time.
    let mut m = SelfUpdate::new(cfg(), record);
    m.handle_staged(slot("0.2.0"));
    assert_eq!(
        code(admit_(
            &signed(&keys, "0.3.0", Arch::Aarch64),
            m.record(),
            false
        )),
        ReasonCode::AlreadyDeploying
    );
    // Expired.
    let late = Timestamp(NOW.0 + 400 * 24 * 3600 * 1000);
    let r = admit(
        &trusted(&keys),
        &good,
        Arch::Aarch64,
        v("0.1.0"),
        &BootRecord::initial(packaged()),
        false,
        1 << 20,
        late,
    );
    assert_eq!(code(r), ReasonCode::ManifestExpired);
    // Larger than the device takes.
    let r = admit(
        &trusted(&keys),
        &good,
        Arch::Aarch64,
        v("0.1.0"),
        &BootRecord::initial(packaged()),
        false,
        4,
        NOW,
    );
    assert_eq!(code(r), ReasonCode::ReleaseTooLarge);
}

#[test]
fn record_survives_json() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    let json = serde_json::to_string(m.record()).unwrap();
    let back: BootRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, m.record());
}

#[test]
fn pre_start_counts_for_a_binary_that_never_runs() {
    // The packaged binary counts each start as ExecStartPre; the new
    // binary never gets to count itself (it cannot even execute).
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    for i in 1..=3 {
        m = restart(&m);
        assert_eq!(m.handle_pre_start(), [BootAction::Persist]);
        assert_eq!(m.record().trial.as_ref().unwrap().starts, i);
    }
    m = restart(&m);
    let actions = m.handle_pre_start();
    assert_eq!(
        actions,
        [
            BootAction::Persist,
            BootAction::PointCurrent(packaged().file),
            BootAction::Discard(slot("0.2.0").file),
        ],
        "no restart: the start that follows runs the good binary"
    );
    assert_eq!(m.record().good, packaged());
    // The good binary then starts, already counted, and runs.
    let mut m = restart(&m);
    assert_eq!(run_by(&m.handle_start(v("0.1.0"), 0, true)), None);
    assert!(m.take_report().is_some());
}

#[test]
fn a_counted_start_of_the_trial_only_sets_the_deadline() {
    let mut m = SelfUpdate::new(cfg(), BootRecord::initial(packaged()));
    m.handle_staged(slot("0.2.0"));
    let mut m = restart(&m);
    assert_eq!(m.handle_pre_start(), [BootAction::Persist]);
    let by = run_by(&m.handle_start(v("0.2.0"), 10, true));
    assert_eq!(by, Some(60_010));
    assert_eq!(m.record().trial.as_ref().unwrap().starts, 1, "counted once");
    assert_eq!(m.handle_confirmed(v("0.2.0")), [BootAction::Persist]);
    assert_eq!(m.record().good, slot("0.2.0"));
}
