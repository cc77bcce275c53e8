//! Loading an ONNX file through drover-onnx, the loader the agent uses too
//! (so the registry never accepts a model the agent loads differently):
//! refuse what is not ONNX or cannot run (naming the operator and node), read
//! the IO schema and class labels, run rows through it.

use drover_onnx::{ClassLabels, Dim, ElementType, LoadOptions, Model, OnnxError, Tensor};
use drover_protocol::manifest::{DType, LoadSpec, TensorSpec};
use tract_onnx::prelude::*;

/// Why a model file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The bytes are not an ONNX protobuf with a graph.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The graph uses an operator neither tract nor Drover implements.
    #[error("{detail}")]
    UnsupportedOperator {
        /// The operator type, e.g. `Scaler`.
        op: String,
        /// The whole refusal: operator, domain and node.
        detail: String,
    },
    /// The graph loaded but cannot be typed, planned or run, or its inputs
    /// and outputs are not something Drover can serve.
    #[error("model cannot be used: {0}")]
    Invalid(String),
}

impl From<OnnxError> for InspectError {
    fn from(e: OnnxError) -> Self {
        match &e {
            OnnxError::NotOnnx(s) => InspectError::NotOnnx(s.clone()),
            OnnxError::UnsupportedOperator { op, .. } => InspectError::UnsupportedOperator {
                op: op.clone(),
                detail: e.to_string(),
            },
            _ => InspectError::Invalid(e.to_string()),
        }
    }
}

/// A model loaded by drover-onnx, with its IO schema in manifest terms.
pub struct LoadedModel {
    model: Model,
    /// Inputs a caller provides (fixed ones left out), in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in graph order (a ZipMap as its probabilities tensor).
    pub outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// The manifest's element type for one drover-onnx serves.
pub fn dtype_of(e: ElementType, what: &str) -> Result<DType, InspectError> {
    Ok(match e {
        ElementType::F32 => DType::F32,
        ElementType::F64 => DType::F64,
        ElementType::I32 => DType::I32,
        ElementType::I64 => DType::I64,
        ElementType::Bool => DType::Bool,
        ElementType::String => DType::String,
        other => {
            return Err(InspectError::Invalid(format!(
                "{what} has element type {other:?}; Drover serves f32, f64, i64, i32, bool \
                 and string tensors"
            )));
        }
    })
}

fn manifest_spec(s: &drover_onnx::TensorSpec, what: &str) -> Result<TensorSpec, InspectError> {
    Ok(TensorSpec {
        name: s.name.clone(),
        dtype: dtype_of(s.element, &format!("{what} {:?}", s.name))?,
        shape: s
            .shape
            .iter()
            .flatten()
            .map(|d| match d {
                Dim::Fixed(n) => Some(*n as u64),
                Dim::Symbol(_) => None,
            })
            .collect(),
    })
}

/// drover-onnx's options for a manifest's load spec.
pub fn load_options(spec: &LoadSpec) -> Result<LoadOptions, InspectError> {
    let mut o = LoadOptions::default();
    for arg in &spec.fix_inputs {
        o.fix_input(arg)?;
    }
    for arg in &spec.input_shapes {
        o.input_shape(arg)?;
    }
    Ok(o)
}

impl LoadedModel {
    /// Loads `bytes` with default options.
    pub fn load(bytes: &[u8]) -> Result<LoadedModel, InspectError> {
        LoadedModel::load_with(bytes, &LoadSpec::default())
    }

    /// Loads `bytes` with fixed inputs and pinned shapes.
    pub fn load_with(bytes: &[u8], spec: &LoadSpec) -> Result<LoadedModel, InspectError> {
        Self::from_model(Model::load(bytes, &load_options(spec)?)?)
    }

    /// Loads the ONNX file at `path` (not read onto the heap first).
    pub fn load_file(path: &std::path::Path, spec: &LoadSpec) -> Result<LoadedModel, InspectError> {
        Self::from_model(Model::load_file(path, &load_options(spec)?)?)
    }

    fn from_model(model: Model) -> Result<LoadedModel, InspectError> {
        let inputs = model
            .schema()
            .inputs
            .iter()
            .map(|i| manifest_spec(i, "input"))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = model
            .schema()
            .outputs
            .iter()
            .map(|o| manifest_spec(&o.spec, "output"))
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.is_empty() {
            return Err(InspectError::Invalid("the model has no inputs".into()));
        }
        Ok(LoadedModel {
            model,
            inputs,
            outputs,
        })
    }

    /// The class labels the graph declares (classifiers).
    pub fn class_labels(&self) -> Option<&ClassLabels> {
        self.model.class_labels()
    }

    /// The loaded graph.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Scalars per row of the first input, if its non-batch dims are static.
    pub fn features_per_row(&self) -> Option<usize> {
        let input = self.inputs.first()?;
        if input.shape.is_empty() {
            return None;
        }
        input
            .shape
            .iter()
            .skip(1)
            .try_fold(1usize, |acc, d| d.map(|d| acc.saturating_mul(d as usize)))
    }

