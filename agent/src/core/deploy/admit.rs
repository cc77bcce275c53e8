//! Admission: whether a manifest may be downloaded at all on this device.

use drover_protocol::manifest::{AgentVersion, ModelManifest};
use drover_protocol::messages::{Reason, ReasonCode};

/// Size limits checked before a download starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest artifact accepted.
    pub max_model_bytes: u64,
    /// Model files (kept plus the new one) may use at most this much disk.
    pub disk_budget_bytes: u64,
}

/// Whether a manifest may be downloaded at all: agent version, model size,
/// disk budget (`disk_in_use` = bytes of model files that will be kept),
/// and a shape Drover can serve.
pub fn admit(
    m: &ModelManifest,
    agent: AgentVersion,
    limits: &Limits,
    disk_in_use: u64,
) -> Result<(), Reason> {
    if m.min_agent_version > agent {
        return Err(Reason::new(
            ReasonCode::AgentTooOld,
            format!(
                "{} needs agent {} or newer; this is {agent}",
                m.model_ref(),
                m.min_agent_version
            ),
        ));
    }
    if m.artifact.size > limits.max_model_bytes {
        return Err(Reason::new(
            ReasonCode::ModelTooLarge,
            format!(
                "artifact is {} bytes; this device accepts at most {}",
                m.artifact.size, limits.max_model_bytes
            ),
        ));
    }
    if disk_in_use.saturating_add(m.artifact.size) > limits.disk_budget_bytes {
        return Err(Reason::new(
            ReasonCode::DiskBudget,
            format!(
                "{} bytes of models kept plus {} new exceed the {}-byte disk budget",
                disk_in_use, m.artifact.size, limits.disk_budget_bytes
            ),
        ));
    }
    if m.inputs.len() != 1 || m.features_per_row().is_none() {
        return Err(Reason::new(
            ReasonCode::UnsupportedModel,
            format!(
                "{} must have exactly one input with static non-batch dimensions",
                m.model_ref()
            ),
        ));
    }
    Ok(())
}
