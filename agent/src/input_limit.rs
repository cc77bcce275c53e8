//! How large a request may be, sized from the model's declared inputs (the
//! HTTP body limit and the in-process library's check are this one rule).
//!
//! An input may carry at most the values its declared shape allows: a fixed
//! dim counts as itself (shapes pinned at push with `--input-shape` are
//! fixed), a symbolic first dim (the batch) as [`MAX_BATCH`], any other
//! dynamic dim as [`DYNAMIC_DIM`], and an input with a dynamic dim never more
//! than [`MAX_DYNAMIC_VALUES`] values. An HTTP body may then be as large as
//! those values in its format ([`JSON_BYTES_PER_VALUE`] per value in JSON;
//! 8 bytes, or [`MAX_STRING_CHARS`] UTF-32 chars for strings, in `.npy` /
//! `.npz` / raw bytes) plus [`OVERHEAD_BYTES`], and never more than the
//! agent's `max_body_bytes`.

use drover_onnx::{Dim, ElementType, Schema};

/// A symbolic batch dim allows this many rows per request.
pub const MAX_BATCH: usize = 64;
/// Any other dynamic dim (an image's height or width, a sequence length)
/// counts as this many.
pub const DYNAMIC_DIM: usize = 4096;
/// Values an input with a dynamic dim carries at most (64 MiB of f32:
/// a 3 × 2048 × 2048 image batch of 1, or 64 s of 16 kHz audio at batch 64).
pub const MAX_DYNAMIC_VALUES: usize = 16 << 20;
/// Bytes one value may take in a JSON body (`-1.2345678901234567e-300,`).
pub const JSON_BYTES_PER_VALUE: usize = 24;
/// Characters one string value may take.
pub const MAX_STRING_CHARS: usize = 256;
/// Headers, names and punctuation, whatever the model.
pub const OVERHEAD_BYTES: usize = 64 << 10;
/// The body limit while no model is active (the answer is `no_model`).
pub const NO_MODEL_BYTES: usize = 64 << 10;

/// The encoding of a request body, for its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// JSON text.
    Json,
    /// `.npy`, `.npz` or raw little-endian values.
    Binary,
}

/// The largest request a model accepts, per input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputLimits {
    inputs: Vec<(String, usize, bool)>,
}

/// Values an input of `shape` may carry (see the module doc).
pub fn max_values(shape: Option<&[Dim]>) -> usize {
    let Some(shape) = shape else {
        return MAX_DYNAMIC_VALUES;
    };
    let mut dynamic = false;
    let n = shape.iter().enumerate().fold(1usize, |acc, (i, d)| {
        let k = match d {
            Dim::Fixed(n) => *n,
            Dim::Symbol(_) => {
                dynamic = true;
                if i == 0 { MAX_BATCH } else { DYNAMIC_DIM }
            }
        };
        acc.saturating_mul(k)
    });
    if dynamic {
        n.min(MAX_DYNAMIC_VALUES)
    } else {
        n
    }
}

impl InputLimits {
    /// The limits of a model's inputs.
    pub fn from_schema(schema: &Schema) -> InputLimits {
        InputLimits {
            inputs: schema
                .inputs
                .iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        max_values(i.shape.as_deref()),
                        i.element == ElementType::String,
                    )
                })
                .collect(),
        }
    }

    /// Values input `name` may carry, if the model has it.
    pub fn max_values(&self, name: &str) -> Option<usize> {
        self.inputs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    }

    /// Largest body of a request in `format`, before the agent's ceiling.
    pub fn body_bytes(&self, format: BodyFormat) -> usize {
        self.inputs
            .iter()
            .fold(OVERHEAD_BYTES, |acc, (name, values, strings)| {
                let per = match (format, strings) {
                    (BodyFormat::Json, false) => JSON_BYTES_PER_VALUE,
                    (BodyFormat::Json, true) => MAX_STRING_CHARS * 4 + 2,
                    (BodyFormat::Binary, false) => 8,
                    (BodyFormat::Binary, true) => MAX_STRING_CHARS * 4,
                };
                acc.saturating_add(values.saturating_mul(per))
                    .saturating_add(name.len() + 1024)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_onnx::TensorSpec;

    fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            element: ElementType::F32,
            shape: Some(shape),
        }
    }

    #[test]
    fn limits_follow_the_declared_shape() {
        let sym = |s: &str| Dim::Symbol(s.into());
        let schema = Schema {
            inputs: vec![
                spec("x", vec![sym("N"), Dim::Fixed(4)]),
                spec(
                    "image",
                    vec![Dim::Fixed(1), Dim::Fixed(3), sym("H"), sym("W")],
                ),
                spec("state", vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(32)]),
            ],
            outputs: vec![],
        };
        let l = InputLimits::from_schema(&schema);
        assert_eq!(l.max_values("x"), Some(MAX_BATCH * 4));
        assert_eq!(l.max_values("image"), Some(MAX_DYNAMIC_VALUES));
        assert_eq!(l.max_values("state"), Some(32));
        assert_eq!(l.max_values("nope"), None);
        let tabular = InputLimits::from_schema(&Schema {
            inputs: vec![spec("x", vec![sym("N"), Dim::Fixed(4)])],
            outputs: vec![],
        });
        assert_eq!(
            tabular.body_bytes(BodyFormat::Json),
            OVERHEAD_BYTES + 256 * JSON_BYTES_PER_VALUE + 1025
        );
        assert_eq!(
            tabular.body_bytes(BodyFormat::Binary),
            OVERHEAD_BYTES + 256 * 8 + 1025
        );
        // A pinned or static image is exact: no cap applies.
        let big = vec![
            Dim::Fixed(8),
            Dim::Fixed(3),
            Dim::Fixed(1024),
            Dim::Fixed(1024),
        ];
        assert_eq!(max_values(Some(&big)), 8 * 3 * 1024 * 1024);
        assert_eq!(max_values(None), MAX_DYNAMIC_VALUES);
    }
}
