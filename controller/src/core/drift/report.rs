//! Per-window drift reports: every feature and the output against the
//! reference profile, a fleet score, and the share of devices drifting.

use serde::{Deserialize, Serialize};

use super::error::DriftError;
use super::profile::{FeatureReference, ReferenceProfile};
use super::stats::{Histogram, js_divergence, psi};

/// How many of the worst devices a [`DeviceDriftShare`] lists. Bounded so a
/// 50,000-device fleet still produces a small report.
pub(crate) const MAX_WORST_DEVICES: usize = 10;

/// Histograms observed over one window, aligned with a [`ReferenceProfile`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObservedWindow {
    /// One histogram per profile feature, in profile order.
    pub features: Vec<Histogram>,
    /// Output (class or binned prediction) histogram, if reported.
    pub output: Option<Histogram>,
}

impl ObservedWindow {
    /// Adds `other` into `self`, histogram by histogram. An empty window (the
    /// `Default`) takes `other`'s shape as `self`, so merging device windows
    /// into a fleet window can start from `ObservedWindow::default()`, and is
    /// a no-op as `other`.
    ///
    /// # Errors
    ///
    /// [`DriftError::FeatureCountMismatch`] or [`DriftError::LengthMismatch`];
    /// `self` is unchanged on error.
    pub fn merge(&mut self, other: &ObservedWindow) -> Result<(), DriftError> {
        if other.is_empty() {
            return Ok(());
        }
        if self.is_empty() {
            *self = other.clone();
            return Ok(());
        }
        if self.features.len() != other.features.len() {
            return Err(DriftError::FeatureCountMismatch {
                profile: self.features.len(),
                window: other.features.len(),
            });
        }
        let mut merged = self.clone();
        for (mine, theirs) in merged.features.iter_mut().zip(&other.features) {
            mine.merge(theirs)?;
        }
        match (&mut merged.output, &other.output) {
            (Some(mine), Some(theirs)) => mine.merge(theirs)?,
            (None, Some(theirs)) => merged.output = Some(theirs.clone()),
            (_, None) => {}
        }
        *self = merged;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.features.is_empty() && self.output.is_none()
    }

    /// Smallest sample count among the window's histograms: a feature with
    /// little data limits how much the whole comparison can be trusted.
    pub fn samples(&self) -> u64 {
        self.features
            .iter()
            .chain(self.output.as_ref())
            .map(Histogram::total)
            .min()
            .unwrap_or(0)
    }
}

/// Drift of one distribution (feature or output) over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDrift {
    /// Feature or output name from the profile.
    pub name: String,
    /// Population stability index (see [`super::stats::psi`]); 0 when
    /// `samples` is 0.
    pub psi: f64,
    /// Jensen-Shannon divergence, base 2 (see
    /// [`super::stats::js_divergence`]); 0 when `samples` is 0.
    pub js: f64,
    /// Observations in the window.
    pub samples: u64,
}

impl FeatureDrift {
    /// Compares one observed histogram with its reference. An empty histogram
    /// scores 0 with `samples: 0`, so a silent feature makes the window
    /// inconclusive (via [`DriftThresholds::min_samples`]) instead of failing
    /// the whole report.
    pub fn compute(reference: &FeatureReference, observed: &Histogram) -> Result<Self, DriftError> {
        let samples = observed.total();
        let (psi, js) = if samples == 0 {
            if observed.bins() != reference.bins() {
                return Err(DriftError::LengthMismatch {
                    reference: reference.bins(),
                    observed: observed.bins(),
                }
                .in_distribution(&reference.name));
            }
            (0.0, 0.0)
        } else {
            let named = |e: DriftError| e.in_distribution(&reference.name);
            (
                psi(&reference.frequencies, &observed.counts).map_err(named)?,
                js_divergence(&reference.frequencies, &observed.counts).map_err(named)?,
            )
        };
        Ok(Self {
            name: reference.name.clone(),
            psi,
            js,
            samples,
        })
    }
}

/// What makes a window count as drifting. The policy owns the values (see
/// [`super::policy::DriftPolicyConfig::thresholds`]); reports carry a copy so
/// their JSON says what they were judged against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftThresholds {
    /// A distribution drifts when its PSI is above this.
    pub psi: f64,
    /// If set, a distribution also drifts when its JS divergence is above this.
    pub js: Option<f64>,
    /// Windows whose smallest distribution has fewer observations are
    /// inconclusive.
    pub min_samples: u64,
    /// If set, a window also drifts when more than this share of the
    /// evaluated devices drift individually (catches drift confined to a
    /// minority of devices, which the fleet-wide merge dilutes).
    pub max_share_drifting: Option<f64>,
}

