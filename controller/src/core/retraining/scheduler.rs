//! The retraining scheduler's sans-IO core: when each model is evaluated,
//! its [`DriftPolicy`], the capture sessions of running jobs, and the queue
//! of jobs ready to train.
//!
//! No clock, no I/O: the runner ([`super::runner`]) passes `now` in, asks
//! [`Scheduler::poll_due`] which model to evaluate, fetches telemetry, hands
//! the judged scopes back with [`Scheduler::handle_evaluation`], turns
//! [`Scheduler::poll_trigger`] into a persisted job, feeds capture uploads
//! to [`Scheduler::handle_capture`] and finished captures out of
//! [`Scheduler::poll_capture_done`]. [`Scheduler::poll_timeout`] says when
//! it next has something to do, with the reason.
//!
//! Evaluations are due every `interval` per model. A model whose policy
//! state records an evaluation resumes on that schedule after a restart;
//! a model never evaluated is first due one interval after start (a fresh
//! controller has no telemetry to judge yet).

use std::collections::{BTreeMap, VecDeque};

use drover_protocol::messages::CaptureUpload;
use drover_protocol::{ModelName, Version};

use super::capture::{CaptureSession, UploadOutcome};
use super::config::{ModelRetrainConfig, RetrainConfig};
use super::ports::CohortFilter;
use super::report::{ScopeDrift, worst_scope};
use crate::core::drift::{DriftError, DriftPolicy, DriftPolicyState, Evaluation, Trigger};

/// An evaluation to run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEvaluation {
    /// Model.
    pub model: ModelName,
    /// Range start: `to_ms - window`.
    pub from_ms: u64,
    /// Range end: now.
    pub to_ms: u64,
    /// Evaluate per value of this label, if set.
    pub cohort_key: Option<String>,
}

/// What one evaluation decided, and on which scope.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationOutcome {
    /// The policy's decision.
    pub evaluation: Evaluation,
    /// The scope it judged (the worst), by index into the scopes given.
    pub scope: usize,
}

/// A trigger with what the job needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTrigger {
    /// The policy's trigger (reason, report).
    pub trigger: Trigger,
    /// The version evaluated, when known (not after a restart).
    pub version: Option<Version>,
    /// The cohort that fired it.
    pub cohort: Option<CohortFilter>,
}

#[derive(Debug, Clone)]
struct Slot {
    config: ModelRetrainConfig,
    policy: DriftPolicy,
    next_due: u64,
    last_version: Option<Version>,
    last_cohort: Option<CohortFilter>,
}

/// The core (see the module docs).
#[derive(Debug, Clone)]
pub struct Scheduler {
    slots: BTreeMap<ModelName, Slot>,
    captures: BTreeMap<u64, CaptureSession>,
    ready: VecDeque<u64>,
}

impl Scheduler {
    /// A scheduler for every model in `config`, resuming `states` (saved
    /// policy states; models without one start fresh).
    ///
    /// # Errors
    ///
    /// A model's policy settings are invalid.
    pub fn new(
        config: &RetrainConfig,
        mut states: BTreeMap<ModelName, DriftPolicyState>,
        now: u64,
    ) -> Result<Scheduler, DriftError> {
        let mut slots = BTreeMap::new();
        for (model, cfg) in &config.models {
            let state = states.remove(model).unwrap_or_default();
            let interval = cfg.interval_ms();
            let next_due = match state.last_evaluation() {
                Some((at, _)) => at.saturating_add(interval).max(now),
                None => now.saturating_add(interval),
            };
            let policy = DriftPolicy::resume(cfg.policy.clone(), state)?;
            slots.insert(
                model.clone(),
                Slot {
                    config: cfg.clone(),
                    policy,
                    next_due,
                    last_version: None,
                    last_cohort: None,
                },
            );
        }
        Ok(Scheduler {
            slots,
            captures: BTreeMap::new(),
            ready: VecDeque::new(),
        })
    }

    /// Models with a policy.
    pub fn models(&self) -> impl Iterator<Item = &ModelName> {
        self.slots.keys()
    }

