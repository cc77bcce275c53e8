//! Gate evaluation: merged canary and control measurements in, a decision
//! with the numbers behind it out. The statistics are described in the
//! `rollout` module docs; this file is their implementation.

use std::fmt::Write as _;

use drover_protocol::{LatencyHistogram, TelemetryWindow, Timestamp};
use serde::{Deserialize, Serialize};

use super::spec::{Gate, Metric};

/// Tail samples a latency quantile needs on each side before it is trusted:
/// a pXX gate needs at least `ceil(10 / (1 − q))` samples (p95: 200, p99:
/// 1000) on top of the gate's own minimum.
pub const MIN_TAIL_SAMPLES: f64 = 10.0;

/// Measurements of one cohort over one time range, merged from telemetry
/// windows by the shell (see [`CohortMetrics::add_window`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CohortMetrics {
    /// Distinct devices that contributed windows (informational).
    pub devices: u64,
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
    /// Inference latency.
    pub latency: LatencyHistogram,
    /// Inferences that received ground truth.
    pub labelled: u64,
    /// Of those, correct ones.
    pub correct: u64,
    /// Predicted class counts (or output-bin counts for regression).
    pub outputs: Vec<u64>,
    /// Shadow comparisons made.
    pub shadow_compared: u64,
    /// Of those, agreements.
    pub shadow_agreed: u64,
}

impl CohortMetrics {
    /// Adds everything in `other` (except `devices`, which the caller sets:
    /// only it knows which devices are distinct).
    pub fn merge(&mut self, other: &CohortMetrics) {
        self.count = self.count.saturating_add(other.count);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency.merge(&other.latency);
        self.labelled = self.labelled.saturating_add(other.labelled);
        self.correct = self.correct.saturating_add(other.correct);
        add_counts(&mut self.outputs, other.outputs.iter().copied());
        self.shadow_compared = self.shadow_compared.saturating_add(other.shadow_compared);
        self.shadow_agreed = self.shadow_agreed.saturating_add(other.shadow_agreed);
    }

    /// Adds one telemetry window. For a `Active` window, the
    /// serving model's counts; for a `Shadow` window, the
    /// candidate's own counts (count, errors, latency, outputs) plus its
    /// comparison with the active model. `devices` is left to the caller.
    pub fn add_window(&mut self, w: &TelemetryWindow) {
        self.count = self.count.saturating_add(w.count);
        self.errors = self.errors.saturating_add(w.errors);
        self.latency.merge(&w.latency);
        self.labelled = self.labelled.saturating_add(w.labelled);
        self.correct = self.correct.saturating_add(w.correct);
        add_counts(&mut self.outputs, w.outputs.iter().map(|c| u64::from(*c)));
        if let Some(s) = &w.shadow {
            self.shadow_compared = self.shadow_compared.saturating_add(s.compared);
            self.shadow_agreed = self.shadow_agreed.saturating_add(s.agreed);
        }
    }

    /// The samples behind `metric` in this cohort.
    pub fn samples(&self, metric: Metric) -> u64 {
        match metric {
            Metric::P95LatencyRatio | Metric::P99LatencyRatio => self.latency.count(),
            Metric::ErrorRateDelta => self.count,
            Metric::AccuracyDelta => self.labelled,
            Metric::OutputPsi => self.outputs.iter().sum(),
            Metric::ShadowAgreement => self.shadow_compared,
        }
    }
}

fn add_counts(into: &mut Vec<u64>, from: impl Iterator<Item = u64>) {
    for (i, c) in from.enumerate() {
        if into.len() <= i {
            into.resize(i + 1, 0);
        }
        into[i] = into[i].saturating_add(c);
    }
}

/// Control measurements kept from an earlier wave, used when the live control
/// cohort is too small (the final wave has none at all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// The wave whose passing evaluation recorded it.
    pub wave: u32,
    /// Start of its time range.
    pub since: Timestamp,
    /// End of its time range.
    pub until: Timestamp,
    /// The control cohort's measurements then.
    pub metrics: CohortMetrics,
}

/// One gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The threshold holds with enough samples on every side used.
    Pass,
    /// The threshold is broken with enough samples on every side used.
    Fail,
    /// Too little data (or no defined value) to decide. Never counts as Pass.
    Inconclusive,
}

