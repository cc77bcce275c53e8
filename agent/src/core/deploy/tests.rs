//! Unit tests of the deploy core, driven by a fake clock (`Timestamp`s the
//! tests choose).

use super::*;
use drover_protocol::manifest::AgentVersion;
use drover_protocol::testkit::{self, TestKeys};

const CS: u32 = 10;

fn cfg() -> DeployConfig {
    DeployConfig {
        chunk_size: CS,
        window: 2,
        request_timeout_ms: 100,
        progress_interval_ms: 1000,
        stall_timeout_ms: 10_000,
    }
}

fn artifact() -> Vec<u8> {
    (0..45u8).collect()
}

fn job_with(held: RangeSet, kind: JobKind) -> DeployJob {
    let keys = TestKeys::new(1);
    let m = testkit::manifest("sensor", 2, &artifact(), Timestamp(0));
    let signed = keys.sign_manifest(&m);
    DeployJob::new(7, kind, signed, m, held, cfg(), Timestamp(0))
}

fn job() -> DeployJob {
    job_with(RangeSet::default(), JobKind::Deploy)
}

fn drain(j: &mut DeployJob) -> Vec<DeployAction> {
    std::iter::from_fn(|| j.poll_action()).collect()
}

fn requests(actions: &[DeployAction]) -> Vec<(u64, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            DeployAction::RequestChunk(r) => Some((r.offset, r.len)),
            _ => None,
        })
        .collect()
}

fn chunk(offset: u64, len: usize) -> Chunk {
    let a = artifact();
    Chunk {
        sha256: Sha256::of(&a),
        offset,
        total: a.len() as u64,
        data: a[offset as usize..offset as usize + len].to_vec(),
    }
}

fn phases(actions: &[DeployAction]) -> Vec<DeployPhase> {
    actions
        .iter()
        .filter_map(|a| match a {
            DeployAction::Report(s) => Some(s.phase.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_stay_within_the_window_and_refill_on_each_chunk() {
    let mut j = job();
    let a = drain(&mut j);
    assert_eq!(
        phases(&a),
        vec![DeployPhase::Downloading {
            received: 0,
            total: 45
        }]
    );
    assert!(requests(&a).is_empty(), "nothing requested while offline");
    j.handle_link(true, Timestamp(0));
    assert_eq!(requests(&drain(&mut j)), vec![(0, CS), (10, CS)]);
    assert_eq!(
        j.handle_chunk(chunk(10, 10), Timestamp(1)),
        ChunkOutcome::Accepted
    );
    let a = drain(&mut j);
    assert!(matches!(a[0], DeployAction::WriteChunk { offset: 10, .. }));
    assert_eq!(requests(&a), vec![(20, CS)]);
    assert_eq!(j.held_bytes(), 10);
}

#[test]
fn foreign_unrequested_invalid_and_duplicate_chunks_are_ignored() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    drain(&mut j);
    let mut other = chunk(0, 10);
    other.sha256 = Sha256::of(b"other");
    assert_eq!(j.handle_chunk(other, Timestamp(1)), ChunkOutcome::NotOurs);
    assert_eq!(
        j.handle_chunk(chunk(30, 10), Timestamp(1)),
        ChunkOutcome::Unrequested
    );
    assert_eq!(
        j.handle_chunk(chunk(5, 10), Timestamp(1)),
        ChunkOutcome::Unrequested
    );
    let mut bad_total = chunk(0, 10);
    bad_total.total = 99;
    assert!(matches!(
        j.handle_chunk(bad_total, Timestamp(1)),
        ChunkOutcome::Invalid(_)
    ));
    let mut empty = chunk(0, 10);
    empty.data.clear();
    assert!(matches!(
        j.handle_chunk(empty, Timestamp(1)),
        ChunkOutcome::Invalid(_)
    ));
    assert!(drain(&mut j).is_empty());
    assert_eq!(
        j.handle_chunk(chunk(0, 10), Timestamp(1)),
        ChunkOutcome::Accepted
    );
    assert_eq!(
        j.handle_chunk(chunk(0, 10), Timestamp(1)),
        ChunkOutcome::Duplicate
    );
    assert_eq!(j.retry_counts().1, 1);
    assert_eq!(j.held_bytes(), 10);
}

#[test]
fn short_chunks_leave_a_gap_that_is_asked_for_again() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    drain(&mut j);
    assert_eq!(
        j.handle_chunk(chunk(0, 4), Timestamp(1)),
        ChunkOutcome::Accepted
    );
    // The gap 4..10 comes first, aligned to the next boundary.
    assert_eq!(requests(&drain(&mut j)), vec![(4, 6)]);
}

#[test]
fn timed_out_requests_are_sent_again_and_late_answers_dropped() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    drain(&mut j);
    assert_eq!(j.poll_timeout(), Some((Timestamp(100), "chunk_request")));
    j.handle_timeout(Timestamp(99));
    assert!(drain(&mut j).is_empty());
    j.handle_timeout(Timestamp(100));
    assert_eq!(requests(&drain(&mut j)), vec![(0, CS), (10, CS)]);
    assert_eq!(j.retry_counts().0, 2);
    assert_eq!(
        j.handle_chunk(chunk(0, 10), Timestamp(101)),
        ChunkOutcome::Accepted
    );
    assert_eq!(
        j.handle_chunk(chunk(0, 10), Timestamp(102)),
        ChunkOutcome::Duplicate
    );
}

#[test]
fn link_loss_forgets_requests_and_reconnect_asks_again() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    drain(&mut j);
    j.handle_link(false, Timestamp(5));
    assert_eq!(j.poll_timeout(), None);
    assert_eq!(
        j.handle_chunk(chunk(0, 10), Timestamp(6)),
        ChunkOutcome::Unrequested
    );
    j.handle_link(true, Timestamp(50_000));
    assert_eq!(requests(&drain(&mut j)), vec![(0, CS), (10, CS)]);
    // Offline time does not count as a stall.
    j.handle_timeout(Timestamp(50_050));
    assert_ne!(j.phase(), Phase::Failed);
}

