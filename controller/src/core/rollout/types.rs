//! The rollout core's public inputs and outputs: what the shell passes to
//! `handle_*`, what `poll_*` and `status` return, and the audit events. All
//! of it is serde, so the HTTP API and the audit log can carry it as JSON.

use std::collections::BTreeMap;
use std::fmt;

use drover_protocol::{DeviceId, ModelName, Timestamp, Version};
use serde::{Deserialize, Serialize};

use super::gates::{Decision, GateResult};
use super::spec::{OnFail, SpecError};

/// Errors of the rollout core. An input answered with an error was ignored
/// (only what was already due at `now` was processed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RolloutError {
    /// The spec broke a rule.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The target version is in the failed set passed in.
    #[error("version {0} failed an earlier rollout and cannot be rolled out again")]
    TargetFailed(Version),
    /// Fewer than two devices match: there would be no control cohort.
    #[error(
        "selector {selector:?} matches {found} device(s); a rollout needs at least 2 (a canary and a control)"
    )]
    TooFewDevices {
        /// The selector, as text.
        selector: String,
        /// Matching devices.
        found: usize,
    },
    /// A report about a device this rollout does not know.
    #[error("device {0} is not part of this rollout")]
    UnknownDevice(DeviceId),
    /// Metrics for a request that is not outstanding.
    #[error("metrics request {0} is not outstanding (already answered, or the stage moved on)")]
    StaleMetrics(u64),
    /// A command that the current phase does not allow.
    #[error("cannot {command} a rollout that is {phase}")]
    NotAllowed {
        /// The command.
        command: &'static str,
        /// The phase name.
        phase: &'static str,
    },
}

/// What the shell knows about a device, from its inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device.
    pub id: DeviceId,
    /// Its labels; put `hardware` / `arch` here to stratify on them.
    pub labels: BTreeMap<String, String>,
    /// Connected now (retained status Online).
    pub online: bool,
    /// Active version of the rollout's model, if any.
    pub version: Option<Version>,
    /// Last time the controller heard from it.
    pub last_seen: Timestamp,
}

/// A device's report about a command, translated from `DeployStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeployOutcome {
    /// The version now serves requests.
    Active {
        /// The version.
        version: Version,
    },
    /// The version runs as shadow candidate.
    Shadowing {
        /// The version.
        version: Version,
    },
    /// A deploy, shadow or rollback of `version` failed; the device serves
    /// what it served before.
    Failed {
        /// The version the failed command was about.
        version: Version,
        /// Why, for the audit trail.
        reason: String,
        /// Worth retrying (download or transient errors), as the shell judges
        /// from the agent's reason code.
        retryable: bool,
    },
    /// The device went back to an earlier model, commanded or on its own.
    RolledBack {
        /// What it serves now.
        to: Option<Version>,
        /// Why.
        reason: String,
    },
    /// An agent rollout: the new agent binary did not come up healthy and
    /// the device went back to its previous agent on its own. Counted as a
    /// failed install (never retried) and as a fallback of its wave.
    FellBack {
        /// The agent version running again.
        to: Option<Version>,
        /// Why (`agent_start_failed`, `agent_unconfirmed`).
        reason: String,
    },
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCommand {
    /// Stop sending commands and advancing; reports are still recorded.
    Pause,
    /// Continue a paused rollout: the paused stage deploys and bakes afresh.
    Resume,
    /// Stop for good and leave devices as they are (shadows are stopped).
    Abort,
    /// Staged rollback of every device that may run the target.
    Rollback,
}

impl RolloutCommand {
    /// The command as a verb, for messages.
    pub fn name(self) -> &'static str {
        match self {
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Rollback => "roll back",
        }
    }
}

/// A command for one device, to be signed and sent by the shell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RolloutAction {
    /// Activate `version` of the rollout's model.
    Deploy {
        /// Target device.
        device: DeviceId,
        /// Version to activate.
        version: Version,
    },
    /// Run `version` as shadow candidate.
    Shadow {
        /// Target device.
        device: DeviceId,
        /// Version to shadow.
        version: Version,
    },
    /// Stop the shadow candidate.
    StopShadow {
        /// Target device.
        device: DeviceId,
    },
    /// Roll back to `to` (an explicit, installed version).
    Rollback {
        /// Target device.
        device: DeviceId,
        /// Version to go back to.
        to: Version,
    },
}

impl RolloutAction {
    /// The device concerned.
    pub fn device(&self) -> &DeviceId {
        match self {
            RolloutAction::Deploy { device, .. }
            | RolloutAction::Shadow { device, .. }
            | RolloutAction::StopShadow { device }
            | RolloutAction::Rollback { device, .. } => device,
        }
    }
}

