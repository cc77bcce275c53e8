//! The `post_transform` every ai.onnx.ml classifier and regressor shares.

use tract_onnx::tract_hir::internal::*;

/// A score post-transform, as onnxruntime computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PostTransform {
    /// Scores as they are.
    None,
    /// `1 / (1 + exp(-x))` per score.
    Logistic,
    /// Softmax over a row.
    Softmax,
    /// Softmax over a row that leaves exact zeros at (scaled) zero.
    SoftmaxZero,
    /// The inverse of the normal CDF per score.
    Probit,
}

impl PostTransform {
    /// Parses the attribute value (absent means `NONE`).
    pub(crate) fn parse(s: &str) -> TractResult<PostTransform> {
        match s {
            "" | "NONE" => Ok(PostTransform::None),
            "LOGISTIC" => Ok(PostTransform::Logistic),
            "SOFTMAX" => Ok(PostTransform::Softmax),
            "SOFTMAX_ZERO" => Ok(PostTransform::SoftmaxZero),
            "PROBIT" => Ok(PostTransform::Probit),
            other => bail!("unknown post_transform {other:?}"),
        }
    }

    /// Applies the transform to one row of scores.
    pub(crate) fn apply(self, row: &mut [f32]) {
        match self {
            PostTransform::None => {}
            PostTransform::Logistic => row.iter_mut().for_each(|v| *v = logistic(*v)),
            PostTransform::Softmax => softmax(row),
            PostTransform::SoftmaxZero => softmax_zero(row),
            PostTransform::Probit => row.iter_mut().for_each(|v| *v = probit(*v)),
        }
    }
}

/// The logistic function, stable for large `|x|`.
pub(crate) fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

fn softmax_zero(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp_neg_max = (-max).exp();
    let mut sum = 0.0;
    for v in row.iter_mut() {
        if *v > 0.000_000_1 || *v < -0.000_000_1 {
            *v = (*v - max).exp();
        } else {
            *v *= exp_neg_max;
        }
        sum += *v;
    }
    if sum == 0.0 {
        row.iter_mut().for_each(|v| *v = 0.5);
    } else {
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// onnxruntime's approximation of the inverse error function (Winitzki).
fn erf_inv(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    if x == 0.0 {
        return 0.0;
    }
    let log = x.ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * log;
    let v2 = 1.0 / 0.147 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sign * v3.sqrt()
}

/// `sqrt(2) * erfinv(2p - 1)`.
pub(crate) fn probit(p: f32) -> f32 {
    std::f32::consts::SQRT_2 * erf_inv(2.0 * p - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut row = [1.0, 2.0, 3.0];
        PostTransform::Softmax.apply(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(row[0] < row[1] && row[1] < row[2]);
        assert!((row[2] - 0.665_240_9).abs() < 1e-6);
    }

    #[test]
    fn softmax_zero_leaves_zeros_small() {
        let mut row = [0.0, 2.0];
        PostTransform::SoftmaxZero.apply(&mut row);
        assert!(row[0] < 0.02, "{row:?}");
        let mut zeros = [0.0, 0.0];
        PostTransform::SoftmaxZero.apply(&mut zeros);
        assert_eq!(zeros, [0.5, 0.5]);
    }

    #[test]
    fn logistic_and_probit() {
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
        assert!((logistic(-30.0)).abs() < 1e-7);
        assert!(probit(0.5).abs() < 1e-6);
        assert!((probit(0.975) - 1.96).abs() < 0.01, "{}", probit(0.975));
        assert!(PostTransform::parse("SOFTMAXX").is_err());
    }
}