#[test]
fn a_stalled_download_fails() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    drain(&mut j);
    for t in (100..10_000).step_by(100) {
        j.handle_timeout(Timestamp(t));
    }
    assert_ne!(j.phase(), Phase::Failed);
    j.handle_timeout(Timestamp(10_000));
    assert_eq!(j.phase(), Phase::Failed);
    let a = drain(&mut j);
    assert!(matches!(
        phases(&a).last(),
        Some(DeployPhase::Failed(r)) if r.code == ReasonCode::DownloadStalled
    ));
    assert!(j.is_finished());
}

#[test]
fn full_pipeline_reports_every_step_with_throttled_progress() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    let mut all = drain(&mut j);
    let mut t = 1;
    while j.phase() == Phase::Downloading {
        let next = requests(&all)
            .into_iter()
            .find(|(o, _)| !j.held().contains(*o, *o + 1));
        let (o, l) = next.unwrap();
        j.handle_chunk(chunk(o, l as usize), Timestamp(t));
        all.extend(drain(&mut j));
        t += 1;
    }
    assert_eq!(j.phase(), Phase::Verifying);
    let a = artifact();
    j.handle_digest(Sha256::of(&a), a.len() as u64);
    j.handle_loaded(Ok(()));
    j.handle_health(Ok(()));
    all.extend(drain(&mut j));
    assert_eq!(all.last(), Some(&DeployAction::Activate));
    j.handle_activated(Ok(()));
    all.extend(drain(&mut j));
    assert_eq!(
        phases(&all),
        vec![
            DeployPhase::Downloading {
                received: 0,
                total: 45
            },
            DeployPhase::Downloading {
                received: 45,
                total: 45
            },
            DeployPhase::Verifying,
            DeployPhase::Loading,
            DeployPhase::HealthCheck,
            DeployPhase::Active,
        ]
    );
    let writes: u64 = all
        .iter()
        .filter_map(|a| match a {
            DeployAction::WriteChunk { data, .. } => Some(data.len() as u64),
            _ => None,
        })
        .sum();
    assert_eq!(writes, 45);
    assert!(j.is_finished());
}

#[test]
fn progress_is_reported_at_most_once_per_interval() {
    let mut j = job();
    j.handle_link(true, Timestamp(0));
    drain(&mut j);
    j.handle_chunk(chunk(0, 10), Timestamp(10));
    assert!(phases(&drain(&mut j)).is_empty());
    j.handle_chunk(chunk(10, 10), Timestamp(1000));
    assert_eq!(
        phases(&drain(&mut j)),
        vec![DeployPhase::Downloading {
            received: 20,
            total: 45
        }]
    );
}

#[test]
fn resume_never_requests_held_bytes() {
    let held = RangeSet::from_ranges([(0, 10), (20, 30)]);
    let mut j = job_with(held, JobKind::Deploy);
    let a = drain(&mut j);
    assert_eq!(
        phases(&a),
        vec![DeployPhase::Downloading {
            received: 20,
            total: 45
        }]
    );
    let p = j.pending();
    assert_eq!(p.held, vec![(0, 10), (20, 30)]);
    let m = p.manifest.decode_unverified().unwrap();
    let mut j = DeployJob::resume(p, m, cfg(), Timestamp(0));
    drain(&mut j);
    j.handle_link(true, Timestamp(0));
    let mut asked = requests(&drain(&mut j));
    j.handle_chunk(chunk(10, 10), Timestamp(1));
    asked.extend(requests(&drain(&mut j)));
    assert_eq!(asked, vec![(10, CS), (30, CS), (40, 5)]);
    for (o, l) in &asked {
        assert!(!(0..10).contains(o) && !(20..30).contains(o), "{o}+{l}");
    }
}

