//! LinearClassifier and LinearRegressor.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::Labels;
use super::transform::PostTransform;
use super::{Kernel, Parsed, attrs, f32_matrix, parsed, rows_of};

/// `scores = X · Wᵀ + b` for `rows` weight rows.
fn affine(x: &[f32], f: usize, w: &[f32], b: &[f32], rows: usize) -> Vec<f32> {
    let n = x.len().checked_div(f).unwrap_or(0);
    let mut out = Vec::with_capacity(n * rows);
    for xr in x.chunks(f.max(1)).take(n) {
        for (c, wr) in w.chunks(f.max(1)).take(rows).enumerate() {
            let dot: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            out.push(dot + b.get(c).copied().unwrap_or(0.0));
        }
    }
    out
}

/// The index of the largest value (the first one on ties).
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// A linear classifier: label and per-class scores.
#[derive(Debug)]
pub(crate) struct LinearClassifier {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    labels: Labels,
    post: PostTransform,
    /// Weight rows (classes scored).
    rows: usize,
}

pub(crate) fn linear_classifier(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let coefficients = a.floats("coefficients");
    let intercepts = a.floats("intercepts");
    let labels = a.class_labels()?;
    let post = PostTransform::parse(&a.string("post_transform", "NONE")).map_err(|e| a.bad(e))?;
    let rows = if intercepts.is_empty() {
        labels.len()
    } else {
        intercepts.len()
    };
    if rows == 0 || coefficients.len() % rows != 0 {
        return Err(a.bad(format!(
            "{} coefficients for {rows} classes",
            coefficients.len()
        )));
    }
    parsed(LinearClassifier {
        coefficients,
        intercepts,
        labels,
        post,
        rows,
    })
}

impl LinearClassifier {
    /// Columns of the scores output: a single weight row for two labels
    /// is expanded to `[-s, s]`.
    fn score_cols(&self) -> usize {
        if self.rows == 1 && self.labels.len() == 2 {
            2
        } else {
            self.rows
        }
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }
    fn n_outputs(&self) -> usize {
        2
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (n, _) = rows_of(&inputs[0].shape.to_tvec())?;
        Ok(tvec!(
            self.labels.datum_type().fact([n.clone()]),
            f32::fact([n, self.score_cols().into()])
        ))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = f32_matrix(&inputs[0])?;
        ensure!(
            f * self.rows == self.coefficients.len(),
            "LinearClassifier: {f} features"
        );
        let raw = affine(&x, f, &self.coefficients, &self.intercepts, self.rows);
        let cols = self.score_cols();
        let mut scores = Vec::with_capacity(n * cols);
        let mut chosen = Vec::with_capacity(n);
        for r in raw.chunks(self.rows) {
            let start = scores.len();
            if cols == 2 && self.rows == 1 {
                scores.extend([-r[0], r[0]]);
            } else {
                scores.extend_from_slice(r);
            }
            let row = &mut scores[start..];
            self.post.apply(row);
            if cols > 1 {
                chosen.push(argmax(row));
            } else {
                let threshold = if self.post == PostTransform::None {
                    0.0
                } else {
                    0.5
                };
                chosen.push(usize::from(row[0] >= threshold));
            }
        }
        let labels = if cols > 1 {
            self.labels.pick(&chosen)?
        } else {
            // One score column: the first label when positive, else 0 / "".
            let first = self.labels.pick(&[0])?;
            match &self.labels {
                Labels::Int(v) => {
                    let l = v.first().copied().unwrap_or(1);
                    tensor1(
                        &chosen
                            .iter()
                            .map(|&c| if c == 1 { l } else { 0 })
                            .collect::<Vec<_>>(),
                    )
                }
                Labels::Str(_) => {
                    let l = first.try_as_plain_ram()?.as_slice::<String>()?.to_vec();
                    let l = l.first().cloned().unwrap_or_default();
                    tensor1(
                        &chosen
                            .iter()
                            .map(|&c| if c == 1 { l.clone() } else { String::new() })
                            .collect::<Vec<_>>(),
                    )
                }
            }
        };
        Ok(tvec!(
            labels.into_tvalue(),
            Tensor::from_shape(&[n, cols], &scores)?.into_tvalue()
        ))
    }
}

/// A linear regressor: `targets` outputs per row.
#[derive(Debug)]
pub(crate) struct LinearRegressor {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    post: PostTransform,
}

pub(crate) fn linear_regressor(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let targets = usize::try_from(a.int("targets", 1)).map_err(|e| a.bad(e))?;
    let coefficients = a.floats("coefficients");
    let post = PostTransform::parse(&a.string("post_transform", "NONE")).map_err(|e| a.bad(e))?;
    if targets == 0 || coefficients.len() % targets != 0 {
        return Err(a.bad(format!(
            "{} coefficients for {targets} targets",
            coefficients.len()
        )));
    }
    parsed(LinearRegressor {
        coefficients,
        intercepts: a.floats("intercepts"),
        targets,
        post,
    })
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (n, _) = rows_of(&inputs[0].shape.to_tvec())?;
        Ok(tvec!(f32::fact([n, self.targets.into()])))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = f32_matrix(&inputs[0])?;
        ensure!(
            f * self.targets == self.coefficients.len(),
            "LinearRegressor: {f} features"
        );
        let mut y = affine(&x, f, &self.coefficients, &self.intercepts, self.targets);
        y.chunks_mut(self.targets).for_each(|r| self.post.apply(r));
        Ok(tvec!(
            Tensor::from_shape(&[n, self.targets], &y)?.into_tvalue()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_and_argmax() {
        let y = affine(
            &[1.0, 2.0, 3.0, 4.0],
            2,
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            &[0.5],
            3,
        );
        assert_eq!(y, vec![1.5, 2.0, 3.0, 3.5, 4.0, 7.0]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn binary_single_row_expands_to_two_columns() {
        let k = LinearClassifier {
            coefficients: vec![1.0, -1.0],
            intercepts: vec![0.0],
            labels: Labels::Int(vec![3, 7]),
            post: PostTransform::Logistic,
            rows: 1,
        };
        let out = k
            .eval(tvec!(tensor2(&[[2.0f32, 0.0], [0.0, 2.0]]).into_tvalue()))
            .unwrap();
        let labels = out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<i64>()
            .unwrap()
            .to_vec();
        assert_eq!(labels, vec![7, 3]);
        let p = out[1]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && p[1] > 0.8, "{p:?}");
    }
}
