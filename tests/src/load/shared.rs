//! What the devices of one worker share: settings, counters, the phase
//! (run, drain, close) and the window templates.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use drover_protocol::ModelRef;

use super::template::Templates;

/// Where the devices of a worker stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Sending windows.
    Run,
    /// No new windows; waiting for the acknowledgements of those sent.
    Drain,
    /// Say Offline and disconnect now.
    Close,
}

/// A worker's counters, shared by its devices.
#[derive(Debug, Default)]
pub struct Counters {
    /// Devices with a session up now.
    pub connected: AtomicU64,
    /// ConnAcks received.
    pub connects: AtomicU64,
    /// Sessions lost.
    pub disconnects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_errors: AtomicU64,
    /// Distinct telemetry windows made (each sent at least once).
    pub windows_created: AtomicU64,
    /// Windows sent again (ack timeout or reconnect).
    pub windows_resent: AtomicU64,
    /// Windows acknowledged by a verified TelemetryAck.
    pub windows_acked: AtomicU64,
    /// Unacknowledged windows dropped (a device's bound).
    pub windows_evicted: AtomicU64,
    /// Commands accepted (and acked).
    pub commands_accepted: AtomicU64,
    /// Commands refused (and acked with the reason).
    pub commands_refused: AtomicU64,
    /// Deploys (or shadows) that reached Active (Shadowing).
    pub deploys_done: AtomicU64,
    /// Deploy jobs that failed or were superseded.
    pub deploys_failed: AtomicU64,
    /// Rollbacks carried out.
    pub rollbacks: AtomicU64,
    /// Artifact chunks received.
    pub chunks_received: AtomicU64,
    /// Chunks that arrived with no job running (late answers to re-sent
    /// requests).
    pub stray_chunks: AtomicU64,
    /// Telemetry acks refused (unsigned, bad signature, other device).
    pub acks_refused: AtomicU64,
    /// Reports dropped from a full pending queue.
    pub dropped: AtomicU64,
    /// Anything else unexpected: undecodable payloads, stray chunks,
    /// refused key lists, encode failures.
    pub errors: AtomicU64,
}

/// What every device of a worker shares.
pub struct Shared {
    /// Settings.
    pub cfg: DeviceSettings,
    /// Counters.
    pub counters: Counters,
    /// Pre-encoded windows.
    pub templates: Templates,
}

/// Device settings of a worker.
#[derive(Debug, Clone)]
pub struct DeviceSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Telemetry window.
    pub window_ms: u64,
    /// An unacknowledged window is sent again after this.
    pub ack_timeout: Duration,
    /// The model windows name while a device serves none.
    pub idle_model: ModelRef,
}
