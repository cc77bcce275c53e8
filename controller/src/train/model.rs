//! The trained model: standardisation plus a linear softmax layer.

use serde::{Deserialize, Serialize};

use super::error::TrainError;

/// Multinomial logistic regression over standardised features:
/// `softmax(W · ((x - mean) / std) + bias)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoftmaxModel {
    /// Input feature names, in input-tensor order.
    pub feature_names: Vec<String>,
    /// Class names; output index `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Per-feature mean subtracted before the linear layer.
    pub mean: Vec<f32>,
    /// Per-feature divisor after subtracting the mean; always positive.
    pub std: Vec<f32>,
    /// `weights[class][feature]`, applied to standardised features.
    pub weights: Vec<Vec<f32>>,
    /// Per-class intercept.
    pub bias: Vec<f32>,
}

impl SoftmaxModel {
    /// Class probabilities for one row of raw (unstandardised) features.
    ///
    /// `row` must hold one value per feature; debug builds assert it.
    pub fn predict_proba(&self, row: &[f32]) -> Vec<f32> {
        debug_assert_eq!(row.len(), self.feature_names.len());
        let z: Vec<f32> = row
            .iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(x, (m, s))| (x - m) / s)
            .collect();
        let logits: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(&z).map(|(w, z)| w * z).sum::<f32>() + b)
            .collect();
        softmax(&logits)
    }

    /// Index of the most probable class (the first one on a tie, like ONNX
    /// `ArgMax`).
    pub fn predict(&self, row: &[f32]) -> usize {
        argmax(&self.predict_proba(row))
    }

    /// Serialises the model as JSON (the `--base` file format besides ONNX).
    pub fn to_json(&self) -> Result<String, TrainError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses and validates a model written by [`SoftmaxModel::to_json`].
    pub fn from_json(json: &str) -> Result<SoftmaxModel, TrainError> {
        let model: SoftmaxModel = serde_json::from_str(json)?;
        model.validate()?;
        Ok(model)
    }

    /// Checks that every shape agrees and every number is usable.
    pub fn validate(&self) -> Result<(), TrainError> {
        let invalid = |m: String| Err(TrainError::InvalidModel(m));
        let f = self.feature_names.len();
        let c = self.classes.len();
        if f == 0 {
            return invalid("no features".into());
        }
        if c < 2 {
            return invalid(format!("{c} classes; need at least two"));
        }
        if self.mean.len() != f || self.std.len() != f {
            return invalid(format!(
                "{f} features but {} means and {} stds",
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.weights.len() != c || self.bias.len() != c {
            return invalid(format!(
                "{c} classes but {} weight rows and {} biases",
                self.weights.len(),
                self.bias.len()
            ));
        }
        if let Some(w) = self.weights.iter().find(|w| w.len() != f) {
            return invalid(format!(
                "a weight row has {} values for {f} features",
                w.len()
            ));
        }
        let all_finite = self
            .mean
            .iter()
            .chain(&self.bias)
            .chain(self.weights.iter().flatten())
            .all(|v| v.is_finite());
        if !all_finite {
            return invalid("non-finite parameter".into());
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return invalid("std must be positive and finite".into());
        }
        Ok(())
    }
}

pub(crate) fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

pub(crate) fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn tiny() -> SoftmaxModel {
        SoftmaxModel {
            feature_names: vec!["a".into(), "b".into()],
            classes: vec!["x".into(), "y".into(), "z".into()],
            mean: vec![1.0, -2.0],
            std: vec![2.0, 0.5],
            weights: vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, -1.0]],
            bias: vec![0.0, 0.5, -0.5],
        }
    }

    #[test]
    fn predict_proba_sums_to_one_and_follows_logits() {
        let m = tiny();
        let p = m.predict_proba(&[5.0, -2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // z = (2, 0): logits (2, 0.5, -2.5)
        let want = softmax(&[2.0, 0.5, -2.5]);
        for (a, b) in p.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6);
        }
        assert_eq!(m.predict(&[5.0, -2.0]), 0);
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax(&[1000.0, 999.0]);
        assert!(p.iter().all(|v| v.is_finite()));
        assert!(p[0] > p[1]);
    }

    #[test]
    fn json_round_trip_and_validation() {
        let m = tiny();
        let back = SoftmaxModel::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);

        let mut bad = tiny();
        bad.std[1] = 0.0;
        let err = SoftmaxModel::from_json(&bad.to_json().unwrap()).unwrap_err();
        assert!(matches!(err, TrainError::InvalidModel(_)), "{err:?}");

        let mut bad = tiny();
        bad.weights[2].pop();
        assert!(matches!(bad.validate(), Err(TrainError::InvalidModel(_))));

        assert!(matches!(
            SoftmaxModel::from_json("{"),
            Err(TrainError::Json(_))
        ));
    }
}
