//! A model's inputs, outputs and class labels, read from the ONNX graph.

use std::collections::HashSet;

use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::{GraphProto, NodeProto, TypeProto, ValueInfoProto};
use tract_onnx::prelude::DatumType;

use crate::OnnxError;

/// The element type of a tensor Drover serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 64-bit integer (also what symbolic-dimension outputs are served as).
    I64,
    /// 32-bit integer.
    I32,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    String,
    /// 16-bit integer (label encoders may map to it).
    I16,
    /// 8-bit integer.
    I8,
    /// 8-bit unsigned integer.
    U8,
}

impl ElementType {
    /// The ONNX `TensorProto.DataType` code, if Drover serves it.
    pub fn from_onnx(code: i32) -> Option<ElementType> {
        Some(match code {
            1 => ElementType::F32,
            11 => ElementType::F64,
            7 => ElementType::I64,
            6 => ElementType::I32,
            9 => ElementType::Bool,
            8 => ElementType::String,
            5 => ElementType::I16,
            3 => ElementType::I8,
            2 => ElementType::U8,
            _ => return None,
        })
    }

    /// tract's datum type for it.
    pub fn datum_type(self) -> DatumType {
        match self {
            ElementType::F32 => DatumType::F32,
            ElementType::F64 => DatumType::F64,
            ElementType::I64 => DatumType::I64,
            ElementType::I32 => DatumType::I32,
            ElementType::Bool => DatumType::Bool,
            ElementType::String => DatumType::String,
            ElementType::I16 => DatumType::I16,
            ElementType::I8 => DatumType::I8,
            ElementType::U8 => DatumType::U8,
        }
    }
}

/// One dimension of a declared shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A size known at run time only, by its symbol (`N` for an anonymous batch).
    Symbol(String),
}

/// How an output is represented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A plain tensor.
    Tensor,
    /// A ZipMap's seq(map(label, probability)), served as the `(rows,
    /// classes)` probabilities tensor in the column order of the labels.
    ZipMap(ClassLabels),
}

/// An input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its name in the graph.
    pub name: String,
    /// Its element type.
    pub element: ElementType,
    /// Its shape, if the graph declares one.
    pub shape: Option<Vec<Dim>>,
}

/// An output with its representation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputSpec {
    /// Name, element type (f32 for ZipMap) and shape.
    pub spec: TensorSpec,
    /// Tensor or ZipMap.
    pub kind: OutputKind,
}

/// The inputs (not counting fixed ones) and outputs of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    /// Inputs a caller provides, in graph order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in graph order.
    pub outputs: Vec<OutputSpec>,
}

/// A classifier's class labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassLabels {
    /// From `classlabels_int64s`.
    Int(Vec<i64>),
    /// From `classlabels_strings`.
    Str(Vec<String>),
}