/// Where a gate's control numbers came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ControlSource {
    /// The live control cohort, same time range as the canary.
    Live,
    /// A baseline recorded when an earlier wave passed.
    Baseline {
        /// That wave.
        wave: u32,
        /// Start of the baseline's time range.
        since: Timestamp,
        /// End of the baseline's time range.
        until: Timestamp,
    },
    /// The metric compares nothing against a control (shadow agreement).
    NotNeeded,
    /// Neither the live control nor a baseline had enough samples.
    Missing,
}

/// One gate's evaluation, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// The gate evaluated.
    pub gate: Gate,
    /// The measured value, when both sides had enough samples.
    pub value: Option<f64>,
    /// The gate's threshold (copied for display).
    pub threshold: f64,
    /// Samples needed on each side used.
    pub min_samples: u64,
    /// Samples in the canary cohort.
    pub canary_samples: u64,
    /// Samples on the control side actually used (live or baseline).
    pub control_samples: u64,
    /// The canary's own side of the comparison, in the metric's unit
    /// (latency quantile in µs, error rate, accuracy, shadow agreement);
    /// `None` when the metric has no per-side value (output PSI) or the
    /// canary had too few samples.
    #[serde(default)]
    pub canary_value: Option<f64>,
    /// The control's side (live or baseline), same unit as `canary_value`.
    #[serde(default)]
    pub control_value: Option<f64>,
    /// Where the control came from.
    pub control: ControlSource,
    /// The verdict.
    pub decision: Decision,
    /// The verdict in words, with numbers.
    pub why: String,
}

/// The sample floor for `metric` given the gate's minimum: latency quantiles
/// also need [`MIN_TAIL_SAMPLES`] beyond the quantile.
pub fn effective_min_samples(metric: Metric, min_samples: u64) -> u64 {
    let q = match metric {
        Metric::P95LatencyRatio => 0.95,
        Metric::P99LatencyRatio => 0.99,
        _ => return min_samples,
    };
    let tail = (MIN_TAIL_SAMPLES / (1.0_f64 - q)).round() as u64;
    min_samples.max(tail)
}

/// Evaluates one gate. The sample floor is the gate's own
/// [`Gate::min_samples`], else `min_samples`, raised by
/// [`effective_min_samples`]. `baseline` stands in for the control when the live
/// control has too few samples for this gate.
pub fn evaluate(
    gate: &Gate,
    min_samples: u64,
    canary: &CohortMetrics,
    control: &CohortMetrics,
    baseline: Option<&Baseline>,
) -> GateResult {
    evaluate_with_floor(
        gate,
        min_samples,
        LATENCY_RATIO_FLOOR_US,
        canary,
        control,
        baseline,
    )
}

