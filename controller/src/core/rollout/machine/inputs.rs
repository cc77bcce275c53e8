//! Inputs: device events, deploy reports, metrics, operator commands,
//! timeouts and restarts.

use drover_protocol::{DeviceId, Timestamp, Version};

use crate::core::rollout::gates::{
    Baseline, CohortMetrics, ControlSource, Decision, evaluate_all, overall,
};
use crate::core::rollout::plan::{self};
use crate::core::rollout::spec::{Gate, MAX_RETRY_BACKOFF_MS};
use crate::core::rollout::types::{
    AuditKind, DeployOutcome, DeviceView, Membership, PauseCause, Phase, ResumePoint,
    RolloutCommand, RolloutError, SilentCause, Stage,
};

use super::*;

impl Rollout {
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

    /// A command about `version` never took effect on `device`: it came
    /// back on a new session without reporting on it (lost on the way, or
    /// the device restarted before acting on it). Queued again at once, the
    /// attempt not counted (nothing was tried); a device no longer waiting
    /// on such a command is left alone. `Ok(true)` when it was queued again.
    pub fn handle_command_lost(
        &mut self,
        now: Timestamp,
        device: &DeviceId,
        version: Version,
    ) -> Result<bool, RolloutError> {
        self.tick(now);
        if !self.devices.contains_key(device) {
            return Err(RolloutError::UnknownDevice(device.clone()));
        }
        let target = self.spec.target;
        let mut requeued = false;
        self.update(device, |d| {
            let about = match d.task {
                Task::Deploy | Task::Shadow => version == target,
                Task::Rollback { to } => version == to,
                _ => false,
            };
            if about && let Progress::Commanded { attempt, .. } = d.progress {
                d.progress = Progress::Queued { at: now, attempt };
                requeued = true;
            }
        });
        self.check_progress(now);
        Ok(requeued)
    }

    /// `device` refused its command about `version` as expired. The agent
    /// answers with the command's own sequence only when the command
    /// verified, was addressed to it and is newer than anything it accepted
    /// (a replayed, superseded command is answered with sequence 0 and never
    /// gets here), so nothing was tried: the command simply reached the
    /// device after its validity (a link down for longer, a command held
    /// back). That is not an install failure: a fresh command (new sequence,
    /// new expiry) is queued at once. The attempt is counted, so a device
    /// that finds every fresh command expired as well (its idea of the
    /// controller's clock is off) fails with that reason after
    /// `max_attempts` instead of being commanded forever. A device no longer
    /// waiting on such a command (done, failed, silent, commanded about
    /// something else) is left alone.
    pub fn handle_command_expired(
        &mut self,
        now: Timestamp,
        device: &DeviceId,
        version: Version,
        reason: &str,
    ) -> Result<(), RolloutError> {
        self.tick(now);
        if !self.devices.contains_key(device) {
            return Err(RolloutError::UnknownDevice(device.clone()));
        }
        let target = self.spec.target;
        let max_attempts = self.spec.max_attempts;
        let mut event: Option<(AuditKind, String)> = None;
        self.update(device, |d| {
            let about = match d.task {
                Task::Deploy | Task::Shadow => version == target,
                Task::Rollback { to } => version == to,
                _ => false,
            };
            let Progress::Commanded { attempt, .. } = d.progress else {
                return;
            };
            if !about {
                return;
            }
            // It answered: it is there.
            d.online = true;
            d.last_seen = d.last_seen.max(now);
            let attempt = attempt.max(1);
            if attempt < max_attempts {
                d.progress = Progress::Queued {
                    at: now,
                    attempt: attempt + 1,
                };
                event = Some((
                    AuditKind::DeviceRetry {
                        device: device.clone(),
                        attempt,
                        reason: reason.to_string(),
                        at: now,
                    },
                    format!(
                        "{device}: command of attempt {attempt} of {max_attempts} expired before it arrived ({reason}); a fresh one goes out now"
                    ),
                ));
            } else {
                if d.task == Task::Deploy {
                    d.exposed = d.current == Some(target);
                }
                let reason =
                    format!("every command expired before it arrived ({attempt} sent): {reason}");
                event = Some(fail_device(d, device, reason, attempt));
            }
        });
        if let Some((kind, message)) = event {
            self.emit(now, kind, message);
        }
        self.check_progress(now);
        Ok(())
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
                fell_back: false,
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
        // A fallback is the agent's own rollback: handled as one, and counted.
        let (outcome, fell_back) = match outcome {
            DeployOutcome::FellBack { to, reason } => (
                DeployOutcome::RolledBack {
                    to,
                    reason: format!("new agent fell back: {reason}"),
                },
                true,
            ),
            other => (other, false),
        };
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
                            event = Some(fail_device(d, device, reason, attempt));
                        }
                    }
                }
                // Turned into RolledBack above.
                DeployOutcome::FellBack { .. } => {}
                DeployOutcome::RolledBack { to, reason } => {
                    d.current = to;
                    match d.task {
                        Task::Deploy if !matches!(d.progress, Progress::Failed { .. }) => {
                            // The agent's local guard refused the candidate
                            // (or its new binary fell back): an install
                            // failure, and not one to retry.
                            d.exposed = false;
                            d.fell_back |= fell_back;
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

    /// Merged telemetry answering request `request` (see `MetricsRequest`).
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
            spec.latency_floor_us,
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
}

/// Marks `d` failed for good after `attempt` attempts and returns the audit
/// event that says so.
fn fail_device(
    d: &mut Device,
    device: &DeviceId,
    reason: String,
    attempt: u32,
) -> (AuditKind, String) {
    let message = format!(
        "{device} (wave {}): failed after {attempt} attempt(s): {reason}",
        d.wave + 1
    );
    let kind = AuditKind::DeviceFailed {
        device: device.clone(),
        wave: d.wave,
        reason: reason.clone(),
        attempts: attempt,
    };
    d.progress = Progress::Failed {
        reason,
        attempts: attempt,
    };
    (kind, message)
}
