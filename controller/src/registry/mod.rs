//! The model registry: turns an uploaded ONNX file (+ reference CSV) into a
//! signed, immutable, versioned manifest and a content-addressed artifact.
//!
//! # Layout
//! - [`inspect`]: tract loading, IO schema, running rows.
//! - [`profile`]: CSV reader, reference profile, health checks.
//! - [`store`]: SQLite rows, aliases and `DATA_DIR/artifacts/<sha256>.onnx`.
//! - [`tensors`]: tensor models (several inputs, dynamic dims): reference
//!   samples from `.npy` / `.npz`, per-input statistics, health checks.
//! - this file: [`PushRequest`] → [`build_manifest`] (pure CPU work, no
//!   state touched) and the errors.

pub mod inspect;
pub mod profile;
pub mod store;
pub mod tensors;

use std::collections::BTreeMap;

use drover_protocol::manifest::{
    AgentVersion, Artifact, BinnedProfile, DType, HealthChecks, Lineage, LoadSpec,
    ReferenceProfile, Task,
};
use drover_protocol::{ModelManifest, ModelName, Sha256, Timestamp, Version};
use serde::{Deserialize, Serialize};

use inspect::{InspectError, LoadedModel, tensor_f32, tensor_strings};
use profile::CsvError;

/// Manifests expire this long after signing unless asked otherwise (1 year).
pub const DEFAULT_VALIDITY_MS: u64 = 365 * 24 * 3600 * 1000;
/// Largest absolute difference per output element a health check allows.
pub const HEALTH_TOLERANCE: f32 = 1e-3;
/// Oldest agent a new manifest accepts by default.
pub const DEFAULT_MIN_AGENT_VERSION: AgentVersion = AgentVersion {
    major: 0,
    minor: 1,
    patch: 0,
};

/// Why a push (or a registry lookup) failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The model file was refused by tract (not ONNX, unsupported op, ...).
    #[error(transparent)]
    Model(#[from] InspectError),
    /// The reference CSV was refused.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// The request is inconsistent (labels vs classes, unknown parent, ...).
    #[error("{0}")]
    Invalid(String),
    /// No such model version or alias.
    #[error("model {0} not found")]
    NotFound(String),
    /// Storage failed.
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// Writing the artifact failed.
    #[error("artifact store: {0}")]
    Io(String),
    /// Signing failed.
    #[error("signing the manifest failed: {0}")]
    Sign(String),
}

/// A model upload.
#[derive(Debug, Clone, Default)]
pub struct PushRequest {
    /// Model name (versions of one name form a lineage).
    pub name: Option<ModelName>,
    /// The ONNX file (empty when [`PushRequest::onnx_file`] is set).
    pub onnx: Vec<u8>,
    /// The ONNX file already on disk (a streamed upload): read from there,
    /// never held in memory, and moved into the artifact store on success.
    pub onnx_file: Option<OnnxFile>,
    /// Reference CSV: header, feature columns, optional `label` column.
    pub reference_csv: Option<Vec<u8>>,
    /// Reference data as `.npy` / `.npz` files, each one request (an
    /// `.npz`: one array per input, by name). For a one-input tabular model
    /// the arrays are rows (`[N, features]`); for tensor models they give
    /// the per-input statistics profile and health checks ([`tensors`]).
    pub reference_arrays: Vec<Vec<u8>>,
    /// Lineage: hash of the training data when it is not the reference CSV
    /// (a retraining job's dataset); defaults to the CSV's hash.
    pub dataset_sha256: Option<Sha256>,
    /// Class names by index, overriding the CSV's sorted label values.
    pub labels: Option<Vec<String>>,
    /// Latency budget (p95) for the agent's local guard.
    pub latency_budget_ms: Option<u64>,
    /// Version this one derives from.
    pub parent: Option<Version>,
    /// Alias to point at the new version.
    pub alias: Option<String>,
    /// Free-form training run id (lineage).
    pub training_run: Option<String>,
    /// Retraining job that produced this (lineage).
    pub retrain_job: Option<u64>,
    /// Extra evaluation metrics to record (lineage).
    pub eval_metrics: BTreeMap<String, f64>,
    /// Oldest agent that may run it.
    pub min_agent_version: Option<AgentVersion>,
    /// Manifest validity; default [`DEFAULT_VALIDITY_MS`].
    pub validity_ms: Option<u64>,
    /// `--fix-input` / `--input-shape`: how to load the graph (recorded in
    /// the manifest so the agent loads it the same way).
    pub load: LoadSpec,
}

