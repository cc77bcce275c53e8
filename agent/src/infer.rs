//! Inference requests and answers as the library and the HTTP API see them.

use std::sync::Arc;

use drover_protocol::ModelRef;
use drover_protocol::manifest::DType;
use serde::Serialize;
use tract_onnx::prelude::{Datum, DatumType, Tensor};

use drover_protocol::messages::{Reason, ReasonCode};

/// One inference request: either one f32 input (`data`, batch 1, the
/// one-input form), or any number of inputs by name (`inputs`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    /// The (first) input's values, flattened row-major.
    pub data: Vec<f32>,
    /// The input's shape, if the caller states it; needed when the model's
    /// input has dynamic dims other than the batch.
    pub shape: Option<Vec<usize>>,
    /// The input's name, if the caller states it; checked against the model's.
    pub input: Option<String>,
    /// Inputs by name (multi-input models, non-f32 inputs); when non-empty,
    /// `data`, `shape` and `input` must be empty.
    pub inputs: Vec<NamedInput>,
}

impl InferRequest {
    /// A request with just the values (shape taken from the manifest).
    pub fn new(data: Vec<f32>) -> InferRequest {
        InferRequest {
            data,
            ..InferRequest::default()
        }
    }

    /// A request with inputs by name.
    pub fn named(inputs: Vec<NamedInput>) -> InferRequest {
        InferRequest {
            inputs,
            ..InferRequest::default()
        }
    }
}

/// One input given by name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedInput {
    /// The graph input's name.
    pub name: String,
    /// Its shape; when absent, the model's declared shape with batch 1
    /// (refused if another dim is dynamic).
    pub shape: Option<Vec<usize>>,
    /// Its values, flattened row-major; converted to the input's element type.
    pub values: InputValues,
}

/// The values of one input. Numbers convert to the input's element type
/// (integers must be whole; bool takes 0 and 1).
#[derive(Debug, Clone, PartialEq)]
pub enum InputValues {
    /// f32 values.
    F32(Vec<f32>),
    /// Numbers as JSON carries them.
    F64(Vec<f64>),
    /// Integers.
    I64(Vec<i64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// Strings.
    String(Vec<String>),
}

impl InputValues {
    /// How many values.
    pub fn len(&self) -> usize {
        match self {
            InputValues::F32(v) => v.len(),
            InputValues::F64(v) => v.len(),
            InputValues::I64(v) => v.len(),
            InputValues::Bool(v) => v.len(),
            InputValues::String(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some value is refused as non-finite: NaN or infinity in
    /// f32 values; infinity (or beyond f32's range) in numbers. NaN among
    /// numbers is a JSON `null`, a missing value an imputer fills in.
    pub fn has_non_finite(&self) -> bool {
        match self {
            InputValues::F32(v) => v.iter().any(|x| !x.is_finite()),
            InputValues::F64(v) => v
                .iter()
                .any(|x| x.is_infinite() || x.abs() > f64::from(f32::MAX)),
            _ => false,
        }
    }

    /// The values as f32, when numeric (telemetry's feature row).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            InputValues::F32(v) => Some(v.clone()),
            InputValues::F64(v) => Some(v.iter().map(|x| *x as f32).collect()),
            _ => None,
        }
    }

    /// A tensor of `element` type and `shape`; `Err` says why not.
    pub fn to_tensor(&self, element: DatumType, shape: &[usize]) -> Result<Tensor, String> {
        let err = |e: tract_onnx::prelude::TractError| e.to_string();
        let whole = |x: f64| -> Result<i64, String> {
            if x.fract() == 0.0 && x.abs() < 9.007_199_254_740_992e15 {
                Ok(x as i64)
            } else {
                Err(format!("{x} is not an integer"))
            }
        };
        let t = match (self, element) {
            (InputValues::String(v), DatumType::String) => {
                tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, v.clone())
                    .map_err(|e| e.to_string())?
                    .into()
            }
            (InputValues::String(_), _) => {
                return Err(format!("strings given, the input takes {element:?}"));
            }
            (_, DatumType::String) => return Err("the input takes strings".into()),
            (InputValues::Bool(v), DatumType::Bool) => Tensor::from_shape(shape, v).map_err(err)?,
            (InputValues::Bool(_), _) => {
                return Err(format!("booleans given, the input takes {element:?}"));
            }
            (InputValues::F32(v), dt) if dt.is_float() => {
                Tensor::from_shape(shape, v).map_err(err)?
            }
            (InputValues::F64(v), dt) if dt.is_float() => {
                Tensor::from_shape(shape, v).map_err(err)?
            }
            (InputValues::I64(v), _) => Tensor::from_shape(shape, v).map_err(err)?,
            (InputValues::F32(v), _) => {
                let ints = v
                    .iter()
                    .map(|x| whole(f64::from(*x)))
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::from_shape(shape, &ints).map_err(err)?
            }
            (InputValues::F64(v), _) => {
                let ints = v.iter().map(|x| whole(*x)).collect::<Result<Vec<_>, _>>()?;
                Tensor::from_shape(shape, &ints).map_err(err)?
            }
        };
        if t.datum_type() == element {
            return Ok(t);
        }
        if element == DatumType::Bool {
            let v = t.cast_to::<i64>().map_err(err)?;
            let v = v.try_as_plain_ram().map_err(err)?;
            let v = v.as_slice::<i64>().map_err(err)?;
            let b = v
                .iter()
                .map(|x| match x {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!("{x} is not a boolean (0 or 1)")),
                })
                .collect::<Result<Vec<bool>, _>>()?;
            return Tensor::from_shape(shape, &b).map_err(err);
        }
        Ok(t.cast_to_dt(element).map_err(err)?.into_owned())
    }
}

