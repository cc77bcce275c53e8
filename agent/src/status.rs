//! What `Agent::status()` and `GET /v1/status` report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The MQTT link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// Whether a session is up.
    pub connected: bool,
    /// Connections lost since start.
    pub reconnects: u64,
}

/// A download or deploy in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadStatus {
    /// `name@version`.
    pub model: String,
    /// `deploy` or `shadow`.
    pub kind: String,
    /// Command sequence.
    pub seq: u64,
    /// Bytes held.
    pub received: u64,
    /// Artifact size.
    pub total: u64,
}

/// A snapshot of the agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Device id.
    pub device: String,
    /// Fleet.
    pub fleet: String,
    /// This agent's version.
    pub agent_version: String,
    /// MQTT link state.
    pub link: LinkState,
    /// Serving model, `name@version`.
    pub active: Option<String>,
    /// Model kept for rollback.
    pub previous: Option<String>,
    /// Shadow candidate.
    pub shadow: Option<String>,
    /// Share of inputs the shadow sees, per mille.
    pub shadow_per_mille: u16,
    /// Telemetry windows waiting for acknowledgement.
    pub outbox_depth: u64,
    /// Windows evicted from a full outbox since start.
    pub outbox_evicted: u64,
    /// When the controller last acknowledged telemetry (ms since the epoch).
    pub last_ack_ms: Option<u64>,
    /// Highest accepted command sequence.
    pub last_command_seq: u64,
    /// Installed key list version (0 = none).
    pub key_list_version: u64,
    /// Telemetry window length in force, ms.
    pub telemetry_window_ms: u64,
    /// Downloads in progress.
    pub downloads: Vec<DownloadStatus>,
    /// Counters: `rejected_commands.REASON`, `malformed.KIND`,
    /// `http_errors.CODE`, `feedback.OUTCOME`, `deploy_failures.REASON`.
    pub counters: BTreeMap<String, u64>,
}
