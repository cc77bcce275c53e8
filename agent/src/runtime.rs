//! The serving slots (active, previous, shadow), swapped atomically so
//! in-flight requests finish on the model they started on, and the inference
//! hot path that records every request and feeds the shadow candidate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::clock::Clock;
use crate::core::window::{Prediction, Record};
pub use crate::infer::RuntimeError;
use crate::infer::{InferError, InferRequest, InferResponse, InputValues, NamedInput};
pub use crate::model::LoadedModel;
use crate::model::micros;
use crate::shadow::Shadow;

/// The serving slots and the inference hot path.
#[derive(Debug)]
pub struct Runtime {
    active: RwLock<Option<Arc<LoadedModel>>>,
    previous: RwLock<Option<Arc<LoadedModel>>>,
    shadow: RwLock<Option<Arc<Shadow>>>,
    shadow_on: AtomicBool,
    next_request_id: AtomicU64,
    extra_latency_us: AtomicU64,
    no_model: AtomicU64,
    bad_input: AtomicU64,
    clock: Clock,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    // Slots only ever hold a complete value; a poisoned lock still holds one.
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) -> T {
    std::mem::replace(&mut *l.write().unwrap_or_else(|e| e.into_inner()), v)
}

impl Runtime {
    /// Empty slots; request ids start from the clock so they do not repeat
    /// across restarts.
    pub fn new(clock: Clock) -> Runtime {
        Runtime {
            active: RwLock::new(None),
            previous: RwLock::new(None),
            shadow: RwLock::new(None),
            shadow_on: AtomicBool::new(false),
            next_request_id: AtomicU64::new(clock.now().0.saturating_mul(1000).max(1)),
            extra_latency_us: AtomicU64::new(0),
            no_model: AtomicU64::new(0),
            bad_input: AtomicU64::new(0),
            clock,
        }
    }

    /// The serving model.
    pub fn active(&self) -> Option<Arc<LoadedModel>> {
        read(&self.active)
    }

    /// The model kept for rollback.
    pub fn previous(&self) -> Option<Arc<LoadedModel>> {
        read(&self.previous)
    }

    /// The shadow candidate and its queue.
    pub(crate) fn shadow(&self) -> Option<Arc<Shadow>> {
        read(&self.shadow)
    }

    /// Puts `model` in the active slot; returns what was there. Requests that
    /// already cloned the old `Arc` finish on it.
    pub fn set_active(&self, model: Option<Arc<LoadedModel>>) -> Option<Arc<LoadedModel>> {
        write(&self.active, model)
    }

    /// Puts `model` in the previous slot; returns what was there.
    pub fn set_previous(&self, model: Option<Arc<LoadedModel>>) -> Option<Arc<LoadedModel>> {
        write(&self.previous, model)
    }

    /// Starts or stops shadowing; returns the old shadow.
    pub(crate) fn set_shadow(&self, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        self.shadow_on.store(shadow.is_some(), Ordering::Release);
        write(&self.shadow, shadow)
    }

    /// Adds `us` to every measured latency, without sleeping. For the fleet
    /// simulator's "slow device" fault: telemetry and `latency_us` show the
    /// slowness while no wall time is spent.
    pub fn set_extra_latency_us(&self, us: u64) {
        self.extra_latency_us.store(us, Ordering::Relaxed);
    }

    /// Requests refused because no model was active.
    pub fn no_model_count(&self) -> u64 {
        self.no_model.load(Ordering::Relaxed)
    }

    /// Requests refused because they did not fit the model.
    pub fn bad_input_count(&self) -> u64 {
        self.bad_input.load(Ordering::Relaxed)
    }

    fn bad_input(&self, code: &'static str, detail: String) -> InferError {
        self.bad_input.fetch_add(1, Ordering::Relaxed);
        InferError::BadInput { code, detail }
    }

