//! An `UpdateAgent` command end to end in the agent, against a scripted
//! controller: the binary fetched in chunks, verified, staged in
//! `<data_dir>/bin/`, `current` switched and a restart asked for; and the
//! attack cases (wrong signing role, wrong arch, tampered chunks,
//! downgrade, expired) each refused with its reason, the agent still
//! running what it ran, nothing staged.

use std::time::Duration;

use drover_agent::self_update::BinDir;
use drover_protocol::messages::{AgentUpdatePhase, AgentUpdateStatus, ReasonCode, Up};
use drover_protocol::release::{AgentRelease, Arch};
use drover_protocol::testkit;
use drover_protocol::{Action, Sha256, Signed};

use crate::support::{Setup, now};

const STEP: Duration = Duration::from_secs(30);

fn host_arch() -> Arch {
    Arch::parse(std::env::consts::ARCH).unwrap()
}

fn other_arch() -> Arch {
    if host_arch() == Arch::Aarch64 {
        Arch::X86_64
    } else {
        Arch::Aarch64
    }
}

/// A pretend binary of a few chunks.
fn binary(tag: u8) -> Vec<u8> {
    let mut b = b"\x7fELF".to_vec();
    b.extend((0..300_000u32).map(|i| (i % 251) as u8 ^ tag));
    b
}

fn statuses(s: &Setup, seq: u64) -> Vec<AgentUpdateStatus> {
    s.peer
        .state()
        .ups
        .iter()
        .filter_map(|u| match u {
            Up::AgentUpdate(a) if a.seq == seq => Some(a.clone()),
            _ => None,
        })
        .collect()
}

async fn update(s: &Setup, release: Signed<AgentRelease>) -> u64 {
    s.peer
        .command(Action::UpdateAgent {
            release,
            rollback: false,
        })
        .await
}

/// Waits for the update's Failed phase and returns its code.
async fn refused(s: &Setup, seq: u64) -> ReasonCode {
    s.peer
        .wait("the update refused", STEP, |st| {
            st.ups.iter().find_map(|u| match u {
                Up::AgentUpdate(AgentUpdateStatus {
                    seq: q,
                    phase: AgentUpdatePhase::Failed(r),
                    ..
                }) if *q == seq => Some(r.code.clone()),
                _ => None,
            })
        })
        .await
}

fn restart_requested(s: &Setup) -> bool {
    let fut = s.agent().restart_requested();
    futures_now(fut)
}

