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

use super::gates::{Baseline, GateResult};
use super::plan::{self, JoinerBounds, PlanInput};
use super::spec::RolloutSpec;
use super::types::{
    AuditEvent, AuditKind, DeviceView, Phase, RolloutError, SilentCause, Stage, StepCounts,
};

mod device_index;
mod inputs;
mod rollback;
mod stages;
mod status;

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
    /// Its new agent fell back by itself (agent rollouts).
    #[serde(default)]
    fell_back: bool,
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
                    fell_back: false,
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
