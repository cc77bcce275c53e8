//! Arbitration unit tests. Running jobs are real deploy cores fed chunks at
//! fake-clock times, so "bytes held" is what a download actually received.

use drover_protocol::messages::Chunk;
use drover_protocol::testkit::{self, TestKeys};
use drover_protocol::{Sha256, Timestamp};

use super::*;
use crate::core::deploy::{ChunkOutcome, DeployConfig};

const AGENT: AgentVersion = AgentVersion {
    major: 1,
    minor: 0,
    patch: 0,
};

fn limits() -> Limits {
    Limits {
        max_model_bytes: 1_000,
        disk_budget_bytes: 1_000,
    }
}

fn artifact(fill: u8, len: usize) -> Vec<u8> {
    vec![fill; len]
}

fn manifest(version: u64, bytes: &[u8]) -> ModelManifest {
    testkit::manifest("sensor", version, bytes, Timestamp(0))
}

fn cfg() -> DeployConfig {
    DeployConfig {
        chunk_size: 10,
        window: 4,
        request_timeout_ms: 100,
        progress_interval_ms: 1000,
        stall_timeout_ms: 10_000,
    }
}

/// A job for `bytes` that has received `chunks` 10-byte chunks, one per
/// 50 ms of fake time after connecting at t = 1000.
fn job_holding(seq: u64, kind: JobKind, version: u64, bytes: &[u8], chunks: u64) -> DeployJob {
    let m = manifest(version, bytes);
    let signed = TestKeys::new(1).sign_manifest(&m);
    let mut j = DeployJob::new(
        seq,
        kind,
        signed,
        m,
        RangeSet::default(),
        cfg(),
        Timestamp(0),
    );
    j.handle_link(true, Timestamp(1000));
    for i in 0..chunks {
        let at = Timestamp(1000 + 50 * (i + 1));
        let off = i * 10;
        let data = bytes[off as usize..(off + 10) as usize].to_vec();
        let outcome = j.handle_chunk(
            Chunk {
                sha256: Sha256::of(bytes),
                offset: off,
                total: bytes.len() as u64,
                data,
            },
            at,
        );
        assert_eq!(outcome, ChunkOutcome::Accepted, "chunk {i}");
    }
    j
}

fn serving() -> Serving {
    Serving::default()
}

fn slots<'a>(
    serving: &'a Serving,
    limits: &'a Limits,
    deploy: Option<JobView<'a>>,
    shadow: Option<JobView<'a>>,
) -> Slots<'a> {
    Slots {
        serving,
        deploy,
        shadow,
        agent: AGENT,
        limits,
    }
}

fn view(job: &DeployJob) -> JobView<'_> {
    JobView {
        job,
        installed: false,
    }
}

