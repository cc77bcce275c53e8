//! Outputs: the actions, metrics requests, audit events and timeout the
//! shell polls for, and the status snapshot.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::{DeviceId, Timestamp};

use crate::core::rollout::spec::{RolloutKind, RolloutSpec};
use crate::core::rollout::types::{
    AuditEvent, Conflict, DeviceView, MetricsKind, MetricsRequest, Phase, RollbackStatus,
    RolloutAction, RolloutStatus, ShadowStatus, Stage, StepCounts, WaveStatus,
};

use super::*;

impl Rollout {
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
            any_model: self.spec.kind == RolloutKind::Agent,
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
        let mut versions: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); self.waves.len()];
        let mut fallbacks = vec![0u64; self.waves.len()];
        for d in self.devices.values().filter(|d| !d.departed) {
            let w = d.wave as usize;
            if let Some(m) = versions.get_mut(w) {
                let label = d
                    .current
                    .map_or_else(|| "none".to_string(), |v| self.spec.version_label(v));
                *m.entry(label).or_default() += 1;
            }
            if d.fell_back
                && let Some(n) = fallbacks.get_mut(w)
            {
                *n += 1;
            }
        }
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
                    versions: std::mem::take(&mut versions[i]),
                    fallbacks: fallbacks[i],
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
            kind: self.spec.kind,
            model: self.spec.model.clone(),
            target: self.spec.target,
            target_label: self.spec.target_label(),
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

    pub(super) fn step_counts(&self, stage: Stage) -> (u64, StepCounts) {
        let Some(w) = self.waves.get(stage.wave() as usize) else {
            return (0, StepCounts::default());
        };
        let c = match stage {
            Stage::Shadow => w.counts.shadow,
            Stage::Wave(_) => w.counts.deploy,
        };
        (w.counts.members, c)
    }

    pub(super) fn rollback_totals(&self) -> StepCounts {
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
}
