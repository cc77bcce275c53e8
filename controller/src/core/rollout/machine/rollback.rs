//! Rollback: putting every touched device back on its previous
//! version, and stopping shadows.

use std::collections::BTreeMap;

use drover_protocol::{DeviceId, Timestamp};

use crate::core::rollout::types::{AuditKind, Phase, SilentCause};

use super::*;

impl Rollout {
    /// Where an exposed device goes back to: its pre-rollout version, unless
    /// that is unknown, the target itself, or a failed version.
    pub(super) fn rollback_task(&self, d: &Device) -> Task {
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

    /// Queues StopShadow for every device that may run the candidate in
    /// shadow, and forgets their shadow task.
    pub(super) fn stop_shadows(&mut self) {
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

    pub(super) fn start_rollback(&mut self, now: Timestamp, reason: String) {
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

    pub(super) fn rollbacks_allowed(&self) -> bool {
        matches!(
            self.phase,
            Phase::RollingBack { .. } | Phase::RolledBack { .. }
        )
    }
}