/// [`evaluate`] with the rollout's latency floor
/// ([`RolloutSpec::latency_floor_us`](super::RolloutSpec::latency_floor_us))
/// instead of the default [`LATENCY_RATIO_FLOOR_US`].
pub fn evaluate_with_floor(
    gate: &Gate,
    min_samples: u64,
    latency_floor_us: u64,
    canary: &CohortMetrics,
    control: &CohortMetrics,
    baseline: Option<&Baseline>,
) -> GateResult {
    let metric = gate.metric;
    let min = effective_min_samples(metric, gate.min_samples.unwrap_or(min_samples));
    let canary_samples = canary.samples(metric);
    let mut result = GateResult {
        gate: gate.clone(),
        value: None,
        threshold: gate.threshold,
        min_samples: min,
        canary_samples,
        control_samples: 0,
        canary_value: None,
        control_value: None,
        control: ControlSource::NotNeeded,
        decision: Decision::Inconclusive,
        why: String::new(),
    };

    let control_used = if metric.is_shadow() {
        None
    } else {
        let live = control.samples(metric);
        if live >= min {
            result.control = ControlSource::Live;
            result.control_samples = live;
            Some(control)
        } else {
            match baseline.filter(|b| b.metrics.samples(metric) >= min) {
                Some(b) => {
                    result.control = ControlSource::Baseline {
                        wave: b.wave,
                        since: b.since,
                        until: b.until,
                    };
                    result.control_samples = b.metrics.samples(metric);
                    Some(&b.metrics)
                }
                None => {
                    result.control = ControlSource::Missing;
                    result.control_samples = live;
                    let base = match baseline {
                        Some(b) => format!(
                            "; baseline from wave {} has {}",
                            b.wave + 1,
                            b.metrics.samples(metric)
                        ),
                        None => "; no baseline recorded".to_string(),
                    };
                    result.why =
                        format!("{metric}: control has {live} of the {min} samples needed{base}");
                    if canary_samples < min {
                        let _ = write!(
                            result.why,
                            "; canary has {canary_samples} of the {min} samples needed"
                        );
                    }
                    return result;
                }
            }
        }
    };
    if canary_samples < min {
        result.why = format!("{metric}: canary has {canary_samples} of the {min} samples needed");
        return result;
    }

    let (value, detail) = match (metric, control_used) {
        (Metric::P95LatencyRatio, Some(c)) => latency_ratio(canary, c, 0.95, latency_floor_us),
        (Metric::P99LatencyRatio, Some(c)) => latency_ratio(canary, c, 0.99, latency_floor_us),
        (Metric::ErrorRateDelta, Some(c)) => {
            let a = rate(canary.errors, canary.count);
            let b = rate(c.errors, c.count);
            (
                Some(a - b),
                format!(
                    "error rate canary {:.4}% ({}/{}) vs control {:.4}% ({}/{})",
                    a * 100.0,
                    canary.errors,
                    canary.count,
                    b * 100.0,
                    c.errors,
                    c.count
                ),
            )
        }
        (Metric::AccuracyDelta, Some(c)) => {
            let a = rate(canary.correct, canary.labelled);
            let b = rate(c.correct, c.labelled);
            (
                Some(a - b),
                format!(
                    "accuracy canary {:.4} ({}/{}) vs control {:.4} ({}/{})",
                    a, canary.correct, canary.labelled, b, c.correct, c.labelled
                ),
            )
        }
        (Metric::OutputPsi, Some(c)) => output_psi(canary, c),
        (Metric::ShadowAgreement, _) => {
            let a = rate(canary.shadow_agreed, canary.shadow_compared);
            (
                Some(a),
                format!(
                    "candidate agreed on {} of {} shadow comparisons",
                    canary.shadow_agreed, canary.shadow_compared
                ),
            )
        }
        (_, None) => (None, "no control".to_string()),
    };

    let (canary_value, control_value) = side_values(metric, canary, control_used);
    result.canary_value = canary_value.filter(|v| v.is_finite());
    result.control_value = control_value.filter(|v| v.is_finite());
    let value = value.filter(|v| v.is_finite());
    result.value = value;
    match value {
        None => {
            result.why = format!("{metric}: value undefined ({detail})");
        }
        Some(v) => {
            let holds = gate.op.holds(v, gate.threshold);
            result.decision = if holds {
                Decision::Pass
            } else {
                Decision::Fail
            };
            let verb = if holds { "holds" } else { "broken" };
            let source = match &result.control {
                ControlSource::Baseline { wave, .. } => {
                    format!(", control = baseline from wave {}", wave + 1)
                }
                _ => String::new(),
            };
            result.why = format!(
                "{metric} = {v:.4}, {gate} {verb}: {detail} (samples canary {canary_samples}, control {}{source})",
                result.control_samples
            );
        }
    }
    result
}

/// Each side's own number behind a gate's value, for display next to it.
fn side_values(
    metric: Metric,
    canary: &CohortMetrics,
    control: Option<&CohortMetrics>,
) -> (Option<f64>, Option<f64>) {
    let side = |m: &CohortMetrics| match metric {
        Metric::P95LatencyRatio => m.latency.quantile(0.95).map(|us| us as f64),
        Metric::P99LatencyRatio => m.latency.quantile(0.99).map(|us| us as f64),
        Metric::ErrorRateDelta => Some(rate(m.errors, m.count)),
        Metric::AccuracyDelta => Some(rate(m.correct, m.labelled)),
        Metric::ShadowAgreement => Some(rate(m.shadow_agreed, m.shadow_compared)),
        Metric::OutputPsi => None,
    };
    (side(canary), control.and_then(side))
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        f64::NAN
    } else {
        part as f64 / whole as f64
    }
}

