//! The signed description of one model version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{ModelName, ModelRef, Sha256, Timestamp, Version};
use crate::signing::SignedPayload;

/// Everything an agent needs to know to verify, load, check and watch one
/// model version. Signed with a `models` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Model name.
    pub name: ModelName,
    /// Version, increasing per name.
    pub version: Version,
    /// The ONNX file this manifest describes.
    pub artifact: Artifact,
    /// Model inputs, in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs, in graph order.
    pub outputs: Vec<TensorSpec>,
    /// What the outputs mean.
    pub task: Task,
    /// Distribution of inputs and outputs on the training data, for drift.
    pub reference: ReferenceProfile,
    /// Samples with known outputs that must reproduce before activation.
    pub health_checks: HealthChecks,
    /// p95 latency (µs) the agent's local guard holds a new model to, if set.
    pub latency_budget_us: Option<u64>,
    /// Where this version came from.
    pub lineage: Lineage,
    /// When the manifest was signed.
    pub created_at: Timestamp,
    /// After this the manifest is refused.
    pub expires_at: Timestamp,
    /// Oldest agent that can run this model, `major.minor.patch`.
    pub min_agent_version: AgentVersion,
    /// How to load the graph (fixed inputs, pinned shapes), as at push, so
    /// the agent plans exactly what the registry checked.
    pub load: LoadSpec,
}

/// Load options recorded at push and replayed by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoadSpec {
    /// `NAME=VALUE`: inputs the deployment fixes (constant-folded).
    pub fix_inputs: Vec<String>,
    /// `NAME=D0,D1,...`: shapes pinned for inputs with dynamic dims.
    pub input_shapes: Vec<String>,
}

impl SignedPayload for ModelManifest {
    const DOMAIN: &'static str = "manifest";
}

impl ModelManifest {
    /// `name@version`.
    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            name: self.name.clone(),
            version: self.version,
        }
    }

    /// Number of scalar features the first input takes per row, if static.
    pub fn features_per_row(&self) -> Option<usize> {
        let input = self.inputs.first()?;
        input
            .shape
            .iter()
            .skip(1)
            .try_fold(1usize, |acc, d| d.map(|d| acc.saturating_mul(d as usize)))
    }
}

/// Content address and size of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// SHA-256 of the file.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    String,
}

/// Name, type and shape of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Graph name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `None` is symbolic (usually the batch).
    pub shape: Vec<Option<u64>>,
}

/// What the model predicts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Task {
    /// Classes; `probabilities` names the [N, classes] score output.
    Classification {
        /// Class names, by index.
        labels: Vec<String>,
        /// Output holding class probabilities.
        probabilities: String,
        /// Output holding the predicted class index, if the model has one.
        label: Option<String>,
    },
    /// A real value; `output` names the [N, 1] (or [N]) output.
    Regression {
        /// Output holding the prediction.
        output: String,
    },
}

impl Task {
    /// The output that health checks compare and telemetry histograms.
    pub fn primary_output(&self) -> &str {
        match self {
            Task::Classification { probabilities, .. } => probabilities,
            Task::Regression { output } => output,
        }
    }
}

/// Reference distributions from the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReferenceProfile {
    /// One per scalar feature of the first input.
    pub features: Vec<FeatureProfile>,
    /// Class frequencies (classification; `edges` empty) or binned
    /// predictions (regression).
    pub output: BinnedProfile,
    /// How each feature is computed from a request, one per entry of
    /// `features`; empty for tabular models, whose feature i is value i of
    /// the first input's row.
    #[serde(default)]
    pub sources: Vec<FeatureSource>,
}

/// A feature of a tensor model: a summary statistic of one input (per
/// channel or over the whole tensor), computed the same way on the
/// reference samples at push and on every request by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSource {
    /// The input's name.
    pub input: String,
    /// The channel axis (1 for NCHW images or NCT audio), or `None` for the
    /// whole tensor.
    pub channel_axis: Option<u32>,
    /// The channel, when `channel_axis` is set.
    pub channel: u32,
    /// Which statistic.
    pub stat: TensorStat,
}

