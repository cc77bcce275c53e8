//! Errors that name the real cause.

use tract_onnx::prelude::TractError;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not an ONNX model (protobuf decoding failed, or no graph).
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// A node uses an operator neither tract nor Drover implements.
    #[error("unsupported operator `{op}` (domain `{domain}`) at node `{node}`{more}")]
    UnsupportedOperator {
        /// The operator type, e.g. `Scaler`.
        op: String,
        /// Its domain (`ai.onnx` when empty in the file).
        domain: String,
        /// The node's name (or its first output when unnamed).
        node: String,
        /// A note listing the other unsupported operators, if any.
        more: String,
    },
    /// A node's attributes are invalid for its operator.
    #[error("invalid node: {0}")]
    InvalidNode(String),
    /// An input or output has a type Drover does not serve.
    #[error("{name}: unsupported type: {what}")]
    UnsupportedType {
        /// The input's or output's name.
        name: String,
        /// What the type is.
        what: String,
    },
    /// A load option does not fit the model (unknown input, bad value).
    #[error("load option: {0}")]
    BadOption(String),
    /// tract could not type or optimise the graph.
    #[error("cannot plan the model: {0}")]
    Plan(String),
    /// The inputs given to `run` do not fit the model.
    #[error("bad input: {0}")]
    Input(String),
    /// Evaluation failed.
    #[error("run failed: {0}")]
    Run(String),
}

impl OnnxError {
    /// A stable short code, for reports and logs.
    pub fn code(&self) -> &'static str {
        match self {
            OnnxError::NotOnnx(_) => "not_onnx",
            OnnxError::UnsupportedOperator { .. } => "unsupported_operator",
            OnnxError::InvalidNode(_) => "invalid_node",
            OnnxError::UnsupportedType { .. } => "unsupported_type",
            OnnxError::BadOption(_) => "bad_option",
            OnnxError::Plan(_) => "plan",
            OnnxError::Input(_) => "bad_input",
            OnnxError::Run(_) => "run",
        }
    }
}

/// tract's whole error chain on one line (its top context alone often hides the cause).
pub(crate) fn chain(e: &TractError) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
