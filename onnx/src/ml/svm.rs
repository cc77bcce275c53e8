//! SVMClassifier (one-vs-one votes, Platt-scaled pairwise coupling for
//! probabilities) and SVMRegressor, as libsvm and onnxruntime compute them.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::attrs::{Attrs, Labels};
use super::linear::argmax;
use super::transform::{PostTransform, logistic};
use super::{Kernel, Parsed, attrs, f32_matrix, parsed, rows_of};

/// A kernel function and its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SvmKernel {
    Linear,
    Poly { gamma: f32, coef0: f32, degree: i32 },
    Rbf { gamma: f32 },
    Sigmoid { gamma: f32, coef0: f32 },
}

impl SvmKernel {
    fn parse(a: &Attrs) -> TractResult<SvmKernel> {
        let p = a.floats("kernel_params");
        let (gamma, coef0, degree) = (
            p.first().copied().unwrap_or(0.0),
            p.get(1).copied().unwrap_or(0.0),
            p.get(2).copied().unwrap_or(0.0),
        );
        Ok(
            match a
                .string("kernel_type", "LINEAR")
                .to_ascii_uppercase()
                .as_str()
            {
                "LINEAR" => SvmKernel::Linear,
                "POLY" => SvmKernel::Poly {
                    gamma,
                    coef0,
                    degree: degree as i32,
                },
                "RBF" => SvmKernel::Rbf { gamma },
                "SIGMOID" => SvmKernel::Sigmoid { gamma, coef0 },
                other => return Err(a.bad(format!("unknown kernel_type {other:?}"))),
            },
        )
    }

    fn eval(self, x: &[f32], v: &[f32]) -> f32 {
        let dot = || x.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
        match self {
            SvmKernel::Linear => dot(),
            SvmKernel::Poly {
                gamma,
                coef0,
                degree,
            } => (dot() * gamma + coef0).powi(degree),
            SvmKernel::Rbf { gamma } => {
                let d: f32 = x.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
                (-gamma * d).exp()
            }
            SvmKernel::Sigmoid { gamma, coef0 } => (dot() * gamma + coef0).tanh(),
        }
    }
}

/// An SVM classifier.
#[derive(Debug)]
pub(crate) struct SvmClassifier {
    kernel: SvmKernel,
    labels: Labels,
    /// Support vectors, row-major; empty for the linear form.
    vectors: Vec<f32>,
    per_class: Vec<usize>,
    coefficients: Vec<f32>,
    rho: Vec<f32>,
    prob_a: Vec<f32>,
    prob_b: Vec<f32>,
    post: PostTransform,
}

pub(crate) fn svm_classifier(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let labels = a.class_labels()?;
    let k = SvmClassifier {
        kernel: SvmKernel::parse(&a)?,
        vectors: a.floats("support_vectors"),
        per_class: a.indices("vectors_per_class")?,
        coefficients: a.floats("coefficients"),
        rho: a.floats("rho"),
        prob_a: a.floats("prob_a"),
        prob_b: a.floats("prob_b"),
        post: PostTransform::parse(&a.string("post_transform", "NONE")).map_err(|e| a.bad(e))?,
        labels,
    };
    let c = k.labels.len();
    let sv: usize = k.per_class.iter().sum();
    if sv > 0 {
        if k.per_class.len() != c || k.coefficients.len() != sv * (c.max(2) - 1) {
            return Err(a.bad("vectors_per_class / coefficients do not match the classes"));
        }
        if k.rho.len() < c * (c - 1) / 2 || k.vectors.len() % sv != 0 {
            return Err(a.bad("rho / support_vectors do not match the classes"));
        }
        if !k.prob_a.is_empty()
            && (k.prob_a.len() < c * (c - 1) / 2 || k.prob_b.len() < k.prob_a.len())
        {
            return Err(a.bad("prob_a / prob_b do not match the classes"));
        }
    } else if k.coefficients.is_empty() || k.coefficients.len() % c.max(1) != 0 || k.rho.is_empty()
    {
        return Err(a.bad("linear SVM coefficients / rho do not match the classes"));
    }
    parsed(k)
}

