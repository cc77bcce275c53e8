//! Tensor models (several inputs, dynamic dims, non-tabular inputs such as
//! images or audio): the manifest from the graph and, when reference
//! samples are given as `.npy` / `.npz`, a drift profile of per-input
//! summary statistics (per-channel mean and spread), the output
//! distribution, and health checks on real reference samples.
//!
//! A reference file is one request: an `.npz` holds one array per input
//! (named as the input), an `.npy` the array of a one-input model. When
//! every input's first dim is symbolic (the batch), a file is split into
//! one sample per row, so the statistics describe single requests, as the
//! agent computes them on each request.

use drover_onnx::Tensor;
use drover_onnx::npy::{self, NpyArray, NpyData};
use drover_protocol::manifest::{
    BinnedProfile, DType, FeatureProfile, FeatureSource, HealthSample, ReferenceProfile,
    SampleInput, Task, TensorStat,
};
use drover_protocol::{ModelManifest, ModelName, Timestamp};

use super::inspect::{LoadedModel, tensor_f32};
use super::{PushRequest, RegistryError, assemble, fit_down_message, infer_task, profile};

/// A float input whose dim 1 is fixed at most this large is profiled per
/// channel (NCHW images, NCT audio); otherwise over the whole tensor.
pub const MAX_CHANNELS: u64 = 16;
/// Reference samples read at most (after splitting batches).
pub const MAX_REFERENCE_SAMPLES: usize = 10_000;
/// Reference samples run through the model for the output distribution
/// and health checks (evenly spread over all of them).
pub const MAX_RUN_SAMPLES: usize = 256;
/// Bytes all reference files may decode to.
pub const MAX_REFERENCE_BYTES: usize = 1 << 30;

/// One reference request: every input by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `(input name, array)`, in the model's input order.
    pub inputs: Vec<(String, NpyArray)>,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::Invalid(msg.into())
}

fn row_of(a: &NpyArray, r: usize, rows: usize) -> NpyArray {
    let per = a.data.len() / rows.max(1);
    let range = r * per..(r + 1) * per;
    let mut shape = a.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = 1;
    }
    let data = match &a.data {
        NpyData::F32(v) => NpyData::F32(v[range].to_vec()),
        NpyData::F64(v) => NpyData::F64(v[range].to_vec()),
        NpyData::I64(v) => NpyData::I64(v[range].to_vec()),
        NpyData::Bool(v) => NpyData::Bool(v[range].to_vec()),
        NpyData::String(v) => NpyData::String(v[range].to_vec()),
    };
    NpyArray { shape, data }
}

