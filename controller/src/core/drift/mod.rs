//! Drift detection and the retraining trigger, as pure code.
//!
//! Nothing here does I/O, spawns tasks or reads a clock: callers pass merged
//! histograms in and the current time as Unix milliseconds, and get reports
//! and decisions back. The controller's telemetry layer adapts wire types
//! (f32 edges, u32 window counts) to the plain types used here.
//!
//! # Layout
//!
//! - [`stats`]: PSI and Jensen-Shannon distances, [`Histogram`], binning.
//! - [`profile`]: reference profiles, and building them from training
//!   samples ([`edges_from_quantiles`], [`reference_frequencies`]).
//! - [`report`]: per-window [`DriftReport`] (per feature, prediction drift,
//!   fleet score) and the share of devices drifting.
//! - [`policy`]: [`DriftPolicy`], the sans-IO state machine that decides when
//!   drift warrants a retraining job.
//! - [`eval`]: a deterministic simulation measuring detection delay and false
//!   alarms of the default policy; its tests pin those numbers.

pub(crate) mod error;
#[cfg(test)]
pub(crate) mod eval;
pub(crate) mod policy;
pub(crate) mod profile;
pub(crate) mod report;
pub(crate) mod stats;

pub(crate) use error::DriftError;
pub(crate) use policy::{DriftPolicy, DriftPolicyConfig, DriftPolicyState, Evaluation, Trigger};
pub(crate) use profile::{FeatureReference, ReferenceProfile, edges_from_quantiles};
pub(crate) use report::{
    DeviceDriftShare, DriftReport, DriftThresholds, ObservedWindow, Verdict,
    share_of_devices_drifting,
};
pub(crate) use stats::Histogram;
