//! Builds small ONNX models in tests (prost structs, no Python).

use prost::Message;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{Tensor as TensorType, Value as TypeValue};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};

/// An attribute value.
pub(crate) enum A {
    F(f32),
    I(i64),
    S(&'static str),
    Fs(Vec<f32>),
    Is(Vec<i64>),
    Ss(Vec<&'static str>),
}

/// A dim: a size, or a symbol (`""` for anonymous).
pub(crate) enum D {
    N(i64),
    S(&'static str),
}

pub(crate) fn value(name: &str, elem: i32, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                D::N(n) => dimension::Value::DimValue(*n),
                D::S(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Dimension::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

pub(crate) fn node(
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, A)>,
) -> NodeProto {
    let attribute = attrs
        .into_iter()
        .map(|(name, a)| {
            let mut p = AttributeProto {
                name: name.into(),
                ..AttributeProto::default()
            };
            match a {
                A::F(f) => p.f = f,
                A::I(i) => p.i = i,
                A::S(s) => p.s = s.as_bytes().to_vec(),
                A::Fs(v) => p.floats = v,
                A::Is(v) => p.ints = v,
                A::Ss(v) => p.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            }
            p
        })
        .collect();
    NodeProto {
        name: format!("{op}_node"),
        op_type: op.into(),
        domain: "ai.onnx.ml".into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..NodeProto::default()
    }
}

/// An output declared without a shape.
pub(crate) fn out(name: &str, elem: i32) -> ValueInfoProto {
    let mut v = value(name, elem, &[]);
    if let Some(TypeProto {
        value: Some(TypeValue::TensorType(t)),
        ..
    }) = v.r#type.as_mut()
    {
        t.shape = None;
    }
    v
}

/// A model of `nodes`, serialized.
pub(crate) fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> Vec<u8> {
    let opset = |domain: &str, version| OperatorSetIdProto {
        domain: domain.into(),
        version,
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![opset("", 17), opset("ai.onnx.ml", 3)],
        graph: Some(GraphProto {
            name: "test".into(),
            node: nodes,
            input: inputs,
            output: outputs,
            ..GraphProto::default()
        }),
        ..ModelProto::default()
    }
    .encode_to_vec()
}

/// One ml node `X -> Y` on an `N x features` float input.
pub(crate) fn unary(op: &str, features: i64, attrs: Vec<(&str, A)>, out_elem: i32) -> Vec<u8> {
    model(
        vec![node(op, &["X"], &["Y"], attrs)],
        vec![value("X", 1, &[D::S(""), D::N(features)])],
        vec![out("Y", out_elem)],
    )
}