/// A window's verdict under some [`DriftThresholds`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Too little data to say either way.
    Insufficient {
        /// The window's smallest sample count.
        samples: u64,
    },
    /// Nothing above threshold.
    Stable,
    /// Drifting; `reason` names the first criterion that fired.
    Drifting {
        /// Human-readable cause, e.g. "`x2` PSI 0.213 > 0.1".
        reason: String,
    },
}

impl DriftThresholds {
    /// Judges `report`'s scores (not its `drifting` flag, which may have been
    /// computed under other thresholds).
    pub fn verdict(&self, report: &DriftReport) -> Verdict {
        if report.samples < self.min_samples.max(1) {
            return Verdict::Insufficient {
                samples: report.samples,
            };
        }
        let distributions = || report.features.iter().chain(report.output.as_ref());
        if let Some(worst) = distributions()
            .filter(|d| d.psi > self.psi)
            .max_by(|a, b| a.psi.total_cmp(&b.psi))
        {
            return Verdict::Drifting {
                reason: format!("`{}` PSI {:.4} > {}", worst.name, worst.psi, self.psi),
            };
        }
        if let Some(limit) = self.js {
            if let Some(worst) = distributions()
                .filter(|d| d.js > limit)
                .max_by(|a, b| a.js.total_cmp(&b.js))
            {
                return Verdict::Drifting {
                    reason: format!("`{}` JS {:.4} > {limit}", worst.name, worst.js),
                };
            }
        }
        if let (Some(limit), Some(devices)) = (self.max_share_drifting, &report.devices) {
            if let Some(share) = devices.share.filter(|share| *share > limit) {
                return Verdict::Drifting {
                    reason: format!(
                        "{} of {} devices drifting ({:.1} % > {:.1} %)",
                        devices.drifting,
                        devices.evaluated,
                        share * 100.0,
                        limit * 100.0
                    ),
                };
            }
        }
        Verdict::Stable
    }
}

/// Drift of one model version (and cohort) over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    /// Per input feature, in profile order.
    pub features: Vec<FeatureDrift>,
    /// Prediction drift: the output distribution against the reference
    /// output distribution; `None` unless both sides have one.
    pub output: Option<FeatureDrift>,
    /// The largest PSI over all features and the output.
    ///
    /// Max rather than a (sample-weighted) mean because drift usually starts
    /// in one feature (a sensor, an upstream change): a mean over `k`
    /// features divides that signal by `k`, while the noise it would average
    /// away is already small once `min_samples` is met (null PSI ≈
    /// (bins − 1)/n). Max also makes the score explainable: it is one named
    /// distribution's PSI, given in `worst`.
    pub fleet_score: f64,
    /// The largest JS divergence over all features and the output.
    pub fleet_js: f64,
    /// Name of the distribution that set `fleet_score`.
    pub worst: Option<String>,
    /// Smallest sample count among the compared distributions.
    pub samples: u64,
    /// Whether `thresholds` judge this window as drifting.
    pub drifting: bool,
    /// The thresholds `drifting` was computed with.
    pub thresholds: DriftThresholds,
    /// Per-device drift, if the caller evaluated it.
    pub devices: Option<DeviceDriftShare>,
}

impl DriftReport {
    /// Compares a merged fleet (or cohort) window with the reference profile.
    ///
    /// # Errors
    ///
    /// [`DriftError::FeatureCountMismatch`] if the window does not have one
    /// histogram per profile feature; a [`DriftError::Distribution`] wrapping
    /// a bin-count mismatch or an invalid reference.
    pub fn build(
        profile: &ReferenceProfile,
        window: &ObservedWindow,
        thresholds: DriftThresholds,
    ) -> Result<Self, DriftError> {
        let (features, output) = compare(profile, window)?;
        let all = || features.iter().chain(output.as_ref());
        let worst = all().max_by(|a, b| a.psi.total_cmp(&b.psi));
        let mut report = Self {
            fleet_score: worst.map_or(0.0, |w| w.psi),
            worst: worst.map(|w| w.name.clone()),
            fleet_js: all().map(|d| d.js).fold(0.0, f64::max),
            samples: all().map(|d| d.samples).min().unwrap_or(0),
            features: Vec::new(),
            output: None,
            drifting: false,
            thresholds,
            devices: None,
        };
        report.features = features;
        report.output = output;
        report.drifting = matches!(report.thresholds.verdict(&report), Verdict::Drifting { .. });
        Ok(report)
    }

