//! Slot arbitration: what a Deploy or Shadow command does given what the
//! device serves and which downloads are running. One deploy and one shadow
//! download at a time; the rules, in order:
//!
//! 1. Deploying the active model reports Active and changes nothing.
//! 2. Shadowing the active model is refused (`shadow_is_active`); shadowing
//!    the model already shadowed restarts its worker at the new sample rate.
//! 3. Admission: agent version, model size, and the disk budget counted as
//!    what stays on disk once the job completes ([`disk_in_use`]).
//! 4. A shadow of the artifact the deploy slot is downloading is refused
//!    (`already_deploying`); a deploy of the artifact the shadow slot is
//!    downloading *promotes* it: the shadow job is cancelled without
//!    discarding its bytes and the deploy starts from them.
//! 5. A job already in the slot is superseded; if it downloads the same
//!    artifact its bytes carry over, otherwise they are discarded.
//!
//! Pure: the driver gathers a [`Slots`] view, calls [`arbitrate`] and carries
//! out the [`Arbitration`].

use drover_protocol::ModelRef;
use drover_protocol::manifest::{AgentVersion, ModelManifest};
use drover_protocol::messages::{Reason, ReasonCode};

use crate::core::deploy::{DeployJob, JobKind, Limits, RangeSet, admit};

/// Download slots: one deploy and one shadow download at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A Deploy command's download.
    Deploy,
    /// A Shadow command's download.
    Shadow,
}

impl Slot {
    /// The slot a job of `kind` runs in.
    pub fn of(kind: JobKind) -> Slot {
        match kind {
            JobKind::Deploy => Slot::Deploy,
            JobKind::Shadow { .. } => Slot::Shadow,
        }
    }

    /// Stable name (the store's key).
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Deploy => "deploy",
            Slot::Shadow => "shadow",
        }
    }
}

/// A running job as arbitration sees it.
#[derive(Debug, Clone, Copy)]
pub struct JobView<'a> {
    /// Its core.
    pub job: &'a DeployJob,
    /// Its artifact is an installed model file, not a partial download (so
    /// it has no bytes to hand over).
    pub installed: bool,
}

/// What the device serves, as arbitration needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Serving {
    /// The active pointer.
    pub active: Option<ModelRef>,
    /// The shadow pointer.
    pub shadow: Option<ModelRef>,
    /// A shadow worker is running (so a repeated Shadow can restart it).
    pub shadow_running: bool,
    /// Artifact size of the loaded active model (0 if none).
    pub active_bytes: u64,
    /// Artifact size of the loaded previous model (0 if none).
    pub previous_bytes: u64,
    /// Artifact size of the running shadow candidate (0 if none).
    pub shadow_bytes: u64,
}

/// Everything arbitration looks at.
#[derive(Debug, Clone, Copy)]
pub struct Slots<'a> {
    /// What is served.
    pub serving: &'a Serving,
    /// The deploy slot's job.
    pub deploy: Option<JobView<'a>>,
    /// The shadow slot's job.
    pub shadow: Option<JobView<'a>>,
    /// This agent's version.
    pub agent: AgentVersion,
    /// Device limits.
    pub limits: &'a Limits,
}

impl<'a> Slots<'a> {
    fn job(&self, slot: Slot) -> Option<JobView<'a>> {
        match slot {
            Slot::Deploy => self.deploy,
            Slot::Shadow => self.shadow,
        }
    }
}

/// The decision for one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Arbitration {
    /// Deploy of the model already active: report Active, nothing else.
    AlreadyActive,
    /// Shadow of the model already shadowed: restart its worker at this
    /// sample rate (no download).
    RestartShadow {
        /// Share of live inputs, per mille.
        sample_per_mille: u16,
    },
    /// Refused: report Failed; running jobs continue untouched.
    Refuse(Reason),
    /// Start a job.
    Start(StartPlan),
}

/// How to start a job, in the order the driver carries it out.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPlan {
    /// The slot the new job runs in.
    pub slot: Slot,
    /// The other slot's job downloads the same artifact: cancel it with this
    /// reason without discarding its file (the new job takes its bytes), and
    /// drop its persisted pending download.
    pub promote: Option<Reason>,
    /// The job already in `slot` is replaced: cancel it.
    pub supersede: Option<Supersede>,
    /// Bytes the new job starts with (handed over by a promoted or
    /// superseded job of the same artifact).
    pub held: RangeSet,
}

/// Cancelling the job a new one replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Supersede {
    /// Reported as the old job's failure.
    pub reason: Reason,
    /// Delete its partial file (false when the new job takes its bytes).
    pub discard: bool,
}

/// Bytes of model files that stay on disk once a job of `kind` completes: a
/// deploy keeps active (which becomes previous), the running shadow and the
/// other download; a shadow keeps active, previous and the other download.
pub fn disk_in_use(kind: JobKind, serving: &Serving, other_download: Option<&DeployJob>) -> u64 {
    let other = other_download.map_or(0, |j| j.manifest().artifact.size);
    let kept = match kind {
        JobKind::Deploy => serving.active_bytes.saturating_add(serving.shadow_bytes),
        JobKind::Shadow { .. } => serving.active_bytes.saturating_add(serving.previous_bytes),
    };
    kept.saturating_add(other)
}

/// Decides what command `seq` asking for `kind` of `m` does.
pub fn arbitrate(seq: u64, kind: JobKind, m: &ModelManifest, slots: &Slots<'_>) -> Arbitration {
    let model = m.model_ref();
    let serving = slots.serving;
    match kind {
        JobKind::Deploy if serving.active.as_ref() == Some(&model) => {
            return Arbitration::AlreadyActive;
        }
        JobKind::Shadow { sample_per_mille } => {
            if serving.active.as_ref() == Some(&model) {
                return Arbitration::Refuse(Reason::new(
                    ReasonCode::ShadowIsActive,
                    format!("{model} is the active model"),
                ));
            }
            if serving.shadow.as_ref() == Some(&model) && serving.shadow_running {
                return Arbitration::RestartShadow { sample_per_mille };
            }
        }
        JobKind::Deploy => {}
    }
    let slot = Slot::of(kind);
    let other_slot = match slot {
        Slot::Deploy => Slot::Shadow,
        Slot::Shadow => Slot::Deploy,
    };
    let other = slots.job(other_slot);
    let in_use = disk_in_use(kind, serving, other.map(|j| j.job));
    if let Err(r) = admit(m, slots.agent, slots.limits, in_use) {
        return Arbitration::Refuse(r);
    }
    let sha = m.artifact.sha256;
    let mut held = RangeSet::default();
    let mut promote = None;
    if let Some(o) = other.filter(|o| o.job.sha256() == sha) {
        if slot == Slot::Shadow {
            return Arbitration::Refuse(Reason::new(
                ReasonCode::AlreadyDeploying,
                format!("{model} is being deployed"),
            ));
        }
        if !o.installed {
            held = o.job.held().clone();
        }
        promote = Some(Reason::new(
            ReasonCode::Superseded,
            format!("deployed by command {seq}"),
        ));
    }
    let supersede = slots.job(slot).map(|cur| {
        let same = cur.job.sha256() == sha && !cur.installed;
        if same {
            held = cur.job.held().clone();
        }
        Supersede {
            reason: Reason::new(
                ReasonCode::Superseded,
                format!("superseded by command {seq}"),
            ),
            discard: !same,
        }
    });
    Arbitration::Start(StartPlan {
        slot,
        promote,
        supersede,
        held,
    })
}

#[cfg(test)]
mod tests;
