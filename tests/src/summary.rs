//! [`DemoSummary`], shared by the demo and its retraining step (its own
//! file so the two do not import each other).

use std::collections::BTreeMap;

/// What the demo measured, for the closing table and for tests.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// (step, outcome, seconds) per narrated step.
    pub steps: Vec<(String, String, f64)>,
    /// Final phase of each rollout, by model version.
    pub rollouts: BTreeMap<String, String>,
    /// Devices per active model at the end.
    pub versions: BTreeMap<String, usize>,
    /// Inferences, errors, feedback, correct predictions.
    pub totals: (u64, u64, u64, u64),
    /// Windows the controller stored.
    pub windows: u64,
    /// Retraining job that produced v2, if any.
    pub retrain_job: Option<String>,
    /// Total wall time.
    pub seconds: f64,
}