    /// Runs one inference on the active model, records it, and offers it to
    /// the shadow candidate.
    pub fn infer(&self, req: InferRequest) -> Result<InferResponse, InferError> {
        let Some(model) = self.active() else {
            self.no_model.fetch_add(1, Ordering::Relaxed);
            return Err(InferError::NoModel);
        };
        if !req.inputs.is_empty() {
            if !req.data.is_empty() || req.shape.is_some() || req.input.is_some() {
                return Err(self.bad_input(
                    "bad_request",
                    "give either inputs by name or one input's data".into(),
                ));
            }
            return self.infer_named(&model, req.inputs);
        }
        if req.data.iter().any(|x| !x.is_finite()) {
            return Err(self.bad_input(
                "non_finite_input",
                "inputs must be finite numbers (no NaN or infinity)".into(),
            ));
        }
        let schema = model.onnx().schema();
        let other_form = schema.inputs.len() != 1
            || schema.inputs[0].element != drover_onnx::ElementType::F32
            || req
                .shape
                .as_ref()
                .is_some_and(|s| s.as_slice() != model.input_shape());
        if other_form {
            if schema.inputs.len() != 1 {
                let names: Vec<&str> = schema.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(self.bad_input(
                    "missing_input",
                    format!(
                        "the model takes {} inputs {names:?}: give them by name",
                        names.len()
                    ),
                ));
            }
            let name = req.input.unwrap_or_else(|| model.input_name().to_string());
            let one = NamedInput {
                name,
                shape: req.shape,
                values: InputValues::F32(req.data),
            };
            return self.infer_named(&model, vec![one]);
        }
        if let Some(name) = &req.input
            && name != model.input_name()
        {
            return Err(self.bad_input(
                "unknown_input",
                format!(
                    "the model's input is {:?}, not {name:?}",
                    model.input_name()
                ),
            ));
        }
        if let Some(shape) = &req.shape
            && shape.as_slice() != model.input_shape()
        {
            return Err(self.bad_input(
                "bad_shape",
                format!(
                    "shape {shape:?} does not match the model's input shape {:?}",
                    model.input_shape()
                ),
            ));
        }
        if req.data.len() != model.input_len() {
            return Err(self.bad_input(
                "bad_shape",
                format!(
                    "{} values given; the model's input {:?} takes {} ({:?})",
                    req.data.len(),
                    model.input_name(),
                    model.input_len(),
                    model.input_shape()
                ),
            ));
        }
        let stats = model
            .profiles_tensors()
            .then(|| model.feature_row_flat(&req.data));
        let row = stats.as_deref().unwrap_or(&req.data);
        let t0 = Instant::now();
        let result = model.run(&req.data);
        let t1 = Instant::now();
        let latency_us = micros(t1.duration_since(t0))
            .saturating_add(self.extra_latency_us.load(Ordering::Relaxed));
        let at_ms = self.clock.at(t1).0;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let outs = match result {
            Ok(o) => o,
            Err(e) => {
                model.recorder().record(&Record {
                    request_id: 0,
                    at_ms,
                    latency_us,
                    row,
                    prediction: None,
                });
                return Err(InferError::Model(e));
            }
        };
        let prediction = model.predict(&outs);
        model.recorder().record(&Record {
            request_id,
            at_ms,
            latency_us,
            row,
            prediction,
        });
        if self.shadow_on.load(Ordering::Acquire)
            && let Some(shadow) = self.shadow()
        {
            shadow.offer(&req.data, prediction);
        }
        Ok(self.response(&model, request_id, outs, latency_us, prediction))
    }

