//! Drover's reference trainer, so the drift → retrain → rollout loop closes
//! without Python.
//!
//! `drover train --data FILE.csv [--base NAME@VERSION] --out model.onnx`
//! reads a labelled CSV, fits a multinomial logistic regression on
//! standardised features (optionally warm-started from the model in
//! production) and writes an ONNX file the agent runs like any sklearn export.
//! Everything is deterministic for a given dataset and [`TrainOptions::seed`],
//! and nothing here touches the network or a clock.
//!
//! # Layout
//!
//! - [`dataset`]: [`Dataset`], the hand-written CSV reader and the dataset
//!   hash recorded as lineage.
//! - [`model`]: [`SoftmaxModel`] and its JSON form.
//! - [`onnx_io`]: [`to_onnx`] and [`load_base_from_onnx`].
//! - `prng`: SplitMix64 for the holdout split.
//! - this file: [`train`], its options, report and errors.

pub mod dataset;
pub mod error;
pub mod model;
pub mod onnx_io;
mod prng;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use dataset::Dataset;
pub use error::TrainError;
pub use model::SoftmaxModel;
pub use onnx_io::{META_CLASSES, META_FEATURES, PRODUCER, load_base_from_onnx, to_onnx};

use prng::SplitMix64;

/// Features whose training standard deviation is below this are treated as
/// constant (divided by 1), so standardising them cannot blow up.
const STD_FLOOR: f64 = 1e-6;
/// Heavy-ball momentum: the problem is convex but ill-conditioned when
/// classes are ordered along one direction (normal < warning < fault), and
/// plain gradient descent crawls there.
const MOMENTUM: f64 = 0.9;

/// Hyper-parameters of [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Full-batch gradient steps (with momentum). 0 is allowed: with a base
    /// model it just re-evaluates the base on the new data.
    pub epochs: usize,
    /// Step size in units of `1/L`, where `L` is a curvature bound computed
    /// from the training data, so one value suits any dataset; > 0, and
    /// above ~3 it may oscillate.
    pub learning_rate: f32,
    /// L2 penalty on the weights (not the biases); >= 0.
    pub l2: f32,
    /// Seeds the holdout split.
    pub seed: u64,
    /// Share of each class held out for [`TrainReport::holdout_accuracy`];
    /// in `[0, 1)`.
    pub holdout_fraction: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 200,
            learning_rate: 0.5,
            l2: 1e-4,
            seed: 0x5eed,
            holdout_fraction: 0.2,
        }
    }
}

impl TrainOptions {
    fn validate(&self) -> Result<(), TrainError> {
        let invalid = |m: String| Err(TrainError::InvalidOptions(m));
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(format!("learning_rate {} must be > 0", self.learning_rate));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return invalid(format!("l2 {} must be >= 0", self.l2));
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return invalid(format!(
                "holdout_fraction {} must be in [0, 1)",
                self.holdout_fraction
            ));
        }
        Ok(())
    }
}

/// What [`train`] produced and how well it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The trained model; [`to_onnx`] turns it into a deployable artifact.
    pub model: SoftmaxModel,
    /// Accuracy on the rows trained on.
    pub train_accuracy: f64,
    /// Accuracy on the held-out rows; NaN when `holdout_rows` is 0.
    pub holdout_accuracy: f64,
    /// Rows held out (stratified by class).
    pub holdout_rows: usize,
    /// Rows trained on.
    pub train_rows: usize,
    /// Mean cross-entropy on the training rows after the last epoch.
    pub train_loss: f64,
    /// Epochs run.
    pub epochs: usize,
    /// [`Dataset::sha256_hex`] of the input, for lineage.
    pub dataset_sha256: String,
}