    /// A model's policy state (persist it after every `handle_*`/`poll_*`).
    pub fn policy_state(&self, model: &ModelName) -> Option<&DriftPolicyState> {
        self.slots.get(model).map(|s| s.policy.state())
    }

    /// When the cooldown of `model`'s last trigger ends.
    pub fn cooldown_until(&self, model: &ModelName) -> Option<u64> {
        self.slots.get(model)?.policy.cooldown_until()
    }

    /// The next moment something is due, and why.
    pub fn poll_timeout(&self) -> Option<(u64, &'static str)> {
        let ready = self.ready.front().map(|_| (0, "job ready to train"));
        let evaluations = self
            .slots
            .values()
            .map(|s| (s.next_due, "drift evaluation"));
        let captures = self
            .captures
            .values()
            .map(|c| (c.deadline(), "capture deadline"));
        ready
            .into_iter()
            .chain(evaluations)
            .chain(captures)
            .min_by_key(|(at, _)| *at)
    }

    /// The next model whose evaluation is due at `now` (schedules its next
    /// one an interval later), or `None`.
    pub fn poll_due(&mut self, now: u64) -> Option<DueEvaluation> {
        let (model, slot) = self
            .slots
            .iter_mut()
            .filter(|(_, s)| s.next_due <= now)
            .min_by_key(|(_, s)| s.next_due)?;
        slot.next_due = now.saturating_add(slot.config.interval_ms());
        Some(DueEvaluation {
            model: model.clone(),
            from_ms: now.saturating_sub(slot.config.window_ms()),
            to_ms: now,
            cohort_key: slot.config.cohort_key.clone(),
        })
    }

    /// Feeds the judged scopes of `model@version` to its policy: the worst
    /// scope counts ([`worst_scope`]). `None` when no scope has a report
    /// (or the model has no policy); the policy is then not told anything.
    pub fn handle_evaluation(
        &mut self,
        now: u64,
        model: &ModelName,
        version: Version,
        scopes: &[ScopeDrift],
    ) -> Option<EvaluationOutcome> {
        let slot = self.slots.get_mut(model)?;
        let index = worst_scope(scopes)?;
        let scope = scopes.get(index)?;
        let report = scope.report.as_ref()?;
        let evaluation = slot.policy.handle_evaluation(now, report);
        slot.last_version = Some(version);
        slot.last_cohort = scope.cohort.clone();
        Some(EvaluationOutcome {
            evaluation,
            scope: index,
        })
    }

    /// A trigger the policy fired, once.
    pub fn poll_trigger(&mut self, model: &ModelName) -> Option<PendingTrigger> {
        let slot = self.slots.get_mut(model)?;
        let trigger = slot.policy.poll_trigger()?;
        Some(PendingTrigger {
            trigger,
            version: slot.last_version,
            cohort: slot.last_cohort.clone(),
        })
    }

    /// A drift-triggered job of `model` ended.
    pub fn handle_job_finished(&mut self, now: u64, model: &ModelName, ok: bool) {
        if let Some(slot) = self.slots.get_mut(model) {
            slot.policy.handle_job_finished(now, ok);
        }
    }

    /// Whether `model`'s policy waits for a job to finish.
    pub fn job_in_flight(&self, model: &ModelName) -> bool {
        self.slots
            .get(model)
            .is_some_and(|s| s.policy.state().job_in_flight())
    }

    /// Starts collecting uploads for `job` (replacing an earlier session of
    /// the same job).
    pub fn start_capture(&mut self, job: u64, session: CaptureSession) {
        self.captures.insert(job, session);
    }

    /// Routes one upload from `device` to the session that asked it (by
    /// command sequence). `None` if no session did.
    pub fn handle_capture(
        &mut self,
        device: &str,
        upload: &CaptureUpload,
    ) -> Option<(u64, UploadOutcome)> {
        let mut ignored = None;
        for (job, session) in &mut self.captures {
            match session.handle_upload(device, upload) {
                UploadOutcome::Ignored(why) => ignored = Some((*job, why)),
                accepted => return Some((*job, accepted)),
            }
        }
        ignored.map(|(job, why)| (job, UploadOutcome::Ignored(why)))
    }

