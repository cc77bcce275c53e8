//! A model loaded through drover-onnx (the loader the registry uses too, so
//! the controller never accepts a model the agent loads differently), with
//! health checks and the predictions the telemetry recorder needs.

use std::sync::Arc;

use drover_onnx::{ClassLabels, LoadOptions, Model, OnnxError, Tensor};

use drover_protocol::manifest::{ModelManifest, Task};
use drover_protocol::messages::{Reason, ReasonCode};
use drover_protocol::{ModelRef, Sha256};

use crate::core::window::{Prediction, Recorder, RecorderConfig, WindowSpec};
use crate::infer::{OutputTensor, RuntimeError};
use crate::input_limit::InputLimits;

/// Outputs of one run, by name, in graph order.
pub type RunOutputs = drover_onnx::Outputs;

/// µs of `d` without a u128 division (this is on the hot path).
#[inline]
pub(crate) fn micros(d: std::time::Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000)
        .saturating_add(u64::from(d.subsec_micros()))
}

impl From<OnnxError> for RuntimeError {
    fn from(e: OnnxError) -> Self {
        match e {
            OnnxError::NotOnnx(s) => RuntimeError::NotOnnx(s),
            OnnxError::UnsupportedOperator { .. } => {
                RuntimeError::UnsupportedOperator(e.to_string())
            }
            OnnxError::InvalidNode(_)
            | OnnxError::UnsupportedType { .. }
            | OnnxError::BadOption(_) => RuntimeError::Unsupported(e.to_string()),
            OnnxError::Plan(_) | OnnxError::Input(_) | OnnxError::Run(_) => {
                RuntimeError::Tract(e.to_string())
            }
        }
    }
}

/// A loaded model with everything the hot path needs precomputed.
pub struct LoadedModel {
    model: Arc<ModelRef>,
    manifest: Arc<ModelManifest>,
    sha256: Sha256,
    onnx: Model,
    input_name: String,
    input_shape: Vec<usize>,
    input_len: usize,
    primary: usize,
    label_output: Option<usize>,
    /// The classes as the graph declares them, in probability-column order:
    /// the label output holds these values, not column indices.
    model_labels: Option<ClassLabels>,
    labels: Vec<Arc<str>>,
    output_names: Vec<Arc<str>>,
    classifier: bool,
    tolerance: f32,
    recorder: Recorder,
    limits: InputLimits,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("model", &self.model)
            .field("input_shape", &self.input_shape)
            .finish()
    }
}

fn dims(spec_shape: &[Option<u64>]) -> Vec<usize> {
    // Symbolic dimensions (the batch) are fixed to 1: the device serves
    // one row per request.
    spec_shape
        .iter()
        .map(|d| d.map_or(1, |v| usize::try_from(v).unwrap_or(usize::MAX)))
        .collect()
}

/// Load options the manifest pins (`--fix-input`, `--input-shape` at push).
pub fn load_options(manifest: &ModelManifest) -> Result<LoadOptions, RuntimeError> {
    let mut o = LoadOptions::default();
    for arg in &manifest.load.fix_inputs {
        o.fix_input(arg)?;
    }
    for arg in &manifest.load.input_shapes {
        o.input_shape(arg)?;
    }
    Ok(o)
}

