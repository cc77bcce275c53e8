//! Stages: starting waves and the shadow phase, handing out commands,
//! judging progress and gates, pausing.

use drover_protocol::{DeviceId, Timestamp};

use crate::core::rollout::gates::Decision;
use crate::core::rollout::spec::OnFail;
use crate::core::rollout::types::{
    AuditKind, PauseCause, Phase, ResumePoint, RolloutAction, SilentCause, Stage, StepCounts,
};

use super::*;

impl Rollout {
    pub(super) fn tick(&mut self, now: Timestamp) {
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

    pub(super) fn next_command(&mut self, now: Timestamp) -> Option<Result<RolloutAction, ()>> {
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
    pub(super) fn command(
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
    pub(super) fn may_requeue(&self, task: &Task) -> bool {
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
    pub(super) fn task_for_wave(&self, wave: u32) -> Task {
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

    pub(super) fn start_stage(&mut self, now: Timestamp, stage: Stage, requeue_failed: bool) {
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

    pub(super) fn stage_passed(&mut self, now: Timestamp, stage: Stage) {
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
    pub(super) fn health_problem(&self, stage: Stage) -> Option<String> {
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

    pub(super) fn stage_failed(
        &mut self,
        now: Timestamp,
        stage: Stage,
        cause: PauseCause,
        reason: String,
    ) {
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

    pub(super) fn pause(
        &mut self,
        now: Timestamp,
        cause: PauseCause,
        reason: String,
        resume: ResumePoint,
    ) {
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

    /// Moves the phase along as far as the counters allow.
    pub(super) fn check_progress(&mut self, now: Timestamp) {
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
                Phase::Paused {
                    cause: PauseCause::TooManySilent,
                    resume: ResumePoint::Stage(stage),
                    ..
                } => {
                    // Unlike the other pauses, this one's cause can clear on
                    // its own: silent devices come back (queued again, see
                    // `may_requeue`), report late or leave the selector.
                    // Once the stage is within `max_silent` again it carries
                    // on; left paused, devices back from a link cut would
                    // wait for an operator who has nothing to decide.
                    if self.health_problem(stage).is_some() {
                        return;
                    }
                    let (members, c) = self.step_counts(stage);
                    self.emit(
                        now,
                        AuditKind::Resumed {
                            resume: ResumePoint::Stage(stage),
                        },
                        format!(
                            "resumed: {stage} is within the silent limit again ({} of {members} silent, {} waiting for a command)",
                            c.silent,
                            c.in_flight()
                        ),
                    );
                    self.start_stage(now, stage, false);
                    continue;
                }
                _ => return,
            }
        }
    }

    pub(super) fn stage_passed_empty(&mut self, now: Timestamp, stage: Stage) {
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

    pub(super) fn too_many_failed(&self, members: u64, c: StepCounts) -> bool {
        members > 0 && c.failed as f64 > self.spec.max_failed * members as f64
    }

    pub(super) fn failed_reason(&self, stage: Stage, members: u64, c: StepCounts) -> String {
        format!(
            "{stage}: {} of {members} installs failed ({:.1}% > max {:.1}%)",
            c.failed,
            c.failed as f64 * 100.0 / members as f64,
            self.spec.max_failed * 100.0
        )
    }

    pub(super) fn deploys_allowed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Deploying { .. } | Phase::Baking { .. } | Phase::Completed { .. }
        )
    }
}
