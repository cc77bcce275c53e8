//! Distances between a reference distribution and observed bin counts.
//!
//! Bins follow the manifest's convention: `k` sorted edges make `k + 1` bins,
//! underflow (`x < edges[0]`), `k - 1` inner bins `[edges[i], edges[i + 1])`
//! and overflow (`x >= edges[k - 1]`). A categorical distribution (class
//! frequencies for prediction drift) has no edges; its bins are class indices
//! and the same functions apply unchanged.

use serde::{Deserialize, Serialize};

use super::error::DriftError;

/// Additive smoothing used by [`psi`]; see [`psi_with_epsilon`] for the exact
/// formula.
///
/// 1e-4 is far below the smallest proportion a 10-bin profile or a window of a
/// few thousand samples can resolve, so it only matters for bins that are
/// empty on one side, where it caps a term at roughly
/// `|p - q| * ln(|p - q| / 1e-4)` (about 0.7 for a 10 % bin that empties)
/// instead of infinity.
pub(crate) const PSI_EPSILON: f64 = 1e-4;

/// Index of the bin holding `x` for sorted `edges` (see the module docs).
///
/// NaN lands in the overflow bin, like the agent's binning, so bad inputs
/// show up as drift instead of disappearing.
pub(crate) fn bin_index(edges: &[f64], x: f64) -> usize {
    if x.is_nan() {
        return edges.len();
    }
    edges.partition_point(|e| *e <= x)
}

/// Checks that `edges` are finite and strictly increasing, which
/// [`bin_index`] and the reference-frequency builders rely on.
pub(crate) fn validate_edges(edges: &[f64]) -> Result<(), DriftError> {
    for (index, edge) in edges.iter().enumerate() {
        if !edge.is_finite() {
            return Err(DriftError::InvalidEdges { index });
        }
        if index > 0 && edges[index - 1] >= *edge {
            return Err(DriftError::InvalidEdges { index });
        }
    }
    Ok(())
}

/// Population stability index of `observed` counts against `reference`
/// frequencies, smoothed with [`PSI_EPSILON`].
pub(crate) fn psi(reference: &[f64], observed: &[u64]) -> Result<f64, DriftError> {
    psi_with_epsilon(reference, observed, PSI_EPSILON)
}

/// Population stability index with an explicit smoothing constant.
///
/// With `B` bins, reference proportions `r_i = reference[i] / Σ reference`
/// and observed proportions `o_i = observed[i] / Σ observed`, both sides are
/// smoothed and renormalised the same way:
///
/// ```text
/// r'_i = (r_i + ε) / (1 + B·ε)      o'_i = (o_i + ε) / (1 + B·ε)
/// PSI  = Σ_i (o'_i − r'_i) · ln(o'_i / r'_i)
/// ```
///
/// PSI is the symmetrised Kullback-Leibler divergence (`KL(o‖r) + KL(r‖o)`,
/// natural log), so it is 0 for identical distributions and every term is
/// non-negative. Smoothing is what keeps it finite when a bin is empty on one
/// side only; bins empty on both sides contribute exactly 0.
///
/// The reference only needs to be proportional to a distribution: it is
/// divided by its sum, so rounding in stored profiles does not matter.
///
/// # Errors
///
/// [`DriftError::LengthMismatch`], [`DriftError::InvalidReference`] (negative
/// or non-finite frequency), [`DriftError::EmptyReference`] (sums to 0),
/// [`DriftError::EmptyObservation`] (total count 0) and
/// [`DriftError::InvalidEpsilon`] (not finite and positive).
pub(crate) fn psi_with_epsilon(
    reference: &[f64],
    observed: &[u64],
    epsilon: f64,
) -> Result<f64, DriftError> {
    if !(epsilon.is_finite() && epsilon > 0.0) {
        return Err(DriftError::InvalidEpsilon(epsilon));
    }
    let (r, o) = proportions_pair(reference, observed)?;
    let norm = 1.0 + r.len() as f64 * epsilon;
    let psi = r
        .iter()
        .zip(&o)
        .map(|(r, o)| {
            let r = (r + epsilon) / norm;
            let o = (o + epsilon) / norm;
            (o - r) * (o / r).ln()
        })
        .sum();
    Ok(psi)
}