/// What a metrics request measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricsKind {
    /// Canary: the candidate's Shadow-role windows on the canary devices
    /// (shadow comparison included). Control: Active windows of the control
    /// devices (unused by the shadow gate).
    Shadow,
    /// Canary: Active windows of `new_version` on the canary devices.
    /// Control: Active windows of the control devices' `old_versions`.
    Wave,
}

/// A request for merged telemetry; answer with [`Rollout::handle_metrics`](super::Rollout::handle_metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRequest {
    /// Echo this in the answer.
    pub id: u64,
    /// The stage being gated.
    pub stage: Stage,
    /// How to read the canary side.
    pub kind: MetricsKind,
    /// Model concerned.
    pub model: ModelName,
    /// Devices of the stage that run the candidate (updated, or shadowing).
    pub canary: Vec<DeviceId>,
    /// Devices not yet in any started wave, still on their pre-rollout version.
    pub control: Vec<DeviceId>,
    /// Start of the time range (inclusive); the same for both cohorts.
    pub since: Timestamp,
    /// End of the time range.
    pub until: Timestamp,
    /// The candidate.
    pub new_version: Version,
    /// The versions the control devices run.
    pub old_versions: Vec<Version>,
    /// An agent rollout: `new_version` and `old_versions` are agent
    /// versions, so both cohorts are read from the Active windows of any
    /// model the devices serve (the candidate is the agent, not a model).
    #[serde(default)]
    pub any_model: bool,
}

/// A rollout stage: the shadow phase, or a wave (0-based; shown 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The candidate runs in shadow on the first wave's devices.
    Shadow,
    /// Wave `n` (0 = canary).
    Wave(u32),
}

impl Stage {
    /// The wave whose devices the stage concerns (the shadow phase uses the first).
    pub fn wave(self) -> u32 {
        match self {
            Stage::Shadow => 0,
            Stage::Wave(w) => w,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Shadow => f.write_str("shadow phase"),
            Stage::Wave(w) => write!(f, "wave {}", w + 1),
        }
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseCause {
    /// An operator paused it.
    Operator,
    /// A gate failed and `on_fail` is `pause`.
    GateFailed,
    /// Too many installs failed and `on_fail` is `pause`.
    TooManyFailed,
    /// Gates stayed Inconclusive until the bake limit.
    Inconclusive,
    /// No metrics answer arrived by the bake limit.
    NoMetrics,
    /// More devices went silent than `max_silent` allows.
    TooManySilent,
}

/// What a paused rollout continues with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResumePoint {
    /// Deploy (catch up) and bake this stage afresh.
    Stage(Stage),
    /// Continue the rollback.
    Rollback,
}

/// Where the rollout stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Created; nothing sent yet. Starts on the first `handle_*`/`poll_*`.
    Pending,
    /// Commands for the stage are going out; waiting for every device to
    /// report, fail or fall silent.
    Deploying {
        /// The stage.
        stage: Stage,
        /// When it started (or resumed).
        since: Timestamp,
    },
    /// Every device of the stage is resolved; metrics are gathered.
    Baking {
        /// The stage.
        stage: Stage,
        /// Start of the gates' time range.
        since: Timestamp,
        /// Gates may pass on data up to at least this time.
        until: Timestamp,
        /// Still Inconclusive on data up to this time: pause.
        limit: Timestamp,
    },
    /// Waiting for an operator.
    Paused {
        /// Why.
        cause: PauseCause,
        /// Why, in words with numbers.
        reason: String,
        /// What Resume continues with.
        resume: ResumePoint,
        /// Since when.
        since: Timestamp,
    },
    /// Devices are being sent back, last wave first.
    RollingBack {
        /// Why.
        reason: String,
        /// Since when.
        since: Timestamp,
    },
    /// The rollback is done (silent devices are still caught up when seen).
    RolledBack {
        /// Why it was rolled back.
        reason: String,
        /// When the last device resolved.
        at: Timestamp,
    },
    /// Every wave passed.
    Completed {
        /// When.
        at: Timestamp,
    },
    /// Stopped by an operator; devices were left as they were.
    Aborted {
        /// When.
        at: Timestamp,
    },
}

impl Phase {
    /// Short name, as in the JSON tag.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Deploying { .. } => "deploying",
            Phase::Baking { .. } => "baking",
            Phase::Paused { .. } => "paused",
            Phase::RollingBack { .. } => "rolling_back",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Completed { .. } => "completed",
            Phase::Aborted { .. } => "aborted",
        }
    }

    /// True until the rollout completed, rolled back or was aborted; an
    /// active rollout holds its devices for [`Rollout::overlaps`](super::Rollout::overlaps).
    pub fn is_active(&self) -> bool {
        !matches!(
            self,
            Phase::RolledBack { .. } | Phase::Completed { .. } | Phase::Aborted { .. }
        )
    }
}

