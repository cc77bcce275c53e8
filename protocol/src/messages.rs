//! Messages, named by direction: [`Up`] (agent → controller, `up` topic),
//! [`Status`] (retained `status` topic and last will), [`Down`]
//! (controller → agent, `down` and `chunk` topics), and the signed [`Command`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, FleetId, ModelName, ModelRef, Sha256, Timestamp, Version};
use crate::keys::KeyList;
use crate::manifest::{AgentVersion, ModelManifest};
use crate::release::AgentRelease;
use crate::signing::{Signed, SignedPayload};
use crate::telemetry::TelemetryWindow;

// Reasons have their own module (trust errors build them too); re-exported
// here because every message that fails carries one.
pub use crate::reasons::{Reason, ReasonCode};

/// Agent → controller on `drover/{fleet}/d/{device}/up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Up {
    /// Sent on every (re)connect.
    Hello(Hello),
    /// Outcome of a received command (accepted, or rejected with a reason).
    Ack(CommandAck),
    /// Progress and result of a deploy, shadow or rollback.
    DeployStatus(DeployStatus),
    /// One telemetry window from the outbox.
    Telemetry(TelemetryWindow),
    /// Asks for a byte range of an artifact.
    ChunkRequest(ChunkRequest),
    /// Captured input samples, answering a Capture command.
    Capture(CaptureUpload),
    /// Any of the above, signed with the device's own key (see
    /// [`crate::uplink`]). Added last so the earlier variants keep their tags.
    Signed(SealedUp),
    /// Progress and result of an update of the agent itself, and a fallback
    /// to the previous binary (reported once, after it). After `Signed`, so
    /// the earlier variants keep their tags.
    AgentUpdate(AgentUpdateStatus),
}

/// Where an update of the agent binary stands on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUpdateStatus {
    /// The UpdateAgent command (0 for a fallback the agent did by itself).
    pub seq: u64,
    /// The release concerned.
    pub version: AgentVersion,
    /// Current phase.
    pub phase: AgentUpdatePhase,
}

/// Phases of an agent update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentUpdatePhase {
    /// Fetching the binary.
    Downloading {
        /// Bytes held.
        received: u64,
        /// Binary size.
        total: u64,
    },
    /// Verified and staged; the agent restarts into it.
    Restarting,
    /// Refused or failed; the device still runs its current agent.
    Failed(Reason),
    /// The new binary did not come up healthy; `running` runs again.
    FellBack {
        /// The version running again.
        running: AgentVersion,
        /// Why (`agent_start_failed`, `agent_unconfirmed`).
        reason: Reason,
    },
    /// The release's version runs and is connected: the device was already
    /// on it when commanded, or a new binary came up and confirmed its
    /// health (appended last: earlier variants keep their tags).
    Running,
}

/// An encoded [`Up`] sealed by the device key: who, a per-device strictly
/// increasing counter (microseconds since the epoch on the device), the
/// inner payload exactly as signed, and the ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedUp {
    /// The device that signed (must equal the topic's device).
    pub device: DeviceId,
    /// Strictly increasing per device; the controller refuses replays.
    pub counter: u64,
    /// The inner `up` payload (version byte + postcard), as signed.
    pub body: Vec<u8>,
    /// 64-byte ed25519 signature (see `uplink::signing_input`).
    pub sig: Vec<u8>,
}

/// Retained on `drover/{fleet}/d/{device}/status`; the last will is `Offline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// The agent is connected.
    Online {
        /// Agent version string.
        agent_version: String,
        /// The model serving requests.
        active: Option<ModelRef>,
    },
    /// The agent disconnected (cleanly, or the broker fired the last will).
    Offline,
}

/// Controller → agent on `down` (and `chunk` for [`Down::Chunk`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Down {
    /// A signed command.
    Command(Signed<Command>),
    /// Telemetry windows the controller has persisted; the agent may delete them.
    TelemetryAck(TelemetryAck),
    /// A byte range of an artifact (sent on the `chunk` topic).
    Chunk(Chunk),
    /// A root-signed key list (key rotation).
    KeyList(Signed<KeyList>),
    /// Telemetry windows the controller has persisted, bound to one device
    /// and signed by a `commands` key. Agents act only on this form; the
    /// unsigned [`Down::TelemetryAck`] is ignored (anyone could forge it).
    SignedTelemetryAck(Signed<BoundTelemetryAck>),
}

/// What an agent says about itself on connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Hello {
    /// Agent version string (`major.minor.patch`).
    pub agent_version: String,
    /// CPU architecture (`x86_64`, `aarch64`, `arm`).
    pub arch: String,
    /// Hardware class label, free-form.
    pub hardware: String,
    /// Operator-assigned labels (region, site, ...).
    pub labels: BTreeMap<String, String>,
    /// Serving model.
    pub active: Option<ModelRef>,
    /// Model kept for instant rollback.
    pub previous: Option<ModelRef>,
    /// Shadow candidate.
    pub shadow: Option<ModelRef>,
    /// Highest command sequence accepted so far.
    pub last_command_seq: u64,
    /// Version of the installed key list (0 = none).
    pub key_list_version: u64,
    /// Telemetry windows waiting for acknowledgement.
    pub outbox_depth: u64,
}