impl LoadedModel {
    /// Loads `bytes` with drover-onnx and checks it against the manifest.
    pub fn load(
        bytes: &[u8],
        manifest: ModelManifest,
        recorder: RecorderConfig,
    ) -> Result<LoadedModel, RuntimeError> {
        let onnx = Model::load(bytes, &load_options(&manifest)?)?;
        let Some(input) = manifest.inputs.first() else {
            return Err(RuntimeError::Unsupported(
                "the manifest lists no input".into(),
            ));
        };
        let input_shape = dims(&input.shape);
        let input_len: usize = input_shape.iter().product();
        let schema = onnx.schema();
        if schema.inputs.len() != manifest.inputs.len()
            || schema
                .inputs
                .iter()
                .zip(&manifest.inputs)
                .any(|(a, b)| a.name != b.name)
        {
            return Err(RuntimeError::Unsupported(format!(
                "the graph's inputs {:?} are not the manifest's {:?}",
                schema.inputs.iter().map(|i| &i.name).collect::<Vec<_>>(),
                manifest.inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
            )));
        }
        if schema.outputs.len() != manifest.outputs.len()
            || schema
                .outputs
                .iter()
                .zip(&manifest.outputs)
                .any(|(a, b)| a.spec.name != b.name)
        {
            return Err(RuntimeError::Unsupported(format!(
                "the graph has {} outputs, the manifest lists {}",
                schema.outputs.len(),
                manifest.outputs.len()
            )));
        }
        let position = |name: &str| manifest.outputs.iter().position(|o| o.name == name);
        let primary_name = manifest.task.primary_output();
        let primary = position(primary_name).ok_or_else(|| {
            RuntimeError::Unsupported(format!("primary output {primary_name:?} is not an output"))
        })?;
        let (classifier, labels, label_output) = match &manifest.task {
            Task::Classification { labels, label, .. } => (
                true,
                labels.iter().map(|l| Arc::from(l.as_str())).collect(),
                label.as_deref().and_then(position),
            ),
            Task::Regression { .. } => (false, Vec::new(), None),
        };
        let spec = WindowSpec::from_manifest(&manifest);
        let limits = InputLimits::from_schema(onnx.schema());
        Ok(LoadedModel {
            limits,
            model: Arc::new(manifest.model_ref()),
            sha256: manifest.artifact.sha256,
            model_labels: onnx.class_labels().cloned(),
            output_names: manifest
                .outputs
                .iter()
                .map(|o| Arc::from(o.name.as_str()))
                .collect(),
            onnx,
            input_name: input.name.clone(),
            input_shape,
            input_len,
            primary,
            label_output,
            labels,
            classifier,
            tolerance: manifest.health_checks.tolerance,
            recorder: Recorder::new(spec, recorder),
            manifest: Arc::new(manifest),
        })
    }

    /// `name@version`.
    pub fn model_ref(&self) -> &ModelRef {
        &self.model
    }

    /// Values in one row of the first input.
    pub(crate) fn input_len(&self) -> usize {
        self.input_len
    }

    /// The model's reference, shared with every response.
    pub(crate) fn shared_ref(&self) -> Arc<ModelRef> {
        self.model.clone()
    }

    /// The manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Artifact digest.
    pub fn sha256(&self) -> Sha256 {
        self.sha256
    }

    /// The first input's shape served (batch 1).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The first input's name.
    pub fn input_name(&self) -> &str {
        &self.input_name
    }

    /// How large a request to this model may be.
    pub fn input_limits(&self) -> &InputLimits {
        &self.limits
    }

    /// The loaded graph (schema, class labels, runs by name).
    pub fn onnx(&self) -> &Model {
        &self.onnx
    }

    /// Class names (classifiers).
    pub fn labels(&self) -> &[Arc<str>] {
        &self.labels
    }

    /// Whether the model is a classifier.
    pub fn is_classifier(&self) -> bool {
        self.classifier
    }

    /// Shadow-agreement tolerance for regressors.
    pub fn tolerance(&self) -> f32 {
        self.tolerance
    }

    /// This model's telemetry recorder.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Runs one row of the first input (exactly `input_shape` elements);
    /// the model must have no other inputs.
    pub fn run(&self, input: &[f32]) -> Result<RunOutputs, RuntimeError> {
        if input.len() != self.input_len {
            return Err(RuntimeError::Unsupported(format!(
                "input has {} values, the model takes {}",
                input.len(),
                self.input_len
            )));
        }
        let t = Tensor::from_shape(&self.input_shape, input)
            .map_err(|e| RuntimeError::Tract(e.to_string()))?;
        self.run_named(vec![(self.input_name.clone(), t)])
    }

    /// Runs tensors by input name.
    pub fn run_named(&self, inputs: Vec<(String, Tensor)>) -> Result<RunOutputs, RuntimeError> {
        Ok(self.onnx.run(inputs)?)
    }

    fn f32_values(t: &Tensor) -> Option<Vec<f32>> {
        let cast = t.cast_to::<f32>().ok()?;
        let view = cast.try_as_plain_ram().ok()?;
        Some(view.as_slice::<f32>().ok()?.to_vec())
    }