/// Latency quantiles below this are taken as this on both sides of a ratio
/// gate. Below a millisecond a shared CPU's scheduling noise (one preemption
/// inside a run) outweighs the model's own cost, so ratios of sub-millisecond
/// quantiles swing by 2× between identical models, and such a difference is
/// not a regression an operator would roll back for. A canary that goes from
/// 0.4 ms to 3 ms still reads 3.0. This is the default of the per-rollout
/// setting [`RolloutSpec::latency_floor_us`](super::RolloutSpec::latency_floor_us)
/// (`latency_floor`): a fleet of faster models can lower it, a noisier
/// one raise it.
pub const LATENCY_RATIO_FLOOR_US: u64 = super::spec::DEFAULT_LATENCY_FLOOR_US;

fn latency_ratio(
    canary: &CohortMetrics,
    control: &CohortMetrics,
    q: f64,
    floor_us: u64,
) -> (Option<f64>, String) {
    let floor_us = floor_us.max(1);
    match (canary.latency.quantile(q), control.latency.quantile(q)) {
        (Some(a), Some(b)) => (
            Some(a.max(floor_us) as f64 / b.max(floor_us) as f64),
            format!(
                "p{} canary {a} us vs control {b} us (each taken as at least {floor_us} us)",
                (q * 100.0).round() as u32
            ),
        ),
        _ => (None, "empty latency histogram".to_string()),
    }
}

fn output_psi(canary: &CohortMetrics, control: &CohortMetrics) -> (Option<f64>, String) {
    let bins = canary.outputs.len().max(control.outputs.len());
    let mut reference: Vec<f64> = control.outputs.iter().map(|c| *c as f64).collect();
    reference.resize(bins, 0.0);
    let mut observed = canary.outputs.clone();
    observed.resize(bins, 0);
    match crate::core::drift::stats::psi(&reference, &observed) {
        Ok(psi) => (
            Some(psi),
            format!("PSI of canary outputs against control over {bins} bins"),
        ),
        Err(e) => (None, format!("PSI undefined: {e}")),
    }
}

/// Evaluates every gate (see [`evaluate`]); `min_samples` gives each gate's floor.
/// `latency_floor_us` is the rollout's floor for latency ratios.
pub fn evaluate_all(
    gates: &[Gate],
    min_samples: impl Fn(&Gate) -> u64,
    latency_floor_us: u64,
    canary: &CohortMetrics,
    control: &CohortMetrics,
    baseline: Option<&Baseline>,
) -> Vec<GateResult> {
    gates
        .iter()
        .map(|g| {
            evaluate_with_floor(
                g,
                min_samples(g),
                latency_floor_us,
                canary,
                control,
                baseline,
            )
        })
        .collect()
}