    /// Runs `rows` (each `features_per_row` long) of the first (only) input
    /// as one batch; returns every output as a tensor.
    pub fn run(&self, rows: &[Vec<f32>]) -> Result<Vec<Tensor>, InspectError> {
        let input = self
            .inputs
            .first()
            .ok_or_else(|| InspectError::Invalid("no input".into()))?;
        if self.inputs.len() != 1 {
            return Err(InspectError::Invalid(format!(
                "the model has {} inputs; rows feed a one-input model",
                self.inputs.len()
            )));
        }
        let per_row = self
            .features_per_row()
            .ok_or_else(|| InspectError::Invalid("input shape is not static".into()))?;
        let mut shape: Vec<usize> = vec![rows.len()];
        shape.extend(input.shape.iter().skip(1).map(|d| d.unwrap_or(1) as usize));
        let mut flat = Vec::with_capacity(rows.len() * per_row);
        for r in rows {
            if r.len() != per_row {
                return Err(InspectError::Invalid(format!(
                    "row has {} values, the input takes {per_row}",
                    r.len()
                )));
            }
            flat.extend_from_slice(r);
        }
        let tensor = Tensor::from_shape(&shape, &flat).map_err(|e| classify(&e))?;
        let tensor = match input.dtype {
            DType::F32 | DType::F64 => tensor,
            DType::I32 | DType::I64 => tensor
                .cast_to::<i64>()
                .map_err(|e| classify(&e))?
                .into_owned(),
            DType::Bool => tensor
                .cast_to::<bool>()
                .map_err(|e| classify(&e))?
                .into_owned(),
            DType::String => {
                return Err(InspectError::Invalid(format!(
                    "input {:?} takes strings; numeric rows cannot feed it",
                    input.name
                )));
            }
        };
        let out = self.model.run(vec![(input.name.clone(), tensor)])?;
        Ok(out.into_iter().map(|(_, t)| t).collect())
    }

    /// Index of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }
}

fn classify(err: &TractError) -> InspectError {
    InspectError::Invalid(format!("{err:#}"))
}

/// A tensor's values as f32.
pub fn tensor_f32(t: &Tensor) -> Result<Vec<f32>, InspectError> {
    let cast = t.cast_to::<f32>().map_err(|e| classify(&e))?;
    let view = cast
        .to_plain_array_view::<f32>()
        .map_err(|e| classify(&e))?;
    Ok(view.iter().copied().collect())
}

/// A tensor's values as i64.
pub fn tensor_i64(t: &Tensor) -> Result<Vec<i64>, InspectError> {
    let cast = t.cast_to::<i64>().map_err(|e| classify(&e))?;
    let view = cast
        .to_plain_array_view::<i64>()
        .map_err(|e| classify(&e))?;
    Ok(view.iter().copied().collect())
}

/// A tensor's values as text (string labels as they are, numbers printed).
pub fn tensor_strings(t: &Tensor) -> Result<Vec<String>, InspectError> {
    if t.datum_type() == DatumType::String {
        let view = t
            .to_plain_array_view::<String>()
            .map_err(|e| classify(&e))?;
        return Ok(view.iter().cloned().collect());
    }
    Ok(tensor_i64(t)?.into_iter().map(|v| v.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures/models")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn classifier_schema_is_read() {
        let m = LoadedModel::load(&fixture("sensor_clf_v1.onnx")).unwrap();
        assert_eq!(m.inputs[0].name, "input");
        assert_eq!(m.inputs[0].dtype, DType::F32);
        assert_eq!(m.inputs[0].shape, vec![None, Some(4)]);
        assert_eq!(m.features_per_row(), Some(4));
        let names: Vec<_> = m.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["label", "probabilities"]);
        assert_eq!(m.outputs[0].dtype, DType::I64);
        assert_eq!(m.outputs[1].shape, vec![None, Some(3)]);
        let out = m
            .run(&[vec![45.0, 2.0, 12.0, 40.0], vec![60.0, 4.0, 9.0, 60.0]])
            .unwrap();
        assert_eq!(tensor_i64(&out[0]).unwrap().len(), 2);
        let p = tensor_f32(&out[1]).unwrap();
        assert_eq!(p.len(), 6);
        assert!((p[0] + p[1] + p[2] - 1.0).abs() < 1e-4);
    }

    #[test]
    fn a_scaler_pipeline_now_loads() {
        // tract lacks Scaler; drover-onnx registers its own.
        let m = LoadedModel::load(&fixture("unsupported_op.onnx")).unwrap();
        assert!(!m.outputs.is_empty());
    }

    #[test]
    fn non_onnx_is_refused() {
        for bytes in [&b""[..], b"hello, not a model", b"\xff\xff\xff\xff"] {
            assert!(
                matches!(LoadedModel::load(bytes), Err(InspectError::NotOnnx(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn anonymous_batch_dim_is_named() {
        use prost::Message as _;
        let mut proto =
            tract_onnx::pb::ModelProto::decode(&fixture("sensor_clf_v1.onnx")[..]).unwrap();
        let graph = proto.graph.as_mut().unwrap();
        for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
            let Some(tract_onnx::pb::type_proto::Value::TensorType(t)) =
                value.r#type.as_mut().and_then(|t| t.value.as_mut())
            else {
                panic!("tensor type expected");
            };
            t.shape.as_mut().unwrap().dim[0].value = None;
        }
        let m = LoadedModel::load(&proto.encode_to_vec()).unwrap();
        assert_eq!(m.inputs[0].shape, vec![None, Some(4)]);
        let out = m.run(&vec![vec![45.0, 2.0, 12.0, 40.0]; 3]).unwrap();
        assert_eq!(tensor_f32(&out[1]).unwrap().len(), 9);
    }

    #[test]
    fn unknown_operator_refusal_names_op_and_node() {
        use prost::Message as _;
        let mut proto =
            tract_onnx::pb::ModelProto::decode(&fixture("sensor_clf_v1.onnx")[..]).unwrap();
        let node = &mut proto.graph.as_mut().unwrap().node[0];
        node.op_type = "NoSuchOp".into();
        node.name = "the_node".into();
        match LoadedModel::load(&proto.encode_to_vec()) {
            Err(InspectError::UnsupportedOperator { op, detail }) => {
                assert_eq!(op, "NoSuchOp");
                assert!(detail.contains("the_node"), "{detail}");
            }
            other => panic!("expected UnsupportedOperator, got {other:?}"),
        }
    }
}
