//! The ai.onnx.ml operators, as Drover's own tract ops.
//!
//! Every operator is a [`Kernel`]: it computes its output facts from its input
//! facts and evaluates on whole tensors. [`MlOp`] adapts a kernel to tract's
//! inference, typed and eval traits once, so each operator file only holds
//! the operator's semantics (which follow onnxruntime, the reference every
//! exporter is tested against).

mod attrs;
mod linear;
mod simple;
mod svm;
mod transform;
mod tree;
mod tree_v5;

use std::fmt;
use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub(crate) use attrs::Attrs;

/// The ai.onnx.ml operators Drover implements (all replace or add to tract's).
pub const OPERATORS: &[&str] = &[
    "ArrayFeatureExtractor",
    "Binarizer",
    "FeatureVectorizer",
    "Imputer",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "OneHotEncoder",
    "SVMClassifier",
    "SVMRegressor",
    "Scaler",
    "TreeEnsemble",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "ZipMap",
];

/// Inserts Drover's ai.onnx.ml parsers into `reg`, replacing tract's.
pub(crate) fn register(reg: &mut OnnxOpRegister) {
    reg.insert("ArrayFeatureExtractor", simple::array_feature_extractor);
    reg.insert("Binarizer", simple::binarizer);
    reg.insert("FeatureVectorizer", simple::feature_vectorizer);
    reg.insert("Imputer", simple::imputer);
    reg.insert("LabelEncoder", simple::label_encoder);
    reg.insert("LinearClassifier", linear::linear_classifier);
    reg.insert("LinearRegressor", linear::linear_regressor);
    reg.insert("Normalizer", simple::normalizer);
    reg.insert("OneHotEncoder", simple::one_hot_encoder);
    reg.insert("SVMClassifier", svm::svm_classifier);
    reg.insert("SVMRegressor", svm::svm_regressor);
    reg.insert("Scaler", simple::scaler);
    reg.insert("TreeEnsemble", tree_v5::tree_ensemble);
    reg.insert("TreeEnsembleClassifier", tree::tree_classifier);
    reg.insert("TreeEnsembleRegressor", tree::tree_regressor);
    reg.insert("ZipMap", simple::zipmap);
}

/// One operator's semantics.
pub(crate) trait Kernel: fmt::Debug + Send + Sync + 'static {
    /// The ONNX operator name, for dumps and errors.
    fn name(&self) -> &'static str;
    /// How many outputs the operator has.
    fn n_outputs(&self) -> usize {
        1
    }
    /// Output facts from input facts (`konst` is set on constant inputs).
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>>;
    /// Evaluates on concrete inputs.
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>>;
}

/// A [`Kernel`] as a tract operator, at both the inference and typed levels.
#[derive(Clone, Debug)]
pub(crate) struct MlOp(pub(crate) Arc<dyn Kernel>);

impl PartialEq for MlOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for MlOp {}

/// Boxes `kernel` as the parser result tract expects.
pub(crate) fn parsed(kernel: impl Kernel) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((Box::new(MlOp(Arc::new(kernel))), vec![]))
}

impl Op for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }
    op_as_typed_op!();
}

impl EvalOp for MlOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.0.eval(inputs)
    }
}

impl TypedOp for MlOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.0
            .output_facts(inputs)
            .with_context(|| format!("typing {}", self.0.name()))
    }
    as_op!();
}

/// Prefix of the placeholder symbols standing for dims inference has not found yet.
const UNKNOWN_DIM: &str = "drover_unknown_";

/// A typed fact for an inference fact, if its type and rank are known
/// (unknown dims become fresh symbols, so kernels still see the rank).
fn typed_fact(fact: &InferenceFact, scope: &SymbolScope, ix: usize) -> Option<TypedFact> {
    if let Some(k) = fact.value.concretize() {
        return TypedFact::try_from(k).ok();
    }
    let dt = fact.datum_type()?;
    let rank = fact.shape.rank().concretize()?;
    let dims: TVec<TDim> = (0..rank as usize)
        .map(|axis| {
            fact.shape
                .dims()
                .nth(axis)
                .and_then(|d| d.concretize())
                .unwrap_or_else(|| {
                    TDim::Sym(scope.new_with_prefix(&format!("{UNKNOWN_DIM}{ix}_{axis}_")))
                })
        })
        .collect();
    Some(dt.fact(dims))
}

