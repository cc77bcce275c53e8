//! When does drift warrant retraining? A sans-IO state machine, one per model.
//!
//! The controller feeds it one [`DriftReport`] per evaluation window with
//! [`DriftPolicy::handle_evaluation`], takes retraining triggers out with
//! [`DriftPolicy::poll_trigger`], and reports the job's end with
//! [`DriftPolicy::handle_job_finished`]. Time is passed in as Unix
//! milliseconds; the state ([`DriftPolicyState`]) is plain serde data the
//! controller persists after every call and hands back to
//! [`DriftPolicy::resume`] after a restart.
//!
//! Rules, in order, for each evaluation:
//!
//! 1. Too few samples → [`Evaluation::Inconclusive`]. The run of drifting
//!    windows is *held*, neither counted nor reset: a quiet night between
//!    two drifting windows says nothing about whether the drift went away,
//!    and an inconclusive window can never cause a trigger because it never
//!    counts. So that a stale run cannot combine with a single drifting
//!    window days later, more than
//!    [`inconclusive_grace`](DriftPolicyConfig::inconclusive_grace)
//!    inconclusive windows in a row reset the run.
//! 2. Below every threshold → [`Evaluation::Stable`]; the run resets.
//! 3. Above a threshold → the run grows. Below
//!    [`consecutive`](DriftPolicyConfig::consecutive) it is
//!    [`Evaluation::Drifting`]; at or beyond it, a [`Trigger`] is queued
//!    unless a job is still running or the cooldown since the last trigger
//!    has not passed ([`Evaluation::Suppressed`]). The run keeps counting
//!    while suppressed, so drift that persists through the cooldown triggers
//!    again on the first drifting window after it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::DriftError;
use super::report::{DriftReport, DriftThresholds, Verdict};

/// Milliseconds since the Unix epoch. Wall-clock rather than monotonic time
/// because policy state (the last trigger) must survive restarts.
pub(crate) type UnixMillis = u64;

/// Retraining policy settings. Every field has a default (see
/// [`Default`]), so a config file only lists what it changes; unknown
/// fields are rejected so a typo cannot silently fall back to a default.
///
/// The defaults are tuned by the simulation in [`super::eval`] (4 features,
/// 10 quantile bins, 2,000 samples per window): a 0.5 σ mean shift in one
/// feature triggers within 3 windows in every trial, and stationary streams
/// raise no alarm. Why they work:
///
/// - For two normals `d` standard deviations apart, PSI (the symmetrised KL
///   divergence) is `d²`, so 0.25 for a 0.5 σ shift; decile binning keeps
///   most of it (0.238 exactly; 0.244 mean, 0.184 minimum over 329 simulated
///   windows, sampling noise included). A window of `n` samples from an
///   unchanged distribution has PSI ≈ χ²(bins − 1)/n, about
///   9/2,000 ≈ 0.0045 ± 0.002 per feature; the max over 4 features and the
///   output measured 0.0075 mean, 0.0216 worst in 10,000 windows. So 0.1
///   sits below the weakest shifted window by a factor of ~1.8 and above the
///   worst null window by ~4.6. The detection edge is near 0.3 σ (binned
///   PSI 0.086): 0.35 σ still triggers within 10 windows in every trial,
///   0.3 σ in about a third, 0.25 σ never.
/// - 0.1 is also the long-standing industry convention ("below 0.1: no
///   significant change"), which keeps reports familiar to operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftPolicyConfig {
    /// A window drifts when any feature's or the output's PSI is above this.
    /// Default 0.1 (see the type docs).
    pub psi_threshold: f64,
    /// Optional extra criterion on the Jensen-Shannon divergence (base 2).
    /// Default `None`: for small shifts JS ≈ PSI / (8 ln 2), so a second
    /// threshold on the same histograms mostly duplicates the first. Set it
    /// when reference profiles have empty bins, where JS (bounded, no
    /// smoothing) is the steadier of the two.
    pub js_threshold: Option<f64>,
    /// Drifting windows in a row needed to trigger. Default 2: one window
    /// can be an incident (a bad batch, a holiday); two in a row is a trend,
    /// and still leaves a spare window inside a "trigger within 3 windows"
    /// target when the shift starts mid-window.
    pub consecutive: u32,
    /// Windows whose smallest distribution has fewer observations are
    /// inconclusive. Default 1,000: null PSI over 10 bins is then ≈ 0.009 ±
    /// 0.004, still a tenth of the threshold.
    pub min_samples: u64,
    /// No new trigger until this long after the previous one, whatever the
    /// job's outcome. Default 24 h: retraining is expensive, and its result
    /// needs time to roll out before drift can be judged against it.
    /// Serialised as whole seconds (`cooldown_secs`).
    #[serde(rename = "cooldown_secs", with = "duration_secs")]
    pub cooldown: Duration,
    /// If set, a window also drifts when more than this share of evaluated
    /// devices drift individually. Default `None`, because it needs
    /// per-device histograms in the report; 0.1 is a reasonable value when
    /// they are available.
    pub max_share_drifting: Option<f64>,
    /// Per-device PSI threshold for the device share. Default 0.25 (the
    /// conventional "significant shift"): device windows are small, so their
    /// noise floor is higher than the fleet's.
    pub device_psi_threshold: f64,
    /// Devices with fewer samples are left out of the device share. Default
    /// 200: null PSI is then ≈ 0.045 ± 0.02 per feature, well under 0.25.
    pub min_samples_per_device: u64,
    /// Inconclusive windows in a row that hold a drifting run; one more
    /// resets it. Default 3.
    pub inconclusive_grace: u32,
}