#[test]
fn a_fully_held_artifact_goes_straight_to_verify() {
    let mut j = job_with(RangeSet::from_ranges([(0, 45)]), JobKind::Deploy);
    let a = drain(&mut j);
    assert!(a.contains(&DeployAction::Verify));
    assert_eq!(j.phase(), Phase::Verifying);
}

#[test]
fn digest_mismatch_load_and_health_failures_fail_and_discard() {
    let mut j = job_with(RangeSet::from_ranges([(0, 45)]), JobKind::Deploy);
    drain(&mut j);
    j.handle_digest(Sha256::of(b"tampered"), 45);
    let a = drain(&mut j);
    assert!(matches!(
        phases(&a).last(),
        Some(DeployPhase::Failed(r)) if r.code == ReasonCode::ArtifactMismatch
    ));
    assert_eq!(a.last(), Some(&DeployAction::Discard));

    let mut j = job_with(RangeSet::from_ranges([(0, 45)]), JobKind::Deploy);
    let art = artifact();
    j.handle_digest(Sha256::of(&art), 45);
    j.handle_loaded(Err(Reason::new(ReasonCode::UnsupportedOperator, "Scaler")));
    assert_eq!(j.phase(), Phase::Failed);
    assert_eq!(drain(&mut j).last(), Some(&DeployAction::Discard));

    let mut j = job_with(RangeSet::from_ranges([(0, 45)]), JobKind::Deploy);
    j.handle_digest(Sha256::of(&art), 45);
    j.handle_loaded(Ok(()));
    j.handle_health(Err(Reason::new(ReasonCode::HealthCheckFailed, "off")));
    assert!(matches!(
        phases(&drain(&mut j)).last(),
        Some(DeployPhase::Failed(r)) if r.code == ReasonCode::HealthCheckFailed
    ));
    // Late results after failure change nothing.
    j.handle_activated(Ok(()));
    assert!(drain(&mut j).is_empty());
}

#[test]
fn shadow_jobs_end_in_shadowing() {
    let mut j = job_with(
        RangeSet::from_ranges([(0, 45)]),
        JobKind::Shadow {
            sample_per_mille: 100,
        },
    );
    let art = artifact();
    j.handle_digest(Sha256::of(&art), 45);
    j.handle_loaded(Ok(()));
    j.handle_health(Ok(()));
    j.handle_activated(Ok(()));
    assert_eq!(phases(&drain(&mut j)).last(), Some(&DeployPhase::Shadowing));
}

#[test]
fn cancel_reports_and_optionally_keeps_the_partial_file() {
    let mut j = job();
    drain(&mut j);
    j.cancel(Reason::new(ReasonCode::Superseded, "seq 9"), false);
    let a = drain(&mut j);
    assert!(!a.contains(&DeployAction::Discard));
    assert!(j.is_finished());
}

#[test]
fn range_set_merges() {
    let mut s = RangeSet::default();
    s.insert(10, 20);
    s.insert(30, 40);
    s.insert(20, 30);
    assert_eq!(s.ranges(), &[(10, 40)]);
    s.insert(0, 5);
    s.insert(3, 12);
    assert_eq!(s.ranges(), &[(0, 40)]);
    s.insert(50, 50);
    assert_eq!(s.total(), 40);
    assert!(s.contains(5, 40));
    assert!(!s.contains(5, 41));
    assert_eq!(s.next_missing(0), 40);
}

#[test]
fn admission_checks_version_size_disk_and_shape() {
    let m = testkit::manifest("sensor", 1, &[0; 100], Timestamp(0));
    let limits = Limits {
        max_model_bytes: 1000,
        disk_budget_bytes: 1000,
    };
    let v = AgentVersion::parse("0.1.0").unwrap();
    assert_eq!(admit(&m, v, &limits, 0), Ok(()));
    let mut old = m.clone();
    old.min_agent_version = AgentVersion::parse("9.0.0").unwrap();
    assert_eq!(
        admit(&old, v, &limits, 0).unwrap_err().code,
        ReasonCode::AgentTooOld
    );
    let big = Limits {
        max_model_bytes: 50,
        ..limits
    };
    assert_eq!(
        admit(&m, v, &big, 0).unwrap_err().code,
        ReasonCode::ModelTooLarge
    );
    assert_eq!(
        admit(&m, v, &limits, 950).unwrap_err().code,
        ReasonCode::DiskBudget
    );
    let mut two = m.clone();
    two.inputs.push(two.inputs[0].clone());
    assert_eq!(
        admit(&two, v, &limits, 0).unwrap_err().code,
        ReasonCode::UnsupportedModel
    );
    let mut none = m.clone();
    none.inputs.clear();
    assert_eq!(
        admit(&none, v, &limits, 0).unwrap_err().code,
        ReasonCode::UnsupportedModel
    );
    let mut renamed = two;
    renamed.inputs[1].name = "state".into();
    assert!(admit(&renamed, v, &limits, 0).is_ok());
}