/// Why a device counts as silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SilentCause {
    /// No report within the device timeout after a command.
    Timeout,
    /// Offline when its command was due.
    Offline,
}

/// Per-step device counts of one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepCounts {
    /// Waiting for a command (or a retry).
    pub queued: u64,
    /// Commanded, no report yet.
    pub commanded: u64,
    /// Reported success.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
    /// Silent (never counted as success).
    pub silent: u64,
}

impl StepCounts {
    /// Devices not yet resolved (queued or commanded).
    pub fn in_flight(&self) -> u64 {
        self.queued + self.commanded
    }
}

/// One audited decision: when, which rollout, what, and a sentence with the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When it was decided.
    pub at: Timestamp,
    /// The rollout.
    pub rollout: String,
    /// What was decided, with the numbers.
    pub event: AuditKind,
    /// The same in one sentence, for logs and the CLI.
    pub message: String,
}

/// The kinds of audited decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditKind {
    /// The rollout was planned.
    Created {
        /// Matching devices.
        devices: u64,
        /// Planned devices per wave.
        waves: Vec<u64>,
        /// Canary devices per cohort.
        canary_cohorts: BTreeMap<String, u64>,
    },
    /// A stage began (or resumed) deploying.
    StageStarted {
        /// The stage.
        stage: Stage,
        /// Devices in it.
        devices: u64,
        /// Commands queued.
        queued: u64,
        /// Already on the target (no command needed).
        already: u64,
        /// Offline, so silent until they come back.
        offline: u64,
    },
    /// A stage with no devices was skipped.
    StageSkipped {
        /// The stage.
        stage: Stage,
    },
    /// Every device of the stage resolved; baking begins.
    BakeStarted {
        /// The stage.
        stage: Stage,
        /// Device counts.
        counts: StepCounts,
        /// Gates may pass from here.
        until: Timestamp,
        /// Inconclusive until here pauses.
        limit: Timestamp,
    },
    /// Gates were evaluated on one metrics answer.
    GatesEvaluated {
        /// The stage.
        stage: Stage,
        /// The metrics request answered.
        request: u64,
        /// The combined verdict.
        decision: Decision,
        /// Every gate with its numbers.
        results: Vec<GateResult>,
    },
    /// A stage passed.
    StagePassed {
        /// The stage.
        stage: Stage,
        /// Device counts.
        counts: StepCounts,
    },
    /// A stage failed.
    StageFailed {
        /// The stage.
        stage: Stage,
        /// Why.
        reason: String,
        /// What happens next.
        on_fail: OnFail,
    },
    /// The rollout paused.
    Paused {
        /// Why.
        cause: PauseCause,
        /// Why, in words.
        reason: String,
    },
    /// An operator resumed it, or a `TooManySilent` pause cleared (the
    /// silent devices came back).
    Resumed {
        /// What continues.
        resume: ResumePoint,
    },
    /// An operator aborted it.
    Aborted {
        /// Commands that were still queued and are dropped.
        dropped: u64,
    },
    /// A rollback started.
    RollbackStarted {
        /// Why.
        reason: String,
        /// Devices to roll back, per target version.
        targets: BTreeMap<String, u64>,
        /// Devices that may run the target but have no rollback target.
        no_target: u64,
    },
    /// The rollback reached a wave (last wave first).
    RollbackWave {
        /// The wave.
        wave: u32,
        /// Devices of that wave to roll back.
        devices: u64,
    },
    /// The rollback finished.
    RolledBack {
        /// Counts over all waves.
        counts: StepCounts,
        /// Devices without a rollback target.
        no_target: u64,
    },
    /// Every wave passed.
    Completed {
        /// Devices on the target.
        updated: u64,
        /// Devices whose install failed.
        failed: u64,
        /// Devices silent at the end.
        silent: u64,
    },
    /// A device failed for good.
    DeviceFailed {
        /// The device.
        device: DeviceId,
        /// Its wave.
        wave: u32,
        /// Why.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A device's retryable failure is retried later.
    DeviceRetry {
        /// The device.
        device: DeviceId,
        /// The failed attempt.
        attempt: u32,
        /// Why it failed.
        reason: String,
        /// When the retry is due.
        at: Timestamp,
    },
    /// A device fell silent.
    DeviceSilent {
        /// The device.
        device: DeviceId,
        /// Its wave.
        wave: u32,
        /// Why.
        cause: SilentCause,
    },
    /// A device may run the target but has nowhere safe to go back to.
    NoRollbackTarget {
        /// The device.
        device: DeviceId,
        /// Why.
        reason: String,
    },
    /// A device started matching the selector.
    DeviceJoined {
        /// The device.
        device: DeviceId,
        /// Its wave.
        wave: u32,
        /// Whether its wave has started (it gets the candidate now).
        deploy_now: bool,
    },
    /// A device stopped matching the selector; it is left as it is.
    DeviceDeparted {
        /// The device.
        device: DeviceId,
    },
    /// The shell restarted; in-flight work is redone.
    Restarted {
        /// Commands re-queued because they may never have left.
        requeued: u64,
    },
}