fn refused(a: Arbitration) -> ReasonCode {
    match a {
        Arbitration::Refuse(r) => r.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn plan(a: Arbitration) -> StartPlan {
    match a {
        Arbitration::Start(p) => p,
        other => panic!("expected a start, got {other:?}"),
    }
}

const SHADOW: JobKind = JobKind::Shadow {
    sample_per_mille: 250,
};

#[test]
fn deploying_the_active_model_changes_nothing() {
    let m = manifest(3, &artifact(1, 40));
    let s = Serving {
        active: Some(m.model_ref()),
        active_bytes: 40,
        ..serving()
    };
    let l = limits();
    assert_eq!(
        arbitrate(9, JobKind::Deploy, &m, &slots(&s, &l, None, None)),
        Arbitration::AlreadyActive
    );
}

#[test]
fn shadowing_the_active_model_is_refused_and_a_repeat_shadow_restarts_the_worker() {
    let m = manifest(3, &artifact(1, 40));
    let l = limits();
    let active = Serving {
        active: Some(m.model_ref()),
        ..serving()
    };
    assert_eq!(
        refused(arbitrate(9, SHADOW, &m, &slots(&active, &l, None, None))),
        ReasonCode::ShadowIsActive
    );

    let shadowed = Serving {
        shadow: Some(m.model_ref()),
        shadow_running: true,
        shadow_bytes: 40,
        ..serving()
    };
    assert_eq!(
        arbitrate(9, SHADOW, &m, &slots(&shadowed, &l, None, None)),
        Arbitration::RestartShadow {
            sample_per_mille: 250
        }
    );
    // The pointer without a running worker (it failed to start): download again.
    let stale = Serving {
        shadow_running: false,
        ..shadowed
    };
    let p = plan(arbitrate(9, SHADOW, &m, &slots(&stale, &l, None, None)));
    assert_eq!(p.slot, Slot::Shadow);
}

#[test]
fn disk_budget_counts_what_stays_after_the_job() {
    let l = limits();
    let s = Serving {
        active: Some(manifest(1, &artifact(1, 10)).model_ref()),
        active_bytes: 300,
        previous_bytes: 300,
        shadow_bytes: 200,
        ..serving()
    };
    // A deploy drops the old previous: 300 active + 200 shadow + 400 new fits 1000.
    let m = manifest(2, &artifact(2, 400));
    assert_eq!(disk_in_use(JobKind::Deploy, &s, None), 500);
    assert_eq!(
        plan(arbitrate(
            9,
            JobKind::Deploy,
            &m,
            &slots(&s, &l, None, None)
        ))
        .slot,
        Slot::Deploy
    );
    // A shadow keeps active and previous (and replaces the shadow): 600 + 400 fits...
    assert_eq!(disk_in_use(SHADOW, &s, None), 600);
    assert_eq!(
        plan(arbitrate(9, SHADOW, &m, &slots(&s, &l, None, None))).slot,
        Slot::Shadow
    );
    // ...but not with a 100-byte deploy download running in the other slot.
    let other = job_holding(5, JobKind::Deploy, 7, &artifact(7, 100), 0);
    assert_eq!(disk_in_use(SHADOW, &s, Some(&other)), 700);
    assert_eq!(
        refused(arbitrate(
            9,
            SHADOW,
            &m,
            &slots(&s, &l, Some(view(&other)), None)
        )),
        ReasonCode::DiskBudget
    );
}

#[test]
fn admission_refusals_leave_running_jobs_alone() {
    let l = limits();
    let s = serving();
    let running = job_holding(5, JobKind::Deploy, 2, &artifact(2, 40), 2);
    let mut m = manifest(3, &artifact(3, 40));
    m.min_agent_version = AgentVersion {
        major: 9,
        minor: 0,
        patch: 0,
    };
    assert_eq!(
        refused(arbitrate(
            9,
            JobKind::Deploy,
            &m,
            &slots(&s, &l, Some(view(&running)), None)
        )),
        ReasonCode::AgentTooOld
    );
    let big = manifest(3, &artifact(3, 2_000));
    assert_eq!(
        refused(arbitrate(
            9,
            JobKind::Deploy,
            &big,
            &slots(&s, &l, Some(view(&running)), None)
        )),
        ReasonCode::ModelTooLarge
    );
}

#[test]
fn shadowing_what_is_being_deployed_is_refused() {
    let l = limits();
    let s = serving();
    let bytes = artifact(4, 40);
    let deploying = job_holding(5, JobKind::Deploy, 4, &bytes, 2);
    let m = manifest(4, &bytes);
    assert_eq!(
        refused(arbitrate(
            9,
            SHADOW,
            &m,
            &slots(&s, &l, Some(view(&deploying)), None)
        )),
        ReasonCode::AlreadyDeploying
    );
}

#[test]
fn deploying_what_the_shadow_slot_downloads_promotes_its_bytes() {
    let l = limits();
    let s = serving();
    let bytes = artifact(4, 40);
    let shadowing = job_holding(5, SHADOW, 4, &bytes, 3);
    assert_eq!(shadowing.held().total(), 30);
    let m = manifest(4, &bytes);
    let p = plan(arbitrate(
        9,
        JobKind::Deploy,
        &m,
        &slots(&s, &l, None, Some(view(&shadowing))),
    ));
    assert_eq!(p.slot, Slot::Deploy);
    assert_eq!(p.held, RangeSet::from_ranges([(0, 30)]));
    let promote = p.promote.expect("the shadow job is promoted");
    assert_eq!(promote.code, ReasonCode::Superseded);
    assert!(promote.retryable());
    assert!(promote.detail.contains("command 9"), "{}", promote.detail);
    assert_eq!(p.supersede, None);

    // An installed shadow artifact has no partial bytes to hand over.
    let installed = JobView {
        job: &shadowing,
        installed: true,
    };
    let p = plan(arbitrate(
        9,
        JobKind::Deploy,
        &m,
        &slots(&s, &l, None, Some(installed)),
    ));
    assert!(p.promote.is_some());
    assert_eq!(p.held.total(), 0);
}

#[test]
fn a_superseded_job_hands_over_bytes_only_for_the_same_artifact() {
    let l = limits();
    let s = serving();
    let bytes = artifact(5, 40);
    let same = job_holding(5, JobKind::Deploy, 5, &bytes, 2);
    let m = manifest(5, &bytes);
    let p = plan(arbitrate(
        9,
        JobKind::Deploy,
        &m,
        &slots(&s, &l, Some(view(&same)), None),
    ));
    assert_eq!(p.held, RangeSet::from_ranges([(0, 20)]));
    let sup = p.supersede.expect("the running job is superseded");
    assert!(!sup.discard, "its file is the new job's");
    assert_eq!(sup.reason.code, ReasonCode::Superseded);

    let other = job_holding(5, JobKind::Deploy, 6, &artifact(6, 40), 2);
    let p = plan(arbitrate(
        9,
        JobKind::Deploy,
        &m,
        &slots(&s, &l, Some(view(&other)), None),
    ));
    assert_eq!(p.held.total(), 0);
    assert!(p.supersede.expect("superseded").discard);
}

#[test]
fn promotion_and_supersede_together_take_the_superseded_jobs_bytes() {
    // Deploy slot already downloads the same artifact (20 bytes), and so does
    // the shadow slot (30 bytes): the shadow job is promoted away, the deploy
    // job superseded, and the new job continues the deploy job's file.
    let l = limits();
    let s = serving();
    let bytes = artifact(8, 40);
    let deploying = job_holding(5, JobKind::Deploy, 8, &bytes, 2);
    let shadowing = job_holding(6, SHADOW, 8, &bytes, 3);
    let m = manifest(8, &bytes);
    let p = plan(arbitrate(
        9,
        JobKind::Deploy,
        &m,
        &slots(&s, &l, Some(view(&deploying)), Some(view(&shadowing))),
    ));
    assert!(p.promote.is_some());
    assert_eq!(p.held, RangeSet::from_ranges([(0, 20)]));
    assert!(!p.supersede.expect("superseded").discard);
}
