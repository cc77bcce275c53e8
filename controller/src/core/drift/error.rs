//! [`DriftError`], shared by every drift module (kept out of `mod.rs` so the
//! submodules do not import their parent).

/// Errors of the drift layer. All are caused by inputs (profiles, histograms,
/// configuration); none are transient.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriftError {
    /// Reference and observation have different numbers of bins (or a
    /// histogram does not fit the edges it is recorded against).
    #[error("reference has {reference} bins but the observation has {observed}")]
    LengthMismatch {
        /// Bins on the reference side.
        reference: usize,
        /// Bins on the observed side.
        observed: usize,
    },
    /// The observed counts sum to zero, so there is no distribution to compare.
    #[error("observation is empty (total count 0)")]
    EmptyObservation,
    /// A reference frequency is negative, NaN or infinite.
    #[error("reference frequency {value} in bin {index} is negative or not finite")]
    InvalidReference {
        /// Bin index.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The reference frequencies sum to zero (or there are no bins).
    #[error("reference frequencies sum to zero")]
    EmptyReference,
    /// The PSI smoothing constant is not a finite positive number.
    #[error("PSI smoothing epsilon must be finite and positive, got {0}")]
    InvalidEpsilon(f64),
    /// Bin edges are not finite and strictly increasing.
    #[error("bin edge {index} is not finite or not above the previous edge")]
    InvalidEdges {
        /// Index of the first bad edge.
        index: usize,
    },
    /// A training sample is NaN or infinite.
    #[error("sample {index} is not finite")]
    NonFiniteSample {
        /// Index of the first bad sample.
        index: usize,
    },
    /// Too few samples to place the requested quantile edges.
    #[error("need at least {needed} samples, got {got}")]
    TooFewSamples {
        /// Minimum required.
        needed: usize,
        /// Samples provided.
        got: usize,
    },
    /// Fewer than two bins requested: one bin can never show drift.
    #[error("need at least 2 bins, got {0}")]
    TooFewBins(usize),
    /// The window has a different number of feature histograms than the
    /// profile has features.
    #[error("profile has {profile} features but the window has {window}")]
    FeatureCountMismatch {
        /// Features in the profile.
        profile: usize,
        /// Feature histograms in the window.
        window: usize,
    },
    /// An error about one named distribution (feature or output).
    #[error("`{name}`: {source}")]
    Distribution {
        /// Feature name, or the output's name.
        name: String,
        /// What went wrong.
        #[source]
        source: Box<DriftError>,
    },
    /// An error in one device's window.
    #[error("device `{device}`: {source}")]
    Device {
        /// Device id.
        device: String,
        /// What went wrong.
        #[source]
        source: Box<DriftError>,
    },
    /// A policy setting is out of range.
    #[error("invalid drift policy setting `{field}`: {reason}")]
    InvalidConfig {
        /// The setting's name as in the config file.
        field: &'static str,
        /// Why it was rejected.
        reason: String,
    },
}

impl DriftError {
    /// Wraps `self` with the name of the distribution it concerns.
    pub(crate) fn in_distribution(self, name: &str) -> Self {
        DriftError::Distribution {
            name: name.to_owned(),
            source: Box::new(self),
        }
    }
}