/// Reads reference files (`.npy` / `.npz` bytes) into samples, checking
/// every input of the model is given (and nothing else).
pub fn read_samples(files: &[Vec<u8>], model: &LoadedModel) -> Result<Vec<Sample>, RegistryError> {
    let mut samples = Vec::new();
    let mut budget = MAX_REFERENCE_BYTES;
    for (k, bytes) in files.iter().enumerate() {
        let what = format!("reference file {}", k + 1);
        let arrays: Vec<(String, NpyArray)> = if npy::is_npy(bytes) {
            match model.inputs.as_slice() {
                [one] => vec![(
                    one.name.clone(),
                    npy::read_npy(bytes).map_err(|e| invalid(format!("{what}: {e}")))?,
                )],
                more => {
                    return Err(invalid(format!(
                        "{what} is one .npy array but the model takes {} inputs ({}): give an \
                         .npz with one array per input",
                        more.len(),
                        more.iter()
                            .map(|i| i.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        } else if npy::is_npz(bytes) {
            npy::read_npz(bytes, budget).map_err(|e| invalid(format!("{what}: {e}")))?
        } else {
            return Err(invalid(format!(
                "{what} is neither .npy nor .npz (a CSV goes alone, for one-input tabular models)"
            )));
        };
        budget = budget.saturating_sub(bytes.len());
        let mut ordered = Vec::with_capacity(model.inputs.len());
        for input in &model.inputs {
            let a = arrays
                .iter()
                .find(|(n, _)| *n == input.name)
                .ok_or_else(|| {
                    invalid(format!(
                        "{what} has no array for input {:?} (arrays: {})",
                        input.name,
                        arrays
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            let fits = input.shape.is_empty()
                || a.1.shape.len() == input.shape.len()
                    && a.1
                        .shape
                        .iter()
                        .zip(&input.shape)
                        .all(|(n, d)| d.is_none_or(|d| d == *n as u64));
            if !fits {
                return Err(invalid(format!(
                    "{what}: array {:?} has shape {:?}, the input takes {:?}",
                    input.name, a.1.shape, input.shape
                )));
            }
            ordered.push(a.clone());
        }
        if let Some((extra, _)) = arrays
            .iter()
            .find(|(n, _)| !model.inputs.iter().any(|i| i.name == *n))
        {
            return Err(invalid(format!(
                "{what} has an array {extra:?} that is not an input of the model"
            )));
        }
        // Split along a shared symbolic batch dim into single requests: only
        // when every input starts with a symbolic dim (a recurrent model's
        // `[time, batch, ..]` input beside a `[1, batch, ..]` state is one
        // request, not a batch of them).
        let batched = model
            .inputs
            .iter()
            .all(|i| i.shape.first().is_some_and(Option::is_none));
        let batch_rows: Vec<usize> = ordered
            .iter()
            .zip(&model.inputs)
            .filter(|(_, i)| i.shape.first().is_some_and(Option::is_none))
            .filter_map(|((_, a), _)| a.shape.first().copied())
            .collect();
        let rows = batch_rows.first().copied().unwrap_or(1);
        if batched && rows > 1 && batch_rows.iter().all(|r| *r == rows) {
            for r in 0..rows {
                samples.push(Sample {
                    inputs: ordered
                        .iter()
                        .zip(&model.inputs)
                        .map(|((n, a), i)| {
                            let split = i.shape.first().is_some_and(Option::is_none);
                            (
                                n.clone(),
                                if split { row_of(a, r, rows) } else { a.clone() },
                            )
                        })
                        .collect(),
                });
            }
        } else {
            samples.push(Sample { inputs: ordered });
        }
        if samples.len() > MAX_REFERENCE_SAMPLES {
            return Err(invalid(format!(
                "more than {MAX_REFERENCE_SAMPLES} reference samples"
            )));
        }
    }
    if samples.is_empty() {
        return Err(invalid("no reference samples"));
    }
    Ok(samples)
}

/// The statistics profiled for a model's inputs: mean and spread of every
/// float input, per channel when dim 1 is a small fixed channel count.
pub fn feature_sources(model: &LoadedModel) -> Vec<(String, FeatureSource)> {
    let mut out = Vec::new();
    for input in &model.inputs {
        if !matches!(input.dtype, DType::F32 | DType::F64) {
            continue;
        }
        let channels = match input.shape.get(1) {
            Some(Some(c)) if input.shape.len() >= 3 && (1..=MAX_CHANNELS).contains(c) => Some(*c),
            _ => None,
        };
        let mut push = |label: String, axis: Option<u32>, channel: u32| {
            for (stat, word) in [(TensorStat::Mean, "mean"), (TensorStat::Std, "std")] {
                out.push((
                    format!("{label}.{word}"),
                    FeatureSource {
                        input: input.name.clone(),
                        channel_axis: axis,
                        channel,
                        stat,
                    },
                ));
            }
        };
        match channels {
            Some(c) => {
                for ch in 0..c as u32 {
                    push(format!("{}[{ch}]", input.name), Some(1), ch);
                }
            }
            None => push(input.name.clone(), None, 0),
        }
    }
    out
}

fn values_f32(a: &NpyArray) -> Option<Vec<f32>> {
    Some(a.data.to_f64()?.into_iter().map(|x| x as f32).collect())
}

fn to_tensor(a: &NpyArray, dtype: DType) -> Result<Tensor, RegistryError> {
    let t = a.to_tensor().map_err(|e| invalid(e.to_string()))?;
    let dt = match dtype {
        DType::F32 => tract_onnx::prelude::DatumType::F32,
        DType::F64 => tract_onnx::prelude::DatumType::F64,
        DType::I32 => tract_onnx::prelude::DatumType::I32,
        DType::I64 => tract_onnx::prelude::DatumType::I64,
        DType::Bool => tract_onnx::prelude::DatumType::Bool,
        DType::String => tract_onnx::prelude::DatumType::String,
    };
    if t.datum_type() == dt {
        return Ok(t);
    }
    Ok(t.cast_to_dt(dt)
        .map_err(|e| invalid(format!("casting a reference array: {e}")))?
        .into_owned())
}

/// Runs one sample; returns every output.
fn run(model: &LoadedModel, s: &Sample) -> Result<Vec<(String, Tensor)>, RegistryError> {
    let mut tensors = Vec::with_capacity(s.inputs.len());
    for ((name, a), spec) in s.inputs.iter().zip(&model.inputs) {
        tensors.push((name.clone(), to_tensor(a, spec.dtype)?));
    }
    Ok(model
        .model()
        .run(tensors)
        .map_err(super::inspect::InspectError::from)?)
}

/// The manifest of a model whose inputs are not one tabular row, with the
/// reference profile and health checks of `req.reference_arrays` if given.
pub fn tensor_manifest(
    req: &PushRequest,
    model: &LoadedModel,
    name: ModelName,
    now: Timestamp,
) -> Result<ModelManifest, RegistryError> {
    if req.reference_csv.is_some() {
        return Err(RegistryError::Invalid(format!(
            "a reference CSV describes one input row of static width; this model takes {:?} \
             (give the reference as .npz: one array per input, or .npy for one input)",
            model
                .inputs
                .iter()
                .map(|i| format!("{}{:?}", i.name, i.shape))
                .collect::<Vec<_>>()
        )));
    }
    let (mut task, classes) = infer_task(model)?;
    let model_labels = model.class_labels().map(|l| l.to_strings());
    if let (Task::Classification { labels, .. }, Some(classes)) = (&mut task, classes) {
        let from_model = model_labels.clone().filter(|l| l.len() == classes);
        *labels = match (&req.labels, from_model) {
            (Some(given), _) if given.len() != classes => {
                return Err(RegistryError::Invalid(format!(
                    "--labels names {} classes but the model outputs {classes}",
                    given.len()
                )));
            }
            (Some(given), _) => given.clone(),
            (None, Some(m)) => m,
            (None, None) => (0..classes).map(|i| format!("class_{i}")).collect(),
        };
    }
    let mut eval = req.eval_metrics.clone();
    let (reference, health) = if req.reference_arrays.is_empty() {
        (ReferenceProfile::default(), Vec::new())
    } else {
        let samples = read_samples(&req.reference_arrays, model)?;
        eval.insert("reference_rows".into(), samples.len() as f64);
        profile_samples(model, &task, model_labels.as_deref(), &samples)?
    };
    let manifest = assemble(req, model, name, task, reference, health, eval, now);
    fit_down_message(manifest)
}

/// The drift profile, output distribution and health checks of `samples`.
fn profile_samples(
    model: &LoadedModel,
    task: &Task,
    model_labels: Option<&[String]>,
    samples: &[Sample],
) -> Result<(ReferenceProfile, Vec<HealthSample>), RegistryError> {
    let sources = feature_sources(model);
    let mut features = Vec::with_capacity(sources.len());
    for (fname, source) in &sources {
        let values: Vec<f32> = samples
            .iter()
            .filter_map(|s| {
                let (_, a) = s.inputs.iter().find(|(n, _)| *n == source.input)?;
                Some(source.compute(&a.shape, &values_f32(a)?))
            })
            .filter(|v| v.is_finite())
            .collect();
        features.push(FeatureProfile {
            name: fname.clone(),
            bins: profile::quantile_bins(&values),
        });
    }
    let step = samples.len().div_ceil(MAX_RUN_SAMPLES).max(1);
    let picked: Vec<&Sample> = samples.iter().step_by(step).collect();
    let primary = task.primary_output();
    let mut primaries: Vec<Vec<f32>> = Vec::with_capacity(picked.len());
    let mut classes: Vec<usize> = Vec::new();
    for s in &picked {
        let outs = run(model, s)?;
        let p = outs
            .iter()
            .find(|(n, _)| n == primary)
            .ok_or_else(|| invalid("primary output missing from the run"))?;
        let p = tensor_f32(&p.1)?;
        if let Task::Classification { label, .. } = task {
            let from_label = label
                .as_deref()
                .and_then(|l| outs.iter().find(|(n, _)| n == l))
                .map(|(_, t)| super::label_columns(t, model_labels))
                .transpose()?
                .and_then(|v| v.first().copied());
            classes.push(from_label.unwrap_or_else(|| super::argmax(&p)));
        }
        primaries.push(p);
    }
    let output = match task {
        Task::Classification { labels, .. } => BinnedProfile {
            edges: Vec::new(),
            frequencies: profile::frequencies(classes.iter().copied(), labels.len()),
        },
        Task::Regression { .. } => {
            let first: Vec<f32> = primaries
                .iter()
                .filter_map(|p| p.first().copied())
                .collect();
            profile::quantile_bins(&first)
        }
    };
    let has_strings = model.inputs.iter().any(|i| i.dtype == DType::String);
    let health = if has_strings {
        Vec::new()
    } else {
        let k = profile::HEALTH_SAMPLES.min(picked.len());
        (0..k)
            .map(|j| j * picked.len() / k.max(1))
            .filter_map(|i| {
                let s = picked.get(i)?;
                Some(HealthSample {
                    input: vec![],
                    expected: primaries.get(i)?.clone(),
                    inputs: s
                        .inputs
                        .iter()
                        .map(|(n, a)| {
                            Some(SampleInput {
                                name: n.clone(),
                                shape: a.shape.iter().map(|d| *d as u32).collect(),
                                values: values_f32(a)?,
                            })
                        })
                        .collect::<Option<Vec<_>>>()?,
                })
            })
            .collect()
    };
    Ok((
        ReferenceProfile {
            features,
            output,
            sources: sources.into_iter().map(|(_, s)| s).collect(),
        },
        health,
    ))
}