    /// Whether `job`'s capture is over (every device done) or past its
    /// deadline.
    pub fn capture_is_over(&self, job: u64, now: u64) -> bool {
        self.captures.get(&job).is_some_and(|s| s.is_over(now))
    }

    /// The next capture that is complete or past its deadline, removed.
    pub fn poll_capture_done(&mut self, now: u64) -> Option<(u64, CaptureSession)> {
        let job = *self
            .captures
            .iter()
            .find(|(_, s)| s.is_over(now))
            .map(|(job, _)| job)?;
        self.captures.remove(&job).map(|s| (job, s))
    }

    /// Drops `job`'s capture session (the job failed or was given up).
    pub fn cancel_capture(&mut self, job: u64) {
        self.captures.remove(&job);
    }

    /// Queues `job` for training.
    pub fn push_ready(&mut self, job: u64) {
        if !self.ready.contains(&job) {
            self.ready.push_back(job);
        }
    }

    /// Jobs ready to train, oldest first, removed from the queue.
    pub fn take_ready(&mut self) -> Vec<u64> {
        self.ready.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use drover_protocol::Timestamp;
    use drover_protocol::testkit;

    use super::*;
    use crate::core::drift::{DriftPolicyConfig, Histogram, ObservedWindow};
    use crate::core::retraining::ports::TelemetrySlice;
    use crate::core::retraining::report::{ScopeData, reference_profile};

    const MIN: u64 = 60_000;

    fn model() -> ModelName {
        ModelName::new("m").unwrap()
    }

    fn config() -> RetrainConfig {
        let cfg = ModelRetrainConfig {
            policy: DriftPolicyConfig {
                consecutive: 2,
                cooldown: Duration::from_secs(3600),
                ..DriftPolicyConfig::default()
            },
            interval: Duration::from_secs(600),
            ..ModelRetrainConfig::default()
        };
        RetrainConfig {
            models: BTreeMap::from([(model(), cfg)]),
        }
    }

    fn scope(shift: bool) -> ScopeDrift {
        let manifest = testkit::manifest("m", 1, b"x", Timestamp(0));
        let profile = reference_profile(&manifest).unwrap();
        let n = 20;
        let first = if shift {
            vec![2 * n, 8 * n, 40 * n, 50 * n]
        } else {
            vec![16 * n, 34 * n, 34 * n, 16 * n]
        };
        let stable = Histogram::from_counts(vec![16 * n, 34 * n, 34 * n, 16 * n]);
        let merged = ObservedWindow {
            features: vec![
                Histogram::from_counts(first),
                stable.clone(),
                stable.clone(),
                stable,
            ],
            output: None,
        };
        ScopeDrift::assess(
            &profile,
            &DriftPolicyConfig::default(),
            &ScopeData {
                slice: TelemetrySlice {
                    windows: 1,
                    merged,
                    devices: BTreeMap::new(),
                },
                ..ScopeData::default()
            },
        )
    }

    #[test]
    fn evaluations_follow_the_interval() {
        let mut s = Scheduler::new(&config(), BTreeMap::new(), 0).unwrap();
        assert_eq!(s.poll_timeout(), Some((10 * MIN, "drift evaluation")));
        assert_eq!(s.poll_due(10 * MIN - 1), None);
        let due = s.poll_due(10 * MIN).unwrap();
        assert_eq!(due.model, model());
        assert_eq!(due.to_ms, 10 * MIN);
        assert_eq!(due.from_ms, 0, "a 1 h window saturates at 0");
        assert_eq!(s.poll_due(10 * MIN), None, "one evaluation per interval");
        assert_eq!(s.poll_timeout(), Some((20 * MIN, "drift evaluation")));
    }

    #[test]
    fn stationary_never_triggers_drift_does_once_then_cooldown() {
        let mut s = Scheduler::new(&config(), BTreeMap::new(), 0).unwrap();
        let m = model();
        let mut now = 0;
        for _ in 0..5 {
            now += 10 * MIN;
            s.poll_due(now).unwrap();
            let out = s
                .handle_evaluation(now, &m, Version(1), &[scope(false)])
                .unwrap();
            assert!(matches!(out.evaluation, Evaluation::Stable { .. }));
            assert!(s.poll_trigger(&m).is_none());
        }
        now += 10 * MIN;
        let out = s
            .handle_evaluation(now, &m, Version(1), &[scope(false), scope(true)])
            .unwrap();
        assert_eq!(out.scope, 1);
        assert!(matches!(
            out.evaluation,
            Evaluation::Drifting { run: 1, .. }
        ));
        assert!(s.poll_trigger(&m).is_none());
        now += 10 * MIN;
        let out = s
            .handle_evaluation(now, &m, Version(1), &[scope(true)])
            .unwrap();
        assert!(matches!(out.evaluation, Evaluation::Triggered { .. }));
        let pending = s.poll_trigger(&m).unwrap();
        assert_eq!(pending.version, Some(Version(1)));
        assert!(s.poll_trigger(&m).is_none(), "a trigger is taken once");
        assert!(s.job_in_flight(&m));
        s.handle_job_finished(now + 1, &m, false);
        // Still drifting within the cooldown: suppressed.
        now += 10 * MIN;
        let out = s
            .handle_evaluation(now, &m, Version(1), &[scope(true)])
            .unwrap();
        assert!(matches!(out.evaluation, Evaluation::Suppressed { .. }));
        assert!(s.poll_trigger(&m).is_none());
        // After the cooldown the persisting drift triggers again.
        now += 60 * MIN;
        let out = s
            .handle_evaluation(now, &m, Version(1), &[scope(true)])
            .unwrap();
        assert!(matches!(out.evaluation, Evaluation::Triggered { .. }));
    }

    #[test]
    fn resume_keeps_the_run_and_the_schedule() {
        let mut s = Scheduler::new(&config(), BTreeMap::new(), 0).unwrap();
        let m = model();
        s.handle_evaluation(5 * MIN, &m, Version(1), &[scope(true)]);
        let saved = BTreeMap::from([(m.clone(), s.policy_state(&m).unwrap().clone())]);
        let mut resumed = Scheduler::new(&config(), saved, 7 * MIN).unwrap();
        assert_eq!(resumed.poll_timeout(), Some((15 * MIN, "drift evaluation")));
        let out = resumed
            .handle_evaluation(15 * MIN, &m, Version(1), &[scope(true)])
            .unwrap();
        assert!(matches!(
            out.evaluation,
            Evaluation::Triggered { run: 2, .. }
        ));
        // Long after: due at once.
        let late = BTreeMap::from([(m.clone(), resumed.policy_state(&m).unwrap().clone())]);
        let s = Scheduler::new(&config(), late, 500 * MIN).unwrap();
        assert_eq!(s.poll_timeout(), Some((500 * MIN, "drift evaluation")));
    }

    #[test]
    fn scopes_without_reports_are_not_evaluated() {
        let mut s = Scheduler::new(&config(), BTreeMap::new(), 0).unwrap();
        let mut broken = scope(true);
        broken.report = None;
        assert!(
            s.handle_evaluation(1, &model(), Version(1), &[broken])
                .is_none()
        );
        assert!(
            s.handle_evaluation(
                1,
                &ModelName::new("other").unwrap(),
                Version(1),
                &[scope(true)]
            )
            .is_none()
        );
        assert_eq!(s.policy_state(&model()).unwrap().evaluations(), 0);
    }

    #[test]
    fn ready_queue_and_timeouts() {
        let mut s = Scheduler::new(&RetrainConfig::default(), BTreeMap::new(), 0).unwrap();
        assert_eq!(s.poll_timeout(), None);
        s.push_ready(3);
        s.push_ready(3);
        s.push_ready(1);
        assert_eq!(s.poll_timeout(), Some((0, "job ready to train")));
        assert_eq!(s.take_ready(), [3, 1]);
        assert_eq!(s.poll_timeout(), None);
    }
}