/// A summary statistic of a tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TensorStat {
    /// Arithmetic mean.
    Mean,
    /// Population standard deviation (the spread).
    Std,
}

impl FeatureSource {
    /// This feature of a tensor of `shape` holding `values` (row-major):
    /// the statistic over the selected channel (all of the tensor when
    /// `channel_axis` is `None`). NaN when the channel does not exist or
    /// nothing is selected, so a mismatch shows as drift (overflow bin).
    pub fn compute(&self, shape: &[usize], values: &[f32]) -> f32 {
        let axis = self.channel_axis.map(|a| a as usize);
        let (mean, std) = channel_moments(shape, values, axis, self.channel as usize);
        match self.stat {
            TensorStat::Mean => mean,
            TensorStat::Std => std,
        }
    }
}

/// Mean and population standard deviation of channel `channel` along
/// `axis` of a row-major tensor (the whole tensor when `axis` is `None`);
/// NaNs when the channel does not exist or `values` does not fit `shape`.
pub fn channel_moments(
    shape: &[usize],
    values: &[f32],
    axis: Option<usize>,
    channel: usize,
) -> (f32, f32) {
    let total: usize = shape.iter().product();
    if total != values.len() || total == 0 {
        return (f32::NAN, f32::NAN);
    }
    let (outer, channels, inner) = match axis {
        None => (1, 1, total),
        Some(a) if a < shape.len() => (
            shape[..a].iter().product::<usize>(),
            shape[a],
            shape[a + 1..].iter().product::<usize>(),
        ),
        Some(_) => return (f32::NAN, f32::NAN),
    };
    let channel = if axis.is_none() { 0 } else { channel };
    if channel >= channels || inner == 0 {
        return (f32::NAN, f32::NAN);
    }
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
    for o in 0..outer {
        let start = (o * channels + channel) * inner;
        for x in values.get(start..start + inner).unwrap_or(&[]) {
            let x = f64::from(*x);
            sum += x;
            sq += x * x;
        }
        n += inner;
    }
    let mean = sum / n as f64;
    let var = (sq / n as f64 - mean * mean).max(0.0);
    (mean as f32, var.sqrt() as f32)
}

/// A feature's bins and reference frequencies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FeatureProfile {
    /// Feature name.
    pub name: String,
    /// Bin edges and frequencies.
    pub bins: BinnedProfile,
}

/// `k` sorted edges make `k + 1` bins: underflow, `k - 1` inner bins, overflow.
/// `frequencies` has one entry per bin and sums to 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BinnedProfile {
    /// Sorted bin edges.
    pub edges: Vec<f32>,
    /// Reference frequency per bin.
    pub frequencies: Vec<f32>,
}

/// Index of the bin holding `x` for sorted `edges` (see [`BinnedProfile`]).
/// NaN lands in the overflow bin so it is visible as drift, not hidden.
pub fn bin_index(edges: &[f32], x: f32) -> usize {
    if x.is_nan() {
        return edges.len();
    }
    edges.partition_point(|e| *e <= x)
}

/// Health-check samples and the tolerance for their outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HealthChecks {
    /// Samples to run.
    pub samples: Vec<HealthSample>,
    /// Largest allowed absolute difference per output element.
    pub tolerance: f32,
}

/// One input row (flattened) and the primary output it must produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSample {
    /// Flattened input for one row of the first input (tabular models).
    pub input: Vec<f32>,
    /// Flattened expected primary output.
    pub expected: Vec<f32>,
    /// Tensor models (several inputs, dynamic dims): every input by name
    /// with its shape; `input` is then empty.
    #[serde(default)]
    pub inputs: Vec<SampleInput>,
}

/// One input of a tensor model's health-check sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInput {
    /// The input's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<u32>,
    /// Its values, flattened (integers and booleans as f32).
    pub values: Vec<f32>,
}