/// Answer to [`Rollout::handle_device`](super::Rollout::handle_device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// Does not match the selector and is not a member.
    Ignored,
    /// New member in this wave.
    Joined {
        /// Its wave.
        wave: u32,
    },
    /// Known member, view updated.
    Updated,
    /// Stopped matching the selector.
    Departed,
}

/// One wave in [`RolloutStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// 1-based wave number.
    pub wave: u32,
    /// Cumulative percentage.
    pub percent: f64,
    /// Devices in the wave (joiners included, departed excluded).
    pub targeted: u64,
    /// Not yet commanded (wave not reached, or queued).
    pub pending: u64,
    /// Commanded, no report yet.
    pub in_flight: u64,
    /// On the target.
    pub updated: u64,
    /// Install failed for good.
    pub failed: u64,
    /// Silent.
    pub silent: u64,
    /// Rollback counts.
    pub rollback: StepCounts,
    /// Devices without rollback target.
    pub no_rollback_target: u64,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When its bake began.
    pub bake_since: Option<Timestamp>,
    /// When it passed.
    pub passed_at: Option<Timestamp>,
    /// When it failed.
    pub failed_at: Option<Timestamp>,
    /// Gate evaluations so far.
    pub evaluations: u64,
    /// The latest gate results.
    pub gates: Vec<GateResult>,
    /// Devices of the wave per version they run now (as
    /// [`RolloutSpec::version_label`](super::RolloutSpec::version_label)
    /// writes it; `none` for no version).
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// Devices of the wave whose new agent fell back by itself (agent
    /// rollouts; always 0 for models).
    #[serde(default)]
    pub fallbacks: u64,
}

/// The shadow phase in [`RolloutStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowStatus {
    /// Devices asked to shadow (the first wave).
    pub targeted: u64,
    /// Device counts (`done` = shadowing).
    pub counts: StepCounts,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it passed.
    pub passed_at: Option<Timestamp>,
    /// When it failed.
    pub failed_at: Option<Timestamp>,
    /// The latest gate results.
    pub gates: Vec<GateResult>,
}

/// The rollback in [`RolloutStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStatus {
    /// Counts over all waves.
    pub counts: StepCounts,
    /// Devices that may run the target with nowhere safe to go, and why.
    pub no_target: Vec<(DeviceId, String)>,
}

/// Everything `drover rollout status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Rollout id.
    pub id: String,
    /// A model or the agent.
    #[serde(default)]
    pub kind: super::spec::RolloutKind,
    /// Model (`agent` for an agent rollout).
    pub model: ModelName,
    /// Target version.
    pub target: Version,
    /// What is rolled out, as operators write it: `name@3`, `agent@0.2.0`.
    #[serde(default)]
    pub target_label: String,
    /// Selector as text.
    pub selector: String,
    /// Current phase.
    pub phase: Phase,
    /// True while the rollout holds its devices.
    pub active: bool,
    /// Member devices (departed excluded).
    pub devices: u64,
    /// Devices that stopped matching the selector.
    pub departed: u64,
    /// The shadow phase, if any.
    pub shadow: Option<ShadowStatus>,
    /// Per wave.
    pub waves: Vec<WaveStatus>,
    /// The latest gate results of any stage.
    pub last_gates: Vec<GateResult>,
    /// The rollback, once started.
    pub rollback: Option<RollbackStatus>,
    /// The next deadline and its reason.
    pub next_timeout: Option<(Timestamp, String)>,
}

/// Conflict between an active rollout and a proposed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    /// The active rollout.
    pub rollout: String,
    /// The shared model.
    pub model: ModelName,
    /// Devices both would hold.
    pub devices: u64,
    /// Up to five of them.
    pub examples: Vec<DeviceId>,
    /// Why the new one is refused, in words.
    pub reason: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}
