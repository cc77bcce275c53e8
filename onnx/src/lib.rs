//! drover-onnx: the one place Drover loads, inspects and runs ONNX models.
//!
//! # Layout
//! - `model`: [`Model::load`] (typed refusals that name the operator and
//!   node), [`Model::schema`], [`Model::class_labels`] and [`Model::run`]
//!   through shape-specialised optimized plans cached per input shapes.
//! - `schema`: inputs, outputs (ZipMap served as probabilities + labels)
//!   and class labels read from the graph.
//! - `ml`: the ai.onnx.ml operators as Drover's own tract ops, replacing
//!   tract's (which mislabel binary forests and lack most of the domain).
//! - `fold`: fixed inputs become constants; an `If` they decide is inlined.
//! - `error`: [`OnnxError`].

mod error;
mod fold;
mod ml;
mod model;
mod schema;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use error::OnnxError;
pub use ml::OPERATORS as ML_OPERATORS;
pub use model::{DEFAULT_MAX_PLANS, FixedValue, LoadOptions, Model, Outputs, framework};
pub use schema::{ClassLabels, Dim, ElementType, OutputKind, OutputSpec, Schema, TensorSpec};
/// tract's tensor type, in which inputs and outputs travel.
pub use tract_onnx::prelude::Tensor;