/// An uploaded ONNX file on disk, hashed while it was written.
#[derive(Debug, Clone)]
pub struct OnnxFile {
    /// Where it is (inside the data dir, so it can be renamed into the store).
    pub path: std::path::PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: Sha256,
    /// Its size in bytes.
    pub size: u64,
}

impl PushRequest {
    /// Digest and size of the model file, wherever it is.
    pub fn artifact(&self) -> Artifact {
        match &self.onnx_file {
            Some(f) => Artifact {
                sha256: f.sha256,
                size: f.size,
            },
            None => Artifact {
                sha256: Sha256::of(&self.onnx),
                size: self.onnx.len() as u64,
            },
        }
    }

    fn load_model(&self) -> Result<LoadedModel, RegistryError> {
        Ok(match &self.onnx_file {
            Some(f) => LoadedModel::load_file(&f.path, &self.load)?,
            None => LoadedModel::load_with(&self.onnx, &self.load)?,
        })
    }
}

/// Infers the task from the output schema: an int64 `[N]` output plus a
/// float `[N, C]` output is a classifier with C classes; anything else is a
/// regression on the first float output.
fn infer_task(model: &LoadedModel) -> Result<(Task, Option<usize>), RegistryError> {
    let float = |d: DType| matches!(d, DType::F32 | DType::F64);
    let label = model
        .outputs
        .iter()
        .find(|o| matches!(o.dtype, DType::I64 | DType::I32 | DType::String) && o.shape.len() == 1);
    let probs = model
        .outputs
        .iter()
        .find(|o| float(o.dtype) && o.shape.len() == 2 && o.shape[1].is_some_and(|c| c >= 2));
    if let (Some(label), Some(probs)) = (label, probs) {
        let classes = probs.shape[1].unwrap_or(0) as usize;
        return Ok((
            Task::Classification {
                labels: Vec::new(),
                probabilities: probs.name.clone(),
                label: Some(label.name.clone()),
            },
            Some(classes),
        ));
    }
    let out = model
        .outputs
        .iter()
        .find(|o| float(o.dtype))
        .ok_or_else(|| {
            RegistryError::Invalid(
                "the model has no float output: neither a classifier (int64 label + float \
             probabilities) nor a regressor"
                    .into(),
            )
        })?;
    Ok((
        Task::Regression {
            output: out.name.clone(),
        },
        None,
    ))
}

/// Reference rows of a one-input tabular model from `.npy` / `.npz` files:
/// each array (the `.npz` member named as the input, or its only member)
/// is `[rows, features...]` or one row.
fn array_rows(
    files: &[Vec<u8>],
    model: &LoadedModel,
    features: usize,
) -> Result<profile::ReferenceData, RegistryError> {
    let input = &model.inputs[0].name;
    let mut rows = Vec::new();
    for (k, bytes) in files.iter().enumerate() {
        let what = format!("reference file {}", k + 1);
        let bad = |e: drover_onnx::npy::NpyError| RegistryError::Invalid(format!("{what}: {e}"));
        let array = if drover_onnx::npy::is_npz(bytes) {
            let mut arrays =
                drover_onnx::npy::read_npz(bytes, tensors::MAX_REFERENCE_BYTES).map_err(bad)?;
            let at = match arrays.iter().position(|(n, _)| n == input) {
                Some(i) => i,
                None if arrays.len() == 1 => 0,
                None => {
                    return Err(RegistryError::Invalid(format!(
                        "{what}: no array named {input:?}"
                    )));
                }
            };
            arrays.swap_remove(at).1
        } else {
            drover_onnx::npy::read_npy(bytes).map_err(bad)?
        };
        let values = array.data.to_f64().ok_or_else(|| {
            RegistryError::Invalid(format!("{what}: strings cannot feed input {input:?}"))
        })?;
        if values.is_empty() || values.len() % features != 0 {
            return Err(RegistryError::Invalid(format!(
                "{what}: shape {:?} is not rows of {features} features",
                array.shape
            )));
        }
        for chunk in values.chunks(features) {
            if chunk.iter().any(|v| !v.is_finite()) {
                return Err(RegistryError::Invalid(format!(
                    "{what}: values must be finite numbers"
                )));
            }
            rows.push(chunk.iter().map(|v| *v as f32).collect());
            if rows.len() > profile::MAX_ROWS {
                return Err(CsvError::TooManyRows.into());
            }
        }
    }
    Ok(profile::ReferenceData {
        feature_names: (0..features).map(|i| format!("{input}[{i}]")).collect(),
        rows,
        labels: None,
    })
}