impl ClassLabels {
    /// How many classes.
    pub fn len(&self) -> usize {
        match self {
            ClassLabels::Int(v) => v.len(),
            ClassLabels::Str(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels as text.
    pub fn to_strings(&self) -> Vec<String> {
        match self {
            ClassLabels::Int(v) => v.iter().map(|i| i.to_string()).collect(),
            ClassLabels::Str(v) => v.clone(),
        }
    }
}

/// The class labels a node declares (classifiers and ZipMap).
pub(crate) fn node_labels(node: &NodeProto) -> Option<ClassLabels> {
    for a in &node.attribute {
        match a.name.as_str() {
            "classlabels_int64s" | "classlabels_ints" if !a.ints.is_empty() => {
                return Some(ClassLabels::Int(a.ints.clone()));
            }
            "classlabels_strings" if !a.strings.is_empty() => {
                let v = a
                    .strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned());
                return Some(ClassLabels::Str(v.collect()));
            }
            _ => {}
        }
    }
    None
}

/// The model's class labels: the ZipMap's, else the first classifier's,
/// else (networks exported by skl2onnx, e.g. MLPClassifier) the constant
/// class list an ArrayFeatureExtractor picks the label from.
pub(crate) fn class_labels(graph: &GraphProto) -> Option<ClassLabels> {
    let zip = graph
        .node
        .iter()
        .find(|n| n.op_type == "ZipMap")
        .and_then(node_labels);
    zip.or_else(|| {
        graph
            .node
            .iter()
            .filter(|n| n.op_type.ends_with("Classifier"))
            .find_map(node_labels)
    })
    .or_else(|| {
        let afe = graph
            .node
            .iter()
            .find(|n| n.op_type == "ArrayFeatureExtractor")?;
        let classes = graph
            .initializer
            .iter()
            .find(|t| Some(&t.name) == afe.input.first())?;
        let t = tract_onnx::tensor::load_tensor(
            &tract_onnx::data_resolver::MmapDataResolver,
            classes,
            None,
        )
        .ok()?;
        if t.datum_type() == DatumType::String {
            let v = t
                .try_as_plain_ram()
                .ok()?
                .as_slice::<String>()
                .ok()?
                .to_vec();
            return Some(ClassLabels::Str(v));
        }
        if !t.datum_type().is_integer() {
            return None;
        }
        let v = t.cast_to::<i64>().ok()?;
        let v = v.try_as_plain_ram().ok()?.as_slice::<i64>().ok()?.to_vec();
        Some(ClassLabels::Int(v))
    })
}

fn tensor_spec(v: &ValueInfoProto, t: &TypeProto, is_input: bool) -> Result<TensorSpec, OnnxError> {
    let Some(TypeValue::TensorType(tt)) = &t.value else {
        return Err(OnnxError::UnsupportedType {
            name: v.name.clone(),
            what: "not a tensor (sequence, map or optional)".into(),
        });
    };
    let element =
        ElementType::from_onnx(tt.elem_type).ok_or_else(|| OnnxError::UnsupportedType {
            name: v.name.clone(),
            what: format!("ONNX element type {}", tt.elem_type),
        })?;
    let shape = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(DimValue::DimValue(n)) if *n >= 0 => Dim::Fixed(*n as usize),
                Some(DimValue::DimParam(p)) if !p.is_empty() && p != "?" => Dim::Symbol(p.clone()),
                _ if i == 0 => Dim::Symbol("N".into()),
                _ => Dim::Symbol(format!("{}_{i}", v.name)),
            })
            .collect()
    });
    let _ = is_input;
    Ok(TensorSpec {
        name: v.name.clone(),
        element,
        shape,
    })
}

/// Reads the schema from the graph (`fixed` inputs left out).
pub(crate) fn read(graph: &GraphProto, fixed: &HashSet<String>) -> Result<Schema, OnnxError> {
    let init: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut inputs = vec![];
    for v in &graph.input {
        if init.contains(v.name.as_str()) || fixed.contains(&v.name) {
            continue;
        }
        let t = v
            .r#type
            .as_ref()
            .ok_or_else(|| OnnxError::UnsupportedType {
                name: v.name.clone(),
                what: "no type".into(),
            })?;
        inputs.push(tensor_spec(v, t, true)?);
    }
    let mut outputs = vec![];
    for v in &graph.output {
        let zip = graph
            .node
            .iter()
            .find(|n| n.op_type == "ZipMap" && n.output.iter().any(|o| o == &v.name));
        if let Some(node) = zip {
            let labels = node_labels(node).ok_or_else(|| {
                OnnxError::InvalidNode(format!("ZipMap node `{}` has no class labels", node.name))
            })?;
            let shape = Some(vec![Dim::Symbol("N".into()), Dim::Fixed(labels.len())]);
            let spec = TensorSpec {
                name: v.name.clone(),
                element: ElementType::F32,
                shape,
            };
            outputs.push(OutputSpec {
                spec,
                kind: OutputKind::ZipMap(labels),
            });
            continue;
        }
        let spec = match v.r#type.as_ref() {
            Some(t) => tensor_spec(v, t, false)?,
            None => TensorSpec {
                name: v.name.clone(),
                element: ElementType::F32,
                shape: None,
            },
        };
        outputs.push(OutputSpec {
            spec,
            kind: OutputKind::Tensor,
        });
    }
    Ok(Schema { inputs, outputs })
}
