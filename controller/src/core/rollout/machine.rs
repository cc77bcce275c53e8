//! The [`Rollout`] state machine: `handle_*` in, `poll_*` out, `now` passed in.
//!
//! See the `rollout` module docs for the phases, the driver loop and the
//! persistence contract. Internally every change of a device's task or
//! progress goes through one function (`Rollout::update`), which keeps the
//! per-wave counters and the three time-ordered indexes (deploy queue,
//! rollback queue, report deadlines) in step with the device table, so every
//! input and every poll costs O(log n) and never scans the fleet (starting a
//! stage, building a metrics request, a restart and `status` are O(n)).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use drover_protocol::{DeviceId, Timestamp, Version};
use serde::{Deserialize, Serialize};

use super::gates::{
    Baseline, CohortMetrics, ControlSource, Decision, GateResult, evaluate_all, overall,
};
use super::plan::{self, JoinerBounds, PlanInput};
use super::spec::{Gate, MAX_RETRY_BACKOFF_MS, OnFail, RolloutSpec};
use super::types::{
    AuditEvent, AuditKind, Conflict, DeployOutcome, DeviceView, Membership, MetricsKind,
    MetricsRequest, PauseCause, Phase, ResumePoint, RollbackStatus, RolloutAction, RolloutCommand,
    RolloutError, RolloutStatus, ShadowStatus, SilentCause, Stage, StepCounts, WaveStatus,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
enum Task {
    Idle,
    Shadow,
    Deploy,
    Rollback { to: Version },
    NoRollbackTarget { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Progress {
    Idle,
    /// `attempt` is the number the next command will carry (1-based).
    Queued {
        at: Timestamp,
        attempt: u32,
    },
    Commanded {
        at: Timestamp,
        attempt: u32,
    },
    Done {
        at: Timestamp,
    },
    Failed {
        reason: String,
        attempts: u32,
    },
    Silent {
        since: Timestamp,
        attempt: u32,
        cause: SilentCause,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Device {
    wave: u32,
    hash: u64,
    cohort: String,
    /// Active version when the rollout first saw the device.
    before: Option<Version>,
    current: Option<Version>,
    online: bool,
    last_seen: Timestamp,
    departed: bool,
    /// May run the target: a deploy was sent and not refuted, or it said so.
    exposed: bool,
    task: Task,
    progress: Progress,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
struct WaveCounts {
    members: u64,
    shadow: StepCounts,
    deploy: StepCounts,
    rollback: StepCounts,
    no_target: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    started_at: Option<Timestamp>,
    bake_since: Option<Timestamp>,
    passed_at: Option<Timestamp>,
    failed_at: Option<Timestamp>,
    evaluations: u64,
    gates: Vec<GateResult>,
}

impl StageRecord {
    fn new() -> StageRecord {
        StageRecord {
            started_at: None,
            bake_since: None,
            passed_at: None,
            failed_at: None,
            evaluations: 0,
            gates: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Wave {
    percent: f64,
    planned: u64,
    counts: WaveCounts,
    record: StageRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Outstanding {
    stage: Stage,
    since: Timestamp,
    until: Timestamp,
}

/// Queue order: due time, then wave rank, then device order.
type QueueKey = (Timestamp, u32, u64, DeviceId);

impl Stage {
    fn task(self) -> Task {
        match self {
            Stage::Shadow => Task::Shadow,
            Stage::Wave(_) => Task::Deploy,
        }
    }
}

impl StepCounts {
    fn slot(&mut self, p: &Progress) -> Option<&mut u64> {
        match p {
            Progress::Idle => None,
            Progress::Queued { .. } => Some(&mut self.queued),
            Progress::Commanded { .. } => Some(&mut self.commanded),
            Progress::Done { .. } => Some(&mut self.done),
            Progress::Failed { .. } => Some(&mut self.failed),
            Progress::Silent { .. } => Some(&mut self.silent),
        }
    }
}

/// A staged rollout of one model version, as a sans-IO state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    spec: RolloutSpec,
    created_at: Timestamp,
    /// Latest `now` seen; `poll_timeout` reports due work at this time.
    now: Timestamp,
    failed_versions: BTreeSet<Version>,
    phase: Phase,
    waves: Vec<Wave>,
    shadow: Option<StageRecord>,
    bounds: JoinerBounds,
    devices: BTreeMap<DeviceId, Device>,
    departed: u64,
    deploy_queue: BTreeSet<QueueKey>,
    rollback_queue: BTreeSet<QueueKey>,
    deadlines: BTreeSet<(Timestamp, DeviceId)>,
    stop_shadow: BTreeSet<DeviceId>,
    next_deploy_at: Timestamp,
    next_rollback_at: Timestamp,
    rollback_cursor: Option<u32>,
    rollback_reason: Option<String>,
    next_request_id: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    next_metrics_at: Option<Timestamp>,
    /// Baking with no decision by then pauses (lost metrics answers).
    watchdog: Option<Timestamp>,
    baseline: Option<Baseline>,
    last_gates: Vec<GateResult>,
    audit: VecDeque<AuditEvent>,
}

impl Rollout {
    /// Plans a rollout over the matching devices among `devices` (the
    /// inventory now). `failed_versions` are versions that failed earlier
    /// rollouts: the target may not be one, and no device is rolled back
    /// onto one. Nothing is sent until the first `handle_*`/`poll_*`.
    pub fn new(
        spec: RolloutSpec,
        devices: impl IntoIterator<Item = DeviceView>,
        failed_versions: BTreeSet<Version>,
        now: Timestamp,
    ) -> Result<Rollout, RolloutError> {
        spec.validate()?;
        if failed_versions.contains(&spec.target) {
            return Err(RolloutError::TargetFailed(spec.target));
        }
        let mut views: BTreeMap<DeviceId, DeviceView> = BTreeMap::new();
        for v in devices {
            if spec.selector.matches(&v.labels) {
                views.insert(v.id.clone(), v);
            }
        }
        if views.len() < 2 {
            return Err(RolloutError::TooFewDevices {
                selector: spec.selector.to_string(),
                found: views.len(),
            });
        }
        let inputs: Vec<PlanInput> = views
            .values()
            .map(|v| PlanInput {
                id: v.id.clone(),
                hash: plan::device_hash(&spec.id, &v.id),
                cohort: plan::cohort_of(&v.labels, &spec.cohort_keys),
            })
            .collect();
        let hashes: BTreeMap<DeviceId, (u64, String)> = inputs
            .iter()
            .map(|p| (p.id.clone(), (p.hash, p.cohort.clone())))
            .collect();
        let planned = plan::plan(inputs, &spec.waves);

        let mut waves: Vec<Wave> = spec
            .waves
            .iter()
            .zip(&planned.sizes)
            .map(|(p, n)| Wave {
                percent: *p,
                planned: *n as u64,
                counts: WaveCounts::default(),
                record: StageRecord::new(),
            })
            .collect();
        let mut table = BTreeMap::new();
        for (id, wave) in &planned.assignment {
            let (Some(view), Some((hash, cohort))) = (views.get(id), hashes.get(id)) else {
                continue;
            };
            if let Some(w) = waves.get_mut(*wave as usize) {
                w.counts.members += 1;
            }
            table.insert(
                id.clone(),
                Device {
                    wave: *wave,
                    hash: *hash,
                    cohort: cohort.clone(),
                    before: view.version,
                    current: view.version,
                    online: view.online,
                    last_seen: view.last_seen,
                    departed: false,
                    exposed: view.version == Some(spec.target),
                    task: Task::Idle,
                    progress: Progress::Idle,
                },
            );
        }
        let shadow = spec.shadow_ms.map(|_| StageRecord::new());
        let mut r = Rollout {
            created_at: now,
            now,
            failed_versions,
            phase: Phase::Pending,
            waves,
            shadow,
            bounds: planned.bounds,
            devices: table,
            departed: 0,
            deploy_queue: BTreeSet::new(),
            rollback_queue: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            stop_shadow: BTreeSet::new(),
            next_deploy_at: now,
            next_rollback_at: now,
            rollback_cursor: None,
            rollback_reason: None,
            next_request_id: 1,
            outstanding: BTreeMap::new(),
            next_metrics_at: None,
            watchdog: None,
            baseline: None,
            last_gates: Vec::new(),
            audit: VecDeque::new(),
            spec,
        };
        let sizes: Vec<u64> = planned.sizes.iter().map(|s| *s as u64).collect();
        let canary_cohorts: BTreeMap<String, u64> = planned
            .canary_cohorts
            .iter()
            .map(|(c, n)| (c.clone(), *n as u64))
            .collect();
        let message = format!(
            "rollout of {}@{} planned over {} devices: waves {:?} devices, canary across {} cohorts",
            r.spec.model,
            r.spec.target,
            r.devices.len(),
            sizes,
            canary_cohorts.len()
        );
        r.emit(
            now,
            AuditKind::Created {
                devices: r.devices.len() as u64,
                waves: sizes,
                canary_cohorts,
            },
            message,
        );
        Ok(r)
    }

    /// When the rollout was planned.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Serialises the whole state (see the persistence contract).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Restores a state written by [`Rollout::to_json`]. Call
    /// [`Rollout::handle_restart`] next when the process restarted.
    pub fn from_json(json: &str) -> Result<Rollout, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The spec.
    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    /// The rollout id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// True while the rollout holds its devices (see [`Phase::is_active`]).
    pub fn is_active(&self) -> bool {
        self.phase.is_active()
    }

    /// Versions that must never be a rollback target (the ones passed in,
    /// plus this rollout's target once it failed).
    pub fn failed_versions(&self) -> &BTreeSet<Version> {
        &self.failed_versions
    }

    // ----- inputs -------------------------------------------------------

    /// Processes whatever is due at `now` (deadlines, stage starts, the
    /// bake-limit watchdog). Every other `handle_*`/`poll_*` does this first,
    /// so calling it is only needed when [`Rollout::poll_timeout`] fires.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.tick(now);
    }

    /// The shell restarted from persisted state: commands that were
    /// recorded but may never have been sent are queued again (never those
    /// of devices that already reported success), and a baking stage asks for
    /// fresh metrics at once, because answers to requests made before the
    /// restart will not come.
    ///
    /// This relies on the agent answering a repeated Deploy/Shadow/Rollback
    /// of a version it already runs (or is fetching) with its status, not
    /// with a failure.
    pub fn handle_restart(&mut self, now: Timestamp) {
        self.tick(now);
        let inflight: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| matches!(d.progress, Progress::Commanded { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &inflight {
            self.update(id, |d| {
                if let Progress::Commanded { attempt, .. } = d.progress {
                    d.progress = Progress::Queued { at: now, attempt };
                }
            });
        }
        self.outstanding.clear();
        if let Phase::Baking { .. } = self.phase {
            self.next_metrics_at = Some(now);
            let grace = now.plus_ms(self.spec.metrics_interval_ms);
            self.watchdog = Some(self.watchdog.map_or(grace, |w| w.max(grace)));
        }
        let n = inflight.len() as u64;
        self.emit(
            now,
            AuditKind::Restarted { requeued: n },
            format!("restarted: {n} in-flight commands queued again; metrics requested afresh"),
        );
        self.check_progress(now);
    }

    /// A device appeared, changed, came online or went offline. Devices that
    /// start matching the selector join (the wave given by their hash); if
    /// their wave has started they get the candidate, during a rollback they
    /// keep what they run. A silent device that is back online is commanded
    /// again. A device that stops matching is left as it is and no longer
    /// counted.
    pub fn handle_device(
        &mut self,
        now: Timestamp,
        view: DeviceView,
    ) -> Result<Membership, RolloutError> {
        self.tick(now);
        let matches = self.spec.selector.matches(&view.labels);
        let id = view.id.clone();
        let Some(existing) = self.devices.get(&id) else {
            if !matches {
                return Ok(Membership::Ignored);
            }
            let hash = plan::device_hash(&self.spec.id, &id);
            let wave = self.bounds.wave_for(hash);
            let device = Device {
                wave,
                hash,
                cohort: plan::cohort_of(&view.labels, &self.spec.cohort_keys),
                before: view.version,
                current: view.version,
                online: view.online,
                last_seen: view.last_seen,
                departed: true,
                exposed: view.version == Some(self.spec.target),
                task: Task::Idle,
                progress: Progress::Idle,
            };
            self.devices.insert(id.clone(), device);
            self.departed += 1;
            self.rejoin(now, &id);
            self.check_progress(now);
            return Ok(Membership::Joined { wave });
        };

        let was_departed = existing.departed;
        let target = self.spec.target;
        self.update(&id, |d| {
            d.online = view.online;
            d.last_seen = d.last_seen.max(view.last_seen);
            d.current = view.version;
            if view.version == Some(target) {
                d.exposed = true;
            }
        });
        if !matches {
            if !was_departed {
                self.update(&id, |d| {
                    d.departed = true;
                    if matches!(d.progress, Progress::Queued { .. }) {
                        d.progress = Progress::Idle;
                        d.task = Task::Idle;
                    }
                });
                self.departed += 1;
                self.emit(
                    now,
                    AuditKind::DeviceDeparted { device: id.clone() },
                    format!("{id} no longer matches the selector; left as it is"),
                );
                self.check_progress(now);
            }
            return Ok(Membership::Departed);
        }
        if was_departed {
            self.rejoin(now, &id);
            self.check_progress(now);
            let wave = self.devices.get(&id).map_or(0, |d| d.wave);
            return Ok(Membership::Joined { wave });
        }

        // Evidence from the inventory, and silent devices that are back.
        let may_requeue = self
            .devices
            .get(&id)
            .is_some_and(|d| self.may_requeue(&d.task));
        self.update(&id, |d| {
            let reached = match &d.task {
                Task::Deploy => view.version == Some(target),
                Task::Rollback { to } => view.version == Some(*to),
                _ => false,
            };
            if reached && !matches!(d.progress, Progress::Done { .. }) {
                d.progress = Progress::Done { at: now };
                if matches!(d.task, Task::Rollback { .. }) {
                    d.exposed = false;
                }
                return;
            }
            if let Progress::Silent {
                since,
                attempt,
                cause,
            } = d.progress
            {
                let back = view.online && (cause == SilentCause::Offline || view.last_seen > since);
                if back && may_requeue {
                    d.progress = Progress::Queued { at: now, attempt };
                }
            }
        });
        self.check_progress(now);
        Ok(Membership::Updated)
    }

    /// A device reported on a command (or its local guard acted).
    pub fn handle_deploy_report(
        &mut self,
        now: Timestamp,
        device: &DeviceId,
        outcome: DeployOutcome,
    ) -> Result<(), RolloutError> {
        self.tick(now);
        if !self.devices.contains_key(device) {
            return Err(RolloutError::UnknownDevice(device.clone()));
        }
        let target = self.spec.target;
        let max_attempts = self.spec.max_attempts;
        let base = self.spec.retry_backoff_ms;
        let mut event: Option<(AuditKind, String)> = None;
        self.update(device, |d| {
            d.online = true;
            d.last_seen = d.last_seen.max(now);
            let unresolved = matches!(
                d.progress,
                Progress::Queued { .. } | Progress::Commanded { .. } | Progress::Silent { .. }
            );
            match outcome {
                DeployOutcome::Active { version } => {
                    d.current = Some(version);
                    if version == target {
                        d.exposed = true;
                    }
                    match d.task {
                        Task::Deploy if version == target => {
                            d.progress = Progress::Done { at: now };
                        }
                        Task::Rollback { to } if version == to => {
                            d.progress = Progress::Done { at: now };
                            d.exposed = false;
                        }
                        _ => {}
                    }
                }
                DeployOutcome::Shadowing { version } => {
                    if d.task == Task::Shadow && version == target && unresolved {
                        d.progress = Progress::Done { at: now };
                    }
                }
                DeployOutcome::Failed {
                    version,
                    reason,
                    retryable,
                } => {
                    let about_task = match d.task {
                        Task::Deploy | Task::Shadow => version == target,
                        Task::Rollback { to } => version == to,
                        _ => false,
                    };
                    if about_task && unresolved {
                        if d.task == Task::Deploy {
                            d.exposed = d.current == Some(target);
                        }
                        let attempt = match d.progress {
                            Progress::Queued { attempt, .. }
                            | Progress::Commanded { attempt, .. }
                            | Progress::Silent { attempt, .. } => attempt.max(1),
                            _ => 1,
                        };
                        if retryable && attempt < max_attempts {
                            let shift = (attempt - 1).min(20);
                            let wait = base.saturating_mul(1 << shift).min(MAX_RETRY_BACKOFF_MS);
                            let at = now.plus_ms(wait);
                            d.progress = Progress::Queued {
                                at,
                                attempt: attempt + 1,
                            };
                            event = Some((
                                AuditKind::DeviceRetry {
                                    device: device.clone(),
                                    attempt,
                                    reason: reason.clone(),
                                    at,
                                },
                                format!(
                                    "{device}: attempt {attempt} of {max_attempts} failed ({reason}); retry in {wait} ms"
                                ),
                            ));
                        } else {
                            event = Some((
                                AuditKind::DeviceFailed {
                                    device: device.clone(),
                                    wave: d.wave,
                                    reason: reason.clone(),
                                    attempts: attempt,
                                },
                                format!(
                                    "{device} (wave {}): failed after {attempt} attempt(s): {reason}",
                                    d.wave + 1
                                ),
                            ));
                            d.progress = Progress::Failed {
                                reason,
                                attempts: attempt,
                            };
                        }
                    }
                }
                DeployOutcome::RolledBack { to, reason } => {
                    d.current = to;
                    match d.task {
                        Task::Deploy if !matches!(d.progress, Progress::Failed { .. }) => {
                            // The agent's local guard refused the candidate:
                            // an install failure, and not one to retry.
                            d.exposed = false;
                            let reason = format!("agent rolled back: {reason}");
                            event = Some((
                                AuditKind::DeviceFailed {
                                    device: device.clone(),
                                    wave: d.wave,
                                    reason: reason.clone(),
                                    attempts: 1,
                                },
                                format!("{device} (wave {}): {reason}", d.wave + 1),
                            ));
                            d.progress = Progress::Failed {
                                reason,
                                attempts: 1,
                            };
                        }
                        Task::Rollback { .. } if to != Some(target) => {
                            d.exposed = false;
                            d.progress = Progress::Done { at: now };
                        }
                        _ => d.exposed = to == Some(target),
                    }
                }
            }
        });
        if let Some((kind, message)) = event {
            self.emit(now, kind, message);
        }
        self.check_progress(now);
        Ok(())
    }

    /// Merged telemetry answering request `request` (see [`MetricsRequest`]).
    /// Gates are evaluated at once and the verdict is recorded and audited:
    /// Fail acts at once (even mid-bake), Pass advances only on data covering
    /// the whole bake, Inconclusive on data reaching the bake limit pauses.
    pub fn handle_metrics(
        &mut self,
        now: Timestamp,
        request: u64,
        canary: CohortMetrics,
        control: CohortMetrics,
    ) -> Result<Decision, RolloutError> {
        self.tick(now);
        let Some(out) = self.outstanding.remove(&request) else {
            return Err(RolloutError::StaleMetrics(request));
        };
        let Phase::Baking {
            stage,
            since,
            until,
            limit,
        } = self.phase.clone()
        else {
            return Err(RolloutError::StaleMetrics(request));
        };
        if stage != out.stage || since != out.since {
            return Err(RolloutError::StaleMetrics(request));
        }
        let gates: Vec<Gate> = match stage {
            Stage::Shadow => self.spec.shadow_gates(),
            Stage::Wave(_) => self.spec.wave_gates(),
        };
        let baseline = match stage {
            Stage::Shadow => None,
            Stage::Wave(_) => self.baseline.as_ref(),
        };
        let spec = &self.spec;
        let results = evaluate_all(
            &gates,
            |g| spec.min_samples_for(g),
            &canary,
            &control,
            baseline,
        );
        // A first install has no gates: it advances on install success and
        // the full bake (checked below), never on comparisons it cannot make.
        let decision = if results.is_empty() && self.spec.initial {
            Decision::Pass
        } else {
            overall(&results)
        };
        let record = self.record_mut(stage);
        record.evaluations += 1;
        record.gates = results.clone();
        self.last_gates = results.clone();
        let summary: Vec<String> = results
            .iter()
            .map(|r| format!("{:?}: {}", r.decision, r.why))
            .collect();
        self.emit(
            now,
            AuditKind::GatesEvaluated {
                stage,
                request,
                decision,
                results: results.clone(),
            },
            format!(
                "{stage} gates on data {}..{}: {decision:?} [{}]",
                out.since,
                out.until,
                summary.join("; ")
            ),
        );
        match decision {
            Decision::Fail => {
                let reasons: Vec<String> = results
                    .iter()
                    .filter(|r| r.decision == Decision::Fail)
                    .map(|r| r.why.clone())
                    .collect();
                self.stage_failed(
                    now,
                    stage,
                    PauseCause::GateFailed,
                    format!("gate failed: {}", reasons.join("; ")),
                );
            }
            Decision::Pass if out.until >= until => {
                let all_live = results
                    .iter()
                    .filter(|r| !r.gate.metric.is_shadow())
                    .all(|r| r.control == ControlSource::Live);
                if let (Stage::Wave(w), true) = (stage, all_live) {
                    self.baseline = Some(Baseline {
                        wave: w,
                        since: out.since,
                        until: out.until,
                        metrics: control,
                    });
                }
                self.stage_passed(now, stage);
            }
            Decision::Pass => {}
            Decision::Inconclusive => {
                if out.until >= limit {
                    let why: Vec<String> = results
                        .iter()
                        .filter(|r| r.decision == Decision::Inconclusive)
                        .map(|r| r.why.clone())
                        .collect();
                    self.pause(
                        now,
                        PauseCause::Inconclusive,
                        format!(
                            "{stage} still inconclusive after baking {} ms (limit {}x bake): {}",
                            out.until.ms_since(since),
                            self.spec.bake_limit_factor,
                            why.join("; ")
                        ),
                        ResumePoint::Stage(stage),
                    );
                }
            }
        }
        self.check_progress(now);
        Ok(decision)
    }

    /// An operator command (see [`RolloutCommand`]).
    pub fn handle_command(
        &mut self,
        now: Timestamp,
        command: RolloutCommand,
    ) -> Result<(), RolloutError> {
        self.tick(now);
        let refuse = |phase: &Phase| RolloutError::NotAllowed {
            command: command.name(),
            phase: phase.name(),
        };
        match command {
            RolloutCommand::Pause => {
                let resume = match &self.phase {
                    Phase::Pending => ResumePoint::Stage(self.first_stage()),
                    Phase::Deploying { stage, .. } | Phase::Baking { stage, .. } => {
                        ResumePoint::Stage(*stage)
                    }
                    Phase::RollingBack { .. } => ResumePoint::Rollback,
                    other => return Err(refuse(other)),
                };
                self.pause(
                    now,
                    PauseCause::Operator,
                    "paused by an operator".to_string(),
                    resume,
                );
            }
            RolloutCommand::Resume => {
                let Phase::Paused { resume, cause, .. } = self.phase.clone() else {
                    return Err(refuse(&self.phase));
                };
                self.emit(
                    now,
                    AuditKind::Resumed { resume },
                    format!("resumed by an operator: {resume:?}"),
                );
                match resume {
                    ResumePoint::Stage(stage) => {
                        self.start_stage(now, stage, cause == PauseCause::TooManyFailed);
                    }
                    ResumePoint::Rollback => {
                        let reason = self.rollback_reason.clone().unwrap_or_default();
                        self.phase = Phase::RollingBack { reason, since: now };
                        self.requeue_silent(now, |t| matches!(t, Task::Rollback { .. }));
                    }
                }
            }
            RolloutCommand::Abort => {
                if !self.phase.is_active() {
                    return Err(refuse(&self.phase));
                }
                self.stop_shadows();
                let queued: Vec<DeviceId> = self
                    .deploy_queue
                    .iter()
                    .chain(self.rollback_queue.iter())
                    .map(|k| k.3.clone())
                    .collect();
                for id in &queued {
                    self.update(id, |d| d.progress = Progress::Idle);
                }
                self.outstanding.clear();
                self.phase = Phase::Aborted { at: now };
                let dropped = queued.len() as u64;
                self.emit(
                    now,
                    AuditKind::Aborted { dropped },
                    format!("aborted by an operator; {dropped} queued commands dropped, devices left as they are"),
                );
            }
            RolloutCommand::Rollback => {
                let resuming_rollback = matches!(
                    self.phase,
                    Phase::Paused {
                        resume: ResumePoint::Rollback,
                        ..
                    }
                );
                if matches!(
                    self.phase,
                    Phase::RollingBack { .. } | Phase::RolledBack { .. }
                ) || resuming_rollback
                {
                    return Err(refuse(&self.phase));
                }
                self.start_rollback(now, "rollback requested by an operator".to_string());
            }
        }
        self.check_progress(now);
        Ok(())
    }

    /// Adds a version to the set never rolled back onto (e.g. another
    /// rollout of the same model failed meanwhile). Devices already queued
    /// for a rollback onto it lose their target.
    pub fn handle_failed_version(&mut self, now: Timestamp, version: Version) {
        self.tick(now);
        if !self.failed_versions.insert(version) {
            return;
        }
        // Commands already sent cannot be taken back; the rest lose their target.
        let affected: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                d.task == Task::Rollback { to: version }
                    && matches!(
                        d.progress,
                        Progress::Queued { .. } | Progress::Silent { .. }
                    )
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in affected {
            let reason = format!("pre-rollout version {version} has since failed");
            self.update(&id, |d| {
                d.task = Task::NoRollbackTarget {
                    reason: reason.clone(),
                };
                d.progress = Progress::Idle;
            });
            self.emit(
                now,
                AuditKind::NoRollbackTarget {
                    device: id.clone(),
                    reason: reason.clone(),
                },
                format!("{id}: no rollback target: {reason}"),
            );
        }
        self.check_progress(now);
    }

    // ----- outputs ------------------------------------------------------

    /// The next command to send, if one is due. The state already records it
    /// as sent: persist before executing it.
    pub fn poll_action(&mut self, now: Timestamp) -> Option<RolloutAction> {
        self.tick(now);
        if let Some(device) = self.stop_shadow.pop_first() {
            return Some(RolloutAction::StopShadow { device });
        }
        loop {
            let action = self.next_command(now);
            match action {
                Some(Ok(action)) => return Some(action),
                // A device was found offline and marked silent; that may
                // resolve the stage, so re-check before looking further.
                Some(Err(())) => self.check_progress(now),
                None => return None,
            }
        }
    }

    /// The next metrics request, if one is due.
    pub fn poll_metrics_request(&mut self, now: Timestamp) -> Option<MetricsRequest> {
        self.tick(now);
        let Phase::Baking {
            stage,
            since,
            until,
            limit,
        } = self.phase.clone()
        else {
            return None;
        };
        if self.next_metrics_at.is_none_or(|t| t > now) || self.watchdog.is_some_and(|w| now >= w) {
            return None;
        }
        let interval = self.spec.metrics_interval_ms;
        let mut next = now.plus_ms(interval);
        for t in [until, limit] {
            if now < t {
                next = next.min(t);
            }
        }
        self.next_metrics_at = Some(next);
        let id = self.next_request_id;
        self.next_request_id += 1;
        self.outstanding.insert(
            id,
            Outstanding {
                stage,
                since,
                until: now,
            },
        );
        let wave = stage.wave();
        let task = stage.task();
        let mut canary = Vec::new();
        let mut control = Vec::new();
        let mut old_versions = BTreeSet::new();
        for (id, d) in &self.devices {
            if d.departed {
                continue;
            }
            if d.wave == wave && d.task == task && matches!(d.progress, Progress::Done { .. }) {
                canary.push(id.clone());
            } else if d.wave > wave
                && d.task == Task::Idle
                && !d.exposed
                && d.current.is_some()
                && d.current == d.before
            {
                control.push(id.clone());
                if let Some(v) = d.current {
                    old_versions.insert(v);
                }
            }
        }
        Some(MetricsRequest {
            id,
            stage,
            kind: match stage {
                Stage::Shadow => MetricsKind::Shadow,
                Stage::Wave(_) => MetricsKind::Wave,
            },
            model: self.spec.model.clone(),
            canary,
            control,
            since,
            until: now,
            new_version: self.spec.target,
            old_versions: old_versions.into_iter().collect(),
        })
    }

    /// The next audit event. Drain these into the same transaction that
    /// persists the state.
    pub fn poll_audit(&mut self) -> Option<AuditEvent> {
        self.audit.pop_front()
    }

    /// When something is next due, and what; `None` when only inputs can
    /// move the rollout. Due-now work is reported at the latest `now` seen.
    pub fn poll_timeout(&self) -> Option<(Timestamp, &'static str)> {
        let mut best: Option<(Timestamp, &'static str)> = None;
        let mut offer = |t: Timestamp, why: &'static str| {
            if best.is_none_or(|(b, _)| t < b) {
                best = Some((t, why));
            }
        };
        if matches!(self.phase, Phase::Pending) {
            offer(self.now, "start");
        }
        if !self.stop_shadow.is_empty() {
            offer(self.now, "stop_shadow");
        }
        if self.deploys_allowed() {
            if let Some(k) = self.deploy_queue.first() {
                let rate = if self.spec.deploy_rate_per_min.is_some() {
                    self.next_deploy_at
                } else {
                    k.0
                };
                offer(k.0.max(rate), "deploy");
            }
        }
        if self.rollbacks_allowed() {
            if let Some(k) = self.rollback_queue.first() {
                offer(k.0.max(self.next_rollback_at), "rollback");
            }
        }
        if let Some((t, _)) = self.deadlines.first() {
            offer(*t, "device_deadline");
        }
        if let Phase::Baking { .. } = self.phase {
            if let Some(t) = self.next_metrics_at {
                if self.watchdog.is_none_or(|w| t < w) {
                    offer(t, "metrics");
                }
            }
            if let Some(w) = self.watchdog {
                offer(w, "bake_limit");
            }
        }
        best
    }

    /// Everything `drover rollout status` shows.
    pub fn status(&self) -> RolloutStatus {
        let waves: Vec<WaveStatus> = self
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let c = &w.counts;
                let d = c.deploy;
                let total = |s: StepCounts| s.queued + s.commanded + s.done + s.failed + s.silent;
                // Members with no deploy result yet: queued, or wave not reached.
                let resolved = d.commanded
                    + d.done
                    + d.failed
                    + d.silent
                    + total(c.shadow)
                    + total(c.rollback)
                    + c.no_target;
                WaveStatus {
                    wave: i as u32 + 1,
                    percent: w.percent,
                    targeted: c.members,
                    pending: c.members.saturating_sub(resolved),
                    in_flight: d.commanded,
                    updated: d.done,
                    failed: d.failed,
                    silent: d.silent,
                    rollback: c.rollback,
                    no_rollback_target: c.no_target,
                    started_at: w.record.started_at,
                    bake_since: w.record.bake_since,
                    passed_at: w.record.passed_at,
                    failed_at: w.record.failed_at,
                    evaluations: w.record.evaluations,
                    gates: w.record.gates.clone(),
                }
            })
            .collect();
        let shadow = self.shadow.as_ref().map(|r| ShadowStatus {
            targeted: self.waves.first().map_or(0, |w| w.counts.members),
            counts: self
                .waves
                .first()
                .map(|w| w.counts.shadow)
                .unwrap_or_default(),
            started_at: r.started_at,
            passed_at: r.passed_at,
            failed_at: r.failed_at,
            gates: r.gates.clone(),
        });
        let rollback = self.rollback_reason.as_ref().map(|_| {
            let counts = self.rollback_totals();
            let no_target = self
                .devices
                .iter()
                .filter(|(_, d)| !d.departed)
                .filter_map(|(id, d)| match &d.task {
                    Task::NoRollbackTarget { reason } => Some((id.clone(), reason.clone())),
                    _ => None,
                })
                .collect();
            RollbackStatus { counts, no_target }
        });
        RolloutStatus {
            id: self.spec.id.clone(),
            model: self.spec.model.clone(),
            target: self.spec.target,
            selector: self.spec.selector.to_string(),
            phase: self.phase.clone(),
            active: self.phase.is_active(),
            devices: self.devices.len() as u64 - self.departed,
            departed: self.departed,
            shadow,
            waves,
            last_gates: self.last_gates.clone(),
            rollback,
            next_timeout: self.poll_timeout().map(|(t, w)| (t, w.to_string())),
        }
    }

    /// Whether `other` (a proposed rollout) would share devices with this
    /// one while this one is active. Only the same model conflicts; the
    /// shared devices are the members of this rollout (or devices matching
    /// its selector) among `devices` that match `other`'s selector.
    pub fn overlaps(&self, other: &RolloutSpec, devices: &[DeviceView]) -> Option<Conflict> {
        if !self.is_active() || other.model != self.spec.model {
            return None;
        }
        let shared: Vec<&DeviceId> = devices
            .iter()
            .filter(|v| other.selector.matches(&v.labels))
            .filter(|v| match self.devices.get(&v.id) {
                Some(d) => !d.departed,
                None => self.spec.selector.matches(&v.labels),
            })
            .map(|v| &v.id)
            .collect();
        if shared.is_empty() {
            return None;
        }
        let examples: Vec<DeviceId> = shared.iter().take(5).map(|d| (*d).clone()).collect();
        let names: Vec<&str> = examples.iter().map(DeviceId::as_str).collect();
        Some(Conflict {
            rollout: self.spec.id.clone(),
            model: self.spec.model.clone(),
            devices: shared.len() as u64,
            examples: examples.clone(),
            reason: format!(
                "rollout {} of {}@{} is {} and holds {} of the devices selected by {:?} (e.g. {}); one active rollout per model and device",
                self.spec.id,
                self.spec.model,
                self.spec.target,
                self.phase.name(),
                shared.len(),
                other.selector.to_string(),
                names.join(", ")
            ),
        })
    }

    // ----- internals ----------------------------------------------------

    fn emit(&mut self, at: Timestamp, event: AuditKind, message: String) {
        self.audit.push_back(AuditEvent {
            at,
            rollout: self.spec.id.clone(),
            event,
            message,
        });
    }

    fn first_stage(&self) -> Stage {
        if self.spec.shadow_ms.is_some() {
            Stage::Shadow
        } else {
            Stage::Wave(0)
        }
    }

    fn record_mut(&mut self, stage: Stage) -> &mut StageRecord {
        match (stage, &mut self.shadow) {
            (Stage::Shadow, Some(r)) => r,
            _ => {
                let i = (stage.wave() as usize).min(self.waves.len().saturating_sub(1));
                &mut self.waves[i].record
            }
        }
    }

    fn step_counts(&self, stage: Stage) -> (u64, StepCounts) {
        let Some(w) = self.waves.get(stage.wave() as usize) else {
            return (0, StepCounts::default());
        };
        let c = match stage {
            Stage::Shadow => w.counts.shadow,
            Stage::Wave(_) => w.counts.deploy,
        };
        (w.counts.members, c)
    }

    fn rollback_totals(&self) -> StepCounts {
        let mut t = StepCounts::default();
        for w in &self.waves {
            let r = w.counts.rollback;
            t.queued += r.queued;
            t.commanded += r.commanded;
            t.done += r.done;
            t.failed += r.failed;
            t.silent += r.silent;
        }
        t
    }

    fn deploys_allowed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Deploying { .. } | Phase::Baking { .. } | Phase::Completed { .. }
        )
    }

    fn rollbacks_allowed(&self) -> bool {
        matches!(
            self.phase,
            Phase::RollingBack { .. } | Phase::RolledBack { .. }
        )
    }

    /// The single mutation path for a device: keeps counters and indexes in step.
    fn update(&mut self, id: &DeviceId, f: impl FnOnce(&mut Device)) {
        let Some(mut d) = self.devices.remove(id) else {
            return;
        };
        self.account(&d, false);
        self.index(id, &d, false);
        f(&mut d);
        self.account(&d, true);
        self.index(id, &d, true);
        self.devices.insert(id.clone(), d);
    }

    fn account(&mut self, d: &Device, add: bool) {
        if d.departed {
            return;
        }
        let Some(w) = self.waves.get_mut(d.wave as usize) else {
            return;
        };
        let c = &mut w.counts;
        let slot = match &d.task {
            Task::Idle => None,
            Task::Shadow => c.shadow.slot(&d.progress),
            Task::Deploy => c.deploy.slot(&d.progress),
            Task::Rollback { .. } => c.rollback.slot(&d.progress),
            Task::NoRollbackTarget { .. } => Some(&mut c.no_target),
        };
        if let Some(n) = slot {
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
        c.members = if add {
            c.members + 1
        } else {
            c.members.saturating_sub(1)
        };
    }

    fn index(&mut self, id: &DeviceId, d: &Device, add: bool) {
        if d.departed {
            return;
        }
        let last = self.waves.len().saturating_sub(1) as u32;
        match (&d.progress, &d.task) {
            (Progress::Queued { at, .. }, Task::Shadow | Task::Deploy) => {
                let key = (*at, d.wave, d.hash, id.clone());
                if add {
                    self.deploy_queue.insert(key);
                } else {
                    self.deploy_queue.remove(&key);
                }
            }
            (Progress::Queued { at, .. }, Task::Rollback { .. }) => {
                let key = (*at, last.saturating_sub(d.wave), d.hash, id.clone());
                if add {
                    self.rollback_queue.insert(key);
                } else {
                    self.rollback_queue.remove(&key);
                }
            }
            (Progress::Commanded { at, .. }, _) => {
                let key = (at.plus_ms(self.spec.device_timeout_ms), id.clone());
                if add {
                    self.deadlines.insert(key);
                } else {
                    self.deadlines.remove(&key);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        if matches!(self.phase, Phase::Pending) {
            let first = self.first_stage();
            self.start_stage(now, first, false);
        }
        while let Some((due, id)) = self.deadlines.first().cloned() {
            if due > now {
                break;
            }
            let mut wave = 0;
            self.update(&id, |d| {
                wave = d.wave;
                if let Progress::Commanded { attempt, .. } = d.progress {
                    d.progress = Progress::Silent {
                        since: due,
                        attempt,
                        cause: SilentCause::Timeout,
                    };
                }
            });
            self.emit(
                due,
                AuditKind::DeviceSilent {
                    device: id.clone(),
                    wave,
                    cause: SilentCause::Timeout,
                },
                format!(
                    "{id} (wave {}): no report within {} ms of its command; silent",
                    wave + 1,
                    self.spec.device_timeout_ms
                ),
            );
        }
        let baking = match &self.phase {
            Phase::Baking { stage, .. } => Some(*stage),
            _ => None,
        };
        if let (Some(stage), Some(w)) = (baking, self.watchdog) {
            if now >= w {
                let last: Vec<String> = self
                    .last_gates
                    .iter()
                    .filter(|r| r.decision != Decision::Pass)
                    .map(|r| r.why.clone())
                    .collect();
                let (cause, reason) = if self.record_mut(stage).evaluations == 0 {
                    (
                        PauseCause::NoMetrics,
                        format!("{stage}: no metrics answer by the bake limit"),
                    )
                } else {
                    (
                        PauseCause::Inconclusive,
                        format!(
                            "{stage}: no conclusive metrics by the bake limit: {}",
                            last.join("; ")
                        ),
                    )
                };
                self.pause(now, cause, reason, ResumePoint::Stage(stage));
            }
        }
        self.check_progress(now);
    }

    fn next_command(&mut self, now: Timestamp) -> Option<Result<RolloutAction, ()>> {
        let target = self.spec.target;
        if self.deploys_allowed() {
            if let Some(key) = self.deploy_queue.first().cloned() {
                let rate_ok = self.spec.deploy_rate_per_min.is_none() || self.next_deploy_at <= now;
                if key.0 <= now && rate_ok {
                    let id = key.3;
                    return Some(self.command(now, &id, |task| match task {
                        Task::Shadow => Some(RolloutAction::Shadow {
                            device: id.clone(),
                            version: target,
                        }),
                        Task::Deploy => Some(RolloutAction::Deploy {
                            device: id.clone(),
                            version: target,
                        }),
                        _ => None,
                    }));
                }
            }
        }
        if self.rollbacks_allowed() {
            if let Some(key) = self.rollback_queue.first().cloned() {
                if key.0 <= now && self.next_rollback_at <= now {
                    let id = key.3;
                    return Some(self.command(now, &id, |task| match task {
                        Task::Rollback { to } => Some(RolloutAction::Rollback {
                            device: id.clone(),
                            to: *to,
                        }),
                        _ => None,
                    }));
                }
            }
        }
        None
    }

    /// Turns a queued device into a command, or into a silent device when it
    /// is offline (`Err`).
    fn command(
        &mut self,
        now: Timestamp,
        id: &DeviceId,
        make: impl FnOnce(&Task) -> Option<RolloutAction>,
    ) -> Result<RolloutAction, ()> {
        let Some(d) = self.devices.get(id) else {
            return Err(());
        };
        let wave = d.wave;
        let attempt = match d.progress {
            Progress::Queued { attempt, .. } => attempt,
            _ => 1,
        };
        if !d.online {
            self.update(id, |d| {
                d.progress = Progress::Silent {
                    since: now,
                    attempt,
                    cause: SilentCause::Offline,
                };
            });
            self.emit(
                now,
                AuditKind::DeviceSilent {
                    device: id.clone(),
                    wave,
                    cause: SilentCause::Offline,
                },
                format!(
                    "{id} (wave {}): offline when its command was due; silent until it is back",
                    wave + 1
                ),
            );
            return Err(());
        }
        let Some(action) = make(&d.task) else {
            self.update(id, |d| d.progress = Progress::Idle);
            return Err(());
        };
        let is_rollback = matches!(action, RolloutAction::Rollback { .. });
        self.update(id, |d| {
            d.progress = Progress::Commanded { at: now, attempt };
            if matches!(d.task, Task::Deploy) {
                d.exposed = true;
            }
        });
        if is_rollback {
            self.next_rollback_at =
                now.plus_ms((60_000 / u64::from(self.spec.rollback_rate_per_min)).max(1));
            if self.rollback_cursor != Some(wave) {
                self.rollback_cursor = Some(wave);
                let c = self.waves.get(wave as usize).map(|w| w.counts.rollback);
                let devices =
                    c.map_or(0, |c| c.queued + c.commanded + c.done + c.failed + c.silent);
                self.emit(
                    now,
                    AuditKind::RollbackWave { wave, devices },
                    format!(
                        "rolling back wave {} ({devices} devices, at most {} per minute)",
                        wave + 1,
                        self.spec.rollback_rate_per_min
                    ),
                );
            }
        } else if let Some(rate) = self.spec.deploy_rate_per_min {
            self.next_deploy_at = now.plus_ms((60_000 / u64::from(rate)).max(1));
        }
        Ok(action)
    }

    /// Whether a silent device with `task` that is back should be commanded
    /// again: only while the phase sends (or, paused, will send) that kind.
    fn may_requeue(&self, task: &Task) -> bool {
        match task {
            Task::Deploy | Task::Shadow => {
                self.deploys_allowed()
                    || matches!(
                        self.phase,
                        Phase::Paused {
                            resume: ResumePoint::Stage(_),
                            ..
                        }
                    )
            }
            Task::Rollback { .. } => {
                self.rollbacks_allowed()
                    || matches!(
                        self.phase,
                        Phase::Paused {
                            resume: ResumePoint::Rollback,
                            ..
                        }
                    )
            }
            _ => false,
        }
    }

    /// What a member of `wave` should be doing in the current phase.
    fn task_for_wave(&self, wave: u32) -> Task {
        let stage = match &self.phase {
            Phase::Deploying { stage, .. } | Phase::Baking { stage, .. } => Some(*stage),
            Phase::Paused {
                resume: ResumePoint::Stage(stage),
                ..
            } => Some(*stage),
            Phase::Completed { .. } => return Task::Deploy,
            _ => None,
        };
        match stage {
            Some(Stage::Shadow) if wave == 0 => Task::Shadow,
            Some(Stage::Wave(w)) if wave <= w => Task::Deploy,
            _ => Task::Idle,
        }
    }

    /// Brings a (re)joining device into the current phase.
    fn rejoin(&mut self, now: Timestamp, id: &DeviceId) {
        let Some(d) = self.devices.get(id) else {
            return;
        };
        let wave = d.wave;
        let task = self.task_for_wave(wave);
        let in_rollback = matches!(
            self.phase,
            Phase::RollingBack { .. }
                | Phase::RolledBack { .. }
                | Phase::Paused {
                    resume: ResumePoint::Rollback,
                    ..
                }
        );
        let rollback_task = (in_rollback && d.exposed).then(|| self.rollback_task(d));
        let target = self.spec.target;
        self.departed = self.departed.saturating_sub(1);
        let mut deploy_now = false;
        self.update(id, |d| {
            d.departed = false;
            if let Some(t) = rollback_task {
                d.progress = match t {
                    Task::Rollback { .. } if d.online => Progress::Queued {
                        at: now,
                        attempt: 1,
                    },
                    Task::Rollback { .. } => Progress::Silent {
                        since: now,
                        attempt: 1,
                        cause: SilentCause::Offline,
                    },
                    _ => Progress::Idle,
                };
                d.task = t;
                return;
            }
            if task == Task::Idle {
                return;
            }
            deploy_now = true;
            if d.task == task && matches!(d.progress, Progress::Done { .. }) {
                return;
            }
            d.progress = if task == Task::Deploy && d.current == Some(target) {
                Progress::Done { at: now }
            } else if d.online {
                Progress::Queued {
                    at: now,
                    attempt: 1,
                }
            } else {
                Progress::Silent {
                    since: now,
                    attempt: 1,
                    cause: SilentCause::Offline,
                }
            };
            d.task = task;
        });
        if let Some(Device {
            task: Task::NoRollbackTarget { reason },
            ..
        }) = self.devices.get(id)
        {
            let reason = reason.clone();
            self.emit(
                now,
                AuditKind::NoRollbackTarget {
                    device: id.clone(),
                    reason: reason.clone(),
                },
                format!("{id}: no rollback target: {reason}"),
            );
        }
        self.emit(
            now,
            AuditKind::DeviceJoined {
                device: id.clone(),
                wave,
                deploy_now,
            },
            format!(
                "{id} joined wave {}{}",
                wave + 1,
                if deploy_now {
                    "; its wave has started, so it gets the candidate now"
                } else {
                    "; waits for its wave"
                }
            ),
        );
    }

    /// Where an exposed device goes back to: its pre-rollout version, unless
    /// that is unknown, the target itself, or a failed version.
    fn rollback_task(&self, d: &Device) -> Task {
        match d.before {
            None => Task::NoRollbackTarget {
                reason: "pre-rollout version unknown (no model before)".to_string(),
            },
            Some(v) if v == self.spec.target => Task::NoRollbackTarget {
                reason: format!(
                    "ran the target {v} before this rollout reached it; no earlier version known"
                ),
            },
            Some(v) if self.failed_versions.contains(&v) => Task::NoRollbackTarget {
                reason: format!("pre-rollout version {v} failed an earlier rollout"),
            },
            Some(v) => Task::Rollback { to: v },
        }
    }

    fn start_stage(&mut self, now: Timestamp, stage: Stage, requeue_failed: bool) {
        let wave = stage.wave();
        let task = stage.task();
        let target = self.spec.target;
        self.phase = Phase::Deploying { stage, since: now };
        self.outstanding.clear();
        self.next_metrics_at = None;
        self.watchdog = None;
        let record = self.record_mut(stage);
        if record.started_at.is_none() {
            record.started_at = Some(now);
        }
        record.failed_at = None;
        let ids: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.wave == wave && !d.departed)
            .map(|(id, _)| id.clone())
            .collect();
        let (mut queued, mut already, mut offline) = (0u64, 0u64, 0u64);
        for id in &ids {
            self.update(id, |d| {
                if d.task == task {
                    match d.progress {
                        Progress::Done { .. } | Progress::Commanded { .. } => {
                            if matches!(d.progress, Progress::Done { .. }) {
                                already += 1;
                            }
                            return;
                        }
                        Progress::Queued { .. } => {
                            queued += 1;
                            return;
                        }
                        Progress::Failed { .. } if !requeue_failed => return,
                        Progress::Silent { .. } if !d.online => {
                            offline += 1;
                            return;
                        }
                        _ => {}
                    }
                }
                d.task = task.clone();
                if task == Task::Deploy && d.current == Some(target) {
                    d.progress = Progress::Done { at: now };
                    d.exposed = true;
                    already += 1;
                } else if d.online {
                    d.progress = Progress::Queued {
                        at: now,
                        attempt: 1,
                    };
                    queued += 1;
                } else {
                    d.progress = Progress::Silent {
                        since: now,
                        attempt: 1,
                        cause: SilentCause::Offline,
                    };
                    offline += 1;
                }
            });
        }
        let devices = ids.len() as u64;
        self.emit(
            now,
            AuditKind::StageStarted {
                stage,
                devices,
                queued,
                already,
                offline,
            },
            format!(
                "{stage} started: {devices} devices, {queued} commands queued, {already} already on {target}, {offline} offline (silent until back)"
            ),
        );
    }

    fn stage_passed(&mut self, now: Timestamp, stage: Stage) {
        let (members, counts) = self.step_counts(stage);
        if let Some(reason) = self.health_problem(stage) {
            // Gates passed, but the wave itself is not healthy enough.
            self.pause(
                now,
                PauseCause::TooManySilent,
                reason,
                ResumePoint::Stage(stage),
            );
            return;
        }
        self.record_mut(stage).passed_at = Some(now);
        self.emit(
            now,
            AuditKind::StagePassed { stage, counts },
            format!(
                "{stage} passed: {} of {members} devices on the candidate, {} failed, {} silent",
                counts.done, counts.failed, counts.silent
            ),
        );
        let next = match stage {
            Stage::Shadow => Some(Stage::Wave(0)),
            Stage::Wave(w) if (w as usize) + 1 < self.waves.len() => Some(Stage::Wave(w + 1)),
            Stage::Wave(_) => None,
        };
        match next {
            Some(next) => self.start_stage(now, next, false),
            None => {
                self.phase = Phase::Completed { at: now };
                let (mut updated, mut failed, mut silent) = (0, 0, 0);
                for w in &self.waves {
                    updated += w.counts.deploy.done;
                    failed += w.counts.deploy.failed;
                    silent += w.counts.deploy.silent;
                }
                self.emit(
                    now,
                    AuditKind::Completed {
                        updated,
                        failed,
                        silent,
                    },
                    format!(
                        "completed: {updated} devices on {}, {failed} failed, {silent} silent",
                        self.spec.target
                    ),
                );
            }
        }
    }

    /// A reason the stage may not advance despite its gates: too many silent.
    fn health_problem(&self, stage: Stage) -> Option<String> {
        let (members, c) = self.step_counts(stage);
        if members == 0 {
            return None;
        }
        let share = c.silent as f64 / members as f64;
        (share > self.spec.max_silent).then(|| {
            format!(
                "{stage}: {} of {members} devices silent ({:.1}% > max {:.1}%); silent devices never count as success",
                c.silent,
                share * 100.0,
                self.spec.max_silent * 100.0
            )
        })
    }

    fn stage_failed(&mut self, now: Timestamp, stage: Stage, cause: PauseCause, reason: String) {
        self.record_mut(stage).failed_at = Some(now);
        let on_fail = self.spec.on_fail;
        self.emit(
            now,
            AuditKind::StageFailed {
                stage,
                reason: reason.clone(),
                on_fail,
            },
            format!("{stage} failed ({reason}); on_fail = {on_fail:?}"),
        );
        if stage == Stage::Shadow {
            self.stop_shadows();
        }
        match on_fail {
            OnFail::Rollback => self.start_rollback(now, format!("{stage} failed: {reason}")),
            OnFail::Pause => self.pause(now, cause, reason, ResumePoint::Stage(stage)),
        }
    }

    fn pause(&mut self, now: Timestamp, cause: PauseCause, reason: String, resume: ResumePoint) {
        self.outstanding.clear();
        self.next_metrics_at = None;
        self.watchdog = None;
        self.phase = Phase::Paused {
            cause,
            reason: reason.clone(),
            resume,
            since: now,
        };
        self.emit(
            now,
            AuditKind::Paused {
                cause,
                reason: reason.clone(),
            },
            format!("paused ({cause:?}): {reason}"),
        );
    }

    /// Queues StopShadow for every device that may run the candidate in
    /// shadow, and forgets their shadow task.
    fn stop_shadows(&mut self) {
        let ids: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.task == Task::Shadow)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let mut sent = false;
            self.update(&id, |d| {
                sent = matches!(
                    d.progress,
                    Progress::Commanded { .. } | Progress::Done { .. } | Progress::Silent { .. }
                );
                d.task = Task::Idle;
                d.progress = Progress::Idle;
            });
            if sent {
                self.stop_shadow.insert(id);
            }
        }
    }

    fn start_rollback(&mut self, now: Timestamp, reason: String) {
        self.stop_shadows();
        self.failed_versions.insert(self.spec.target);
        self.outstanding.clear();
        self.next_metrics_at = None;
        self.watchdog = None;
        let ids: Vec<DeviceId> = self.devices.keys().cloned().collect();
        let mut targets: BTreeMap<String, u64> = BTreeMap::new();
        let mut no_target = 0u64;
        let mut reports = Vec::new();
        for id in &ids {
            let Some(d) = self.devices.get(id) else {
                continue;
            };
            if d.departed {
                continue;
            }
            let exposed = d.exposed || d.current == Some(self.spec.target);
            if !exposed {
                // Never commanded (or refuted): nothing to undo, nothing to resend.
                if matches!(
                    d.progress,
                    Progress::Queued { .. } | Progress::Silent { .. }
                ) && matches!(d.task, Task::Deploy | Task::Shadow)
                {
                    self.update(id, |d| {
                        d.task = Task::Idle;
                        d.progress = Progress::Idle;
                    });
                }
                continue;
            }
            let task = self.rollback_task(d);
            match &task {
                Task::Rollback { to } => *targets.entry(to.to_string()).or_default() += 1,
                Task::NoRollbackTarget { reason } => {
                    no_target += 1;
                    reports.push((id.clone(), reason.clone()));
                }
                _ => {}
            }
            self.update(id, |d| {
                d.progress = match task {
                    Task::Rollback { .. } if d.online => Progress::Queued {
                        at: now,
                        attempt: 1,
                    },
                    Task::Rollback { .. } => Progress::Silent {
                        since: now,
                        attempt: 1,
                        cause: SilentCause::Offline,
                    },
                    _ => Progress::Idle,
                };
                d.task = task;
            });
        }
        self.phase = Phase::RollingBack {
            reason: reason.clone(),
            since: now,
        };
        self.rollback_reason = Some(reason.clone());
        self.rollback_cursor = None;
        self.next_rollback_at = now;
        let total: u64 = targets.values().sum();
        self.emit(
            now,
            AuditKind::RollbackStarted {
                reason: reason.clone(),
                targets: targets.clone(),
                no_target,
            },
            format!(
                "rollback started ({reason}): {total} devices back to {targets:?}, last wave first, at most {} per minute; {no_target} without a rollback target",
                self.spec.rollback_rate_per_min
            ),
        );
        for (device, why) in reports {
            self.emit(
                now,
                AuditKind::NoRollbackTarget {
                    device: device.clone(),
                    reason: why.clone(),
                },
                format!("{device}: no rollback target: {why}"),
            );
        }
    }

    fn requeue_silent(&mut self, now: Timestamp, which: impl Fn(&Task) -> bool) {
        let ids: Vec<DeviceId> = self
            .devices
            .iter()
            .filter(|(_, d)| {
                !d.departed
                    && d.online
                    && which(&d.task)
                    && matches!(d.progress, Progress::Silent { .. })
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.update(&id, |d| {
                if let Progress::Silent { attempt, .. } = d.progress {
                    d.progress = Progress::Queued { at: now, attempt };
                }
            });
        }
    }

    /// Moves the phase along as far as the counters allow.
    fn check_progress(&mut self, now: Timestamp) {
        // Each step changes the phase or returns; the bound is belt and braces.
        for _ in 0..(self.waves.len() * 4 + 8) {
            match self.phase.clone() {
                Phase::Deploying { stage, .. } => {
                    let (members, c) = self.step_counts(stage);
                    if members == 0 {
                        self.emit(
                            now,
                            AuditKind::StageSkipped { stage },
                            format!("{stage} has no devices; skipped"),
                        );
                        self.record_mut(stage).passed_at = Some(now);
                        self.stage_passed_empty(now, stage);
                        continue;
                    }
                    if self.too_many_failed(members, c) {
                        let reason = self.failed_reason(stage, members, c);
                        self.stage_failed(now, stage, PauseCause::TooManyFailed, reason);
                        continue;
                    }
                    if c.in_flight() > 0 {
                        return;
                    }
                    if let Some(reason) = self.health_problem(stage) {
                        self.pause(
                            now,
                            PauseCause::TooManySilent,
                            reason,
                            ResumePoint::Stage(stage),
                        );
                        continue;
                    }
                    let bake = match stage {
                        Stage::Shadow => self.spec.shadow_ms.unwrap_or(self.spec.bake_ms),
                        Stage::Wave(_) => self.spec.bake_ms,
                    };
                    let until = now.plus_ms(bake);
                    let limit =
                        now.plus_ms(bake.saturating_mul(u64::from(self.spec.bake_limit_factor)));
                    self.phase = Phase::Baking {
                        stage,
                        since: now,
                        until,
                        limit,
                    };
                    self.record_mut(stage).bake_since = Some(now);
                    self.next_metrics_at =
                        Some(now.plus_ms(self.spec.metrics_interval_ms).min(until));
                    self.watchdog = Some(limit.plus_ms(self.spec.metrics_interval_ms));
                    self.emit(
                        now,
                        AuditKind::BakeStarted {
                            stage,
                            counts: c,
                            until,
                            limit,
                        },
                        format!(
                            "{stage} deployed ({} of {members} on the candidate, {} failed, {} silent); baking until {until}, limit {limit}",
                            c.done, c.failed, c.silent
                        ),
                    );
                    return;
                }
                Phase::Baking { stage, .. } => {
                    let (members, c) = self.step_counts(stage);
                    if self.too_many_failed(members, c) {
                        let reason = self.failed_reason(stage, members, c);
                        self.stage_failed(now, stage, PauseCause::TooManyFailed, reason);
                        continue;
                    }
                    return;
                }
                Phase::RollingBack { reason, .. } => {
                    let t = self.rollback_totals();
                    if t.in_flight() > 0 {
                        return;
                    }
                    let no_target: u64 = self.waves.iter().map(|w| w.counts.no_target).sum();
                    self.phase = Phase::RolledBack { reason, at: now };
                    self.emit(
                        now,
                        AuditKind::RolledBack {
                            counts: t,
                            no_target,
                        },
                        format!(
                            "rollback finished: {} rolled back, {} failed, {} silent (caught up when back), {no_target} without target",
                            t.done, t.failed, t.silent
                        ),
                    );
                    return;
                }
                _ => return,
            }
        }
    }

    fn stage_passed_empty(&mut self, now: Timestamp, stage: Stage) {
        let next = match stage {
            Stage::Shadow => Some(Stage::Wave(0)),
            Stage::Wave(w) if (w as usize) + 1 < self.waves.len() => Some(Stage::Wave(w + 1)),
            Stage::Wave(_) => None,
        };
        match next {
            Some(next) => self.start_stage(now, next, false),
            None => self.stage_passed(now, stage),
        }
    }

    fn too_many_failed(&self, members: u64, c: StepCounts) -> bool {
        members > 0 && c.failed as f64 > self.spec.max_failed * members as f64
    }

    fn failed_reason(&self, stage: Stage, members: u64, c: StepCounts) -> String {
        format!(
            "{stage}: {} of {members} installs failed ({:.1}% > max {:.1}%)",
            c.failed,
            c.failed as f64 * 100.0 / members as f64,
            self.spec.max_failed * 100.0
        )
    }
}

#[cfg(test)]
impl Rollout {
    /// The wave of a member device.
    pub(crate) fn device_wave(&self, id: &DeviceId) -> Option<u32> {
        self.devices.get(id).map(|d| d.wave)
    }

    /// Recomputes counters and indexes from the device table and compares.
    pub(crate) fn check_invariants(&self) {
        let mut fresh = self.clone();
        for w in &mut fresh.waves {
            w.counts = WaveCounts::default();
        }
        fresh.deploy_queue.clear();
        fresh.rollback_queue.clear();
        fresh.deadlines.clear();
        for (id, d) in &self.devices {
            fresh.account(d, true);
            fresh.index(id, d, true);
        }
        for (a, b) in fresh.waves.iter().zip(&self.waves) {
            assert_eq!(a.counts, b.counts, "wave counters drifted");
        }
        assert_eq!(
            fresh.deploy_queue, self.deploy_queue,
            "deploy queue drifted"
        );
        assert_eq!(
            fresh.rollback_queue, self.rollback_queue,
            "rollback queue drifted"
        );
        assert_eq!(fresh.deadlines, self.deadlines, "deadlines drifted");
        let departed = self.devices.values().filter(|d| d.departed).count() as u64;
        assert_eq!(departed, self.departed, "departed count drifted");
    }
}