/// Fits a [`SoftmaxModel`] to `data` by full-batch gradient descent with
/// momentum on softmax cross-entropy with L2, after standardising each
/// feature with the training rows' mean and standard deviation.
///
/// With `base`, training starts from the base model's function (its weights
/// re-expressed in the new standardisation), so a few epochs on fresh data
/// adapt the production model rather than start over. `base` must have the
/// same features and classes, in the same order, as `data`.
pub fn train(
    data: &Dataset,
    base: Option<&SoftmaxModel>,
    opts: &TrainOptions,
) -> Result<TrainReport, TrainError> {
    opts.validate()?;
    data.validate()?;
    if let Some(base) = base {
        base.validate()?;
        for (what, base, data) in [
            ("features", &base.feature_names, &data.feature_names),
            ("classes", &base.classes, &data.classes),
        ] {
            if base != data {
                return Err(TrainError::BaseMismatch {
                    what,
                    base: base.clone(),
                    data: data.clone(),
                });
            }
        }
    }

    let (train_ix, holdout_ix) = stratified_split(data, opts.holdout_fraction, opts.seed);
    let f = data.feature_names.len();
    let c = data.classes.len();
    let (mean, std) = standardisation(data, &train_ix);

    let z: Vec<f64> = train_ix
        .iter()
        .flat_map(|&i| {
            data.rows[i]
                .iter()
                .zip(mean.iter().zip(&std))
                .map(|(&x, (m, s))| (f64::from(x) - m) / s)
        })
        .collect();
    let y: Vec<usize> = train_ix.iter().map(|&i| data.labels[i]).collect();

    let (mut w, mut b) = match base {
        Some(base) => rebase(base, &mean, &std),
        None => (vec![0.0; c * f], vec![0.0; c]),
    };

    let n = y.len() as f64;
    let l2 = f64::from(opts.l2);
    let lr = f64::from(opts.learning_rate) / (0.5 * curvature_bound(&z, f) + l2);
    let mut grad_w = vec![0.0; c * f];
    let mut grad_b = vec![0.0; c];
    let mut vel_w = vec![0.0; c * f];
    let mut vel_b = vec![0.0; c];
    let mut p = vec![0.0; c];
    for _ in 0..opts.epochs {
        grad_w.fill(0.0);
        grad_b.fill(0.0);
        for (zi, &yi) in z.chunks_exact(f).zip(&y) {
            probabilities(&w, &b, zi, &mut p);
            p[yi] -= 1.0;
            for (k, &err) in p.iter().enumerate() {
                grad_b[k] += err;
                for (g, &x) in grad_w[k * f..(k + 1) * f].iter_mut().zip(zi) {
                    *g += err * x;
                }
            }
        }
        for ((wi, vi), gi) in w.iter_mut().zip(&mut vel_w).zip(&grad_w) {
            *vi = MOMENTUM * *vi - lr * (gi / n + l2 * *wi);
            *wi += *vi;
        }
        for ((bi, vi), gi) in b.iter_mut().zip(&mut vel_b).zip(&grad_b) {
            *vi = MOMENTUM * *vi - lr * gi / n;
            *bi += *vi;
        }
    }

    let mut train_loss = 0.0;
    for (zi, &yi) in z.chunks_exact(f).zip(&y) {
        probabilities(&w, &b, zi, &mut p);
        train_loss -= p[yi].max(f64::MIN_POSITIVE).ln();
    }
    train_loss /= n;

    let model = SoftmaxModel {
        feature_names: data.feature_names.clone(),
        classes: data.classes.clone(),
        mean: mean.iter().map(|&v| v as f32).collect(),
        std: std.iter().map(|&v| v as f32).collect(),
        weights: w
            .chunks_exact(f)
            .map(|r| r.iter().map(|&v| v as f32).collect())
            .collect(),
        bias: b.iter().map(|&v| v as f32).collect(),
    };
    model.validate()?;

    Ok(TrainReport {
        train_accuracy: accuracy(&model, data, &train_ix),
        holdout_accuracy: accuracy(&model, data, &holdout_ix),
        holdout_rows: holdout_ix.len(),
        train_rows: train_ix.len(),
        train_loss,
        epochs: opts.epochs,
        dataset_sha256: data.sha256_hex(),
        model,
    })
}

