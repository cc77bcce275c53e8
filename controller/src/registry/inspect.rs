//! Loading an ONNX file with tract: refuse what is not ONNX or what tract
//! cannot run (naming the operator), read the IO schema, run rows through it.

use std::sync::Arc;

use drover_protocol::manifest::{DType, TensorSpec};
use tract_onnx::prelude::*;

/// Why a model file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The bytes are not an ONNX protobuf with a graph.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The graph uses an operator tract does not implement.
    #[error("unsupported ONNX operator {op}: tract cannot run this model")]
    UnsupportedOperator {
        /// The operator type, e.g. `Scaler`.
        op: String,
        /// tract's full error chain.
        detail: String,
    },
    /// tract loaded the graph but could not type, optimise or run it, or its
    /// inputs and outputs are not something Drover can serve.
    #[error("model cannot be used: {0}")]
    Invalid(String),
}

/// A model loaded and optimised by tract, with its IO schema.
pub struct LoadedModel {
    plan: Arc<TypedRunnableModel>,
    /// Inputs, in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in graph order.
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

/// Finds `Unimplemented(Op)` in tract's error chain.
fn unimplemented_op(chain: &str) -> Option<String> {
    let start = chain.find("Unimplemented(")? + "Unimplemented(".len();
    let rest = chain.get(start..)?;
    let end = rest.find(')')?;
    let op = rest.get(..end)?.trim().trim_matches('"');
    (!op.is_empty()).then(|| op.to_string())
}

fn classify(err: &TractError) -> InspectError {
    let chain = format!("{err:?}");
    match unimplemented_op(&chain) {
        Some(op) => InspectError::UnsupportedOperator { op, detail: chain },
        None => InspectError::Invalid(format!("{err:#}")),
    }
}

fn dtype_of(dt: DatumType, what: &str) -> Result<DType, InspectError> {
    match dt {
        DatumType::F32 => Ok(DType::F32),
        DatumType::F64 => Ok(DType::F64),
        DatumType::I32 => Ok(DType::I32),
        DatumType::I64 => Ok(DType::I64),
        other => Err(InspectError::Invalid(format!(
            "{what} has element type {other:?}; Drover serves f32, f64, i32 and i64 tensors \
             (export sklearn classifiers with zipmap disabled)"
        ))),
    }
}

fn spec(
    model: &TypedModel,
    outlet: OutletId,
    fallback: &str,
    what: &str,
) -> Result<TensorSpec, InspectError> {
    let fact = model.outlet_fact(outlet).map_err(|e| classify(&e))?;
    // The graph's own names come first: tract does not label every outlet.
    let name = if fallback.is_empty() {
        model.outlet_label(outlet).unwrap_or_default().to_string()
    } else {
        fallback.to_string()
    };
    let shape = fact
        .shape
        .iter()
        .map(|d| d.as_i64().and_then(|v| u64::try_from(v).ok()))
        .collect();
    Ok(TensorSpec {
        dtype: dtype_of(fact.datum_type, &format!("{what} {name:?}"))?,
        name,
        shape,
    })
}

/// The first input's fact with a named batch dimension, from the graph's
/// declared shape, when that shape has an anonymous first dimension and
/// static others.
fn symbolic_batch_fact(
    graph: &tract_onnx::pb::GraphProto,
    model: &InferenceModel,
) -> Option<InferenceFact> {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
    use tract_onnx::pb::type_proto::Value as Type;
    let input = graph.input.first()?;
    let Some(Type::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    const ONNX_FLOAT: i32 = 1;
    if t.elem_type != ONNX_FLOAT {
        return None;
    }
    let dims = &t.shape.as_ref()?.dim;
    if dims.first()?.value.is_some() {
        return None;
    }
    let mut shape: Vec<TDim> = vec![model.symbols.sym("N").to_dim()];
    for d in dims.iter().skip(1) {
        match d.value {
            Some(Dim::DimValue(v)) if v > 0 => shape.push((v as usize).to_dim()),
            _ => return None,
        }
    }
    Some(f32::fact(&shape).into())
}

impl LoadedModel {
    /// Loads, types and optimises `bytes`.
    pub fn load(bytes: &[u8]) -> Result<LoadedModel, InspectError> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| InspectError::NotOnnx(format!("protobuf decode failed: {e}")))?;
        let graph = proto
            .graph
            .as_ref()
            .filter(|g| !g.node.is_empty() && !g.output.is_empty())
            .ok_or_else(|| InspectError::NotOnnx("the file holds no ONNX graph".into()))?;
        let output_names: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let input_names: Vec<String> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        let inference = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| classify(&e))?;
        let typed = match inference.clone().into_typed() {
            Ok(t) => t,
            Err(first) => {
                // Raw skl2onnx exports leave the batch dimension anonymous,
                // which tract cannot type; name it and try once more.
                let Some(fact) = symbolic_batch_fact(graph, &inference) else {
                    return Err(classify(&first));
                };
                let mut m = inference;
                m.set_input_fact(0, fact).map_err(|e| classify(&e))?;
                m.into_typed().map_err(|_| classify(&first))?
            }
        };
        let inputs = typed
            .input_outlets()
            .map_err(|e| classify(&e))?
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let name = input_names.get(i).cloned().unwrap_or(format!("input_{i}"));
                spec(&typed, *o, &name, "input")
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = typed
            .output_outlets()
            .map_err(|e| classify(&e))?
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let fallback = output_names
                    .get(i)
                    .cloned()
                    .unwrap_or(format!("output_{i}"));
                spec(&typed, *o, &fallback, "output")
            })
            .collect::<Result<Vec<_>, _>>()?;
        if inputs.len() != 1 {
            return Err(InspectError::Invalid(format!(
                "the model has {} inputs; Drover models take exactly one",
                inputs.len()
            )));
        }
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| classify(&e))?;
        Ok(LoadedModel {
            plan,
            inputs,
            outputs,
        })
    }

    /// Scalars per row of the (single) input, if its non-batch dims are static.
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

    /// Runs `rows` (each `features_per_row` long) as one batch; returns every
    /// output as a tensor.
    pub fn run(&self, rows: &[Vec<f32>]) -> Result<Vec<Tensor>, InspectError> {
        let input = self
            .inputs
            .first()
            .ok_or_else(|| InspectError::Invalid("no input".into()))?;
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
            DType::F32 => tensor,
            DType::F64 => tensor
                .cast_to::<f64>()
                .map_err(|e| classify(&e))?
                .into_owned(),
            DType::I32 => tensor
                .cast_to::<i32>()
                .map_err(|e| classify(&e))?
                .into_owned(),
            DType::I64 => tensor
                .cast_to::<i64>()
                .map_err(|e| classify(&e))?
                .into_owned(),
        };
        let out = self
            .plan
            .run(tvec!(tensor.into()))
            .map_err(|e| classify(&e))?;
        Ok(out.into_iter().map(|v| v.into_tensor()).collect())
    }

    /// Index of the output called `name`.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|o| o.name == name)
    }
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
    fn unsupported_operator_is_named() {
        match LoadedModel::load(&fixture("unsupported_op.onnx")) {
            Err(InspectError::UnsupportedOperator { op, .. }) => assert_eq!(op, "Scaler"),
            other => panic!("expected UnsupportedOperator, got {other:?}"),
        }
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
    fn op_name_extraction() {
        assert_eq!(
            unimplemented_op("x Unimplemented(Scaler) y").as_deref(),
            Some("Scaler")
        );
        assert_eq!(unimplemented_op("nothing"), None);
    }
}