impl Default for DriftPolicyConfig {
    fn default() -> Self {
        Self {
            psi_threshold: 0.1,
            js_threshold: None,
            consecutive: 2,
            min_samples: 1_000,
            cooldown: Duration::from_secs(24 * 60 * 60),
            max_share_drifting: None,
            device_psi_threshold: 0.25,
            min_samples_per_device: 200,
            inconclusive_grace: 3,
        }
    }
}

impl DriftPolicyConfig {
    /// The thresholds reports are judged with.
    pub fn thresholds(&self) -> DriftThresholds {
        DriftThresholds {
            psi: self.psi_threshold,
            js: self.js_threshold,
            min_samples: self.min_samples,
            max_share_drifting: self.max_share_drifting,
        }
    }

    /// Rejects settings that would make the policy never or always fire.
    pub fn validate(&self) -> Result<(), DriftError> {
        let positive = |field: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(DriftError::InvalidConfig {
                    field,
                    reason: format!("must be a finite number above 0, got {value}"),
                })
            }
        };
        positive("psi_threshold", self.psi_threshold)?;
        positive("device_psi_threshold", self.device_psi_threshold)?;
        if let Some(js) = self.js_threshold {
            positive("js_threshold", js)?;
        }
        if let Some(share) = self.max_share_drifting {
            if !(0.0..1.0).contains(&share) {
                return Err(DriftError::InvalidConfig {
                    field: "max_share_drifting",
                    reason: format!("must be in [0, 1), got {share}"),
                });
            }
        }
        if self.consecutive == 0 {
            return Err(DriftError::InvalidConfig {
                field: "consecutive",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    fn cooldown_ms(&self) -> u64 {
        u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Serde adapter: a `Duration` as whole seconds, which is what people write
/// in config files.
mod duration_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A request to retrain, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// When the policy fired.
    pub at: UnixMillis,
    /// Why, e.g. "`x2` PSI 0.2130 > 0.1 for 2 consecutive windows".
    pub reason: String,
    /// Length of the drifting run that fired.
    pub run: u32,
    /// The report of the window that completed the run.
    pub report: DriftReport,
}

/// Why a due trigger was held back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Suppression {
    /// The last trigger was too recent.
    Cooldown {
        /// When the cooldown ends.
        until: UnixMillis,
    },
    /// The job from the last trigger has not finished.
    JobInFlight,
}

/// What one evaluation decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Evaluation {
    /// Too few samples; the run is held (or reset after the grace).
    Inconclusive {
        /// The window's smallest sample count.
        samples: u64,
        /// The configured minimum.
        min_samples: u64,
        /// The run after this window.
        run: u32,
    },
    /// Below every threshold; the run is reset.
    Stable {
        /// The report's fleet score.
        fleet_score: f64,
    },
    /// Above threshold, run not long enough yet.
    Drifting {
        /// The report's fleet score.
        fleet_score: f64,
        /// The run including this window.
        run: u32,
        /// The run length that triggers.
        needed: u32,
    },
    /// Run long enough, but a trigger is held back.
    Suppressed {
        /// The report's fleet score.
        fleet_score: f64,
        /// The run including this window.
        run: u32,
        /// Why.
        suppression: Suppression,
    },
    /// A [`Trigger`] is ready in [`DriftPolicy::poll_trigger`].
    Triggered {
        /// The report's fleet score.
        fleet_score: f64,
        /// The run including this window.
        run: u32,
    },
}

/// How the last retraining job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// When the controller learned it finished.
    pub finished_at: UnixMillis,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Everything the policy remembers; persist it after each call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DriftPolicyState {
    run: u32,
    inconclusive_run: u32,
    last_trigger_at: Option<UnixMillis>,
    job_in_flight: bool,
    last_job: Option<JobOutcome>,
    pending: Option<Trigger>,
    last_evaluation: Option<(UnixMillis, Evaluation)>,
    evaluations: u64,
    triggers: u64,
}

impl DriftPolicyState {
    /// Drifting conclusive windows in a row so far.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// When the policy last fired.
    pub fn last_trigger_at(&self) -> Option<UnixMillis> {
        self.last_trigger_at
    }

    /// Whether a triggered job has not been reported finished yet.
    pub fn job_in_flight(&self) -> bool {
        self.job_in_flight
    }

    /// How the last job ended.
    pub fn last_job(&self) -> Option<JobOutcome> {
        self.last_job
    }

    /// The most recent evaluation and when it happened.
    pub fn last_evaluation(&self) -> Option<&(UnixMillis, Evaluation)> {
        self.last_evaluation.as_ref()
    }

    /// Evaluations handled since the state was created.
    pub fn evaluations(&self) -> u64 {
        self.evaluations
    }

    /// Triggers fired since the state was created.
    pub fn triggers(&self) -> u64 {
        self.triggers
    }
}

/// The retraining policy for one model. See the module docs for the rules.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DriftPolicy {
    config: DriftPolicyConfig,
    state: DriftPolicyState,
}

