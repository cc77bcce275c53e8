//! drover-onnx: the one place Drover loads, inspects and runs ONNX models.
//!
//! ```no_run
//! use drover_onnx::{LoadOptions, Model, Tensor};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bytes = std::fs::read("model.onnx")?;
//! let mut options = LoadOptions::default();
//! options.fix_input("sr=16000")?; // the deployment's sample rate
//! let model = Model::load(&bytes, &options)?;
//! let x = Tensor::from_shape(&[1, 4], &[0.5f32, 1.0, -2.0, 3.0])?;
//! for (name, value) in model.run(vec![("input".into(), x)])? {
//!     println!("{name}: {value:?}");
//! }
//! # Ok(())
//! # }
//! ```
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
//! - [`npy`]: `.npy` / `.npz` reading and writing (binary requests,
//!   answers and reference data).
//! - `error`: [`OnnxError`].

mod error;
mod fold;
mod ml;
mod model;
pub mod npy;
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