    /// Whether telemetry profiles this model's inputs by per-input
    /// statistics (tensor models) rather than by the first input's row.
    pub(crate) fn profiles_tensors(&self) -> bool {
        !self.manifest.reference.sources.is_empty()
    }

    /// The telemetry row of a tensor model's request: each of the
    /// manifest's feature sources computed on the named input (NaN for an
    /// input the request lacks, so it shows as drift).
    pub(crate) fn feature_row(&self, inputs: &[(String, Tensor)]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.manifest.reference.sources.len());
        let mut current: Option<(&str, Vec<usize>, Vec<f32>)> = None;
        for s in &self.manifest.reference.sources {
            if current.as_ref().is_none_or(|(n, _, _)| *n != s.input) {
                current = inputs
                    .iter()
                    .find(|(n, _)| *n == s.input)
                    .and_then(|(n, t)| {
                        Some((n.as_str(), t.shape().to_vec(), Self::f32_values(t)?))
                    });
            }
            out.push(match &current {
                Some((_, shape, values)) => s.compute(shape, values),
                None => f32::NAN,
            });
        }
        out
    }

    /// [`Self::feature_row`] of a one-input request in its flat form.
    pub(crate) fn feature_row_flat(&self, data: &[f32]) -> Vec<f32> {
        self.manifest
            .reference
            .sources
            .iter()
            .map(|s| {
                if s.input == self.input_name {
                    s.compute(&self.input_shape, data)
                } else {
                    f32::NAN
                }
            })
            .collect()
    }

    /// The primary output of a run, as f32.
    pub fn primary_values(&self, outs: &RunOutputs) -> Option<Vec<f32>> {
        Self::f32_values(&outs.get(self.primary)?.1)
    }

    /// The probability column of the label a run's label output holds: the
    /// graph's class list maps label values to columns (an int-labelled
    /// classifier's labels need not be 0..C).
    fn label_column(&self, t: &Tensor) -> Option<u32> {
        let text: String = if t.datum_type() == tract_onnx::prelude::DatumType::String {
            t.try_as_plain_ram()
                .ok()?
                .as_slice::<String>()
                .ok()?
                .first()?
                .clone()
        } else {
            let v = t.cast_to::<i64>().ok()?;
            let first = *v.try_as_plain_ram().ok()?.as_slice::<i64>().ok()?.first()?;
            match &self.model_labels {
                None => return u32::try_from(first).ok(),
                Some(_) => first.to_string(),
            }
        };
        let pos = self
            .model_labels
            .as_ref()?
            .to_strings()
            .iter()
            .position(|l| *l == text)?;
        u32::try_from(pos).ok()
    }

    /// What a run predicted (class and confidence, or value).
    pub fn predict(&self, outs: &RunOutputs) -> Option<Prediction> {
        let primary = Self::f32_values(&outs.get(self.primary)?.1)?;
        if !self.classifier {
            return primary.first().copied().map(Prediction::Value);
        }
        let from_label = self
            .label_output
            .and_then(|i| self.label_column(&outs.get(i)?.1));
        let index = match from_label {
            Some(i) => i,
            None => {
                let (i, _) = primary.iter().enumerate().fold(
                    (0usize, f32::NEG_INFINITY),
                    |(bi, bv), (i, v)| {
                        if *v > bv { (i, *v) } else { (bi, bv) }
                    },
                );
                u32::try_from(i).ok()?
            }
        };
        let confidence = primary.get(index as usize).copied().unwrap_or(0.0);
        Some(Prediction::Class { index, confidence })
    }

    pub(crate) fn to_outputs(&self, outs: RunOutputs) -> Vec<OutputTensor> {
        outs.into_iter()
            .zip(&self.output_names)
            .map(|((_, t), name)| OutputTensor {
                name: name.clone(),
                tensor: Arc::new(t),
            })
            .collect()
    }

    /// Runs a tensor model's health-check sample (inputs by name).
    fn run_sample(
        &self,
        inputs: &[drover_protocol::manifest::SampleInput],
    ) -> Result<RunOutputs, RuntimeError> {
        let schema = self.onnx.schema();
        let mut tensors = Vec::with_capacity(inputs.len());
        for i in inputs {
            let spec = schema
                .inputs
                .iter()
                .find(|s| s.name == i.name)
                .ok_or_else(|| RuntimeError::Unsupported(format!("no input {:?}", i.name)))?;
            let shape: Vec<usize> = i.shape.iter().map(|d| *d as usize).collect();
            let t = crate::infer::InputValues::F32(i.values.clone())
                .to_tensor(spec.element.datum_type(), &shape)
                .map_err(|e| RuntimeError::Unsupported(format!("input {:?}: {e}", i.name)))?;
            tensors.push((i.name.clone(), t));
        }
        self.run_named(tensors)
    }

    /// Runs the manifest's health-check samples; every primary-output element
    /// must be within the manifest's tolerance.
    pub fn health_check(&self) -> Result<(), Reason> {
        let hc = &self.manifest.health_checks;
        for (i, s) in hc.samples.iter().enumerate() {
            let outs = if s.inputs.is_empty() {
                self.run(&s.input)
            } else {
                self.run_sample(&s.inputs)
            };
            let outs = outs.map_err(|e| {
                Reason::new(
                    ReasonCode::HealthCheckFailed,
                    format!("sample {i} did not run: {e}"),
                )
            })?;
            let got = self.primary_values(&outs).ok_or_else(|| {
                Reason::new(
                    ReasonCode::HealthCheckFailed,
                    format!("sample {i}: no primary output"),
                )
            })?;
            if got.len() != s.expected.len() {
                return Err(Reason::new(
                    ReasonCode::HealthCheckFailed,
                    format!(
                        "sample {i}: {} output values, expected {}",
                        got.len(),
                        s.expected.len()
                    ),
                ));
            }
            let worst = got
                .iter()
                .zip(&s.expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, |m, d| if d.is_nan() || d > m { d } else { m });
            if worst.is_nan() || worst > hc.tolerance {
                return Err(Reason::new(
                    ReasonCode::HealthCheckFailed,
                    format!(
                        "sample {i}: output differs by {worst} (tolerance {})",
                        hc.tolerance
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::infer::{InferError, InferRequest};
    use crate::runtime::Runtime;
    use drover_protocol::Timestamp;
    use drover_protocol::manifest::{DType, HealthSample, TensorSpec};
    use drover_protocol::testkit;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/models")
                .join(name),
        )
        .unwrap()
    }

    /// A manifest for a fixture classifier with health checks computed by tract.
    pub(crate) fn classifier_manifest(file: &str, version: u64) -> ModelManifest {
        let bytes = fixture(file);
        let mut m = testkit::manifest("sensor", version, &bytes, Timestamp(0));
        if let Task::Classification { labels, .. } = &mut m.task {
            *labels = vec!["fault".into(), "normal".into(), "warning".into()];
        }
        m.health_checks.samples.clear();
        let probe = LoadedModel::load(&bytes, m.clone(), RecorderConfig::default()).unwrap();
        let input = vec![60.0, 2.4, 12.0, 50.0];
        let expected = probe.primary_values(&probe.run(&input).unwrap()).unwrap();
        m.health_checks.samples = vec![HealthSample {
            input,
            expected,
            inputs: vec![],
        }];
        m
    }

    #[test]
    fn loads_runs_and_health_checks_a_classifier() {
        let m = classifier_manifest("sensor_clf_v1.onnx", 1);
        let lm = LoadedModel::load(&fixture("sensor_clf_v1.onnx"), m, RecorderConfig::default())
            .unwrap();
        assert_eq!(lm.input_shape(), &[1, 4]);
        lm.health_check().unwrap();
        let outs = lm.run(&[60.0, 2.4, 12.0, 50.0]).unwrap();
        let p = lm.predict(&outs).unwrap();
        let probs = lm.primary_values(&outs).unwrap();
        assert_eq!(probs.len(), 3);
        match p {
            Prediction::Class { index, confidence } => {
                assert!(index < 3);
                assert_eq!(confidence, probs[index as usize]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reused_execution_states_give_the_answers_of_fresh_ones() {
        let bytes = fixture("sensor_clf_v1.onnx");
        let m = classifier_manifest("sensor_clf_v1.onnx", 1);
        let lm = LoadedModel::load(&bytes, m, RecorderConfig::default()).unwrap();
        let rows = [
            [60.0, 2.4, 12.0, 50.0],
            [40.0, 9.0, 3.0, 10.0],
            [60.0, 2.4, 12.0, 50.0],
        ];
        for _ in 0..3 {
            for r in &rows {
                let got = lm.primary_values(&lm.run(r).unwrap()).unwrap();
                // A fresh load: new plan, new state.
                let plan = Model::load(&bytes, &LoadOptions::default()).unwrap();
                let t = Tensor::from_shape(&[1, 4], r).unwrap();
                let fresh = plan.run(vec![("input".into(), t)]).unwrap();
                let want = fresh[1]
                    .1
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                assert_eq!(got, want);
            }
        }
        // Threads share the pool.
        let lm = Arc::new(lm);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let lm = lm.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        lm.run(&rows[0]).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(lm.onnx().cached_plans(), 1);
    }

    #[test]
    fn health_check_detects_a_different_model() {
        // v1's expected outputs, v2's weights.
        let mut m = classifier_manifest("sensor_clf_v1.onnx", 1);
        let bad = fixture("sensor_clf_bad.onnx");
        m.artifact.sha256 = Sha256::of(&bad);
        let lm = LoadedModel::load(&bad, m, RecorderConfig::default()).unwrap();
        let e = lm.health_check().unwrap_err();
        assert_eq!(e.code, ReasonCode::HealthCheckFailed);
    }

    #[test]
    fn unsupported_operator_and_garbage_are_typed_errors() {
        let m = classifier_manifest("sensor_clf_v1.onnx", 1);
        let e = LoadedModel::load(
            &fixture("unknown_op.onnx"),
            m.clone(),
            RecorderConfig::default(),
        )
        .unwrap_err();
        let RuntimeError::UnsupportedOperator(detail) = &e else {
            panic!("{e:?}");
        };
        assert!(
            detail.contains("`FusedMatMul`") && detail.contains("fused_matmul_0"),
            "{detail}"
        );
        assert_eq!(e.reason().code, ReasonCode::UnsupportedOperator);
        let e = LoadedModel::load(b"not onnx at all", m.clone(), RecorderConfig::default())
            .unwrap_err();
        assert!(matches!(e, RuntimeError::NotOnnx(_)), "{e:?}");
        let mut two_outputs_missing = m;
        two_outputs_missing.outputs.pop();
        let e = LoadedModel::load(
            &fixture("sensor_clf_v1.onnx"),
            two_outputs_missing,
            RecorderConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Unsupported(_)), "{e:?}");
    }

    #[test]
    fn regressor_predicts_a_value() {
        let bytes = fixture("regressor_v1.onnx");
        let mut m = testkit::manifest("risk", 1, &bytes, Timestamp(0));
        m.outputs = vec![TensorSpec {
            name: "variable".into(),
            dtype: DType::F32,
            shape: vec![None, Some(1)],
        }];
        m.task = Task::Regression {
            output: "variable".into(),
        };
        m.health_checks.samples.clear();
        let lm = LoadedModel::load(&bytes, m, RecorderConfig::default()).unwrap();
        let outs = lm.run(&[60.0, 2.4, 12.0, 50.0]).unwrap();
        assert!(matches!(lm.predict(&outs), Some(Prediction::Value(v)) if v.is_finite()));
    }

    #[test]
    fn infer_checks_input_swaps_atomically_and_records() {
        let rt = Runtime::new(Clock::new());
        assert_eq!(
            rt.infer(InferRequest::new(vec![0.0; 4])),
            Err(InferError::NoModel)
        );
        let m1 = classifier_manifest("sensor_clf_v1.onnx", 1);
        let v1 = Arc::new(
            LoadedModel::load(
                &fixture("sensor_clf_v1.onnx"),
                m1,
                RecorderConfig::default(),
            )
            .unwrap(),
        );
        rt.set_active(Some(v1.clone()));
        let r = rt
            .infer(InferRequest::new(vec![60.0, 2.4, 12.0, 50.0]))
            .unwrap();
        assert_eq!(r.model.to_string(), "sensor@1");
        assert_eq!(r.outputs.len(), 2);
        assert_eq!(r.outputs[1].name(), "probabilities");
        assert_eq!(r.outputs[1].shape(), &[1, 3]);
        assert_eq!(r.outputs[1].as_f32().unwrap().len(), 3);
        assert_eq!(r.outputs[0].as_i64().unwrap().len(), 1);
        assert!(r.label.is_some() && r.score.is_some());
        let bad = rt.infer(InferRequest::new(vec![0.0; 3])).unwrap_err();
        assert!(matches!(
            bad,
            InferError::BadInput {
                code: "bad_shape",
                ..
            }
        ));
        let mut wrong = InferRequest::new(vec![0.0; 4]);
        wrong.shape = Some(vec![2, 2]);
        assert!(matches!(rt.infer(wrong), Err(InferError::BadInput { .. })));
        let mut named = InferRequest::new(vec![0.0; 4]);
        named.input = Some("nope".into());
        assert!(matches!(
            rt.infer(named),
            Err(InferError::BadInput {
                code: "unknown_input",
                ..
            })
        ));
        assert_eq!(rt.bad_input_count(), 3);
        assert_eq!(v1.recorder().peek().count(), 1);

        // An Arc held by an in-flight request survives the swap.
        let in_flight = rt.active().unwrap();
        let m2 = classifier_manifest("sensor_clf_v2.onnx", 2);
        let v2 = Arc::new(
            LoadedModel::load(
                &fixture("sensor_clf_v2.onnx"),
                m2,
                RecorderConfig::default(),
            )
            .unwrap(),
        );
        let old = rt.set_active(Some(v2));
        rt.set_previous(old);
        assert_eq!(in_flight.model_ref().to_string(), "sensor@1");
        assert!(in_flight.run(&[0.0; 4]).is_ok());
        let r2 = rt
            .infer(InferRequest::new(vec![60.0, 2.4, 12.0, 50.0]))
            .unwrap();
        assert_eq!(r2.model.to_string(), "sensor@2");
        assert!(r2.request_id > r.request_id);
        assert_eq!(rt.previous().unwrap().model_ref().to_string(), "sensor@1");

        rt.set_extra_latency_us(1_000_000);
        let r3 = rt
            .infer(InferRequest::new(vec![60.0, 2.4, 12.0, 50.0]))
            .unwrap();
        assert!(r3.latency_us >= 1_000_000);
    }
}

#[cfg(test)]
mod named_tests {
    use super::*;
    use crate::clock::Clock;
    use crate::infer::{InferError, InferRequest, InputValues, NamedInput};
    use crate::runtime::Runtime;
    use drover_protocol::Timestamp;
    use drover_protocol::manifest::{DType, TensorSpec};
    use drover_protocol::testkit;

    fn spec(name: &str, shape: Vec<Option<u64>>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape,
        }
    }

    /// The LSTM stream of the conformance fixtures: `input` [time, batch, 16],
    /// states `h`, `c` [1, batch, 32] in; `output`, `hn`, `cn` out.
    fn lstm() -> (Vec<u8>, ModelManifest) {
        let bytes = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/conformance/lstm_stream/model.onnx"),
        )
        .unwrap();
        let mut m = testkit::manifest("stream", 1, &bytes, Timestamp(0));
        m.inputs = vec![
            spec("input", vec![None, None, Some(16)]),
            spec("h", vec![Some(1), None, Some(32)]),
            spec("c", vec![Some(1), None, Some(32)]),
        ];
        m.outputs = vec![
            spec("output", vec![None, None, Some(2)]),
            spec("hn", vec![Some(1), None, Some(32)]),
            spec("cn", vec![Some(1), None, Some(32)]),
        ];
        m.task = Task::Regression {
            output: "output".into(),
        };
        m.health_checks.samples.clear();
        m.reference = Default::default();
        (bytes, m)
    }

    fn named(name: &str, shape: &[usize], v: Vec<f32>) -> NamedInput {
        NamedInput {
            name: name.into(),
            shape: Some(shape.to_vec()),
            values: InputValues::F32(v),
        }
    }

    #[test]
    fn a_stateful_stream_passes_its_state_back_by_name() {
        let (bytes, m) = lstm();
        let rt = Runtime::new(Clock::new());
        let lm = Arc::new(LoadedModel::load(&bytes, m, RecorderConfig::default()).unwrap());
        rt.set_active(Some(lm));
        let reference = Model::load(&bytes, &LoadOptions::default()).unwrap();
        let chunk: Vec<f32> = (0..3 * 16).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut h, mut c) = (vec![0.0f32; 32], vec![0.0f32; 32]);
        let mut outputs = vec![];
        for _ in 0..3 {
            let r = rt
                .infer(InferRequest::named(vec![
                    named("input", &[3, 1, 16], chunk.clone()),
                    named("h", &[1, 1, 32], h.clone()),
                    named("c", &[1, 1, 32], c.clone()),
                ]))
                .unwrap();
            let by = |n: &str| {
                r.outputs
                    .iter()
                    .find(|o| o.name() == n)
                    .unwrap()
                    .as_f32()
                    .unwrap()
                    .to_vec()
            };
            // The same step run directly through drover-onnx.
            let t = |s: &[usize], v: &[f32]| Tensor::from_shape(s, v).unwrap();
            let want = reference
                .run(vec![
                    ("input".into(), t(&[3, 1, 16], &chunk)),
                    ("h".into(), t(&[1, 1, 32], &h)),
                    ("c".into(), t(&[1, 1, 32], &c)),
                ])
                .unwrap();
            let want0 = want[0]
                .1
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec();
            assert_eq!(by("output"), want0);
            outputs.push(by("output"));
            h = by("hn");
            c = by("cn");
        }
        // The same chunk answers differently as the state carries over.
        assert_ne!(outputs[0], outputs[1]);
        assert_ne!(outputs[1], outputs[2]);
    }

    #[test]
    fn named_inputs_are_checked_before_running() {
        let (bytes, m) = lstm();
        let rt = Runtime::new(Clock::new());
        rt.set_active(Some(Arc::new(
            LoadedModel::load(&bytes, m, RecorderConfig::default()).unwrap(),
        )));
        let code = |r: Result<_, InferError>| match r {
            Err(InferError::BadInput { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        let ok_h = named("h", &[1, 1, 32], vec![0.0; 32]);
        let ok_c = named("c", &[1, 1, 32], vec![0.0; 32]);
        let input = named("input", &[1, 1, 16], vec![0.5; 16]);
        // One-input form on a three-input model.
        assert_eq!(
            code(rt.infer(InferRequest::new(vec![0.0; 16]))),
            "missing_input"
        );
        assert_eq!(
            code(rt.infer(InferRequest::named(vec![input.clone(), ok_h.clone()]))),
            "missing_input"
        );
        let mut nope = ok_c.clone();
        nope.name = "nope".into();
        assert_eq!(
            code(rt.infer(InferRequest::named(vec![input.clone(), ok_h.clone(), nope]))),
            "unknown_input"
        );
        let mut no_shape = input.clone();
        no_shape.shape = None;
        assert_eq!(
            code(rt.infer(InferRequest::named(vec![
                no_shape,
                ok_h.clone(),
                ok_c.clone()
            ]))),
            "shape_required"
        );
        let wide = named("input", &[1, 1, 17], vec![0.5; 17]);
        assert_eq!(
            code(rt.infer(InferRequest::named(vec![wide, ok_h.clone(), ok_c.clone()]))),
            "bad_shape"
        );
        let nan = named("input", &[1, 1, 16], vec![f32::NAN; 16]);
        assert_eq!(
            code(rt.infer(InferRequest::named(vec![nan, ok_h.clone(), ok_c.clone()]))),
            "non_finite_input"
        );
        let text = NamedInput {
            name: "input".into(),
            shape: Some(vec![1, 1, 16]),
            values: InputValues::String(vec!["x".into(); 16]),
        };
        assert_eq!(
            code(rt.infer(InferRequest::named(vec![text, ok_h.clone(), ok_c.clone()]))),
            "wrong_type"
        );
        assert_eq!(rt.bad_input_count(), 7);
        assert!(
            rt.infer(InferRequest::named(vec![input, ok_h, ok_c]))
                .is_ok()
        );
    }
}