/// Splits a batch output into per-row vectors.
fn rows_of(values: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
    if n == 0 {
        return Vec::new();
    }
    let per = values.len() / n;
    values.chunks(per.max(1)).map(<[f32]>::to_vec).collect()
}

/// Deterministic synthetic inputs for health checks when no CSV is given.
fn synthetic_rows(features: usize) -> Vec<Vec<f32>> {
    (0..profile::HEALTH_SAMPLES)
        .map(|k| {
            (0..features)
                .map(|j| ((k * 7 + j * 3) % 11) as f32 - 5.0)
                .collect()
        })
        .collect()
}

/// Everything about a new version except its version number and signature:
/// loads the model, reads its schema, builds the reference profile, health
/// checks and lineage. Touches no state.
pub fn build_manifest(req: &PushRequest, now: Timestamp) -> Result<ModelManifest, RegistryError> {
    let name = req
        .name
        .clone()
        .ok_or_else(|| RegistryError::Invalid("a model name is required".into()))?;
    if name.as_str() == crate::core::rollout::AGENT_TARGET {
        // `drover rollout start agent@0.2.0` means the agent itself.
        return Err(RegistryError::Invalid(
            "the model name `agent` is reserved for agent releases (drover agent push); pick another".into(),
        ));
    }
    let model = req.load_model()?;
    // One numeric input of rank <= 2 is a table row; images, audio frames and
    // sequences (rank >= 3) are profiled as tensors even when their shape is static.
    let tabular = model.inputs.len() == 1
        && !matches!(model.inputs[0].dtype, DType::String | DType::Bool)
        && model.inputs[0].shape.len() <= 2
        && model.features_per_row().is_some();
    if !tabular {
        return tensors::tensor_manifest(req, &model, name, now);
    }
    let features = model.features_per_row().ok_or_else(|| {
        RegistryError::Invalid(format!(
            "input {:?} has shape {:?}; Drover needs static non-batch dimensions",
            model.inputs[0].name, model.inputs[0].shape
        ))
    })?;
    let (mut task, classes) = infer_task(&model)?;
    // The graph's own class list (skl2onnx writes it), in probability-column
    // order: the label output holds these values.
    let model_labels: Option<Vec<String>> = model
        .class_labels()
        .map(|l| l.to_strings())
        .filter(|l| Some(l.len()) == classes);
    let data = match (&req.reference_csv, req.reference_arrays.is_empty()) {
        (Some(_), false) => {
            return Err(RegistryError::Invalid(
                "give the reference as CSV or as arrays, not both".into(),
            ));
        }
        (Some(csv), true) => Some(profile::parse_csv(csv, features)?),
        (None, false) => Some(array_rows(&req.reference_arrays, &model, features)?),
        (None, true) => None,
    };

    if let (Task::Classification { labels, .. }, Some(classes)) = (&mut task, classes) {
        *labels = match (&req.labels, data.as_ref().and_then(|d| d.labels.as_ref())) {
            (Some(given), _) => {
                if given.len() != classes {
                    return Err(RegistryError::Invalid(format!(
                        "--labels names {} classes but the model outputs {classes}",
                        given.len()
                    )));
                }
                given.clone()
            }
            (None, Some(values))
                if model_labels
                    .as_ref()
                    .is_some_and(|m| values.iter().all(|v| m.contains(v))) =>
            {
                model_labels.clone().unwrap_or_default()
            }
            (None, Some(values)) => {
                let distinct: std::collections::BTreeSet<&String> = values.iter().collect();
                let numeric = distinct.iter().all(|v| v.parse::<usize>().is_ok());
                if numeric || distinct.len() != classes {
                    if !numeric {
                        return Err(RegistryError::Invalid(format!(
                            "the reference CSV's label column has {} distinct values but the \
                             model has {classes} classes; pass --labels a,b,... in class order",
                            distinct.len()
                        )));
                    }
                    (0..classes).map(|i| format!("class_{i}")).collect()
                } else {
                    distinct.into_iter().cloned().collect()
                }
            }
            (None, None) => model_labels
                .clone()
                .unwrap_or_else(|| (0..classes).map(|i| format!("class_{i}")).collect()),
        };
    } else if req.labels.is_some() {
        return Err(RegistryError::Invalid(
            "--labels given but the model is a regressor (no int64 label + float probabilities outputs)"
                .into(),
        ));
    }

    let rows = match &data {
        Some(d) => d.rows.clone(),
        None => synthetic_rows(features),
    };
    let outputs = model.run(&rows)?;
    let n = rows.len();
    let primary = model
        .output_index(task.primary_output())
        .and_then(|i| outputs.get(i))
        .ok_or_else(|| RegistryError::Invalid("primary output missing from the run".into()))?;
    let primary_rows = rows_of(tensor_f32(primary)?, n);

    let mut eval_metrics = req.eval_metrics.clone();
    let (output_profile, predicted_classes) = match &task {
        Task::Classification { labels, label, .. } => {
            let label_out = label
                .as_deref()
                .and_then(|l| model.output_index(l))
                .and_then(|i| outputs.get(i));
            let predicted: Vec<usize> = match label_out {
                Some(t) => label_columns(t, model_labels.as_deref())?,
                None => primary_rows.iter().map(|p| argmax(p)).collect(),
            };
            if label_out.is_some() {
                check_label_argmax(&predicted, &primary_rows)?;
            }
            if let Some(truth) = data.as_ref().and_then(|d| d.labels.as_ref()) {
                let idx = profile::label_indices(truth, labels).map_err(|bad| {
                    RegistryError::Invalid(format!(
                        "reference CSV label {bad:?} is not one of the model's classes {labels:?}"
                    ))
                })?;
                let correct = idx.iter().zip(&predicted).filter(|(a, b)| a == b).count();
                eval_metrics.insert("accuracy".into(), correct as f64 / n.max(1) as f64);
                eval_metrics.insert("reference_rows".into(), n as f64);
            }
            let profile = BinnedProfile {
                edges: Vec::new(),
                frequencies: profile::frequencies(predicted.iter().copied(), labels.len()),
            };
            (profile, Some(predicted))
        }
        Task::Regression { .. } => {
            let preds: Vec<f32> = primary_rows
                .iter()
                .filter_map(|r| r.first().copied())
                .collect();
            if let Some(truth) = data.as_ref().and_then(|d| d.labels.as_ref()) {
                let targets: Option<Vec<f64>> = truth.iter().map(|t| t.parse().ok()).collect();
                if let Some(targets) = targets {
                    let (mut abs, mut sq) = (0.0, 0.0);
                    for (p, t) in preds.iter().zip(&targets) {
                        let e = f64::from(*p) - t;
                        abs += e.abs();
                        sq += e * e;
                    }
                    let k = targets.len().max(1) as f64;
                    eval_metrics.insert("mae".into(), abs / k);
                    eval_metrics.insert("rmse".into(), (sq / k).sqrt());
                    eval_metrics.insert("reference_rows".into(), n as f64);
                }
            }
            (profile::quantile_bins(&preds), None)
        }
    };
    let health = profile::pick_health_samples(&rows, predicted_classes.as_deref(), &primary_rows);
    let reference = match &data {
        Some(d) => ReferenceProfile {
            features: profile::feature_profiles(d),
            output: output_profile,
            sources: vec![],
        },
        None => ReferenceProfile::default(),
    };
    let manifest = assemble(
        req,
        &model,
        name,
        task,
        reference,
        health,
        eval_metrics,
        now,
    );
    fit_down_message(manifest)
}