    /// The multi-input (and dynamic-shape, non-f32) path: tensors by name.
    /// Telemetry records the manifest's per-input statistics (tensor
    /// models), else the first input's row when it is numeric; the shadow
    /// candidate is not fed.
    fn infer_named(
        &self,
        model: &Arc<LoadedModel>,
        inputs: Vec<NamedInput>,
    ) -> Result<InferResponse, InferError> {
        let schema = model.onnx().schema();
        let mut tensors = Vec::with_capacity(inputs.len());
        let mut row: Vec<f32> = Vec::new();
        for input in &inputs {
            let Some(spec) = schema.inputs.iter().find(|s| s.name == input.name) else {
                let names: Vec<&str> = schema.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(self.bad_input(
                    "unknown_input",
                    format!(
                        "the model has no input {:?} (inputs: {names:?})",
                        input.name
                    ),
                ));
            };
            let most = model.input_limits().max_values(&input.name).unwrap_or(0);
            if input.values.len() > most {
                self.bad_input.fetch_add(1, Ordering::Relaxed);
                return Err(InferError::TooLarge(format!(
                    "input {:?}: {} values, more than the {most} its declared shape allows \
                     (see the agent API's request limits)",
                    input.name,
                    input.values.len()
                )));
            }
            if input.values.has_non_finite() {
                return Err(self.bad_input(
                    "non_finite_input",
                    format!(
                        "input {:?}: values must be finite (no NaN or infinity)",
                        input.name
                    ),
                ));
            }
            let declared = spec.shape.as_deref().unwrap_or(&[]);
            let shape: Vec<usize> = match &input.shape {
                Some(s) => s.clone(),
                None => {
                    let mut dims = Vec::with_capacity(declared.len());
                    for (i, d) in declared.iter().enumerate() {
                        match d {
                            drover_onnx::Dim::Fixed(n) => dims.push(*n),
                            drover_onnx::Dim::Symbol(_) if i == 0 => dims.push(1),
                            drover_onnx::Dim::Symbol(s) => {
                                return Err(self.bad_input(
                                    "shape_required",
                                    format!(
                                        "input {:?} has dynamic dim {s:?}: give its \"shape\"",
                                        input.name
                                    ),
                                ));
                            }
                        }
                    }
                    dims
                }
            };
            let fits = spec.shape.is_none()
                || declared.len() == shape.len()
                    && declared
                        .iter()
                        .zip(&shape)
                        .all(|(d, n)| !matches!(d, drover_onnx::Dim::Fixed(f) if f != n));
            let count: usize = shape.iter().product();
            if !fits || count != input.values.len() {
                return Err(self.bad_input(
                    "bad_shape",
                    format!(
                        "input {:?}: {} values with shape {shape:?}; the model takes {declared:?}",
                        input.name,
                        input.values.len()
                    ),
                ));
            }
            let t = input
                .values
                .to_tensor(spec.element.datum_type(), &shape)
                .map_err(|e| {
                    self.bad_input("wrong_type", format!("input {:?}: {e}", input.name))
                })?;
            if schema.inputs.first().is_some_and(|f| f.name == input.name) {
                row = input.values.to_f32().unwrap_or_default();
            }
            tensors.push((input.name.clone(), t));
        }
        if let Some(missing) = schema
            .inputs
            .iter()
            .find(|s| !inputs.iter().any(|i| i.name == s.name))
        {
            return Err(self.bad_input(
                "missing_input",
                format!("input {:?} is missing", missing.name),
            ));
        }
        if model.profiles_tensors() {
            row = model.feature_row(&tensors);
        }
        let t0 = Instant::now();
        let result = model.run_named(tensors);
        let t1 = Instant::now();
        let latency_us = micros(t1.duration_since(t0))
            .saturating_add(self.extra_latency_us.load(Ordering::Relaxed));
        let at_ms = self.clock.at(t1).0;
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let outs = match result {
            Ok(o) => o,
            Err(e) => {
                model.recorder().record(&Record {
                    request_id: 0,
                    at_ms,
                    latency_us,
                    row: &row,
                    prediction: None,
                });
                return Err(InferError::Model(e));
            }
        };
        let prediction = model.predict(&outs);
        model.recorder().record(&Record {
            request_id,
            at_ms,
            latency_us,
            row: &row,
            prediction,
        });
        Ok(self.response(model, request_id, outs, latency_us, prediction))
    }

    fn response(
        &self,
        model: &LoadedModel,
        request_id: u64,
        outs: crate::model::RunOutputs,
        latency_us: u64,
        prediction: Option<Prediction>,
    ) -> InferResponse {
        let (label, score, value) = match prediction {
            Some(Prediction::Class { index, confidence }) => (
                model.labels().get(index as usize).cloned(),
                Some(confidence),
                None,
            ),
            Some(Prediction::Value(v)) => (None, None, Some(v)),
            None => (None, None, None),
        };
        InferResponse {
            request_id,
            model: model.shared_ref(),
            outputs: model.to_outputs(outs),
            latency_us,
            label,
            score,
            value,
        }
    }

    /// The agent's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
}