impl DriftPolicy {
    /// A fresh policy.
    #[cfg(test)]
    pub(crate) fn new(config: DriftPolicyConfig) -> Result<Self, DriftError> {
        Self::resume(config, DriftPolicyState::default())
    }

    /// Continues from persisted state, possibly under a changed config
    /// (a new `consecutive` or `cooldown` applies from the next call).
    pub(crate) fn resume(
        config: DriftPolicyConfig,
        state: DriftPolicyState,
    ) -> Result<Self, DriftError> {
        config.validate()?;
        Ok(Self { config, state })
    }

    /// The settings in force.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &DriftPolicyConfig {
        &self.config
    }

    /// The state to persist.
    pub(crate) fn state(&self) -> &DriftPolicyState {
        &self.state
    }

    /// When the cooldown from the last trigger ends, if one was ever fired.
    /// Informational (for status output): nothing happens at that instant;
    /// the next drifting evaluation after it may trigger.
    pub(crate) fn cooldown_until(&self) -> Option<UnixMillis> {
        self.state
            .last_trigger_at
            .map(|at| at.saturating_add(self.config.cooldown_ms()))
    }

    /// Takes one window's report into account. The report is re-judged with
    /// this policy's thresholds; its own `drifting` flag is ignored.
    pub(crate) fn handle_evaluation(
        &mut self,
        now: UnixMillis,
        report: &DriftReport,
    ) -> Evaluation {
        let fleet_score = report.fleet_score;
        let evaluation = match self.config.thresholds().verdict(report) {
            Verdict::Insufficient { samples } => {
                self.state.inconclusive_run = self.state.inconclusive_run.saturating_add(1);
                if self.state.inconclusive_run > self.config.inconclusive_grace {
                    self.state.run = 0;
                }
                Evaluation::Inconclusive {
                    samples,
                    min_samples: self.config.min_samples,
                    run: self.state.run,
                }
            }
            Verdict::Stable => {
                self.state.inconclusive_run = 0;
                self.state.run = 0;
                Evaluation::Stable { fleet_score }
            }
            Verdict::Drifting { reason } => {
                self.state.inconclusive_run = 0;
                self.state.run = self.state.run.saturating_add(1);
                self.on_drifting(now, reason, report)
            }
        };
        self.state.evaluations = self.state.evaluations.saturating_add(1);
        self.state.last_evaluation = Some((now, evaluation.clone()));
        evaluation
    }

    fn on_drifting(&mut self, now: UnixMillis, reason: String, report: &DriftReport) -> Evaluation {
        let fleet_score = report.fleet_score;
        let run = self.state.run;
        let needed = self.config.consecutive.max(1);
        if run < needed {
            return Evaluation::Drifting {
                fleet_score,
                run,
                needed,
            };
        }
        if self.state.job_in_flight {
            return Evaluation::Suppressed {
                fleet_score,
                run,
                suppression: Suppression::JobInFlight,
            };
        }
        if let Some(until) = self.cooldown_until().filter(|until| now < *until) {
            return Evaluation::Suppressed {
                fleet_score,
                run,
                suppression: Suppression::Cooldown { until },
            };
        }
        self.state.last_trigger_at = Some(now);
        self.state.job_in_flight = true;
        self.state.triggers = self.state.triggers.saturating_add(1);
        self.state.pending = Some(Trigger {
            at: now,
            reason: format!("{reason} for {run} consecutive windows"),
            run,
            report: report.clone(),
        });
        Evaluation::Triggered { fleet_score, run }
    }

    /// The trigger fired by the last evaluations, once. It stays in the
    /// persisted state until taken, so a crash between firing and creating
    /// the job does not lose it.
    pub(crate) fn poll_trigger(&mut self) -> Option<Trigger> {
        self.state.pending.take()
    }

    /// The job created for the last trigger has ended (or was given up on:
    /// the scheduler owns job timeouts and reports them as `ok: false`).
    ///
    /// The cooldown keeps running from the trigger either way, so a job that
    /// fails fast cannot turn persistent drift into a retraining loop. On
    /// success the run is reset: the new version brings its own reference,
    /// and drift must be shown afresh. On failure the run is kept, so drift
    /// that persists triggers again as soon as the cooldown allows.
    ///
    /// A report with no job in flight (a duplicate, or one from before a
    /// state reset) only updates [`DriftPolicyState::last_job`].
    pub(crate) fn handle_job_finished(&mut self, now: UnixMillis, ok: bool) {
        self.state.last_job = Some(JobOutcome {
            finished_at: now,
            ok,
        });
        if !self.state.job_in_flight {
            return;
        }
        self.state.job_in_flight = false;
        self.state.pending = None;
        if ok {
            self.state.run = 0;
            self.state.inconclusive_run = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::drift::report::FeatureDrift;

    const HOUR: u64 = 3_600_000;

    /// A fake clock: windows one hour apart.
    struct Clock(u64);

    impl Clock {
        fn tick(&mut self) -> u64 {
            self.0 += HOUR;
            self.0
        }
    }

    fn report(psi: f64, samples: u64) -> DriftReport {
        let feature = FeatureDrift {
            name: "x".into(),
            psi,
            js: psi / 5.5,
            samples,
        };
        DriftReport {
            features: vec![feature],
            output: None,
            fleet_score: psi,
            fleet_js: psi / 5.5,
            worst: Some("x".into()),
            samples,
            // Deliberately wrong: the policy must judge by its own thresholds.
            drifting: false,
            thresholds: DriftPolicyConfig::default().thresholds(),
            devices: None,
        }
    }

    fn drifting() -> DriftReport {
        report(0.3, 5_000)
    }

    fn stable() -> DriftReport {
        report(0.01, 5_000)
    }

    fn quiet() -> DriftReport {
        report(0.9, 10)
    }

    fn config() -> DriftPolicyConfig {
        DriftPolicyConfig {
            consecutive: 3,
            cooldown: Duration::from_secs(10 * 3600),
            ..DriftPolicyConfig::default()
        }
    }

    fn policy() -> DriftPolicy {
        DriftPolicy::new(config()).unwrap()
    }

    #[test]
    fn triggers_after_n_consecutive_drifting_windows() {
        let mut p = policy();
        let mut clock = Clock(0);
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Drifting {
                run: 1,
                needed: 3,
                ..
            }
        ));
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Drifting { run: 2, .. }
        ));
        assert_eq!(p.poll_trigger(), None);
        let now = clock.tick();
        assert!(matches!(
            p.handle_evaluation(now, &drifting()),
            Evaluation::Triggered { run: 3, .. }
        ));
        let trigger = p.poll_trigger().unwrap();
        assert_eq!(trigger.at, now);
        assert_eq!(trigger.run, 3);
        assert_eq!(trigger.report, drifting());
        assert_eq!(
            trigger.reason,
            "`x` PSI 0.3000 > 0.1 for 3 consecutive windows"
        );
        assert_eq!(p.poll_trigger(), None, "a trigger is delivered once");
        assert_eq!(p.state().triggers(), 1);
        assert!(p.state().job_in_flight());
    }

    #[test]
    fn a_clean_window_resets_the_run() {
        let mut p = policy();
        let mut clock = Clock(0);
        p.handle_evaluation(clock.tick(), &drifting());
        p.handle_evaluation(clock.tick(), &drifting());
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &stable()),
            Evaluation::Stable { .. }
        ));
        assert_eq!(p.state().run(), 0);
        p.handle_evaluation(clock.tick(), &drifting());
        p.handle_evaluation(clock.tick(), &drifting());
        assert_eq!(p.poll_trigger(), None);
        p.handle_evaluation(clock.tick(), &drifting());
        assert!(p.poll_trigger().is_some());
    }

    #[test]
    fn few_samples_never_trigger() {
        let mut p = policy();
        let mut clock = Clock(0);
        for _ in 0..100 {
            assert!(matches!(
                p.handle_evaluation(clock.tick(), &quiet()),
                Evaluation::Inconclusive {
                    samples: 10,
                    min_samples: 1_000,
                    run: 0
                }
            ));
        }
        assert_eq!(p.poll_trigger(), None);
        assert_eq!(p.state().evaluations(), 100);
    }

    #[test]
    fn inconclusive_windows_hold_the_run_within_the_grace() {
        let mut p = policy();
        let mut clock = Clock(0);
        p.handle_evaluation(clock.tick(), &drifting());
        p.handle_evaluation(clock.tick(), &drifting());
        for _ in 0..3 {
            assert!(matches!(
                p.handle_evaluation(clock.tick(), &quiet()),
                Evaluation::Inconclusive { run: 2, .. }
            ));
        }
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Triggered { run: 3, .. }
        ));
    }

    #[test]
    fn a_long_inconclusive_gap_resets_the_run() {
        let mut p = policy();
        let mut clock = Clock(0);
        p.handle_evaluation(clock.tick(), &drifting());
        p.handle_evaluation(clock.tick(), &drifting());
        for _ in 0..3 {
            p.handle_evaluation(clock.tick(), &quiet());
        }
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &quiet()),
            Evaluation::Inconclusive { run: 0, .. }
        ));
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Drifting { run: 1, .. }
        ));
    }

    #[test]
    fn cooldown_suppresses_and_its_expiry_rearms() {
        let mut p = policy();
        let mut clock = Clock(0);
        for _ in 0..3 {
            p.handle_evaluation(clock.tick(), &drifting());
        }
        let fired_at = p.poll_trigger().unwrap().at;
        p.handle_job_finished(clock.tick(), false);
        let until = fired_at + 10 * HOUR;
        assert_eq!(p.cooldown_until(), Some(until));
        // Failed job: the run is kept, drift persists, but the cooldown holds.
        while clock.0 + HOUR < until {
            assert_eq!(
                p.handle_evaluation(clock.tick(), &drifting()),
                Evaluation::Suppressed {
                    fleet_score: 0.3,
                    run: p.state().run(),
                    suppression: Suppression::Cooldown { until },
                }
            );
            assert_eq!(p.poll_trigger(), None);
        }
        // The first drifting window at or after `until` fires again at once.
        let now = clock.tick();
        assert_eq!(now, until);
        assert!(matches!(
            p.handle_evaluation(now, &drifting()),
            Evaluation::Triggered { .. }
        ));
        assert_eq!(p.poll_trigger().unwrap().at, until);
        assert_eq!(p.state().triggers(), 2);
    }

    #[test]
    fn cooldown_counts_from_the_trigger_not_the_job_end() {
        let mut p = policy();
        let mut clock = Clock(0);
        for _ in 0..3 {
            p.handle_evaluation(clock.tick(), &drifting());
        }
        let fired_at = p.poll_trigger().unwrap().at;
        // The job takes 9 of the 10 cooldown hours and fails.
        clock.0 += 8 * HOUR;
        p.handle_job_finished(clock.tick(), false);
        assert_eq!(p.cooldown_until(), Some(fired_at + 10 * HOUR));
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Triggered { .. }
        ));
    }

    #[test]
    fn no_second_trigger_while_the_job_runs() {
        let mut p = DriftPolicy::new(DriftPolicyConfig {
            cooldown: Duration::ZERO,
            ..config()
        })
        .unwrap();
        let mut clock = Clock(0);
        for _ in 0..3 {
            p.handle_evaluation(clock.tick(), &drifting());
        }
        assert!(p.poll_trigger().is_some());
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Suppressed {
                suppression: Suppression::JobInFlight,
                ..
            }
        ));
        // Success resets the run: the retrained model must drift afresh.
        p.handle_job_finished(clock.tick(), true);
        assert_eq!(
            p.state().last_job(),
            Some(JobOutcome {
                finished_at: clock.0,
                ok: true
            })
        );
        assert_eq!(p.state().run(), 0);
        assert!(!p.state().job_in_flight());
        for _ in 0..2 {
            assert!(matches!(
                p.handle_evaluation(clock.tick(), &drifting()),
                Evaluation::Drifting { .. }
            ));
        }
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Triggered { .. }
        ));
    }

    #[test]
    fn duplicate_job_finished_is_harmless() {
        let mut p = policy();
        let mut clock = Clock(0);
        p.handle_evaluation(clock.tick(), &drifting());
        p.handle_job_finished(clock.tick(), true);
        // No job was in flight, so the run survives.
        assert_eq!(p.state().run(), 1);
        assert!(!p.state().job_in_flight());
    }

    #[test]
    fn state_round_trips_through_json_and_continues() {
        let mut p = policy();
        let mut clock = Clock(0);
        p.handle_evaluation(clock.tick(), &drifting());
        p.handle_evaluation(clock.tick(), &drifting());
        let json = serde_json::to_string(p.state()).unwrap();
        drop(p);

        // "Restart": resume from the persisted state.
        let state: DriftPolicyState = serde_json::from_str(&json).unwrap();
        let mut p = DriftPolicy::resume(config(), state).unwrap();
        assert_eq!(p.state().run(), 2);
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Triggered { run: 3, .. }
        ));

        // A trigger not yet taken survives a restart too, and so does the
        // cooldown.
        let json = serde_json::to_string(p.state()).unwrap();
        let state: DriftPolicyState = serde_json::from_str(&json).unwrap();
        assert_eq!(&state, p.state());
        let mut p = DriftPolicy::resume(config(), state).unwrap();
        let trigger = p.poll_trigger().unwrap();
        assert_eq!(trigger.run, 3);
        p.handle_job_finished(clock.tick(), false);
        assert!(matches!(
            p.handle_evaluation(clock.tick(), &drifting()),
            Evaluation::Suppressed {
                suppression: Suppression::Cooldown { .. },
                ..
            }
        ));
    }

    #[test]
    fn old_state_without_new_fields_still_loads() {
        let state: DriftPolicyState = serde_json::from_str(r#"{"run": 1}"#).unwrap();
        assert_eq!(state.run(), 1);
        assert_eq!(state.last_trigger_at(), None);
    }

    #[test]
    fn the_report_is_rejudged_with_the_policy_thresholds() {
        let mut p = DriftPolicy::new(DriftPolicyConfig {
            psi_threshold: 0.5,
            consecutive: 1,
            ..DriftPolicyConfig::default()
        })
        .unwrap();
        let mut r = drifting();
        r.drifting = true;
        assert!(matches!(
            p.handle_evaluation(1, &r),
            Evaluation::Stable { .. }
        ));
        assert!(matches!(
            p.handle_evaluation(2, &report(0.6, 5_000)),
            Evaluation::Triggered { run: 1, .. }
        ));
    }

    #[test]
    fn js_threshold_alone_can_trigger() {
        let mut p = DriftPolicy::new(DriftPolicyConfig {
            psi_threshold: 10.0,
            js_threshold: Some(0.05),
            consecutive: 1,
            ..DriftPolicyConfig::default()
        })
        .unwrap();
        assert!(matches!(
            p.handle_evaluation(1, &drifting()),
            Evaluation::Triggered { .. }
        ));
        assert!(p.poll_trigger().unwrap().reason.contains("JS"));
    }

    #[test]
    fn config_defaults_serde_and_validation() {
        let c: DriftPolicyConfig = serde_json::from_str(r#"{"consecutive": 4}"#).unwrap();
        assert_eq!(c.consecutive, 4);
        assert_eq!(c.psi_threshold, 0.1);
        assert_eq!(c.cooldown, Duration::from_secs(86_400));
        let json = serde_json::to_value(DriftPolicyConfig::default()).unwrap();
        assert_eq!(json["cooldown_secs"], 86_400);
        assert!(serde_json::from_str::<DriftPolicyConfig>(r#"{"psi_treshold": 0.2}"#).is_err());

        assert!(DriftPolicyConfig::default().validate().is_ok());
        for bad in [
            DriftPolicyConfig {
                psi_threshold: 0.0,
                ..DriftPolicyConfig::default()
            },
            DriftPolicyConfig {
                js_threshold: Some(f64::NAN),
                ..DriftPolicyConfig::default()
            },
            DriftPolicyConfig {
                consecutive: 0,
                ..DriftPolicyConfig::default()
            },
            DriftPolicyConfig {
                max_share_drifting: Some(1.5),
                ..DriftPolicyConfig::default()
            },
        ] {
            assert!(DriftPolicy::new(bad).is_err());
        }
    }
}