impl InferenceOp for MlOp {
    fn infer_facts(
        &mut self,
        inputs: TVec<&InferenceFact>,
        outputs: TVec<&InferenceFact>,
        _observed: TVec<&InferenceFact>,
    ) -> TractResult<(
        TVec<InferenceFact>,
        TVec<InferenceFact>,
        TVec<InferenceFact>,
    )> {
        let scope = SymbolScope::default();
        let typed: Option<TVec<TypedFact>> = inputs
            .iter()
            .enumerate()
            .map(|(ix, f)| typed_fact(f, &scope, ix))
            .collect();
        let ins: TVec<InferenceFact> = inputs.iter().map(|f| (*f).clone()).collect();
        let Some(typed) = typed else {
            return Ok((ins, outputs.into_iter().cloned().collect(), tvec!()));
        };
        let refs: TVec<&TypedFact> = typed.iter().collect();
        let facts = self.0.output_facts(&refs)?;
        let mut outs = tvec!();
        for (ix, fact) in facts.into_iter().enumerate() {
            let mut inferred = InferenceFact::dt(fact.datum_type);
            // Dims minted above for unknown input dims are not real: leave them unknown.
            let dims: TVec<DimFact> = fact
                .shape
                .iter()
                .map(|d| {
                    if d.to_string().contains(UNKNOWN_DIM) {
                        DimFact::default()
                    } else {
                        DimFact::from(d.clone())
                    }
                })
                .collect();
            inferred = inferred.with_shape(ShapeFactoid::closed(dims));
            let prior = outputs.get(ix).map(|f| (*f).clone()).unwrap_or_default();
            outs.push(prior.unify(&inferred).unwrap_or(inferred));
        }
        Ok((ins, outs, tvec!()))
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.n_outputs())
    }

    fn to_typed(
        &self,
        _source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let inputs = node
            .inputs
            .iter()
            .map(|i| {
                mapping
                    .get(i)
                    .copied()
                    .with_context(|| format!("no typed wire for {i:?}"))
            })
            .collect::<TractResult<TVec<OutletId>>>()?;
        target.wire_node(&*node.name, self.clone(), &inputs)
    }

    as_op!();
}

/// The rows of a 1-D or 2-D feature input: `(n, features)`, 1-D as one row.
pub(crate) fn rows_of(shape: &[TDim]) -> TractResult<(TDim, TDim)> {
    match shape {
        [f] => Ok((1.into(), f.clone())),
        [n, f] => Ok((n.clone(), f.clone())),
        other => bail!("expected a 1-D or 2-D input, got shape {other:?}"),
    }
}

/// The input as a contiguous f32 matrix `(rows, cols, values)`.
pub(crate) fn f32_matrix(t: &Tensor) -> TractResult<(usize, usize, std::borrow::Cow<'_, [f32]>)> {
    let (n, f) = match t.shape() {
        [f] => (1, *f),
        [n, f] => (*n, *f),
        other => bail!("expected a 1-D or 2-D input, got shape {other:?}"),
    };
    let values = match t.cast_to::<f32>()? {
        std::borrow::Cow::Borrowed(b) => {
            std::borrow::Cow::Borrowed(b.try_as_plain_ram()?.as_slice::<f32>()?)
        }
        std::borrow::Cow::Owned(o) => {
            std::borrow::Cow::Owned(o.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        }
    };
    Ok((n, f, values))
}

/// Parser signature shared by every operator file.
pub(crate) type Parsed = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// Attribute access with the node named in every error.
pub(crate) fn attrs<'a>(ctx: &'a ParsingContext<'a>, node: &'a NodeProto) -> Attrs<'a> {
    Attrs { ctx, node }
}
