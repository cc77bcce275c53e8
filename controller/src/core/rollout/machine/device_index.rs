//! The device index: per-device tasks and progress, the per-stage
//! counters and the outstanding queue, kept consistent on every change.

use drover_protocol::{DeviceId, Timestamp};

use crate::core::rollout::types::{AuditKind, Phase, ResumePoint, SilentCause};

use super::*;

impl Rollout {
    /// The single mutation path for a device: keeps counters and indexes in step.
    pub(super) fn update(&mut self, id: &DeviceId, f: impl FnOnce(&mut Device)) {
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

    pub(super) fn account(&mut self, d: &Device, add: bool) {
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

    pub(super) fn index(&mut self, id: &DeviceId, d: &Device, add: bool) {
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

    /// Brings a (re)joining device into the current phase.
    pub(super) fn rejoin(&mut self, now: Timestamp, id: &DeviceId) {
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

    pub(super) fn requeue_silent(&mut self, now: Timestamp, which: impl Fn(&Task) -> bool) {
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
}