/// Answer to a command, by sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    /// The command's sequence number (0 if it could not be decoded).
    pub seq: u64,
    /// Accepted, or why not.
    pub result: Result<(), Reason>,
}

/// Where a deploy (or shadow, or rollback) stands on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeployPhase {
    /// Fetching the artifact.
    Downloading {
        /// Bytes held.
        received: u64,
        /// Artifact size.
        total: u64,
    },
    /// Checking hash and signature.
    Verifying,
    /// Loading and optimising with tract.
    Loading,
    /// Running the manifest's health checks.
    HealthCheck,
    /// Serving requests.
    Active,
    /// Running as shadow candidate.
    Shadowing,
    /// Refused or failed; the device still serves what it served before.
    Failed(Reason),
    /// The agent went back to an earlier model (commanded, or by its local guard).
    RolledBack {
        /// The model now serving, if any.
        to: Option<ModelRef>,
        /// Why.
        reason: Reason,
    },
}

/// A deploy progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployStatus {
    /// Command that started this (0 for the local guard's own rollbacks).
    pub seq: u64,
    /// The model concerned.
    pub model: ModelRef,
    /// Current phase.
    pub phase: DeployPhase,
}

/// Request for `len` bytes of an artifact from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRequest {
    /// Artifact digest.
    pub sha256: Sha256,
    /// First byte.
    pub offset: u64,
    /// Bytes wanted (the controller may send fewer).
    pub len: u32,
}

/// A byte range of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Artifact digest.
    pub sha256: Sha256,
    /// Offset of `data[0]`.
    pub offset: u64,
    /// Artifact size.
    pub total: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Persisted telemetry windows, by sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TelemetryAck {
    /// Window sequences the controller stored (or had already stored).
    pub seqs: Vec<u64>,
}

/// A telemetry acknowledgement bound to its fleet and device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundTelemetryAck {
    /// Fleet of the device.
    pub fleet: FleetId,
    /// The one device whose windows these are.
    pub device: DeviceId,
    /// Window sequences the controller stored (or had already stored).
    pub seqs: Vec<u64>,
}

impl SignedPayload for BoundTelemetryAck {
    const DOMAIN: &'static str = "telemetry_ack";
}

/// Ground truth attached to a captured sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Label {
    /// Class index.
    Class(u32),
    /// Regression target.
    Value(f32),
}

/// One captured input row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedSample {
    /// Flattened first input.
    pub input: Vec<f32>,
    /// Ground truth, if feedback arrived.
    pub label: Option<Label>,
}

/// Captured samples, possibly in several parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureUpload {
    /// Sequence of the Capture command answered.
    pub seq: u64,
    /// Model that was serving when the samples were taken.
    pub model: ModelRef,
    /// Part number from 0.
    pub part: u32,
    /// True on the final part.
    pub last: bool,
    /// The samples.
    pub samples: Vec<CapturedSample>,
}

/// A signed instruction for one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Fleet of the target.
    pub fleet: FleetId,
    /// The one device this command is for.
    pub target: DeviceId,
    /// Per-device, strictly increasing.
    pub seq: u64,
    /// When issued.
    pub issued_at: Timestamp,
    /// Refused after this.
    pub expires_at: Timestamp,
    /// What to do.
    pub action: Action,
}

impl SignedPayload for Command {
    const DOMAIN: &'static str = "command";
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Download, verify, check and activate a model.
    Deploy {
        /// The models-key-signed manifest.
        manifest: Signed<ModelManifest>,
    },
    /// Download, verify, check and run a model as shadow candidate.
    Shadow {
        /// The models-key-signed manifest.
        manifest: Signed<ModelManifest>,
        /// Share of live inputs also fed to the candidate, in per mille.
        sample_per_mille: u16,
    },
    /// Stop the shadow candidate.
    StopShadow,
    /// Go back to the previous model, or to a named installed version. The
    /// only way below a model's version floor.
    Rollback {
        /// Model name.
        model: ModelName,
        /// Target version; `None` = the previous model.
        to: Option<Version>,
        /// Why, for the audit trail.
        reason: String,
    },
    /// Upload sampled live inputs (+ labels when known).
    Capture {
        /// At most this many samples.
        max_samples: u32,
        /// At most this many bytes of samples.
        max_bytes: u32,
    },
    /// Change agent settings.
    Configure(AgentSettings),
    /// Download, verify and switch to another agent binary (restarting
    /// into it, falling back by itself if it does not come up healthy).
    UpdateAgent {
        /// The agents-key-signed release.
        release: Signed<AgentRelease>,
        /// An explicit rollback: the only way below the agent version floor.
        rollback: bool,
    },
}

impl Action {
    /// Short name for logs and acks.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Deploy { .. } => "deploy",
            Action::Shadow { .. } => "shadow",
            Action::StopShadow => "stop_shadow",
            Action::Rollback { .. } => "rollback",
            Action::Capture { .. } => "capture",
            Action::Configure(_) => "configure",
            Action::UpdateAgent { .. } => "update_agent",
        }
    }
}

/// Remotely adjustable agent settings; `None` leaves a setting as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentSettings {
    /// Telemetry window length.
    pub telemetry_window_ms: Option<u64>,
    /// Share of inputs kept for capture, per mille.
    pub capture_per_mille: Option<u16>,
}