    /// Attaches per-device drift and re-judges `drifting`, since
    /// [`DriftThresholds::max_share_drifting`] may now apply.
    pub fn with_devices(mut self, devices: DeviceDriftShare) -> Self {
        self.devices = Some(devices);
        self.drifting = matches!(self.thresholds.verdict(&self), Verdict::Drifting { .. });
        self
    }
}

fn compare(
    profile: &ReferenceProfile,
    window: &ObservedWindow,
) -> Result<(Vec<FeatureDrift>, Option<FeatureDrift>), DriftError> {
    if profile.features.len() != window.features.len() {
        return Err(DriftError::FeatureCountMismatch {
            profile: profile.features.len(),
            window: window.features.len(),
        });
    }
    let features = profile
        .features
        .iter()
        .zip(&window.features)
        .map(|(reference, observed)| FeatureDrift::compute(reference, observed))
        .collect::<Result<Vec<_>, _>>()?;
    let output = match (&profile.output, &window.output) {
        (Some(reference), Some(observed)) => Some(FeatureDrift::compute(reference, observed)?),
        _ => None,
    };
    Ok((features, output))
}

/// One device's drift score, for the "worst devices" list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceScore {
    /// Device id.
    pub device: String,
    /// Largest PSI over the device's distributions.
    pub score: f64,
    /// The distribution that set `score`.
    pub feature: String,
    /// The device's smallest sample count.
    pub samples: u64,
}

/// How many devices drift individually over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceDriftShare {
    /// Devices passed in.
    pub devices: u64,
    /// Devices with enough samples to be judged.
    pub evaluated: u64,
    /// Devices excluded for having fewer than `min_samples_per_device`
    /// samples; counted apart so a quiet fleet is not read as a stable one.
    pub insufficient: u64,
    /// Evaluated devices whose score is above `threshold`.
    pub drifting: u64,
    /// `drifting / evaluated`; `None` when no device could be evaluated.
    pub share: Option<f64>,
    /// Per-device PSI threshold used.
    pub threshold: f64,
    /// Per-device minimum sample count used.
    pub min_samples_per_device: u64,
    /// The highest-scoring evaluated devices, worst first (ties by device
    /// id), at most [`MAX_WORST_DEVICES`].
    pub worst: Vec<DeviceScore>,
}

/// Judges each device's window on its own: a device drifts when its largest
/// PSI (over features and output) is above `threshold`. Devices whose
/// smallest distribution has fewer than `min_samples_per_device` samples
/// (and at least 1) are excluded and counted in `insufficient`.
///
/// `threshold` should be higher than the fleet threshold: per-device windows
/// are small, and null PSI grows as (bins − 1)/n.
///
/// # Errors
///
/// A [`DriftError::Device`] wrapping the first device whose window does not
/// fit the profile.
pub(crate) fn share_of_devices_drifting<'a, I>(
    profile: &ReferenceProfile,
    devices: I,
    threshold: f64,
    min_samples_per_device: u64,
) -> Result<DeviceDriftShare, DriftError>
where
    I: IntoIterator<Item = (&'a str, &'a ObservedWindow)>,
{
    let mut share = DeviceDriftShare {
        devices: 0,
        evaluated: 0,
        insufficient: 0,
        drifting: 0,
        share: None,
        threshold,
        min_samples_per_device,
        worst: Vec::new(),
    };
    for (device, window) in devices {
        share.devices += 1;
        let (features, output) = compare(profile, window).map_err(|e| DriftError::Device {
            device: device.to_owned(),
            source: Box::new(e),
        })?;
        let all = || features.iter().chain(output.as_ref());
        let samples = all().map(|d| d.samples).min().unwrap_or(0);
        if samples < min_samples_per_device.max(1) {
            share.insufficient += 1;
            continue;
        }
        share.evaluated += 1;
        let Some(worst) = all().max_by(|a, b| a.psi.total_cmp(&b.psi)) else {
            continue;
        };
        if worst.psi > threshold {
            share.drifting += 1;
        }
        insert_bounded(
            &mut share.worst,
            DeviceScore {
                device: device.to_owned(),
                score: worst.psi,
                feature: worst.name.clone(),
                samples,
            },
        );
    }
    if share.evaluated > 0 {
        share.share = Some(share.drifting as f64 / share.evaluated as f64);
    }
    Ok(share)
}

