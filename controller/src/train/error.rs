//! [`TrainError`], shared by the trainer's modules (kept out of `mod.rs` so
//! they do not import their parent).

use std::path::PathBuf;

/// Errors from reading data, training, and (de)serialising models.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data file could not be opened.
    #[error("cannot open {}: {source}", path.display())]
    Io {
        /// The file asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reading the CSV failed part-way (I/O error or invalid UTF-8).
    #[error("cannot read CSV: {0}")]
    Read(#[from] std::io::Error),
    /// The CSV has no header row.
    #[error("CSV is empty: no header row")]
    Empty,
    /// The CSV has a header but no data rows.
    #[error("CSV has a header but no data rows")]
    NoRows,
    /// A row has a different number of fields than the header.
    #[error("line {line}: expected {expected} fields, found {found}")]
    RaggedRow {
        /// 1-based line number in the file.
        line: usize,
        /// Fields in the header.
        expected: usize,
        /// Fields on this line.
        found: usize,
    },
    /// A feature cell is empty, not a number, or not finite.
    #[error("line {line}, column `{column}`: `{value}` is not a finite number")]
    NonNumeric {
        /// 1-based line number in the file.
        line: usize,
        /// Header name of the column.
        column: String,
        /// The cell as read (trimmed, unquoted).
        value: String,
    },
    /// The header does not name the label column.
    #[error("label column `{label_column}` not found; the header has {header:?}")]
    MissingLabelColumn {
        /// The column asked for.
        label_column: String,
        /// The header as read.
        header: Vec<String>,
    },
    /// Every row has the same label, so there is nothing to separate.
    #[error("every row has label `{class}`; training needs at least two classes")]
    SingleClass {
        /// The one label seen.
        class: String,
    },
    /// The header has only the label column.
    #[error("the header has no feature columns besides `{label_column}`")]
    NoFeatures {
        /// The label column.
        label_column: String,
    },
    /// Two header columns have the same name.
    #[error("the header names column `{name}` twice")]
    DuplicateColumn {
        /// The repeated name.
        name: String,
    },
    /// A row's label cell is empty.
    #[error("line {line}: empty label")]
    EmptyLabel {
        /// 1-based line number in the file.
        line: usize,
    },
    /// A column or class name contains a comma, which the comma-joined ONNX
    /// metadata ([`META_CLASSES`], [`META_FEATURES`]) cannot represent.
    #[error("line {line}: name `{name}` contains a comma")]
    CommaInName {
        /// 1-based line number in the file (1 for the header).
        line: usize,
        /// The offending name.
        name: String,
    },
    /// A quoted field is not closed on its line.
    #[error("line {line}: unterminated quoted field")]
    UnterminatedQuote {
        /// 1-based line number in the file.
        line: usize,
    },
    /// Something other than whitespace or a comma follows a closing quote.
    #[error("line {line}: text after a closing quote")]
    TextAfterQuote {
        /// 1-based line number in the file.
        line: usize,
    },
    /// A hand-built [`Dataset`] breaks its documented invariants.
    #[error("invalid dataset: {0}")]
    InvalidDataset(String),
    /// [`TrainOptions`] out of range.
    #[error("invalid training options: {0}")]
    InvalidOptions(String),
    /// The warm-start model does not fit the data.
    #[error("base model {what} {base:?} differ from the data's {data:?}")]
    BaseMismatch {
        /// `"features"` or `"classes"`.
        what: &'static str,
        /// The base model's names.
        base: Vec<String>,
        /// The dataset's names.
        data: Vec<String>,
    },
    /// A [`SoftmaxModel`] has inconsistent shapes or unusable numbers.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The bytes are not a protobuf ModelProto.
    #[error("not an ONNX model: {0}")]
    OnnxDecode(#[from] prost::DecodeError),
    /// Valid ONNX, but not a model written by [`to_onnx`].
    #[error("ONNX model was not written by drover's trainer: {0}")]
    NotDroverModel(String),
    /// Model JSON could not be written or parsed.
    #[error("model JSON: {0}")]
    Json(#[from] serde_json::Error),
}