/// Room left in a Down message for the manifest: the command around it, its
/// signature and the envelope take well under this.
pub const MANIFEST_BUDGET: usize = drover_protocol::limits::MAX_DOWN_PAYLOAD - 8 * 1024;

/// Proves the manifest fits the Deploy command that will carry it: trims
/// health-check samples from the end until it does (counted in the lineage's
/// `health_samples_trimmed` metric), and
/// refuses with the sizes when even none would fit. A push that succeeds can
/// always be deployed.
fn fit_down_message(mut m: ModelManifest) -> Result<ModelManifest, RegistryError> {
    let size = |m: &ModelManifest| drover_protocol::codec::encode(m, usize::MAX).map(|b| b.len());
    let mut len = size(&m).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let before = m.health_checks.samples.len();
    while len > MANIFEST_BUDGET && !m.health_checks.samples.is_empty() {
        m.health_checks.samples.pop();
        len = size(&m).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    }
    if len > MANIFEST_BUDGET {
        return Err(RegistryError::Invalid(format!(
            "the signed manifest would be {len} bytes without any health-check sample; a \
             deploy command carries at most {MANIFEST_BUDGET} (the reference profile is too \
             large)"
        )));
    }
    let trimmed = before - m.health_checks.samples.len();
    if trimmed > 0 {
        m.lineage
            .eval_metrics
            .insert("health_samples_trimmed".into(), trimmed as f64);
    }
    Ok(m)
}

