//! Inference requests and answers as the library and the HTTP API see them.

use std::sync::Arc;

use drover_protocol::ModelRef;
use serde::Serialize;

use crate::runtime::RuntimeError;

/// One inference request for a one-input model, batch 1.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    /// The input values, flattened row-major.
    pub data: Vec<f32>,
    /// The input's shape, if the caller states it; checked against the model's.
    pub shape: Option<Vec<usize>>,
    /// The input's name, if the caller states it; checked against the model's.
    pub input: Option<String>,
}

impl InferRequest {
    /// A request with just the values (shape taken from the manifest).
    pub fn new(data: Vec<f32>) -> InferRequest {
        InferRequest {
            data,
            shape: None,
            input: None,
        }
    }
}

/// An output tensor's values.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TensorData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 32-bit integers.
    I32(Vec<i32>),
    /// 64-bit integers.
    I64(Vec<i64>),
}

/// One named output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputTensor {
    /// Graph name.
    #[serde(skip)]
    pub name: Arc<str>,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values.
    pub data: TensorData,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// Id to quote in feedback.
    pub request_id: u64,
    /// The model that answered.
    pub model: ModelRef,
    /// Every model output, in graph order.
    pub outputs: Vec<OutputTensor>,
    /// Time spent in the model, µs (plus any simulated extra latency).
    pub latency_us: u64,
    /// Classifiers: the predicted class name.
    pub label: Option<Arc<str>>,
    /// Classifiers: the predicted class's probability.
    pub score: Option<f32>,
    /// Regressors: the predicted value.
    pub value: Option<f32>,
}

/// Why an inference did not happen or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// No model is active yet (or any more).
    #[error("no model is active")]
    NoModel,
    /// The request does not fit the model's input.
    #[error("{detail}")]
    BadInput {
        /// Stable code (`bad_shape`, `unknown_input`).
        code: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The model failed on this input.
    #[error("inference failed: {0}")]
    Model(#[from] RuntimeError),
}