/// One named output, as tract produced it (no copy on the hot path).
#[derive(Clone)]
pub struct OutputTensor {
    pub(crate) name: Arc<str>,
    pub(crate) tensor: Arc<Tensor>,
}

impl OutputTensor {
    /// Graph name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    /// Element type, if one Drover serves.
    pub fn dtype(&self) -> Option<DType> {
        match self.tensor.datum_type() {
            DatumType::F32 => Some(DType::F32),
            DatumType::F64 => Some(DType::F64),
            DatumType::I32 => Some(DType::I32),
            DatumType::I64 => Some(DType::I64),
            _ => None,
        }
    }

    fn slice<T: Datum>(&self) -> Option<&[T]> {
        self.tensor.as_plain_ram()?.as_slice::<T>().ok()
    }

    /// The values, if the tensor is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.slice()
    }

    /// The values, if the tensor is f64.
    pub fn as_f64(&self) -> Option<&[f64]> {
        self.slice()
    }

    /// The values, if the tensor is i32.
    pub fn as_i32(&self) -> Option<&[i32]> {
        self.slice()
    }

    /// The values, if the tensor is i64.
    pub fn as_i64(&self) -> Option<&[i64]> {
        self.slice()
    }

    /// The values converted to f32, whatever the element type.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        if let Some(v) = self.as_f32() {
            return v.to_vec();
        }
        self.tensor
            .cast_to::<f32>()
            .ok()
            .and_then(|c| {
                c.as_plain_ram()
                    .and_then(|p| p.as_slice::<f32>().ok().map(<[f32]>::to_vec))
            })
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for OutputTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputTensor")
            .field("name", &self.name)
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .finish()
    }
}

impl PartialEq for OutputTensor {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.tensor == other.tensor
    }
}

impl Serialize for OutputTensor {
    /// `{"shape": [..], "data": [..]}`, straight from tract's buffer.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("OutputTensor", 2)?;
        st.serialize_field("shape", self.shape())?;
        if let Some(v) = self.as_f32() {
            st.serialize_field("data", v)?;
        } else if let Some(v) = self.as_i64() {
            st.serialize_field("data", v)?;
        } else if let Some(v) = self.as_f64() {
            st.serialize_field("data", v)?;
        } else if let Some(v) = self.as_i32() {
            st.serialize_field("data", v)?;
        } else if let Some(v) = self.slice::<String>() {
            st.serialize_field("data", v)?;
        } else if let Some(v) = self.slice::<bool>() {
            st.serialize_field("data", v)?;
        } else {
            st.serialize_field("data", &self.to_f32_vec())?;
        }
        st.end()
    }
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct InferResponse {
    /// Id to quote in feedback.
    pub request_id: u64,
    /// The model that answered.
    pub model: Arc<ModelRef>,
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
    /// The request carries more values than the model's inputs allow
    /// (`crate::input_limit`); the HTTP API answers 413.
    #[error("{0}")]
    TooLarge(String),
    /// The model failed on this input.
    #[error("inference failed: {0}")]
    Model(#[from] RuntimeError),
}

/// Why a model could not be loaded or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The graph uses an operator neither tract nor Drover implements
    /// (the detail names the operator and its node).
    #[error("{0}")]
    UnsupportedOperator(String),
    /// The model and its manifest disagree, or the model has a shape or
    /// element type Drover does not serve.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// tract failed while optimising or running.
    #[error("tract: {0}")]
    Tract(String),
}

impl RuntimeError {
    /// As a DeployStatus reason.
    pub fn reason(&self) -> Reason {
        let code = match self {
            RuntimeError::NotOnnx(_) => ReasonCode::NotOnnx,
            RuntimeError::UnsupportedOperator(_) => ReasonCode::UnsupportedOperator,
            RuntimeError::Unsupported(_) => ReasonCode::UnsupportedModel,
            RuntimeError::Tract(_) => ReasonCode::LoadFailed,
        };
        Reason::new(code, self.to_string())
    }
}

/// Ground truth for a request, as a caller gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackLabel {
    /// Class index (manifest label order).
    Class(u32),
    /// Class name, as in the manifest's labels.
    ClassName(String),
    /// Regression target.
    Value(f32),
}

/// Why feedback was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    /// The request id is unknown (never seen, or pushed out of the bounded memory).
    #[error("unknown request id")]
    Unknown,
    /// The request is older than the feedback ttl.
    #[error("request too old for feedback")]
    Expired,
    /// The label does not fit the model (class name not found, value for a
    /// classifier, class for a regressor).
    #[error("{0}")]
    Mismatch(String),
}
