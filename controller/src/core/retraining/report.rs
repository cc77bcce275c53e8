//! `drover drift`: the drift of one model version over a time range, for
//! the whole fleet and per cohort, as one pure function ([`drift_report`])
//! over data the ports fetched.
//!
//! Also the adapters between wire types and the drift layer: the
//! manifest's f32 reference profile becomes a validated f64
//! [`ReferenceProfile`], and telemetry histograms that do not fit it are
//! set aside instead of failing a whole fleet's report.

use drover_protocol::manifest::ModelManifest;
use drover_protocol::{ModelName, Version};
use serde::{Deserialize, Serialize};

use super::ports::{AccuracyBucket, CohortFilter, TelemetrySlice};
use crate::core::drift::{
    DriftError, DriftPolicyConfig, DriftReport, DriftThresholds, FeatureReference, Histogram,
    ObservedWindow, ReferenceProfile, Verdict, share_of_devices_drifting,
};

/// Name of the output distribution in reports (predicted classes, or
/// binned regression predictions).
pub(crate) const OUTPUT_NAME: &str = "prediction";

/// How many accuracy buckets a report's time range is cut into.
pub(crate) const ACCURACY_BUCKETS: u64 = 12;

/// The manifest's reference profile in drift's terms, validated.
///
/// # Errors
///
/// [`DriftError::TooFewBins`] (0) when the manifest has no feature profile
/// (pushed without a reference CSV: drift cannot be measured), or the
/// validation error of the first bad distribution.
pub(crate) fn reference_profile(manifest: &ModelManifest) -> Result<ReferenceProfile, DriftError> {
    let convert = |name: &str, edges: &[f32], frequencies: &[f32]| FeatureReference {
        name: name.to_owned(),
        edges: edges.iter().map(|e| f64::from(*e)).collect(),
        frequencies: frequencies.iter().map(|f| f64::from(*f)).collect(),
    };
    let reference = &manifest.reference;
    if reference.features.is_empty() {
        return Err(DriftError::TooFewBins(0));
    }
    let profile = ReferenceProfile {
        features: reference
            .features
            .iter()
            .map(|f| convert(&f.name, &f.bins.edges, &f.bins.frequencies))
            .collect(),
        output: (!reference.output.frequencies.is_empty()).then(|| {
            convert(
                OUTPUT_NAME,
                &reference.output.edges,
                &reference.output.frequencies,
            )
        }),
    };
    profile.validate()?;
    Ok(profile)
}

/// Whether `window` has exactly the profile's shape (an output histogram
/// is optional).
fn fits(profile: &ReferenceProfile, window: &ObservedWindow) -> bool {
    window.features.len() == profile.features.len()
        && window
            .features
            .iter()
            .zip(&profile.features)
            .all(|(h, r)| h.bins() == r.bins())
        && match (&window.output, &profile.output) {
            (Some(h), Some(r)) => h.bins() == r.bins(),
            _ => true,
        }
}

/// A window with no data gets the profile's shape with zero counts, so it
/// reads as "0 samples" (inconclusive) rather than as a shape error.
fn shaped(profile: &ReferenceProfile, window: &ObservedWindow) -> ObservedWindow {
    if window.features.is_empty() && window.output.is_none() {
        ObservedWindow {
            features: profile
                .features
                .iter()
                .map(|f| Histogram::new(f.bins()))
                .collect(),
            output: None,
        }
    } else {
        let mut window = window.clone();
        // An output histogram of the wrong width (e.g. a class added by a
        // newer version's telemetry) is dropped rather than failing features.
        if let (Some(h), Some(r)) = (&window.output, &profile.output) {
            if h.bins() != r.bins() {
                window.output = None;
            }
        }
        window
    }
}

