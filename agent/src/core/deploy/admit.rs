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
    // Any number of named inputs with any dims is served; the manifest must
    // name at least one, each once.
    let mut names: Vec<&str> = m.inputs.iter().map(|i| i.name.as_str()).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    if before == 0 || names.len() != before {
        return Err(Reason::new(
            ReasonCode::UnsupportedModel,
            format!(
                "{} must list at least one input, each name once",
                m.model_ref()
            ),
        ));
    }
    Ok(())
}