/// Combines gate verdicts: any Fail fails; Pass only when every gate passed
/// (and there is at least one); anything else is Inconclusive.
pub fn overall(results: &[GateResult]) -> Decision {
    if results.iter().any(|r| r.decision == Decision::Fail) {
        Decision::Fail
    } else if !results.is_empty() && results.iter().all(|r| r.decision == Decision::Pass) {
        Decision::Pass
    } else {
        Decision::Inconclusive
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::rollout::spec::Op;

    /// Synthetic cohort metrics: `n` inferences at `latency_us` (±10 %),
    /// `error_rate`, `accuracy` over every fifth inference, a 4-class output
    /// distribution `dist`, and shadow agreement `agree`.
    pub(crate) fn synth(
        n: u64,
        latency_us: u64,
        error_rate: f64,
        accuracy: f64,
        dist: [f64; 4],
        agree: f64,
    ) -> CohortMetrics {
        let mut m = CohortMetrics {
            devices: 1,
            count: n,
            errors: (n as f64 * error_rate).round() as u64,
            ..CohortMetrics::default()
        };
        for i in 0..n {
            let jitter = latency_us / 10;
            m.latency
                .record(latency_us - jitter + (i * 7919) % (2 * jitter + 1));
        }
        m.labelled = n / 5;
        m.correct = (m.labelled as f64 * accuracy).round() as u64;
        m.outputs = dist.iter().map(|p| (p * n as f64).round() as u64).collect();
        m.shadow_compared = n;
        m.shadow_agreed = (n as f64 * agree).round() as u64;
        m
    }

    const DIST: [f64; 4] = [0.4, 0.3, 0.2, 0.1];

    fn g(s: &str) -> Gate {
        s.parse().unwrap()
    }

    #[test]
    fn latency_ratio_passes_and_fails() {
        let control = synth(5000, 10_000, 0.0, 0.9, DIST, 1.0);
        let same = synth(5000, 10_000, 0.0, 0.9, DIST, 1.0);
        let slow = synth(5000, 14_000, 0.0, 0.9, DIST, 1.0);
        let r = evaluate(&g("p95_latency_ratio<=1.2"), 500, &same, &control, None);
        assert_eq!(r.decision, Decision::Pass, "{}", r.why);
        assert!((r.value.unwrap() - 1.0).abs() < 0.05);
        let r = evaluate(&g("p99_latency_ratio<=1.2"), 500, &slow, &control, None);
        assert_eq!(r.decision, Decision::Fail, "{}", r.why);
        assert!(r.why.contains("broken"), "{}", r.why);
        assert_eq!(r.control, ControlSource::Live);
        // The two p99s behind the ratio, in µs, and their ratio is the value.
        let (a, b) = (r.canary_value.unwrap(), r.control_value.unwrap());
        assert!(a > b, "canary p99 {a} us, control p99 {b} us");
        assert!((a / b - r.value.unwrap()).abs() < 1e-9, "{a} / {b}");
    }

    #[test]
    fn sub_millisecond_latencies_are_compared_from_the_floor() {
        let control = synth(5000, 400, 0.0, 0.9, DIST, 1.0);
        // 0.4 ms → 0.9 ms: both under the floor, the ratio reads 1.
        let jittery = synth(5000, 900, 0.0, 0.9, DIST, 1.0);
        let r = evaluate(&g("p95_latency_ratio<=1.2"), 500, &jittery, &control, None);
        assert_eq!(r.decision, Decision::Pass, "{}", r.why);
        assert!((r.value.unwrap() - 1.0).abs() < 1e-9, "{}", r.why);
        // 0.4 ms → 3 ms is a regression all the same.
        let slow = synth(5000, 3_000, 0.0, 0.9, DIST, 1.0);
        let r = evaluate(&g("p95_latency_ratio<=2.0"), 500, &slow, &control, None);
        assert_eq!(r.decision, Decision::Fail, "{}", r.why);
        assert!(r.value.unwrap() > 3.0, "{}", r.why);
    }

    #[test]
    fn the_latency_floor_is_a_per_rollout_setting() {
        let control = synth(5000, 1_000, 0.0, 0.9, DIST, 1.0);
        let slower = synth(5000, 3_000, 0.0, 0.9, DIST, 1.0);
        let gate = g("p95_latency_ratio<=1.2");
        // Default 1 ms floor: 1 ms → 3 ms reads about 3 and fails.
        let r = evaluate_with_floor(&gate, 500, 1_000, &slower, &control, None);
        assert_eq!(r.decision, Decision::Fail, "{}", r.why);
        assert_eq!(
            r.decision,
            evaluate(&gate, 500, &slower, &control, None).decision
        );
        // A 5 ms floor: both are under it, the ratio reads 1 and passes.
        let r = evaluate_with_floor(&gate, 500, 5_000, &slower, &control, None);
        assert_eq!(r.decision, Decision::Pass, "{}", r.why);
        assert!((r.value.unwrap() - 1.0).abs() < 1e-9, "{}", r.why);
        assert!(r.why.contains("at least 5000 us"), "{}", r.why);
        // A 100 µs floor resolves sub-millisecond quantiles.
        let fast = synth(5000, 400, 0.0, 0.9, DIST, 1.0);
        let faster = synth(5000, 200, 0.0, 0.9, DIST, 1.0);
        let r = evaluate_with_floor(&gate, 500, 100, &fast, &faster, None);
        assert!(r.value.unwrap() > 1.5, "{}", r.why);
        let r = evaluate_with_floor(&gate, 500, 1_000, &fast, &faster, None);
        assert!((r.value.unwrap() - 1.0).abs() < 1e-9, "{}", r.why);
    }

    #[test]
    fn too_few_samples_is_inconclusive_never_pass() {
        let control = synth(5000, 10_000, 0.0, 0.9, DIST, 1.0);
        let tiny = synth(100, 10_000, 0.0, 0.9, DIST, 1.0);
        for gate in [
            "p95_latency_ratio<=1.2",
            "error_rate_delta<=0.01",
            "output_psi<=0.2",
        ] {
            let r = evaluate(&g(gate), 500, &tiny, &control, None);
            assert_eq!(r.decision, Decision::Inconclusive, "{gate}");
            assert!(r.why.contains("canary has 100"), "{}", r.why);
            assert_eq!(r.value, None);
        }
        // Enough for min_samples but not for the p99 tail.
        let mid = synth(600, 10_000, 0.0, 0.9, DIST, 1.0);
        let r = evaluate(&g("p99_latency_ratio<=1.5"), 500, &mid, &control, None);
        assert_eq!(r.decision, Decision::Inconclusive);
        assert_eq!(r.min_samples, 1000);
    }

    #[test]
    fn missing_control_uses_baseline_then_inconclusive() {
        let canary = synth(5000, 10_000, 0.001, 0.9, DIST, 1.0);
        let empty = CohortMetrics::default();
        let r = evaluate(&g("error_rate_delta<=0.01"), 500, &canary, &empty, None);
        assert_eq!(r.decision, Decision::Inconclusive);
        assert_eq!(r.control, ControlSource::Missing);
        assert!(r.why.contains("no baseline"), "{}", r.why);
        let b = Baseline {
            wave: 2,
            since: Timestamp(1),
            until: Timestamp(2),
            metrics: synth(5000, 10_000, 0.0, 0.9, DIST, 1.0),
        };
        let r = evaluate(&g("error_rate_delta<=0.01"), 500, &canary, &empty, Some(&b));
        assert_eq!(r.decision, Decision::Pass, "{}", r.why);
        assert!(matches!(r.control, ControlSource::Baseline { wave: 2, .. }));
        assert!(r.why.contains("baseline from wave 3"), "{}", r.why);
    }

    #[test]
    fn accuracy_psi_and_shadow() {
        let control = synth(5000, 10_000, 0.0, 0.90, DIST, 1.0);
        let worse = synth(5000, 10_000, 0.0, 0.80, [0.1, 0.2, 0.3, 0.4], 0.7);
        let r = evaluate(&g("accuracy_delta>=-0.02"), 500, &worse, &control, None);
        assert_eq!(r.decision, Decision::Fail, "{}", r.why);
        assert!((r.value.unwrap() + 0.10).abs() < 1e-9);
        // Each side's own accuracy is shown beside the delta.
        assert!((r.canary_value.unwrap() - 0.80).abs() < 1e-9);
        assert!((r.control_value.unwrap() - 0.90).abs() < 1e-9);
        let r = evaluate(&g("output_psi<=0.2"), 500, &worse, &control, None);
        assert_eq!(r.decision, Decision::Fail, "{}", r.why);
        let r = evaluate(&g("output_psi<=0.2"), 500, &control, &control, None);
        assert_eq!(r.decision, Decision::Pass);
        assert!(r.value.unwrap().abs() < 1e-9);
        let r = evaluate(
            &g("shadow_agreement>=0.95"),
            500,
            &worse,
            &CohortMetrics::default(),
            None,
        );
        assert_eq!(r.decision, Decision::Fail);
        assert_eq!(r.control, ControlSource::NotNeeded);
        // Accuracy counts labelled samples only: 5000 inferences, 1000 labelled.
        assert_eq!(r.canary_samples, 5000);
        let r = evaluate(
            &Gate {
                min_samples: Some(2000),
                ..Gate::new(Metric::AccuracyDelta, Op::Ge, -0.02)
            },
            500,
            &control,
            &control,
            None,
        );
        assert_eq!(r.decision, Decision::Inconclusive);
    }

    #[test]
    fn overall_needs_every_gate() {
        let mk = |d| GateResult {
            gate: g("output_psi<=0.2"),
            value: None,
            threshold: 0.2,
            min_samples: 1,
            canary_samples: 0,
            control_samples: 0,
            canary_value: None,
            control_value: None,
            control: ControlSource::Live,
            decision: d,
            why: String::new(),
        };
        assert_eq!(overall(&[]), Decision::Inconclusive);
        assert_eq!(overall(&[mk(Decision::Pass)]), Decision::Pass);
        assert_eq!(
            overall(&[mk(Decision::Pass), mk(Decision::Inconclusive)]),
            Decision::Inconclusive
        );
        assert_eq!(
            overall(&[mk(Decision::Inconclusive), mk(Decision::Fail)]),
            Decision::Fail
        );
    }
}