impl SvmClassifier {
    fn n_vectors(&self) -> usize {
        self.per_class.iter().sum()
    }

    fn score_cols(&self) -> usize {
        let c = self.labels.len();
        if self.n_vectors() == 0 || !self.prob_a.is_empty() {
            c
        } else {
            (c * (c - 1) / 2).max(2)
        }
    }

    /// One row: the chosen class and the score columns.
    fn row(&self, x: &[f32], f: usize) -> (usize, Vec<f32>) {
        let c = self.labels.len();
        let sv = self.n_vectors();
        if sv == 0 {
            let w = self.coefficients.len() / c.max(1);
            let mut s: Vec<f32> = self
                .coefficients
                .chunks(w.max(1))
                .map(|wr| self.rho[0] + SvmKernel::Linear.eval(x, wr))
                .collect();
            self.post.apply(&mut s);
            return (argmax(&s), s);
        }
        let kernels: Vec<f32> = self
            .vectors
            .chunks(f.max(1))
            .map(|v| self.kernel.eval(x, v))
            .collect();
        let mut start = Vec::with_capacity(c);
        let mut acc = 0;
        for &n in &self.per_class {
            start.push(acc);
            acc += n;
        }
        let coef = |row: usize, from: usize, len: usize| {
            let off = row * sv + from;
            self.coefficients[off..off + len]
                .iter()
                .zip(&kernels[from..from + len])
                .map(|(a, b)| a * b)
                .sum::<f32>()
        };
        let mut votes = vec![0u32; c];
        let mut pair = Vec::with_capacity(c * (c - 1) / 2);
        for i in 0..c {
            for j in i + 1..c {
                let s = self.rho[pair.len()]
                    + coef(j - 1, start[i], self.per_class[i])
                    + coef(i, start[j], self.per_class[j]);
                if s > 0.0 {
                    votes[i] += 1
                } else {
                    votes[j] += 1
                }
                pair.push(s);
            }
        }
        let mut chosen = 0;
        for (i, v) in votes.iter().enumerate() {
            if *v > votes[chosen] {
                chosen = i;
            }
        }
        if !self.prob_a.is_empty() {
            let mut p = self.probabilities(&pair, c);
            self.post.apply(&mut p);
            return (chosen, p);
        }
        let mut s = if pair.len() == 1 {
            vec![-pair[0], pair[0]]
        } else {
            pair
        };
        self.post.apply(&mut s);
        (chosen, s)
    }

    /// Pairwise Platt probabilities coupled into class probabilities (libsvm).
    fn probabilities(&self, pair: &[f32], k: usize) -> Vec<f32> {
        let mut r = vec![0f32; k * k];
        let mut idx = 0;
        for i in 0..k {
            for j in i + 1..k {
                let v = 1.0 - logistic(pair[idx] * self.prob_a[idx] + self.prob_b[idx]);
                let v = v.clamp(1.0e-7, 1.0 - 1.0e-7);
                r[i * k + j] = v;
                r[j * k + i] = 1.0 - v;
                idx += 1;
            }
        }
        multiclass_probability(k, &r)
    }
}