/// Row indices for training and holdout. Each class gives up
/// `floor(count * fraction)` rows, but always keeps at least one for training.
fn stratified_split(data: &Dataset, fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed);
    let mut by_class = vec![Vec::new(); data.classes.len()];
    for (i, &label) in data.labels.iter().enumerate() {
        by_class[label].push(i);
    }
    let mut holdout = Vec::new();
    for rows in &mut by_class {
        rng.shuffle(rows);
        let take =
            ((rows.len() as f64 * f64::from(fraction)) as usize).min(rows.len().saturating_sub(1));
        holdout.extend_from_slice(&rows[..take]);
    }
    holdout.sort_unstable();
    let mut is_holdout = vec![false; data.rows.len()];
    for &i in &holdout {
        is_holdout[i] = true;
    }
    let train = (0..data.rows.len()).filter(|&i| !is_holdout[i]).collect();
    (train, holdout)
}

fn standardisation(data: &Dataset, rows: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let f = data.feature_names.len();
    let n = rows.len() as f64;
    let mut mean = vec![0.0; f];
    for &i in rows {
        for (m, &x) in mean.iter_mut().zip(&data.rows[i]) {
            *m += f64::from(x);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0; f];
    for &i in rows {
        for ((v, &x), m) in var.iter_mut().zip(&data.rows[i]).zip(&mean) {
            *v += (f64::from(x) - m).powi(2);
        }
    }
    let std = var
        .iter()
        .map(|v| {
            let s = (v / n).sqrt();
            if s < STD_FLOOR { 1.0 } else { s }
        })
        .collect();
    (mean, std)
}

/// Re-expresses `base` in the standardisation `(mean, std)` so that the
/// starting logits equal the base model's for every input.
fn rebase(base: &SoftmaxModel, mean: &[f64], std: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut w = Vec::with_capacity(base.weights.len() * mean.len());
    let mut b = Vec::with_capacity(base.bias.len());
    for (row, &bias) in base.weights.iter().zip(&base.bias) {
        let mut shift = f64::from(bias);
        for j in 0..mean.len() {
            let (bw, bm, bs) = (
                f64::from(row[j]),
                f64::from(base.mean[j]),
                f64::from(base.std[j]),
            );
            w.push(bw * std[j] / bs);
            shift += bw * (mean[j] - bm) / bs;
        }
        b.push(shift);
    }
    (w, b)
}

/// An upper bound on the largest eigenvalue of the second moment of `[z, 1]`
/// (Gershgorin: the largest absolute row sum). Half of it bounds the
/// curvature of the mean softmax cross-entropy, so steps scaled by its
/// inverse cannot diverge however many or how correlated the features are.
fn curvature_bound(z: &[f64], f: usize) -> f64 {
    let d = f + 1;
    let mut m = vec![0.0; d * d];
    let mut rows = 0usize;
    for zi in z.chunks_exact(f) {
        rows += 1;
        for i in 0..d {
            let a = zi.get(i).copied().unwrap_or(1.0);
            for j in 0..d {
                m[i * d + j] += a * zi.get(j).copied().unwrap_or(1.0);
            }
        }
    }
    let rows = rows.max(1) as f64;
    m.chunks_exact(d)
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>() / rows)
        .fold(1.0, f64::max)
}

fn probabilities(w: &[f64], b: &[f64], z: &[f64], out: &mut [f64]) {
    let f = z.len();
    for (k, o) in out.iter_mut().enumerate() {
        *o = b[k]
            + w[k * f..(k + 1) * f]
                .iter()
                .zip(z)
                .map(|(w, z)| w * z)
                .sum::<f64>();
    }
    let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for o in out.iter_mut() {
        *o = (*o - max).exp();
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

fn accuracy(model: &SoftmaxModel, data: &Dataset, rows: &[usize]) -> f64 {
    if rows.is_empty() {
        return f64::NAN;
    }
    let correct = rows
        .iter()
        .filter(|&&i| model.predict(&data.rows[i]) == data.labels[i])
        .count();
    correct as f64 / rows.len() as f64
}
