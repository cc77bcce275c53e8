//! ONNX export of a [`SoftmaxModel`], and reading one back for warm starts.
//!
//! The protobuf types are tract's own prost-generated `tract_onnx::pb`, so
//! what we write is by construction what the agent's tract parses.

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};

use super::error::TrainError;
use super::model::SoftmaxModel;

/// Metadata key holding the comma-joined class names, in output-index order.
/// sklearn fixtures carry it too, so the agent can name labels either way.
pub const META_CLASSES: &str = "drover.classes";
/// Metadata key holding the comma-joined feature names, in input order.
pub const META_FEATURES: &str = "drover.features";
/// `producer_name` of models written by [`to_onnx`].
pub const PRODUCER: &str = "drover-train";

const OPSET: i64 = 13;
const IR_VERSION: i64 = 7;
const MEAN: &str = "drover_mean";
const STD: &str = "drover_std";
const WEIGHTS_T: &str = "drover_weights_t";
const BIAS: &str = "drover_bias";
/// The op sequence [`to_onnx`] emits; [`load_base_from_onnx`] refuses any
/// other graph, since reading only the initializers of a hand-edited graph
/// would silently warm-start from a different function.
const OPS: [&str; 6] = ["Sub", "Div", "MatMul", "Add", "Softmax", "ArgMax"];

/// Serialises `model` as an ONNX ModelProto (IR 7, opset 13).
///
/// Input `input` float `[N, F]` (symbolic batch `N`); outputs `label` int64
/// `[N]` and `probabilities` float `[N, C]` — the names skl2onnx uses with
/// `zipmap=False`, so the agent treats both kinds of model alike.
/// `model` should pass [`SoftmaxModel::validate`]; the trainer's output does.
pub fn to_onnx(model: &SoftmaxModel) -> Vec<u8> {
    let f = model.feature_names.len();
    let c = model.classes.len();
    let weights_t: Vec<f32> = (0..f)
        .flat_map(|j| model.weights.iter().map(move |w| w[j]))
        .collect();

    let graph = pb::GraphProto {
        name: "drover_softmax".into(),
        node: vec![
            node("Sub", &["input", MEAN], "centered", vec![]),
            node("Div", &["centered", STD], "standardized", vec![]),
            node("MatMul", &["standardized", WEIGHTS_T], "scores", vec![]),
            node("Add", &["scores", BIAS], "logits", vec![]),
            node(
                "Softmax",
                &["logits"],
                "probabilities",
                vec![int_attr("axis", 1)],
            ),
            node(
                "ArgMax",
                // On probabilities, not logits, so `label` always equals
                // argmax(`probabilities`) even where softmax rounds two apart
                // logits to the same float.
                &["probabilities"],
                "label",
                vec![int_attr("axis", 1), int_attr("keepdims", 0)],
            ),
        ],
        initializer: vec![
            float_tensor(MEAN, &[f], &model.mean),
            float_tensor(STD, &[f], &model.std),
            float_tensor(WEIGHTS_T, &[f, c], &weights_t),
            float_tensor(BIAS, &[c], &model.bias),
        ],
        input: vec![value_info("input", DataType::Float, &[None, Some(f)])],
        output: vec![
            value_info("label", DataType::Int64, &[None]),
            value_info("probabilities", DataType::Float, &[None, Some(c)]),
        ],
        ..Default::default()
    };

    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: PRODUCER.into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Multinomial logistic regression trained by `drover train`.".into(),
        graph: Some(graph),
        metadata_props: vec![
            entry(META_CLASSES, &model.classes.join(",")),
            entry(META_FEATURES, &model.feature_names.join(",")),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

/// Reads back a model that [`to_onnx`] wrote (e.g. from the registry, for
/// `drover train --base NAME@VERSION`).
///
/// Other ONNX models — sklearn exports included — are refused with
/// [`TrainError::NotDroverModel`]: their parameters live in other ops.
pub fn load_base_from_onnx(bytes: &[u8]) -> Result<SoftmaxModel, TrainError> {
    let model = pb::ModelProto::decode(bytes)?;
    let not_ours = |why: String| TrainError::NotDroverModel(why);
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| not_ours("no graph".into()))?;
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    if ops != OPS {
        return Err(not_ours(format!("graph ops are {ops:?}, expected {OPS:?}")));
    }
    let meta = |key: &str| -> Result<Vec<String>, TrainError> {
        let entry = model
            .metadata_props
            .iter()
            .find(|e| e.key == key)
            .ok_or_else(|| not_ours(format!("metadata `{key}` is missing")))?;
        Ok(entry.value.split(',').map(str::to_owned).collect())
    };
    let feature_names = meta(META_FEATURES)?;
    let classes = meta(META_CLASSES)?;
    let f = feature_names.len();
    let c = classes.len();

    let init = |name: &str, dims: &[usize]| -> Result<Vec<f32>, TrainError> {
        let t = graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| not_ours(format!("initializer `{name}` is missing")))?;
        let want: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        if t.data_type != DataType::Float as i32 || t.dims != want {
            return Err(not_ours(format!(
                "initializer `{name}` is type {} dims {:?}, expected float {want:?}",
                t.data_type, t.dims
            )));
        }
        let values = if t.raw_data.is_empty() {
            t.float_data.clone()
        } else {
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        if values.len() != dims.iter().product::<usize>() {
            return Err(not_ours(format!(
                "initializer `{name}` holds {} values for dims {want:?}",
                values.len()
            )));
        }
        Ok(values)
    };
    let mean = init(MEAN, &[f])?;
    let std = init(STD, &[f])?;
    let weights_t = init(WEIGHTS_T, &[f, c])?;
    let bias = init(BIAS, &[c])?;
    let weights = (0..c)
        .map(|k| (0..f).map(|j| weights_t[j * c + k]).collect())
        .collect();

    let model = SoftmaxModel {
        feature_names,
        classes,
        mean,
        std,
        weights,
        bias,
    };
    model.validate()?;
    Ok(model)
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: output.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| (*s).into()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// `None` dims become the symbolic batch dimension `N`.
fn value_info(name: &str, elem: DataType, dims: &[Option<usize>]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(n) => dimension::Value::DimValue(*n as i64),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn entry(key: &str, value: &str) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: key.into(),
        value: value.into(),
    }
}
