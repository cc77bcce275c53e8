//! Reading a node's attributes, with the operator and node named in errors.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{AttributeProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

/// A node's attributes.
pub(crate) struct Attrs<'a> {
    pub(crate) ctx: &'a ParsingContext<'a>,
    pub(crate) node: &'a NodeProto,
}

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// Whether the attribute is present.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// An error naming the node.
    pub(crate) fn bad(&self, why: impl std::fmt::Display) -> TractError {
        format_err!("{} node `{}`: {why}", self.node.op_type, self.node.name)
    }

    /// A float list (empty when absent).
    pub(crate) fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }

    /// A float list, or the `NAME_as_tensor` double tensor that newer opsets use.
    pub(crate) fn floats_or_tensor(&self, name: &str) -> TractResult<Vec<f32>> {
        if let Some(t) = self
            .get(&format!("{name}_as_tensor"))
            .and_then(|a| a.t.as_ref())
        {
            let t = self.ctx.load_tensor(t)?;
            let t = t.cast_to::<f32>()?;
            return Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec());
        }
        Ok(self.floats(name))
    }

    /// An int list (empty when absent).
    pub(crate) fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    /// A string list (empty when absent).
    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A scalar float, or `default`.
    pub(crate) fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }

    /// A scalar int, or `default`.
    pub(crate) fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }

    /// A scalar string, or `default`.
    pub(crate) fn string(&self, name: &str, default: &str) -> String {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
            .unwrap_or_else(|| default.to_string())
    }

    /// A tensor attribute, if present.
    pub(crate) fn tensor(&self, name: &str) -> TractResult<Option<Tensor>> {
        match self.get(name).and_then(|a| a.t.as_ref()) {
            Some(t) => Ok(Some(self.ctx.load_tensor(t)?)),
            None => Ok(None),
        }
    }

    /// Indices: non-negative ints that fit `usize`.
    pub(crate) fn indices(&self, name: &str) -> TractResult<Vec<usize>> {
        self.ints(name)
            .iter()
            .map(|&i| usize::try_from(i).map_err(|_| self.bad(format!("{name} holds {i}"))))
            .collect()
    }

    /// The class labels of a classifier: ints or strings.
    pub(crate) fn class_labels(&self) -> TractResult<Labels> {
        // Tree ensembles and ZipMap say `int64s`, linear and SVM classifiers `ints`.
        let mut ints = self.ints("classlabels_int64s");
        if ints.is_empty() {
            ints = self.ints("classlabels_ints");
        }
        let strings = self.strings("classlabels_strings");
        match (ints.is_empty(), strings.is_empty()) {
            (false, true) => Ok(Labels::Int(ints)),
            (true, false) => Ok(Labels::Str(strings)),
            (true, true) => Err(self.bad("no classlabels_int64s nor classlabels_strings")),
            (false, false) => Err(self.bad("both classlabels_int64s and classlabels_strings")),
        }
    }
}

/// A classifier's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Labels {
    /// `classlabels_int64s`.
    Int(Vec<i64>),
    /// `classlabels_strings`.
    Str(Vec<String>),
}

impl Labels {
    /// How many classes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Labels::Int(v) => v.len(),
            Labels::Str(v) => v.len(),
        }
    }

    /// The label tensor's element type.
    pub(crate) fn datum_type(&self) -> DatumType {
        match self {
            Labels::Int(_) => DatumType::I64,
            Labels::Str(_) => DatumType::String,
        }
    }

    /// The tensor of labels for the chosen class indices.
    pub(crate) fn pick(&self, chosen: &[usize]) -> TractResult<Tensor> {
        match self {
            Labels::Int(v) => {
                let out: Vec<i64> = chosen
                    .iter()
                    .map(|&c| v.get(c).copied().unwrap_or(0))
                    .collect();
                Ok(tensor1(&out))
            }
            Labels::Str(v) => {
                let out: Vec<String> = chosen
                    .iter()
                    .map(|&c| v.get(c).cloned().unwrap_or_default())
                    .collect();
                Ok(tensor1(&out))
            }
        }
    }
}
