//! The local guard: watches a freshly activated model's first telemetry window
//! with enough traffic and decides to roll it back (health-check failure,
//! error rate above a threshold, p95 latency above the manifest's budget).
//! Needs no link: the shell applies the decision locally and queues the
//! report. Sans-IO.

use drover_protocol::ModelRef;
use drover_protocol::messages::{Reason, ReasonCode};
use drover_protocol::telemetry::{ModelRole, TelemetryWindow};

/// Guard thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Errors / inferences above this roll the model back.
    pub max_error_rate: f64,
    /// A window needs at least this many inferences to be judged.
    pub min_samples: u64,
    /// Stop watching after this many windows without enough traffic.
    pub max_windows: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_error_rate: 0.05,
            min_samples: 20,
            max_windows: 30,
        }
    }
}

/// What the guard concluded about the watched model.
#[derive(Debug, Clone, PartialEq)]
pub enum GuardDecision {
    /// Go back to the previous model.
    RollBack {
        /// The model to leave.
        from: ModelRef,
        /// Why (code `guard_*`).
        reason: Reason,
    },
    /// The model passed its first judged window.
    Passed {
        /// The model.
        model: ModelRef,
    },
    /// Not enough traffic to judge within the watch period; stop watching.
    GaveUp {
        /// The model.
        model: ModelRef,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Watch {
    model: ModelRef,
    budget_us: Option<u64>,
    windows_seen: u32,
}

/// The guard state machine.
#[derive(Debug, Clone)]
pub struct Guard {
    cfg: GuardConfig,
    watch: Option<Watch>,
}

impl Guard {
    /// A disarmed guard.
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard { cfg, watch: None }
    }

    /// Starts watching a newly activated model.
    pub fn arm(&mut self, model: ModelRef, latency_budget_us: Option<u64>) {
        self.watch = Some(Watch {
            model,
            budget_us: latency_budget_us,
            windows_seen: 0,
        });
    }

    /// Stops watching (the model was replaced by other means).
    pub fn disarm(&mut self) {
        self.watch = None;
    }

    /// The model being watched.
    pub fn watching(&self) -> Option<&ModelRef> {
        self.watch.as_ref().map(|w| &w.model)
    }

    /// A health check of the watched model failed after activation.
    pub fn handle_health_failure(
        &mut self,
        model: &ModelRef,
        detail: &str,
    ) -> Option<GuardDecision> {
        let w = self.watch.as_ref().filter(|w| &w.model == model)?;
        let from = w.model.clone();
        self.watch = None;
        Some(GuardDecision::RollBack {
            from,
            reason: Reason::new(ReasonCode::GuardHealthCheck, detail),
        })
    }

    /// Judges a closed window of the watched model; other windows are ignored.
    pub fn handle_window(&mut self, w: &TelemetryWindow) -> Option<GuardDecision> {
        let watch = self.watch.as_mut()?;
        if w.role != ModelRole::Active || w.model != watch.model {
            return None;
        }
        watch.windows_seen += 1;
        if w.count < self.cfg.min_samples.max(1) {
            if watch.windows_seen >= self.cfg.max_windows {
                let model = watch.model.clone();
                self.watch = None;
                return Some(GuardDecision::GaveUp { model });
            }
            return None;
        }
        let model = watch.model.clone();
        let budget = watch.budget_us;
        self.watch = None;
        let rate = w.errors as f64 / w.count as f64;
        if rate > self.cfg.max_error_rate {
            return Some(GuardDecision::RollBack {
                from: model,
                reason: Reason::new(
                    ReasonCode::GuardErrorRate,
                    format!(
                        "{} of {} inferences failed ({:.1}%, limit {:.1}%) in the first window",
                        w.errors,
                        w.count,
                        rate * 100.0,
                        self.cfg.max_error_rate * 100.0
                    ),
                ),
            });
        }
        if let (Some(budget), Some(p95)) = (budget, w.latency.quantile(0.95))
            && p95 > budget
        {
            return Some(GuardDecision::RollBack {
                from: model,
                reason: Reason::new(
                    ReasonCode::GuardLatencyBudget,
                    format!(
                        "p95 latency {p95} µs exceeds the manifest budget of {budget} µs over {} inferences",
                        w.count
                    ),
                ),
            });
        }
        Some(GuardDecision::Passed { model })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::testkit;
    use drover_protocol::{LatencyHistogram, ModelName, Version};

    fn model(v: u64) -> ModelRef {
        ModelRef {
            name: ModelName::new("sensor").unwrap(),
            version: Version(v),
        }
    }

    fn window(v: u64, count: u64, errors: u64, latency_us: u64) -> TelemetryWindow {
        let mut w = testkit::realistic_window(1);
        w.model = model(v);
        w.count = count;
        w.errors = errors;
        let mut h = LatencyHistogram::default();
        for _ in 0..count {
            h.record(latency_us);
        }
        w.latency = h;
        w
    }

    fn guard() -> Guard {
        Guard::new(GuardConfig {
            max_error_rate: 0.1,
            min_samples: 10,
            max_windows: 3,
        })
    }

    #[test]
    fn latency_budget_breach_rolls_back() {
        let mut g = guard();
        g.arm(model(2), Some(1000));
        let d = g.handle_window(&window(2, 50, 0, 5000)).unwrap();
        match d {
            GuardDecision::RollBack { from, reason } => {
                assert_eq!(from, model(2));
                assert_eq!(reason.code, ReasonCode::GuardLatencyBudget);
            }
            other => panic!("{other:?}"),
        }
        assert!(g.watching().is_none());
    }

    #[test]
    fn error_rate_breach_rolls_back() {
        let mut g = guard();
        g.arm(model(2), None);
        let d = g.handle_window(&window(2, 20, 5, 10)).unwrap();
        assert!(
            matches!(d, GuardDecision::RollBack { ref reason, .. } if reason.code == ReasonCode::GuardErrorRate)
        );
    }

    #[test]
    fn healthy_model_passes_and_guard_disarms() {
        let mut g = guard();
        g.arm(model(2), Some(1000));
        assert_eq!(
            g.handle_window(&window(2, 20, 1, 100)),
            Some(GuardDecision::Passed { model: model(2) })
        );
        assert_eq!(g.handle_window(&window(2, 20, 20, 100_000)), None);
    }

    #[test]
    fn small_windows_are_not_judged_and_other_models_are_ignored() {
        let mut g = guard();
        g.arm(model(2), Some(1000));
        assert_eq!(g.handle_window(&window(1, 100, 100, 100_000)), None);
        assert_eq!(g.handle_window(&window(2, 3, 3, 100_000)), None);
        assert_eq!(g.handle_window(&window(2, 3, 3, 100_000)), None);
        assert_eq!(
            g.handle_window(&window(2, 3, 3, 100_000)),
            Some(GuardDecision::GaveUp { model: model(2) })
        );
    }

    #[test]
    fn health_failure_of_the_watched_model_rolls_back() {
        let mut g = guard();
        assert_eq!(g.handle_health_failure(&model(2), "x"), None);
        g.arm(model(2), None);
        assert_eq!(g.handle_health_failure(&model(3), "x"), None);
        let d = g.handle_health_failure(&model(2), "sample 0 off").unwrap();
        assert!(
            matches!(d, GuardDecision::RollBack { ref reason, .. } if reason.code == ReasonCode::GuardHealthCheck)
        );
        g.arm(model(3), None);
        g.disarm();
        assert!(g.watching().is_none());
    }
}