/// Judges one slice: the merged window against the profile, plus the
/// share of devices drifting when per-device windows are present. Device
/// windows that do not fit the profile are left out (they come from agents
/// binning on other edges; one of them must not hide the fleet's drift).
///
/// # Errors
///
/// A shape error of the merged window.
pub(crate) fn assess(
    profile: &ReferenceProfile,
    policy: &DriftPolicyConfig,
    slice: &TelemetrySlice,
) -> Result<DriftReport, DriftError> {
    let merged = shaped(profile, &slice.merged);
    let report = DriftReport::build(profile, &merged, policy.thresholds())?;
    if slice.devices.is_empty() {
        return Ok(report);
    }
    let devices = slice
        .devices
        .iter()
        .filter(|(_, w)| fits(profile, w))
        .map(|(id, w)| (id.as_str(), w));
    let share = share_of_devices_drifting(
        profile,
        devices,
        policy.device_psi_threshold,
        policy.min_samples_per_device,
    )?;
    Ok(report.with_devices(share))
}

/// Accuracy over one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AccuracyPoint {
    /// Bucket start (Unix ms).
    pub start_ms: u64,
    /// Bucket end (Unix ms).
    pub end_ms: u64,
    /// Labelled inferences.
    pub labelled: u64,
    /// Correct among them.
    pub correct: u64,
    /// `correct / labelled`; `None` without labels.
    pub accuracy: Option<f64>,
}

/// Accuracy per time bucket and its linear trend, where labels exist.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccuracyTrend {
    /// Buckets in time order.
    pub buckets: Vec<AccuracyPoint>,
    /// Labelled inferences over the whole range.
    pub labelled: u64,
    /// Accuracy over the whole range.
    pub accuracy: Option<f64>,
    /// Least-squares slope of bucket accuracy against time, in accuracy
    /// points (0..1) per hour, each bucket weighted by its labelled count;
    /// `None` with fewer than two labelled buckets. Negative = degrading.
    pub slope_per_hour: Option<f64>,
}

impl AccuracyTrend {
    /// Builds the trend from raw buckets.
    pub fn from_buckets(buckets: &[AccuracyBucket]) -> AccuracyTrend {
        let points: Vec<AccuracyPoint> = buckets
            .iter()
            .map(|b| AccuracyPoint {
                start_ms: b.start_ms,
                end_ms: b.end_ms,
                labelled: b.labelled,
                correct: b.correct.min(b.labelled),
                accuracy: (b.labelled > 0)
                    .then(|| b.correct.min(b.labelled) as f64 / b.labelled as f64),
            })
            .collect();
        let labelled: u64 = points.iter().map(|p| p.labelled).sum();
        let correct: u64 = points.iter().map(|p| p.correct).sum();
        AccuracyTrend {
            slope_per_hour: weighted_slope(&points),
            accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
            labelled,
            buckets: points,
        }
    }
}

fn weighted_slope(points: &[AccuracyPoint]) -> Option<f64> {
    let labelled: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|p| {
            let mid_h = (p.start_ms as f64 + p.end_ms as f64) / 2.0 / 3_600_000.0;
            p.accuracy.map(|a| (mid_h, a, p.labelled as f64))
        })
        .collect();
    if labelled.len() < 2 {
        return None;
    }
    let w: f64 = labelled.iter().map(|(_, _, w)| w).sum();
    let mx = labelled.iter().map(|(x, _, w)| x * w).sum::<f64>() / w;
    let my = labelled.iter().map(|(_, y, w)| y * w).sum::<f64>() / w;
    let sxx: f64 = labelled.iter().map(|(x, _, w)| w * (x - mx).powi(2)).sum();
    let sxy: f64 = labelled
        .iter()
        .map(|(x, y, w)| w * (x - mx) * (y - my))
        .sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// What the ports fetched for one scope (the fleet, or one cohort).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeData {
    /// `None` for the whole fleet.
    pub cohort: Option<CohortFilter>,
    /// Merged (and per-device) histograms.
    pub slice: TelemetrySlice,
    /// Labelled/correct per time bucket.
    pub accuracy: Vec<AccuracyBucket>,
}

/// Drift of one scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeDrift {
    /// The cohort (`None` = the whole fleet).
    pub cohort: Option<CohortFilter>,
    /// Telemetry windows merged.
    pub windows: u64,
    /// Per feature PSI and JS, output drift, fleet score, device share;
    /// `None` when the telemetry does not fit the profile (see `error`).
    pub report: Option<DriftReport>,
    /// The report judged with the policy's thresholds.
    pub verdict: Option<Verdict>,
    /// Why there is no report.
    pub error: Option<String>,
    /// Accuracy per bucket and its trend.
    pub accuracy: AccuracyTrend,
}