/// Keeps `worst` sorted (score descending, then device id) and at most
/// [`MAX_WORST_DEVICES`] long, so memory stays flat however many devices
/// stream through.
fn insert_bounded(worst: &mut Vec<DeviceScore>, candidate: DeviceScore) {
    let position = worst.partition_point(|d| {
        d.score
            .total_cmp(&candidate.score)
            .reverse()
            .then_with(|| d.device.cmp(&candidate.device))
            .is_lt()
    });
    if position < MAX_WORST_DEVICES {
        worst.insert(position, candidate);
        worst.truncate(MAX_WORST_DEVICES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> DriftThresholds {
        DriftThresholds {
            psi: 0.1,
            js: None,
            min_samples: 10,
            max_share_drifting: None,
        }
    }

    fn profile() -> ReferenceProfile {
        ReferenceProfile {
            features: vec![
                FeatureReference {
                    name: "a".into(),
                    edges: vec![0.0],
                    frequencies: vec![0.5, 0.5],
                },
                FeatureReference {
                    name: "b".into(),
                    edges: vec![-1.0, 1.0],
                    frequencies: vec![0.25, 0.5, 0.25],
                },
            ],
            output: Some(FeatureReference::categorical("class", vec![0.5, 0.5])),
        }
    }

    fn window(a: [u64; 2], b: [u64; 3], class: [u64; 2]) -> ObservedWindow {
        ObservedWindow {
            features: vec![
                Histogram::from_counts(a.to_vec()),
                Histogram::from_counts(b.to_vec()),
            ],
            output: Some(Histogram::from_counts(class.to_vec())),
        }
    }

    #[test]
    fn stable_window() {
        let report = DriftReport::build(
            &profile(),
            &window([50, 50], [25, 50, 25], [50, 50]),
            thresholds(),
        )
        .unwrap();
        assert!(!report.drifting);
        assert_eq!(report.samples, 100);
        assert!(report.fleet_score < 1e-12);
        assert_eq!(report.features.len(), 2);
        assert_eq!(report.output.as_ref().unwrap().name, "class");
        assert_eq!(thresholds().verdict(&report), Verdict::Stable);
    }

    #[test]
    fn fleet_score_is_the_worst_distribution() {
        // Feature a: [30, 10] vs [0.5, 0.5] → PSI 0.2745 (see stats tests).
        let report = DriftReport::build(
            &profile(),
            &window([30, 10], [10, 20, 10], [20, 20]),
            thresholds(),
        )
        .unwrap();
        assert!((report.fleet_score - 0.2745315).abs() < 1e-6);
        assert_eq!(report.worst.as_deref(), Some("a"));
        assert!((report.fleet_js - 0.048795).abs() < 1e-6);
        assert!(report.drifting);
        match thresholds().verdict(&report) {
            Verdict::Drifting { reason } => assert!(reason.contains("`a` PSI 0.2745"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prediction_drift_alone_counts() {
        let report = DriftReport::build(
            &profile(),
            &window([20, 20], [10, 20, 10], [30, 10]),
            thresholds(),
        )
        .unwrap();
        assert_eq!(report.worst.as_deref(), Some("class"));
        assert!(report.drifting);
    }

    #[test]
    fn js_threshold_is_optional_and_additional() {
        let mut t = thresholds();
        t.psi = 10.0;
        let w = window([30, 10], [10, 20, 10], [20, 20]);
        assert!(
            !DriftReport::build(&profile(), &w, t.clone())
                .unwrap()
                .drifting
        );
        t.js = Some(0.04);
        assert!(DriftReport::build(&profile(), &w, t).unwrap().drifting);
    }

    #[test]
    fn silent_feature_makes_the_window_insufficient() {
        let report = DriftReport::build(
            &profile(),
            &window([0, 0], [25, 50, 25], [50, 50]),
            thresholds(),
        )
        .unwrap();
        assert_eq!(report.samples, 0);
        assert_eq!(report.features[0].psi, 0.0);
        assert!(!report.drifting);
        assert_eq!(
            thresholds().verdict(&report),
            Verdict::Insufficient { samples: 0 }
        );
    }

    #[test]
    fn window_shape_errors() {
        let mut w = window([1, 1], [1, 1, 1], [1, 1]);
        w.features.pop();
        assert_eq!(
            DriftReport::build(&profile(), &w, thresholds()),
            Err(DriftError::FeatureCountMismatch {
                profile: 2,
                window: 1
            })
        );
        let mut w = window([1, 1], [1, 1, 1], [1, 1]);
        w.features[1] = Histogram::new(2);
        let err = DriftReport::build(&profile(), &w, thresholds()).unwrap_err();
        assert_eq!(
            err,
            DriftError::LengthMismatch {
                reference: 3,
                observed: 2
            }
            .in_distribution("b")
        );
        assert_eq!(
            err.to_string(),
            "`b`: reference has 3 bins but the observation has 2"
        );
    }

    #[test]
    fn windows_merge() {
        let mut fleet = ObservedWindow::default();
        fleet.merge(&window([1, 2], [3, 4, 5], [6, 7])).unwrap();
        fleet.merge(&window([1, 1], [1, 1, 1], [1, 1])).unwrap();
        fleet.merge(&ObservedWindow::default()).unwrap();
        assert_eq!(fleet, window([2, 3], [4, 5, 6], [7, 8]));
        assert_eq!(fleet.samples(), 5);
        let before = fleet.clone();
        let mut bad = window([1, 1], [1, 1, 1], [1, 1]);
        bad.output = Some(Histogram::new(3));
        assert!(fleet.merge(&bad).is_err());
        assert_eq!(fleet, before);
    }

    #[test]
    fn device_share_excludes_quiet_devices() {
        let p = profile();
        let stable = window([50, 50], [25, 50, 25], [50, 50]);
        let drifting = window([90, 10], [25, 50, 25], [50, 50]);
        let quiet = window([3, 0], [1, 1, 1], [2, 1]);
        let devices = [
            ("d1", &stable),
            ("d2", &drifting),
            ("d3", &quiet),
            ("d4", &stable),
        ];
        let share = share_of_devices_drifting(&p, devices, 0.25, 20).unwrap();
        assert_eq!(share.devices, 4);
        assert_eq!(share.evaluated, 3);
        assert_eq!(share.insufficient, 1);
        assert_eq!(share.drifting, 1);
        assert!((share.share.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(share.worst[0].device, "d2");
        assert_eq!(share.worst[0].feature, "a");
        // Ties (d1, d4 both 0) are ordered by id.
        assert_eq!(share.worst[1].device, "d1");
        assert_eq!(share.worst[2].device, "d4");

        let mut t = thresholds();
        t.max_share_drifting = Some(0.2);
        let report = DriftReport::build(&p, &stable, t).unwrap();
        assert!(!report.drifting);
        let report = report.with_devices(share);
        assert!(report.drifting);

        let none = share_of_devices_drifting(&p, [("q", &quiet)], 0.25, 20).unwrap();
        assert_eq!(none.share, None);
        assert_eq!(none.insufficient, 1);
    }

    #[test]
    fn worst_devices_list_is_bounded() {
        let p = profile();
        let windows: Vec<(String, ObservedWindow)> = (0..30u64)
            .map(|i| {
                (
                    format!("dev-{i:02}"),
                    window([50 + i, 50], [25, 50, 25], [50, 50]),
                )
            })
            .collect();
        let share =
            share_of_devices_drifting(&p, windows.iter().map(|(id, w)| (id.as_str(), w)), 0.25, 1)
                .unwrap();
        assert_eq!(share.evaluated, 30);
        assert_eq!(share.worst.len(), MAX_WORST_DEVICES);
        assert_eq!(share.worst[0].device, "dev-29");
        assert!(share.worst.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn device_error_names_the_device() {
        let mut w = window([1, 1], [1, 1, 1], [1, 1]);
        w.features.clear();
        let err = share_of_devices_drifting(&profile(), [("dev-7", &w)], 0.25, 1).unwrap_err();
        assert!(err.to_string().starts_with("device `dev-7`: "), "{err}");
    }

    #[test]
    fn report_round_trips_through_json() {
        let report = DriftReport::build(
            &profile(),
            &window([30, 10], [10, 20, 10], [20, 20]),
            thresholds(),
        )
        .unwrap();
        let json = serde_json::to_string(&report).unwrap();
        let back: DriftReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
