//! Reference profiles: what the training data looked like, per feature and
//! for the model's output, in the binned form drift is measured against.

use serde::{Deserialize, Serialize};

use super::error::DriftError;
use super::stats::{bin_index, normalise_reference, validate_edges};

/// One reference distribution: a numeric feature binned on `edges`, or a
/// categorical distribution (class frequencies) with no edges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureReference {
    /// Feature (or output) name, used in reports.
    pub name: String,
    /// Sorted bin edges (`k` edges, `k + 1` bins). Empty for a categorical
    /// distribution, whose bins are category (class) indices.
    pub edges: Vec<f64>,
    /// Reference frequency per bin; sums to 1 up to rounding.
    pub frequencies: Vec<f64>,
}

impl FeatureReference {
    /// Builds a numeric reference from training samples: edges at the
    /// quantiles ([`edges_from_quantiles`]) and the samples' frequencies on
    /// them ([`reference_frequencies`]).
    pub fn from_samples(
        name: impl Into<String>,
        samples: &[f64],
        bins: usize,
    ) -> Result<Self, DriftError> {
        let edges = edges_from_quantiles(samples, bins)?;
        let frequencies = reference_frequencies(samples, &edges)?;
        Ok(Self {
            name: name.into(),
            edges,
            frequencies,
        })
    }

    /// A categorical reference (e.g. class frequencies of the training
    /// labels or predictions).
    pub fn categorical(name: impl Into<String>, frequencies: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            edges: Vec::new(),
            frequencies,
        }
    }

    /// Number of bins observed histograms must have.
    pub fn bins(&self) -> usize {
        self.frequencies.len()
    }

    /// Checks edges (finite, strictly increasing, one fewer than the bins)
    /// and frequencies (finite, non-negative, not all zero).
    pub fn validate(&self) -> Result<(), DriftError> {
        let check = || {
            if !self.edges.is_empty() {
                validate_edges(&self.edges)?;
                if self.frequencies.len() != self.edges.len() + 1 {
                    return Err(DriftError::LengthMismatch {
                        reference: self.edges.len() + 1,
                        observed: self.frequencies.len(),
                    });
                }
            }
            normalise_reference(&self.frequencies).map(|_| ())
        };
        check().map_err(|e| e.in_distribution(&self.name))
    }
}

/// The reference profile of one model version.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReferenceProfile {
    /// One entry per input feature, in the order the agent reports them.
    pub features: Vec<FeatureReference>,
    /// Reference output distribution (class frequencies or binned
    /// regression predictions), if the model has one.
    pub output: Option<FeatureReference>,
}

impl ReferenceProfile {
    /// Validates every distribution in the profile.
    pub fn validate(&self) -> Result<(), DriftError> {
        self.features
            .iter()
            .chain(self.output.as_ref())
            .try_for_each(FeatureReference::validate)
    }
}

/// Bin edges at the quantiles of `samples`, for `bins` equally populated
/// bins: `bins - 1` edges, so underflow and overflow hold the outer quantiles.
///
/// Edge `i` (for `i` in `1..bins`) is the `⌊i·n/bins⌋`-th smallest sample, so
/// with distinct samples exactly `⌊i·n/bins⌋` of them fall below it, matching
/// the half-open `[edge, next)` bins. Ties collapse: duplicate edges are
/// dropped, so a heavily repeated value (zeros, a sensor's saturation value)
/// gets one bin rather than several empty ones, and fewer than `bins - 1`
/// edges may come back.
///
/// # Errors
///
/// [`DriftError::TooFewBins`] for `bins < 2`, [`DriftError::TooFewSamples`]
/// for fewer than `bins` samples, [`DriftError::NonFiniteSample`] for NaN or
/// infinite samples (an infinite edge would make a bin unreachable).
pub(crate) fn edges_from_quantiles(samples: &[f64], bins: usize) -> Result<Vec<f64>, DriftError> {
    if bins < 2 {
        return Err(DriftError::TooFewBins(bins));
    }
    if samples.len() < bins {
        return Err(DriftError::TooFewSamples {
            needed: bins,
            got: samples.len(),
        });
    }
    check_finite(samples)?;
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let n = sorted.len() as u128;
    let mut edges: Vec<f64> = Vec::with_capacity(bins - 1);
    for i in 1..bins {
        // u128 so `i·n` cannot overflow; the quotient is < n, so it fits.
        let rank = usize::try_from(i as u128 * n / bins as u128).unwrap_or(usize::MAX);
        let Some(edge) = sorted.get(rank).copied() else {
            break;
        };
        if edges.last().is_none_or(|last| *last < edge) {
            // -0.0 and 0.0 compare equal, so this also normalises signed zeros.
            edges.push(if edge == 0.0 { 0.0 } else { edge });
        }
    }
    Ok(edges)
}