/// Whether a future is ready right now (no waiting).
fn futures_now(fut: impl std::future::Future<Output = ()>) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    fut.as_mut().poll(&mut cx).is_ready()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_is_fetched_verified_staged_and_attacks_are_refused() {
    // Room for the 300 kB binary, not for much more.
    let s = Setup::start_with("agent-update", |c| c.max_agent_bytes = 400_000).await;
    s.wait_key_list().await;
    let keys = &s.peer.keys;
    let bin = BinDir::new(s.dir.path());
    let t = now();

    // Signed by the models key: a leaked models key cannot ship code.
    let good_bytes = binary(1);
    let good = testkit::release("9.0.0", host_arch(), &good_bytes, t);
    let by_models = Signed::sign(&good, &keys.models).unwrap();
    let seq = update(&s, by_models).await;
    assert_eq!(refused(&s, seq).await, ReasonCode::MissingRole);

    // Built for another arch.
    let wrong = keys.sign_release(&testkit::release("9.0.0", other_arch(), &good_bytes, t));
    let seq = update(&s, wrong).await;
    assert_eq!(refused(&s, seq).await, ReasonCode::WrongArch);

    // Below the running version: a downgrade.
    let old = keys.sign_release(&testkit::release("0.0.1", host_arch(), &good_bytes, t));
    let seq = update(&s, old).await;
    assert_eq!(refused(&s, seq).await, ReasonCode::Downgrade);

    // Expired.
    let mut expired = good.clone();
    expired.expires_at = drover_protocol::Timestamp(t.0 - 1);
    let seq = update(&s, keys.sign_release(&expired)).await;
    assert_eq!(refused(&s, seq).await, ReasonCode::ManifestExpired);

    // Tampered chunks: the controller (or the path to it) serves other
    // bytes under the release's digest.
    let evil_bytes = binary(2);
    let evil = testkit::release("9.0.1", host_arch(), &binary(3), t);
    s.peer.add_artifact_as(evil.artifact.sha256, {
        let mut b = evil_bytes.clone();
        b.truncate(evil.artifact.size as usize);
        b
    });
    let seq = update(&s, keys.sign_release(&evil)).await;
    assert_eq!(refused(&s, seq).await, ReasonCode::ArtifactMismatch);

    // Larger than this device takes (max_agent_bytes).
    let huge = keys.sign_release(&testkit::release(
        "9.0.2",
        host_arch(),
        &vec![0u8; 1 + s.config.max_agent_bytes as usize],
        t,
    ));
    let seq = update(&s, huge).await;
    assert_eq!(refused(&s, seq).await, ReasonCode::ReleaseTooLarge);

    // The version it runs: nothing to do, and it says so.
    let same = keys.sign_release(&testkit::release(
        drover_agent::AGENT_VERSION,
        host_arch(),
        &good_bytes,
        t,
    ));
    let seq = update(&s, same).await;
    s.peer
        .wait("Running reported", STEP, |st| {
            st.ups
                .iter()
                .any(|u| matches!(u, Up::AgentUpdate(a) if a.seq == seq && a.phase == AgentUpdatePhase::Running))
                .then_some(())
        })
        .await;

    // After every refusal: nothing staged, no restart, still serving its
    // status and connected.
    assert!(!restart_requested(&s));
    let staged: Vec<_> = std::fs::read_dir(s.dir.path().join("bin"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        staged
            .iter()
            .all(|n| n.to_string_lossy().ends_with(".json")),
        "{staged:?}"
    );
    assert!(s.agent().status().link.connected);

    // The real thing: fetched in chunks, verified, staged, switched.
    s.peer.add_artifact(&good_bytes);
    let seq = update(&s, keys.sign_release(&good)).await;
    tokio::time::timeout(STEP, s.agent().restart_requested())
        .await
        .expect("a restart is asked for once the binary is staged");
    s.peer
        .wait("Restarting reported", STEP, |st| {
            st.ups
                .iter()
                .any(|u| {
                    matches!(u, Up::AgentUpdate(a) if a.seq == seq && a.phase == AgentUpdatePhase::Restarting)
                })
                .then_some(())
        })
        .await;
    let phases: Vec<AgentUpdatePhase> = statuses(&s, seq).into_iter().map(|a| a.phase).collect();
    assert!(
        matches!(
            phases.first(),
            Some(AgentUpdatePhase::Downloading { received: 0, .. })
        ),
        "{phases:?}"
    );
    assert_eq!(phases.last(), Some(&AgentUpdatePhase::Restarting));
    let served: u64 = s
        .peer
        .state()
        .served
        .iter()
        .filter(|(sha, _, _)| *sha == Sha256::of(&good_bytes))
        .count() as u64;
    assert!(served >= 2, "fetched in several chunks ({served})");
    let target = std::fs::read_link(bin.current()).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), good_bytes);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
    let record = bin.load().unwrap().unwrap();
    let trial = record.trial.unwrap();
    assert_eq!(trial.slot.file, target);
    assert_eq!(trial.slot.version.to_string(), "9.0.0");
    assert_eq!(trial.starts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_is_reported_once_back_on_the_previous_binary() {
    use drover_agent::core::self_update::{BootRecord, FallbackReport, Slot};
    use drover_protocol::manifest::AgentVersion;
    use drover_protocol::messages::Reason;

    let running = AgentVersion::parse(drover_agent::AGENT_VERSION).unwrap();
    let failed = AgentVersion::parse("9.0.0").unwrap();
    // What the boot check leaves after switching back (see self_update.rs).
    let s = Setup::start_with("agent-fallback", |c| {
        let mut r = BootRecord::initial(Slot {
            version: running,
            file: c.data_dir.join("packaged"),
        });
        r.report = Some(FallbackReport {
            from: failed,
            to: running,
            reason: Reason::new(ReasonCode::AgentStartFailed, "started 3 times"),
        });
        BinDir::new(&c.data_dir).save(&r).unwrap();
    })
    .await;
    let (version, phase) = s
        .peer
        .wait("the fallback reported", STEP, |st| {
            st.ups.iter().find_map(|u| match u {
                Up::AgentUpdate(a) if a.seq == 0 => Some((a.version, a.phase.clone())),
                _ => None,
            })
        })
        .await;
    assert_eq!(version, failed);
    let AgentUpdatePhase::FellBack {
        running: now_running,
        reason,
    } = phase
    else {
        panic!("{phase:?}");
    };
    assert_eq!(now_running, running);
    assert_eq!(reason.code, ReasonCode::AgentStartFailed);
    // Cleared on disk, so the next connection does not report it again.
    let record = BinDir::new(s.dir.path()).load().unwrap().unwrap();
    assert_eq!(record.report, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_deploy_during_the_download_keeps_its_partial_file() {
    // Activating a model runs disk hygiene over partial/: the agent
    // update's half-written binary must survive it.
    let s = Setup::start("agent-update-hygiene").await;
    let bytes = binary(4);
    let release = testkit::release("9.0.0", host_arch(), &bytes, now());
    s.peer.add_artifact(&bytes);
    s.peer.set_chunk_budget(Some(2));
    let seq = update(&s, s.peer.keys.sign_release(&release)).await;
    s.peer
        .wait("two chunks served", STEP, |st| {
            st.served
                .iter()
                .filter(|(sha, _, _)| *sha == release.artifact.sha256)
                .count()
                .eq(&2)
                .then_some(())
        })
        .await;
    // Stop serving the binary (its requests go unanswered) while a model
    // is deployed and activated, then serve it again.
    s.peer.state().artifacts.remove(&release.artifact.sha256);
    s.peer.set_chunk_budget(None);
    s.deploy_classifier("sensor_clf_v1.onnx", 1).await;
    assert!(
        s.dir
            .path()
            .join("partial")
            .join(format!("agent-{}.part", release.artifact.sha256.to_hex()))
            .exists(),
        "hygiene kept the agent download"
    );
    s.peer.add_artifact(&bytes);
    tokio::time::timeout(STEP, s.agent().restart_requested())
        .await
        .expect("the update completes after the deploy");
    assert!(
        !statuses(&s, seq)
            .iter()
            .any(|a| matches!(a.phase, AgentUpdatePhase::Failed(_))),
        "{:?}",
        statuses(&s, seq)
    );
    let target = std::fs::read_link(BinDir::new(s.dir.path()).current()).unwrap();
    assert_eq!(std::fs::read(target).unwrap(), bytes);
}

/// A download cut short (the agent restarted, the link dropped for good)
/// resumes from the bytes its partial file holds: only the rest is asked
/// for, and the whole still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_from_the_bytes_held() {
    let s = Setup::start("agent-resume").await;
    s.wait_key_list().await;
    let keys = &s.peer.keys;
    let bytes = binary(7);
    let release = testkit::release("9.1.0", host_arch(), &bytes, now());
    let held = bytes.len() / 2;
    let partial = s.dir.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(
        partial.join(format!("agent-{}.part", release.artifact.sha256.to_hex())),
        &bytes[..held],
    )
    .unwrap();
    s.peer.add_artifact(&bytes);
    let seq = update(&s, keys.sign_release(&release)).await;
    tokio::time::timeout(STEP, s.agent().restart_requested())
        .await
        .expect("staged after the rest arrived");
    let first = statuses(&s, seq).into_iter().next().unwrap().phase;
    assert_eq!(
        first,
        AgentUpdatePhase::Downloading {
            received: held as u64,
            total: bytes.len() as u64
        }
    );
    let served = s.peer.state().served.clone();
    assert!(!served.is_empty());
    assert!(
        served.iter().all(|(_, offset, _)| *offset >= held as u64),
        "only the missing bytes are fetched: {served:?}"
    );
    let target = std::fs::read_link(BinDir::new(s.dir.path()).current()).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), bytes);
}