/// The manifest from its parts (version 0, unsigned).
#[allow(clippy::too_many_arguments)]
fn assemble(
    req: &PushRequest,
    model: &LoadedModel,
    name: ModelName,
    task: Task,
    reference: ReferenceProfile,
    health: Vec<drover_protocol::manifest::HealthSample>,
    eval_metrics: BTreeMap<String, f64>,
    now: Timestamp,
) -> ModelManifest {
    ModelManifest {
        name,
        version: Version(0),
        artifact: req.artifact(),
        inputs: model.inputs.clone(),
        outputs: model.outputs.clone(),
        task,
        reference,
        health_checks: HealthChecks {
            samples: health,
            tolerance: HEALTH_TOLERANCE,
        },
        latency_budget_us: req.latency_budget_ms.map(|ms| ms.saturating_mul(1000)),
        lineage: Lineage {
            parent: req.parent,
            dataset_sha256: req
                .dataset_sha256
                .or_else(|| req.reference_csv.as_deref().map(Sha256::of))
                .or_else(|| {
                    (!req.reference_arrays.is_empty())
                        .then(|| Sha256::of(&req.reference_arrays.concat()))
                }),
            training_run: req.training_run.clone(),
            retrain_job: req.retrain_job,
            eval_metrics,
        },
        created_at: now,
        expires_at: now.plus_ms(req.validity_ms.unwrap_or(DEFAULT_VALIDITY_MS)),
        min_agent_version: req.min_agent_version.unwrap_or(DEFAULT_MIN_AGENT_VERSION),
        load: req.load.clone(),
    }
}

/// The probability column of each row's label: the label output holds the
/// graph's class values (not necessarily `0..C`), so they are looked up in
/// its class list; without one, a value is its column.
fn label_columns(
    t: &tract_onnx::prelude::Tensor,
    classes: Option<&[String]>,
) -> Result<Vec<usize>, RegistryError> {
    let values = tensor_strings(t)?;
    Ok(values
        .iter()
        .map(|v| match classes {
            Some(c) => c.iter().position(|l| l == v).unwrap_or(usize::MAX),
            None => v.parse::<usize>().unwrap_or(usize::MAX),
        })
        .collect())
}

/// Largest share of reference rows whose label may differ from the argmax of
/// their probabilities. A classifier's label is its probabilities' argmax
/// except where the model computes them separately: SVC(probability=True)
/// takes the label from the decision function and the probabilities from
/// Platt scaling, which disagree on a few rows near the boundary (1 of 12
/// rows in the SVC conformance fixtures, as onnxruntime computes them too).
/// A systematic disagreement (a binary forest whose label is always 0) is
/// far above this. Up to [`LABEL_ARGMAX_SLACK_ROWS`] rows are always
/// tolerated, so a tiny reference set is not refused for one row.
pub const MAX_LABEL_ARGMAX_DISAGREEMENT: f64 = 0.10;
/// Disagreeing rows tolerated whatever the share.
pub const LABEL_ARGMAX_SLACK_ROWS: usize = 2;