/// Jensen-Shannon divergence (base 2, so in `[0, 1]`) of `observed` counts
/// against `reference` frequencies.
///
/// ```text
/// m_i = (r_i + o_i) / 2
/// JS  = ½ Σ_i r_i·log2(r_i / m_i) + ½ Σ_i o_i·log2(o_i / m_i)
/// ```
///
/// No smoothing: wherever a term's `r_i` or `o_i` is non-zero, `m_i` is at
/// least half of it, so no division by zero can occur; terms with a zero
/// proportion are taken as `0·log 0 = 0`. Disjoint supports give exactly 1.
/// Proportions are normalised as in [`psi_with_epsilon`], with the same
/// errors (except the epsilon one).
pub(crate) fn js_divergence(reference: &[f64], observed: &[u64]) -> Result<f64, DriftError> {
    let (r, o) = proportions_pair(reference, observed)?;
    let mut sum = 0.0;
    for (r, o) in r.iter().zip(&o) {
        let m = (r + o) / 2.0;
        if *r > 0.0 {
            sum += r * (r / m).log2();
        }
        if *o > 0.0 {
            sum += o * (o / m).log2();
        }
    }
    // Rounding can push the exact bounds out by an ulp or two.
    Ok((sum / 2.0).clamp(0.0, 1.0))
}

/// Jensen-Shannon distance: the square root of [`js_divergence`], a metric
/// (triangle inequality holds), also in `[0, 1]`.
#[cfg(test)]
pub(crate) fn js_distance(reference: &[f64], observed: &[u64]) -> Result<f64, DriftError> {
    js_divergence(reference, observed).map(f64::sqrt)
}

/// Validates both sides and returns them as proportions.
fn proportions_pair(
    reference: &[f64],
    observed: &[u64],
) -> Result<(Vec<f64>, Vec<f64>), DriftError> {
    if reference.len() != observed.len() {
        return Err(DriftError::LengthMismatch {
            reference: reference.len(),
            observed: observed.len(),
        });
    }
    let reference = normalise_reference(reference)?;
    let observed = counts_to_proportions(observed)?;
    Ok((reference, observed))
}

/// Divides reference frequencies by their sum after checking each is a
/// finite, non-negative number.
pub(crate) fn normalise_reference(reference: &[f64]) -> Result<Vec<f64>, DriftError> {
    for (index, value) in reference.iter().enumerate() {
        if !value.is_finite() || *value < 0.0 {
            return Err(DriftError::InvalidReference {
                index,
                value: *value,
            });
        }
    }
    let sum: f64 = reference.iter().sum();
    if !sum.is_finite() || sum <= 0.0 {
        return Err(DriftError::EmptyReference);
    }
    Ok(reference.iter().map(|v| v / sum).collect())
}

fn counts_to_proportions(counts: &[u64]) -> Result<Vec<f64>, DriftError> {
    let total = total_count(counts);
    if total == 0 {
        return Err(DriftError::EmptyObservation);
    }
    let total = total as f64;
    Ok(counts.iter().map(|c| *c as f64 / total).collect())
}

/// Exact sum; u128 so merging a fleet's worth of u64 counts cannot wrap.
fn total_count(counts: &[u64]) -> u128 {
    counts.iter().map(|c| u128::from(*c)).sum()
}

