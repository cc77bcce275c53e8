//! Rollout gates compare canary and control latency quantiles as a ratio and
//! must tell a 2 % regression from none. These tests fix how finely the
//! merged `LatencyHistogram` resolves such a ratio.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use drover_protocol::LatencyHistogram;
use drover_protocol::testkit::SplitMix;

/// Log-normal spread of the samples (p95 / median ~ 1.64).
const SIGMA: f64 = 0.3;

fn draws(seed: u64, n: usize) -> Vec<f64> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| (SIGMA * rng.normal()).exp()).collect()
}

fn histogram(unit: &[f64], median_us: f64) -> LatencyHistogram {
    let mut h = LatencyHistogram::default();
    for u in unit {
        h.record((median_us * u).round() as u64);
    }
    h
}

fn p95_ratio(canary: &LatencyHistogram, control: &LatencyHistogram) -> f64 {
    canary.quantile(0.95).unwrap() as f64 / control.quantile(0.95).unwrap() as f64
}

/// Control medians whose p95 sweeps 1 ms .. 50 ms, so every position of a
/// quantile inside its bucket is met.
fn medians() -> impl Iterator<Item = f64> {
    (0..200).map(|step| 1_000.0 / (SIGMA * 1.645f64).exp() * 50f64.powf(step as f64 / 199.0))
}

/// The canary's samples are the control's draws scaled by 1.02, so the true
/// p95 ratio of the two sample sets is 1.02 exactly and any deviation is the
/// histogram's. With 32 buckets per octave this read 1.00 .. 1.04.
#[test]
fn a_two_percent_p95_regression_reads_between_1_01_and_1_03() {
    let unit = draws(1, 20_000);
    for median in medians() {
        let control = histogram(&unit, median);
        let canary = histogram(&unit, median * 1.02);
        let r = p95_ratio(&canary, &control);
        assert!(
            (1.01..=1.03).contains(&r),
            "control p95 {:?} us: ratio read as {r:.4}",
            control.quantile(0.95)
        );
    }
}

/// Two independent draws from one distribution read as 1.00 +- 0.01, after
/// merging per-window histograms as the controller does.
#[test]
fn identical_distributions_read_as_one() {
    let a = draws(2, 100_000);
    let b = draws(3, 100_000);
    for median in medians() {
        let (mut control, mut canary) = (LatencyHistogram::default(), LatencyHistogram::default());
        for (wa, wb) in a.chunks(6_000).zip(b.chunks(6_000)) {
            control.merge(&histogram(wa, median));
            canary.merge(&histogram(wb, median));
        }
        assert_eq!(control.count(), 100_000);
        let r = p95_ratio(&canary, &control);
        assert!(
            (0.99..=1.01).contains(&r),
            "control p95 {:?} us: ratio read as {r:.4}",
            control.quantile(0.95)
        );
    }
}

/// Every quantile lies within half a bucket (1/256 of the value) of the
/// exact sample quantile.
#[test]
fn quantiles_are_within_0_4_percent_of_exact() {
    let unit = draws(4, 6_000);
    for median in [50.0, 400.0, 2_500.0, 80_000.0, 3_000_000.0] {
        let h = histogram(&unit, median);
        let mut exact: Vec<u64> = unit.iter().map(|u| (median * u).round() as u64).collect();
        exact.sort_unstable();
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let rank = ((q * exact.len() as f64).ceil() as usize).max(1);
            let truth = exact[rank - 1] as f64;
            let got = h.quantile(q).unwrap() as f64;
            // Below 128 us every value has its own bucket; rounding the
            // midpoint costs at most 1 us.
            let tolerance = (truth / 256.0).max(1.0);
            assert!(
                (got - truth).abs() <= tolerance,
                "median {median}: p{q} {got} vs exact {truth}"
            );
        }
    }
}