impl ScopeDrift {
    /// Judges `data` against `profile`.
    pub fn assess(
        profile: &ReferenceProfile,
        policy: &DriftPolicyConfig,
        data: &ScopeData,
    ) -> ScopeDrift {
        let (report, error) = match assess(profile, policy, &data.slice) {
            Ok(report) => (Some(report), None),
            Err(e) => (None, Some(e.to_string())),
        };
        ScopeDrift {
            cohort: data.cohort.clone(),
            windows: data.slice.windows,
            verdict: report.as_ref().map(|r| policy.thresholds().verdict(r)),
            report,
            error,
            accuracy: AccuracyTrend::from_buckets(&data.accuracy),
        }
    }

    /// Whether the verdict is drifting.
    pub fn is_drifting(&self) -> bool {
        matches!(self.verdict, Some(Verdict::Drifting { .. }))
    }

    fn is_conclusive(&self) -> bool {
        matches!(
            self.verdict,
            Some(Verdict::Drifting { .. } | Verdict::Stable)
        )
    }
}

/// Picks the scope the drift policy should judge: a drifting one if any
/// (the highest fleet score), else the conclusive one with the highest
/// score, else the one with the most samples (which the policy will find
/// inconclusive). Ties go to the earlier scope. `None` if no scope has a
/// report.
pub(crate) fn worst_scope(scopes: &[ScopeDrift]) -> Option<usize> {
    let key = |s: &ScopeDrift| {
        let report = s.report.as_ref()?;
        let rank = if s.is_drifting() {
            2
        } else if s.is_conclusive() {
            1
        } else {
            0
        };
        let score = if rank == 0 {
            report.samples as f64
        } else {
            report.fleet_score
        };
        Some((rank, score))
    };
    let mut best: Option<(usize, (u8, f64))> = None;
    for (i, scope) in scopes.iter().enumerate() {
        let Some(k) = key(scope) else { continue };
        let better = match best {
            None => true,
            Some((_, b)) => k.0 > b.0 || (k.0 == b.0 && k.1 > b.1),
        };
        if better {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

/// The answer of `GET /v1/drift` / `drover drift` for one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftOverview {
    /// Model.
    pub model: ModelName,
    /// Version measured.
    pub version: Version,
    /// Range start (Unix ms).
    pub from_ms: u64,
    /// Range end (Unix ms).
    pub to_ms: u64,
    /// When computed (Unix ms).
    pub generated_at: u64,
    /// Thresholds the verdicts use (the model's retrain policy, or defaults).
    pub thresholds: DriftThresholds,
    /// Per-device PSI threshold of the device share.
    pub device_psi_threshold: f64,
    /// Label key of the cohort breakdown, if asked for.
    pub cohort_key: Option<String>,
    /// The whole fleet.
    pub fleet: ScopeDrift,
    /// One per cohort value, by value.
    pub cohorts: Vec<ScopeDrift>,
}

/// Everything [`drift_report`] needs.
#[derive(Debug, Clone)]
pub struct DriftInput<'a> {
    /// Model.
    pub model: &'a ModelName,
    /// Version.
    pub version: Version,
    /// The version's manifest (reference profile).
    pub manifest: &'a ModelManifest,
    /// Thresholds and device-share settings.
    pub policy: &'a DriftPolicyConfig,
    /// Range start (Unix ms).
    pub from_ms: u64,
    /// Range end (Unix ms).
    pub to_ms: u64,
    /// Now (Unix ms).
    pub now: u64,
    /// Cohort label key, when a breakdown was asked for.
    pub cohort_key: Option<&'a str>,
    /// The fleet scope.
    pub fleet: ScopeData,
    /// The cohort scopes (already filtered to `cohort_key`).
    pub cohorts: Vec<ScopeData>,
}

/// Per feature PSI and JS against the manifest's reference profile, output
/// drift, accuracy trend, fleet score and the share of devices drifting,
/// for the fleet and each cohort.
///
/// # Errors
///
/// The manifest has no usable reference profile (see [`reference_profile`]).
pub fn drift_report(input: DriftInput<'_>) -> Result<DriftOverview, DriftError> {
    let profile = reference_profile(input.manifest)?;
    let mut cohorts: Vec<ScopeDrift> = input
        .cohorts
        .iter()
        .map(|c| ScopeDrift::assess(&profile, input.policy, c))
        .collect();
    cohorts.sort_by(|a, b| a.cohort.cmp(&b.cohort));
    Ok(DriftOverview {
        model: input.model.clone(),
        version: input.version,
        from_ms: input.from_ms,
        to_ms: input.to_ms,
        generated_at: input.now,
        thresholds: input.policy.thresholds(),
        device_psi_threshold: input.policy.device_psi_threshold,
        cohort_key: input.cohort_key.map(str::to_owned),
        fleet: ScopeDrift::assess(&profile, input.policy, &input.fleet),
        cohorts,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_protocol::Timestamp;
    use drover_protocol::testkit;

    use super::*;

    fn manifest() -> ModelManifest {
        testkit::manifest("m", 1, b"onnx", Timestamp(0))
    }

    /// Counts proportional to the testkit profile (0.16, 0.34, 0.34, 0.16).
    fn stable_feature(n: u64) -> Histogram {
        Histogram::from_counts(vec![16 * n, 34 * n, 34 * n, 16 * n])
    }

    fn shifted_feature(n: u64) -> Histogram {
        Histogram::from_counts(vec![2 * n, 8 * n, 40 * n, 50 * n])
    }

    fn window(first: Histogram, n: u64) -> ObservedWindow {
        ObservedWindow {
            features: vec![
                first,
                stable_feature(n),
                stable_feature(n),
                stable_feature(n),
            ],
            output: Some(Histogram::from_counts(vec![70 * n, 20 * n, 10 * n])),
        }
    }

    #[test]
    fn profile_conversion() {
        let p = reference_profile(&manifest()).unwrap();
        assert_eq!(p.features.len(), 4);
        assert_eq!(p.features[0].name, "temp");
        assert_eq!(p.features[0].edges, vec![-1.0, 0.0, 1.0]);
        assert!((p.features[0].frequencies[1] - 0.34).abs() < 1e-6);
        assert_eq!(p.output.as_ref().unwrap().name, OUTPUT_NAME);

        let mut m = manifest();
        m.reference.features.clear();
        assert!(reference_profile(&m).is_err());
        let mut m = manifest();
        m.reference.features[1].bins.edges = vec![1.0, 0.0, 2.0];
        let err = reference_profile(&m).unwrap_err().to_string();
        assert!(err.contains("vibration"), "{err}");
        let mut m = manifest();
        m.reference.output.frequencies.clear();
        assert!(reference_profile(&m).unwrap().output.is_none());
    }

    #[test]
    fn empty_telemetry_is_inconclusive_not_an_error() {
        let p = reference_profile(&manifest()).unwrap();
        let r = assess(
            &p,
            &DriftPolicyConfig::default(),
            &TelemetrySlice::default(),
        )
        .unwrap();
        assert_eq!(r.samples, 0);
        assert!(!r.drifting);
    }

    #[test]
    fn misfit_devices_are_left_out() {
        let p = reference_profile(&manifest()).unwrap();
        let policy = DriftPolicyConfig {
            min_samples_per_device: 10,
            ..DriftPolicyConfig::default()
        };
        let mut bad = window(stable_feature(10), 10);
        bad.features[2] = Histogram::from_counts(vec![1, 2]);
        let slice = TelemetrySlice {
            windows: 3,
            merged: window(shifted_feature(30), 30),
            devices: BTreeMap::from([
                ("d1".to_owned(), window(shifted_feature(10), 10)),
                ("d2".to_owned(), window(stable_feature(10), 10)),
                ("d3".to_owned(), bad),
            ]),
        };
        let r = assess(&p, &policy, &slice).unwrap();
        let share = r.devices.as_ref().unwrap();
        assert_eq!(share.devices, 2);
        assert_eq!(share.drifting, 1);
        assert_eq!(share.worst[0].device, "d1");
        assert!(r.drifting);
        assert_eq!(r.worst.as_deref(), Some("temp"));
    }

    #[test]
    fn accuracy_trend_slope() {
        let hour = 3_600_000;
        let buckets: Vec<AccuracyBucket> = (0..4u64)
            .map(|i| AccuracyBucket {
                start_ms: i * hour,
                end_ms: (i + 1) * hour,
                labelled: if i == 2 { 0 } else { 100 },
                correct: 90 - 10 * i,
            })
            .collect();
        let t = AccuracyTrend::from_buckets(&buckets);
        assert_eq!(t.buckets[2].accuracy, None);
        assert_eq!(t.labelled, 300);
        assert!((t.accuracy.unwrap() - (90.0 + 80.0 + 60.0) / 300.0).abs() < 1e-12);
        // Points (0.5, .9), (1.5, .8), (3.5, .6): exactly −0.1 per hour.
        assert!((t.slope_per_hour.unwrap() + 0.1).abs() < 1e-9, "{t:?}");
        let one = AccuracyTrend::from_buckets(&buckets[..1]);
        assert_eq!(one.slope_per_hour, None);
        assert_eq!(AccuracyTrend::from_buckets(&[]).accuracy, None);
    }

    #[test]
    fn report_per_cohort_finds_the_drifting_one() {
        let m = manifest();
        let model = ModelName::new("m").unwrap();
        let policy = DriftPolicyConfig::default();
        let cohort = |v: &str| CohortFilter::new("region", v).unwrap();
        let overview = drift_report(DriftInput {
            model: &model,
            version: Version(1),
            manifest: &m,
            policy: &policy,
            from_ms: 0,
            to_ms: 10,
            now: 10,
            cohort_key: Some("region"),
            fleet: ScopeData {
                slice: TelemetrySlice {
                    windows: 2,
                    merged: window(stable_feature(40), 40),
                    devices: BTreeMap::new(),
                },
                ..ScopeData::default()
            },
            cohorts: vec![
                ScopeData {
                    cohort: Some(cohort("us")),
                    slice: TelemetrySlice {
                        windows: 1,
                        merged: window(shifted_feature(20), 20),
                        devices: BTreeMap::new(),
                    },
                    accuracy: Vec::new(),
                },
                ScopeData {
                    cohort: Some(cohort("eu")),
                    slice: TelemetrySlice {
                        windows: 1,
                        merged: window(stable_feature(20), 20),
                        devices: BTreeMap::new(),
                    },
                    accuracy: Vec::new(),
                },
            ],
        })
        .unwrap();
        assert!(!overview.fleet.is_drifting());
        assert_eq!(overview.cohorts[0].cohort, Some(cohort("eu")));
        assert!(!overview.cohorts[0].is_drifting());
        assert!(overview.cohorts[1].is_drifting());
        assert_eq!(worst_scope(&overview.cohorts), Some(1));
        let json = serde_json::to_value(&overview).unwrap();
        assert_eq!(json["cohorts"][1]["verdict"]["verdict"], "drifting");
        assert!(json["fleet"]["report"]["features"][0]["psi"].is_number());
    }

    #[test]
    fn worst_scope_prefers_drifting_then_conclusive_then_samples() {
        let p = reference_profile(&manifest()).unwrap();
        let policy = DriftPolicyConfig::default();
        let scope = |w: ObservedWindow| {
            ScopeDrift::assess(
                &p,
                &policy,
                &ScopeData {
                    slice: TelemetrySlice {
                        windows: 1,
                        merged: w,
                        devices: BTreeMap::new(),
                    },
                    ..ScopeData::default()
                },
            )
        };
        let quiet_small = scope(window(shifted_feature(1), 1));
        let quiet_big = scope(window(shifted_feature(5), 5));
        let stable = scope(window(stable_feature(20), 20));
        let drifting = scope(window(shifted_feature(20), 20));
        assert_eq!(worst_scope(&[]), None);
        assert_eq!(
            worst_scope(&[quiet_small.clone(), quiet_big.clone()]),
            Some(1)
        );
        assert_eq!(
            worst_scope(&[quiet_big.clone(), stable.clone(), quiet_small]),
            Some(1)
        );
        assert_eq!(worst_scope(&[stable, drifting, quiet_big]), Some(1));
    }
}