/// Refuses a model whose label output systematically disagrees with its
/// probabilities on the reference rows.
fn check_label_argmax(predicted: &[usize], probs: &[Vec<f32>]) -> Result<(), RegistryError> {
    let n = predicted.len().min(probs.len());
    if n == 0 {
        return Ok(());
    }
    let bad = predicted
        .iter()
        .zip(probs)
        .filter(|(l, p)| **l != argmax(p))
        .count();
    let share = bad as f64 / n as f64;
    if bad > LABEL_ARGMAX_SLACK_ROWS && share > MAX_LABEL_ARGMAX_DISAGREEMENT {
        return Err(RegistryError::Invalid(format!(
            "the model's label output disagrees with the argmax of its probabilities on \
             {bad} of {n} reference rows ({:.0}%, more than the {:.0}% a calibrated \
             classifier may show): the graph computes labels wrongly",
            share * 100.0,
            MAX_LABEL_ARGMAX_DISAGREEMENT * 100.0
        )));
    }
    Ok(())
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, x)| {
            if *x > bv { (i, *x) } else { (bi, bv) }
        })
        .0
}

/// A registered version, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// Artifact digest (hex).
    pub sha256: String,
    /// Artifact size.
    pub size: u64,
    /// `classification` or `regression`.
    pub task: String,
    /// Aliases pointing here.
    pub aliases: Vec<String>,
    /// Parent version.
    pub parent: Option<u64>,
    /// Signing time (ms since epoch).
    pub created_at: u64,
}

/// The human/JSON view of a manifest (`drover model show`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestView {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// Artifact digest (hex).
    pub sha256: String,
    /// Artifact size in bytes.
    pub size: u64,
    /// Inputs.
    pub inputs: Vec<drover_protocol::manifest::TensorSpec>,
    /// Outputs.
    pub outputs: Vec<drover_protocol::manifest::TensorSpec>,
    /// Task.
    pub task: Task,
    /// Reference profile.
    pub reference: ReferenceProfile,
    /// Health-check samples.
    pub health_checks: HealthChecks,
    /// Latency budget (µs).
    pub latency_budget_us: Option<u64>,
    /// Parent version.
    pub parent: Option<u64>,
    /// Reference dataset digest (hex).
    pub dataset_sha256: Option<String>,
    /// Training run id.
    pub training_run: Option<String>,
    /// Retraining job id.
    pub retrain_job: Option<u64>,
    /// Evaluation metrics.
    pub eval_metrics: BTreeMap<String, f64>,
    /// Signing time (ms).
    pub created_at: u64,
    /// Expiry (ms).
    pub expires_at: u64,
    /// Oldest agent version.
    pub min_agent_version: String,
    /// Key id of the models key that signed it.
    pub signed_by: String,
    /// Aliases pointing here.
    pub aliases: Vec<String>,
}

impl ManifestView {
    /// Builds the view.
    pub fn new(m: &ModelManifest, signed_by: String, aliases: Vec<String>) -> ManifestView {
        ManifestView {
            name: m.name.to_string(),
            version: m.version.0,
            sha256: m.artifact.sha256.to_hex(),
            size: m.artifact.size,
            inputs: m.inputs.clone(),
            outputs: m.outputs.clone(),
            task: m.task.clone(),
            reference: m.reference.clone(),
            health_checks: m.health_checks.clone(),
            latency_budget_us: m.latency_budget_us,
            parent: m.lineage.parent.map(|v| v.0),
            dataset_sha256: m.lineage.dataset_sha256.map(|d| d.to_hex()),
            training_run: m.lineage.training_run.clone(),
            retrain_job: m.lineage.retrain_job,
            eval_metrics: m.lineage.eval_metrics.clone(),
            created_at: m.created_at.0,
            expires_at: m.expires_at.0,
            min_agent_version: m.min_agent_version.to_string(),
            signed_by,
            aliases,
        }
    }
}

/// Task kind as a word.
pub fn task_kind(t: &Task) -> &'static str {
    match t {
        Task::Classification { .. } => "classification",
        Task::Regression { .. } => "regression",
    }
}

#[cfg(test)]
mod tests;