/// Share of `samples` in each of the `edges.len() + 1` bins (see
/// [`bin_index`]).
///
/// # Errors
///
/// [`DriftError::InvalidEdges`], [`DriftError::TooFewSamples`] for an empty
/// sample set, [`DriftError::NonFiniteSample`].
pub(crate) fn reference_frequencies(
    samples: &[f64],
    edges: &[f64],
) -> Result<Vec<f64>, DriftError> {
    validate_edges(edges)?;
    if samples.is_empty() {
        return Err(DriftError::TooFewSamples { needed: 1, got: 0 });
    }
    check_finite(samples)?;
    let mut counts = vec![0u64; edges.len() + 1];
    for x in samples {
        if let Some(count) = counts.get_mut(bin_index(edges, *x)) {
            *count += 1;
        }
    }
    let n = samples.len() as f64;
    Ok(counts.into_iter().map(|c| c as f64 / n).collect())
}

fn check_finite(samples: &[f64]) -> Result<(), DriftError> {
    match samples.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(DriftError::NonFiniteSample { index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_edges_split_distinct_samples_evenly() {
        // 0..100 into 4 bins: edges are the 25th, 50th and 75th smallest.
        let samples: Vec<f64> = (0..100).rev().map(f64::from).collect();
        let edges = edges_from_quantiles(&samples, 4).unwrap();
        assert_eq!(edges, vec![25.0, 50.0, 75.0]);
        let freqs = reference_frequencies(&samples, &edges).unwrap();
        assert_eq!(freqs, vec![0.25; 4]);
    }

    #[test]
    fn ten_bins_give_nine_edges() {
        let samples: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.5).collect();
        let edges = edges_from_quantiles(&samples, 10).unwrap();
        assert_eq!(edges.len(), 9);
        let freqs = reference_frequencies(&samples, &edges).unwrap();
        assert_eq!(freqs.len(), 10);
        assert!(freqs.iter().all(|f| (*f - 0.1).abs() < 1e-12));
    }

    #[test]
    fn ties_collapse_into_one_bin() {
        // 70 % zeros then 1..=30: quantile edges at ranks 10..90 step 10 hit
        // 0.0 six times (ranks 10–60), then 1, 11, 21.
        let mut samples = vec![0.0; 70];
        samples.extend((1..=30).map(f64::from));
        let edges = edges_from_quantiles(&samples, 10).unwrap();
        assert_eq!(edges, vec![0.0, 1.0, 11.0, 21.0]);
        let freqs = reference_frequencies(&samples, &edges).unwrap();
        // underflow empty; [0,1) holds the 70 zeros; [1,11), [11,21) 10 each;
        // overflow 21..=30 holds 10.
        assert_eq!(freqs, vec![0.0, 0.7, 0.1, 0.1, 0.1]);
        let all_same = edges_from_quantiles(&[3.0; 50], 10).unwrap();
        assert_eq!(all_same, vec![3.0]);
    }

    #[test]
    fn quantile_input_errors() {
        assert_eq!(
            edges_from_quantiles(&[1.0, 2.0], 1),
            Err(DriftError::TooFewBins(1))
        );
        assert_eq!(
            edges_from_quantiles(&[1.0, 2.0], 3),
            Err(DriftError::TooFewSamples { needed: 3, got: 2 })
        );
        assert_eq!(
            edges_from_quantiles(&[1.0, f64::NAN, 2.0], 2),
            Err(DriftError::NonFiniteSample { index: 1 })
        );
        assert_eq!(
            reference_frequencies(&[], &[0.0]),
            Err(DriftError::TooFewSamples { needed: 1, got: 0 })
        );
        assert_eq!(
            reference_frequencies(&[1.0], &[1.0, 0.0]),
            Err(DriftError::InvalidEdges { index: 1 })
        );
    }

    #[test]
    fn profile_validation_names_the_bad_distribution() {
        let good = FeatureReference::from_samples("x", &[1.0, 2.0, 3.0, 4.0], 2).unwrap();
        assert!(good.validate().is_ok());
        let bad = FeatureReference {
            name: "y".into(),
            edges: vec![0.0],
            frequencies: vec![1.0],
        };
        let profile = ReferenceProfile {
            features: vec![good],
            output: Some(bad),
        };
        assert_eq!(
            profile.validate(),
            Err(DriftError::LengthMismatch {
                reference: 2,
                observed: 1
            }
            .in_distribution("y"))
        );
        let classes = FeatureReference::categorical("class", vec![0.2, 0.8]);
        assert_eq!(classes.bins(), 2);
        assert!(classes.validate().is_ok());
    }
}