/// libsvm's pairwise coupling (Wu, Lin and Weng, method 2).
fn multiclass_probability(k: usize, r: &[f32]) -> Vec<f32> {
    let mut q = vec![0f32; k * k];
    let mut p = vec![1.0 / k as f32; k];
    let mut qp = vec![0f32; k];
    let eps = 0.005 / k as f32;
    for t in 0..k {
        q[t * k + t] = (0..t).map(|j| r[j * k + t] * r[j * k + t]).sum();
        for j in 0..t {
            q[t * k + j] = q[j * k + t];
        }
        q[t * k + t] += (t + 1..k).map(|j| r[j * k + t] * r[j * k + t]).sum::<f32>();
        for j in t + 1..k {
            q[t * k + j] = -r[j * k + t] * r[t * k + j];
        }
    }
    for _ in 0..k.max(100) {
        let mut pqp = 0.0;
        for t in 0..k {
            qp[t] = (0..k).map(|j| q[t * k + j] * p[j]).sum();
            pqp += p[t] * qp[t];
        }
        let max_error = (0..k).map(|t| (qp[t] - pqp).abs()).fold(0.0, f32::max);
        if max_error < eps {
            break;
        }
        for t in 0..k {
            let diff = (-qp[t] + pqp) / q[t * k + t];
            p[t] += diff;
            pqp = (pqp + diff * (diff * q[t * k + t] + 2.0 * qp[t])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[t * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
    p
}

impl Kernel for SvmClassifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
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
        let sv = self.n_vectors();
        let width = self
            .vectors
            .len()
            .checked_div(sv)
            .unwrap_or(self.coefficients.len() / self.labels.len().max(1));
        ensure!(
            f == width,
            "SVMClassifier: {f} features, the model has {width}"
        );
        let cols = self.score_cols();
        let mut chosen = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n * cols);
        for row in x.chunks(f.max(1)).take(n) {
            let (c, s) = self.row(row, f);
            chosen.push(c);
            scores.extend(s);
        }
        let labels = self.labels.pick(&chosen)?;
        Ok(tvec!(
            labels.into_tvalue(),
            Tensor::from_shape(&[n, cols], &scores)?.into_tvalue()
        ))
    }
}

/// An SVM regressor (or one-class SVM).
#[derive(Debug)]
pub(crate) struct SvmRegressor {
    kernel: SvmKernel,
    vectors: Vec<f32>,
    n_supports: usize,
    coefficients: Vec<f32>,
    rho: f32,
    one_class: bool,
    post: PostTransform,
}

pub(crate) fn svm_regressor(ctx: &ParsingContext, node: &NodeProto) -> Parsed {
    let a = attrs(ctx, node);
    let n_supports = usize::try_from(a.int("n_supports", 0)).map_err(|e| a.bad(e))?;
    let k = SvmRegressor {
        kernel: SvmKernel::parse(&a)?,
        vectors: a.floats("support_vectors"),
        n_supports,
        coefficients: a.floats("coefficients"),
        rho: a.floats("rho").first().copied().unwrap_or(0.0),
        one_class: a.int("one_class", 0) != 0,
        post: PostTransform::parse(&a.string("post_transform", "NONE")).map_err(|e| a.bad(e))?,
    };
    if n_supports > 0 && (k.coefficients.len() < n_supports || k.vectors.len() % n_supports != 0) {
        return Err(a.bad("coefficients / support_vectors do not match n_supports"));
    }
    parsed(k)
}

impl Kernel for SvmRegressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
    }
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (n, _) = rows_of(&inputs[0].shape.to_tvec())?;
        Ok(tvec!(f32::fact([n, 1.into()])))
    }
    fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (n, f, x) = f32_matrix(&inputs[0])?;
        let width = self
            .vectors
            .len()
            .checked_div(self.n_supports)
            .unwrap_or(self.coefficients.len());
        ensure!(
            f == width,
            "SVMRegressor: {f} features, the model has {width}"
        );
        let mut y = Vec::with_capacity(n);
        for row in x.chunks(f.max(1)).take(n) {
            let s = if self.n_supports > 0 {
                self.vectors
                    .chunks(f.max(1))
                    .zip(&self.coefficients)
                    .map(|(v, c)| c * self.kernel.eval(row, v))
                    .sum::<f32>()
            } else {
                SvmKernel::Linear.eval(row, &self.coefficients)
            } + self.rho;
            let mut s = [if self.one_class {
                if s > 0.0 { 1.0 } else { -1.0 }
            } else {
                s
            }];
            self.post.apply(&mut s);
            y.push(s[0]);
        }
        Ok(tvec!(Tensor::from_shape(&[n, 1], &y)?.into_tvalue()))
    }
}