/// Provenance of a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Lineage {
    /// The version this one was trained from.
    pub parent: Option<Version>,
    /// SHA-256 of the training data.
    pub dataset_sha256: Option<Sha256>,
    /// Free-form id of the training run.
    pub training_run: Option<String>,
    /// The retraining job that produced it.
    pub retrain_job: Option<u64>,
    /// Evaluation metrics, by name.
    pub eval_metrics: BTreeMap<String, f64>,
}

/// `major.minor.patch` of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct AgentVersion {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
    /// Patch.
    pub patch: u16,
}

impl AgentVersion {
    /// Parses `1.2.3` (pre-release suffixes are ignored).
    pub fn parse(s: &str) -> Option<AgentVersion> {
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u16>().ok());
        let v = AgentVersion {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next()??,
        };
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// This version as one ordered number (`major << 32 | minor << 16 |
    /// patch`): the rollout engine orders and compares the versions it
    /// rolls out as [`Version`]s, and an agent rollout's are these.
    pub fn packed(self) -> Version {
        Version(
            (u64::from(self.major) << 32) | (u64::from(self.minor) << 16) | u64::from(self.patch),
        )
    }

    /// The inverse of [`AgentVersion::packed`]; `None` for a number no
    /// agent version packs to.
    pub fn from_packed(v: Version) -> Option<AgentVersion> {
        if v.0 >> 48 != 0 {
            return None;
        }
        Some(AgentVersion {
            major: (v.0 >> 32) as u16,
            minor: (v.0 >> 16) as u16,
            patch: v.0 as u16,
        })
    }
}

impl std::fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::{FeatureSource, TensorStat, channel_moments};

    #[test]
    fn channel_moments_select_one_channel_across_the_batch() {
        // [2, 3, 2]: channel c of batch b holds 10 b + c, twice.
        let values: Vec<f32> = (0..2)
            .flat_map(|b| (0..3).flat_map(move |c| [10.0 * b as f32 + c as f32; 2]))
            .collect();
        let (mean, std) = channel_moments(&[2, 3, 2], &values, Some(1), 2);
        assert_eq!((mean, std), (7.0, 5.0));
        let (mean, _) = channel_moments(&[2, 3, 2], &values, None, 0);
        assert_eq!(mean, 6.0);
        assert!(channel_moments(&[2, 3, 2], &values, Some(1), 3).0.is_nan());
        assert!(
            channel_moments(&[2, 3, 2], &values[1..], Some(1), 0)
                .0
                .is_nan()
        );
        assert!(channel_moments(&[2, 3, 2], &values, Some(5), 0).0.is_nan());
        let s = FeatureSource {
            input: "x".into(),
            channel_axis: Some(1),
            channel: 0,
            stat: TensorStat::Std,
        };
        assert_eq!(s.compute(&[2, 3, 2], &values), 5.0);
    }

    use super::*;

    #[test]
    fn bins_have_under_and_overflow() {
        let edges = [0.0, 1.0, 2.0];
        assert_eq!(bin_index(&edges, -5.0), 0);
        assert_eq!(bin_index(&edges, 0.0), 1);
        assert_eq!(bin_index(&edges, 0.5), 1);
        assert_eq!(bin_index(&edges, 1.0), 2);
        assert_eq!(bin_index(&edges, 2.0), 3);
        assert_eq!(bin_index(&edges, 99.0), 3);
        assert_eq!(bin_index(&edges, f32::NAN), 3);
        assert_eq!(bin_index(&[], 1.0), 0);
    }

    #[test]
    fn agent_versions_parse_and_order() {
        let a = AgentVersion::parse("0.1.0").unwrap();
        let b = AgentVersion::parse("0.10.2-rc1").unwrap();
        assert!(a < b);
        assert_eq!(b.to_string(), "0.10.2");
        assert!(a.packed() < b.packed());
        assert_eq!(AgentVersion::from_packed(b.packed()), Some(b));
        assert_eq!(AgentVersion::from_packed(Version(1 << 48)), None);
        assert!(AgentVersion::parse("1.2").is_none());
        assert!(AgentVersion::parse("1.2.3.4").is_none());
        assert!(AgentVersion::parse("x.1.1").is_none());
    }
}