/// Counts per bin (see the module docs for the bin layout).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Count per bin.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// An all-zero histogram with `bins` bins.
    pub fn new(bins: usize) -> Self {
        Self {
            counts: vec![0; bins],
        }
    }

    /// Wraps existing counts.
    pub fn from_counts(counts: Vec<u64>) -> Self {
        Self { counts }
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.counts.len()
    }

    /// Counts `x` in the bin [`bin_index`] picks for `edges`.
    ///
    /// # Errors
    ///
    /// [`DriftError::LengthMismatch`] if this histogram does not have
    /// `edges.len() + 1` bins.
    pub fn record(&mut self, edges: &[f64], x: f64) -> Result<(), DriftError> {
        if self.counts.len() != edges.len() + 1 {
            return Err(DriftError::LengthMismatch {
                reference: edges.len() + 1,
                observed: self.counts.len(),
            });
        }
        let bin = bin_index(edges, x);
        if let Some(count) = self.counts.get_mut(bin) {
            *count = count.saturating_add(1);
        }
        Ok(())
    }

    /// Adds `other`'s counts bin by bin (saturating).
    ///
    /// A zero-bin histogram (the `Default`) means "nothing recorded": as
    /// `self` it takes `other`'s shape, so a fold over device histograms can
    /// start from `Histogram::default()`; as `other` it changes nothing.
    ///
    /// # Errors
    ///
    /// [`DriftError::LengthMismatch`] if both have bins and the counts differ;
    /// `self` is left unchanged.
    pub fn merge(&mut self, other: &Histogram) -> Result<(), DriftError> {
        if other.counts.is_empty() {
            return Ok(());
        }
        if self.counts.is_empty() {
            self.counts = other.counts.clone();
            return Ok(());
        }
        if other.counts.len() != self.counts.len() {
            return Err(DriftError::LengthMismatch {
                reference: self.counts.len(),
                observed: other.counts.len(),
            });
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine.saturating_add(*theirs);
        }
        Ok(())
    }

    /// Total count over all bins (saturating at `u64::MAX`).
    pub fn total(&self) -> u64 {
        u64::try_from(total_count(&self.counts)).unwrap_or(u64::MAX)
    }

    /// Share of the total in each bin.
    ///
    /// # Errors
    ///
    /// [`DriftError::EmptyObservation`] if the total is 0: there is no
    /// distribution to report, and all-zero proportions would read as one.
    pub fn proportions(&self) -> Result<Vec<f64>, DriftError> {
        counts_to_proportions(&self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, tol: f64) {
        assert!(
            (actual - expected).abs() <= tol,
            "expected {expected}, got {actual} (tolerance {tol})"
        );
    }

    #[test]
    fn bin_index_follows_the_manifest_layout() {
        let edges = [0.0, 1.0, 2.0];
        assert_eq!(bin_index(&edges, -5.0), 0);
        assert_eq!(bin_index(&edges, 0.0), 1);
        assert_eq!(bin_index(&edges, 0.5), 1);
        assert_eq!(bin_index(&edges, 1.0), 2);
        assert_eq!(bin_index(&edges, 2.0), 3);
        assert_eq!(bin_index(&edges, f64::INFINITY), 3);
        assert_eq!(bin_index(&edges, f64::NEG_INFINITY), 0);
        assert_eq!(bin_index(&edges, f64::NAN), 3);
        assert_eq!(bin_index(&[], 7.0), 0);
    }

    #[test]
    fn edges_must_be_finite_and_strictly_increasing() {
        assert!(validate_edges(&[]).is_ok());
        assert!(validate_edges(&[-1.0, 0.0, 3.5]).is_ok());
        assert_eq!(
            validate_edges(&[0.0, 0.0]),
            Err(DriftError::InvalidEdges { index: 1 })
        );
        assert_eq!(
            validate_edges(&[1.0, 0.0]),
            Err(DriftError::InvalidEdges { index: 1 })
        );
        assert_eq!(
            validate_edges(&[f64::NAN]),
            Err(DriftError::InvalidEdges { index: 0 })
        );
    }

    #[test]
    fn identical_distributions_are_zero() {
        let reference = [0.1, 0.2, 0.3, 0.4];
        let observed = [10, 20, 30, 40];
        close(psi(&reference, &observed).unwrap(), 0.0, 1e-15);
        close(js_divergence(&reference, &observed).unwrap(), 0.0, 1e-15);
        close(js_distance(&reference, &observed).unwrap(), 0.0, 1e-7);
    }

    #[test]
    fn two_bin_shift_matches_hand_computation() {
        // r = [0.5, 0.5], o = [30/40, 10/40] = [0.75, 0.25].
        //
        // PSI, ε = 1e-4, B = 2, norm = 1.0002:
        //   r' = (0.5 + ε)/norm = 0.5 (both bins)
        //   o'1 = 0.7501/1.0002 = 0.749950010, o'2 = 0.2501/1.0002 = 0.250049990
        //   0.249950010·ln(1.499900020) + (−0.249950010)·ln(0.500099980)
        //   = 0.249950010·0.4053985 + 0.249950010·0.6929472
        //   = 0.1013294 + 0.1732022 = 0.2745315
        // Unsmoothed it would be 0.25·ln 1.5 + 0.25·ln 2 = 0.2746531.
        let reference = [0.5, 0.5];
        let observed = [30, 10];
        close(psi(&reference, &observed).unwrap(), 0.2745315, 1e-6);

        // JS: m = [0.625, 0.375]
        //   KL(r‖m) = 0.5·log2(0.8) + 0.5·log2(4/3) = −0.160964 + 0.207519 = 0.046554
        //   KL(o‖m) = 0.75·log2(1.2) + 0.25·log2(2/3) = 0.197276 − 0.146241 = 0.051035
        //   JS = (0.046554 + 0.051035)/2 = 0.048795
        let js = js_divergence(&reference, &observed).unwrap();
        close(js, 0.048795, 1e-6);
        close(
            js_distance(&reference, &observed).unwrap(),
            js.sqrt(),
            1e-15,
        );
    }

    #[test]
    fn psi_and_js_are_symmetric_in_the_distributions() {
        // Swapping roles: reference [0.75, 0.25] vs counts [20, 20]. JS is
        // symmetric exactly; PSI too, since smoothing treats both sides alike.
        let a = js_divergence(&[0.5, 0.5], &[30, 10]).unwrap();
        let b = js_divergence(&[0.75, 0.25], &[20, 20]).unwrap();
        close(a, b, 1e-12);
        let a = psi(&[0.5, 0.5], &[30, 10]).unwrap();
        let b = psi(&[0.75, 0.25], &[20, 20]).unwrap();
        close(a, b, 1e-12);
    }

    #[test]
    fn empty_reference_bin_stays_finite() {
        // r = [0.5, 0.5, 0], o = [4, 4, 2]/10 = [0.4, 0.4, 0.2]
        //
        // PSI, ε = 1e-4, norm = 1.0003:
        //   r' = [0.5001, 0.5001, 0.0001]/1.0003 = [0.4999500, 0.4999500, 0.0000999700]
        //   o' = [0.4001, 0.4001, 0.2001]/1.0003 = [0.3999800, 0.3999800, 0.2000400]
        //   2·(−0.0999700)·ln(0.8000400) + 0.1999400·ln(2001)
        //   = 2·0.0223027 + 0.1999400·7.6014023 = 0.0446054 + 1.5198244 = 1.5644298
        let reference = [0.5, 0.5, 0.0];
        let observed = [4, 4, 2];
        close(psi(&reference, &observed).unwrap(), 1.5644298, 1e-6);

        // JS: m = [0.45, 0.45, 0.1]
        //   KL(r‖m) = 2·0.5·log2(0.5/0.45) = 0.152003  (0·log 0 for bin 3)
        //   KL(o‖m) = 2·0.4·log2(0.4/0.45) + 0.2·log2(2) = −0.135940 + 0.2 = 0.064060
        //   JS = (0.152003 + 0.064060)/2 = 0.108032
        close(
            js_divergence(&reference, &observed).unwrap(),
            0.108032,
            1e-6,
        );
    }

    #[test]
    fn bins_empty_on_both_sides_contribute_nothing() {
        // Bin 3 is empty in both. Smoothing gives it r' = o' = ε/norm, so its
        // term is exactly 0, and the other bins are identical too.
        let reference = [0.5, 0.5, 0.0];
        let observed = [5, 5, 0];
        close(psi(&reference, &observed).unwrap(), 0.0, 1e-15);
        close(js_divergence(&reference, &observed).unwrap(), 0.0, 1e-15);
    }

    #[test]
    fn zero_count_observed_bins() {
        // r = [0.25; 4], o = [10, 10, 20, 0]/40 = [0.25, 0.25, 0.5, 0]
        //
        // PSI, ε = 1e-4, norm = 1.0004:
        //   r' = 0.2501/1.0004 = 0.250000 (all bins; (0.25 + ε)/(1 + 4ε) = 0.25)
        //   o' = [0.25, 0.25, 0.5001/1.0004, 0.0001/1.0004]
        //      = [0.25, 0.25, 0.4999000, 0.0000999600]
        //   0.2499000·ln(1.9996002) + (−0.2499000)·ln(0.000399840)
        //   = 0.2499000·0.6929472 + 0.2499000·7.8244459 = 0.1731675 + 1.9553293
        //   = 2.1284969
        let reference = [0.25; 4];
        let observed = [10, 10, 20, 0];
        close(psi(&reference, &observed).unwrap(), 2.1284969, 1e-6);

        // JS: m = [0.25, 0.25, 0.375, 0.125]
        //   KL(r‖m) = 0.25·log2(0.25/0.375) + 0.25·log2(2) = −0.146241 + 0.25 = 0.103759
        //   KL(o‖m) = 0.5·log2(0.5/0.375) = 0.207519
        //   JS = (0.103759 + 0.207519)/2 = 0.155639
        close(
            js_divergence(&reference, &observed).unwrap(),
            0.155639,
            1e-6,
        );
    }

    #[test]
    fn all_mass_in_one_bin() {
        // r = [0.5, 0.5], o = [0, 1]
        //
        // PSI, ε = 1e-4, norm = 1.0002:
        //   r' = [0.5, 0.5]; o' = [0.0001/1.0002, 1.0001/1.0002]
        //      = [0.0000999800, 0.999900020]
        //   (−0.499900020)·ln(0.000199960) + 0.499900020·ln(1.999800040)
        //   = 0.499900020·8.5173932 + 0.499900020·0.6930472 = 4.2578450 + 0.3464543
        //   = 4.6042993
        let reference = [0.5, 0.5];
        let observed = [0, 100];
        close(psi(&reference, &observed).unwrap(), 4.6042993, 1e-6);

        // JS: m = [0.25, 0.75]
        //   KL(r‖m) = 0.5·log2(2) + 0.5·log2(2/3) = 0.5 − 0.292481 = 0.207519
        //   KL(o‖m) = 1·log2(4/3) = 0.415037
        //   JS = (0.207519 + 0.415037)/2 = 0.311278
        close(
            js_divergence(&reference, &observed).unwrap(),
            0.311278,
            1e-6,
        );

        // Disjoint supports: m = [0.5, 0.5], each KL = log2(2) = 1, JS = 1.
        close(js_divergence(&[1.0, 0.0], &[0, 7]).unwrap(), 1.0, 1e-15);
        close(js_distance(&[1.0, 0.0], &[0, 7]).unwrap(), 1.0, 1e-15);
    }

    #[test]
    fn reference_is_normalised_by_its_sum() {
        let a = psi(&[1.0, 1.0], &[30, 10]).unwrap();
        let b = psi(&[0.5, 0.5], &[30, 10]).unwrap();
        close(a, b, 1e-15);
        // Rounded f32 profiles sum to 1 ± a few ulps; that must not matter.
        let a = js_divergence(&[0.3333333, 0.3333333, 0.3333333], &[1, 1, 1]).unwrap();
        close(a, 0.0, 1e-15);
    }

    #[test]
    fn length_mismatch_is_an_error() {
        let err = DriftError::LengthMismatch {
            reference: 3,
            observed: 2,
        };
        assert_eq!(psi(&[0.2, 0.3, 0.5], &[1, 2]), Err(err.clone()));
        assert_eq!(js_divergence(&[0.2, 0.3, 0.5], &[1, 2]), Err(err));
    }

    #[test]
    fn zero_total_is_an_error() {
        assert_eq!(psi(&[0.5, 0.5], &[0, 0]), Err(DriftError::EmptyObservation));
        assert_eq!(
            js_divergence(&[0.5, 0.5], &[0, 0]),
            Err(DriftError::EmptyObservation)
        );
        assert_eq!(psi(&[], &[]), Err(DriftError::EmptyReference));
    }

    #[test]
    fn bad_reference_is_an_error() {
        assert_eq!(
            psi(&[0.5, -0.1, 0.6], &[1, 1, 1]),
            Err(DriftError::InvalidReference {
                index: 1,
                value: -0.1
            })
        );
        assert!(matches!(
            js_divergence(&[f64::NAN, 1.0], &[1, 1]),
            Err(DriftError::InvalidReference { index: 0, value }) if value.is_nan()
        ));
        assert!(matches!(
            psi(&[f64::INFINITY, 1.0], &[1, 1]),
            Err(DriftError::InvalidReference { index: 0, .. })
        ));
        assert_eq!(psi(&[0.0, 0.0], &[1, 1]), Err(DriftError::EmptyReference));
    }

    #[test]
    fn epsilon_must_be_positive() {
        assert!(matches!(
            psi_with_epsilon(&[0.5, 0.5], &[1, 1], 0.0),
            Err(DriftError::InvalidEpsilon(_))
        ));
        assert!(matches!(
            psi_with_epsilon(&[0.5, 0.5], &[1, 1], f64::NAN),
            Err(DriftError::InvalidEpsilon(_))
        ));
    }

    #[test]
    fn histogram_record_merge_total_proportions() {
        let edges = [0.0, 1.0];
        let mut a = Histogram::new(3);
        for x in [-1.0, 0.5, 0.5, 3.0] {
            a.record(&edges, x).unwrap();
        }
        assert_eq!(a.counts, vec![1, 2, 1]);
        assert_eq!(a.total(), 4);
        assert_eq!(a.proportions().unwrap(), vec![0.25, 0.5, 0.25]);

        let mut fleet = Histogram::default();
        fleet.merge(&a).unwrap();
        fleet.merge(&Histogram::from_counts(vec![0, 0, 4])).unwrap();
        fleet.merge(&Histogram::default()).unwrap();
        assert_eq!(fleet.counts, vec![1, 2, 5]);
        assert_eq!(fleet.bins(), 3);

        let before = fleet.clone();
        assert_eq!(
            fleet.merge(&Histogram::new(2)),
            Err(DriftError::LengthMismatch {
                reference: 3,
                observed: 2
            })
        );
        assert_eq!(fleet, before);
        assert!(Histogram::new(2).record(&edges, 0.0).is_err());
        assert_eq!(
            Histogram::new(3).proportions(),
            Err(DriftError::EmptyObservation)
        );
    }

    #[test]
    fn histogram_saturates_instead_of_wrapping() {
        let mut a = Histogram::from_counts(vec![u64::MAX, 1]);
        a.merge(&Histogram::from_counts(vec![1, 1])).unwrap();
        assert_eq!(a.counts, vec![u64::MAX, 2]);
        assert_eq!(a.total(), u64::MAX);
        let p = a.proportions().unwrap();
        close(p[0], 1.0, 1e-12);
    }
}
