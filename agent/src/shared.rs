//! [`Shared`]: what the `Agent` handle, the driver and the HTTP API all
//! hold: config, serving slots, counters and the status snapshot. Its own
//! module so those three depend on it and not on each other.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use drover_protocol::messages::Label;

use crate::config::AgentConfig;
use crate::core::window::FeedbackOutcome;
use crate::infer::{FeedbackError, FeedbackLabel};
use crate::metrics::{self, Metrics, Scrape};
use crate::runtime::Runtime;
use crate::status::{AgentStatus, LinkState};

/// What every shell shares: config, serving slots, counters, status.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: AgentConfig,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) status: RwLock<AgentStatus>,
    /// Set when a new agent binary is staged: the process shell exits so
    /// the service manager starts it.
    pub(crate) restart: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    pub(crate) fn status(&self) -> AgentStatus {
        let mut s = self
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let m = &self.metrics;
        s.link = LinkState {
            connected: m.link_connected.load(Ordering::Relaxed),
            reconnects: m.link_reconnects.load(Ordering::Relaxed),
        };
        for (prefix, map) in [
            ("rejected_commands", m.rejected_commands()),
            ("malformed", m.malformed_payloads()),
            ("http_errors", m.http_errors()),
            ("feedback", m.feedback_outcomes()),
            ("deploy_failures", m.deploy_failures()),
            ("store_failures", m.store_failures()),
        ] {
            for (k, v) in map {
                s.counters.insert(format!("{prefix}.{k}"), v);
            }
        }
        let sc = self.scrape();
        s.counters.insert("inferences".into(), sc.inferences);
        s.counters.insert("inference_errors".into(), sc.errors);
        s.counters.insert("no_model".into(), sc.no_model);
        s.counters.insert("bad_input".into(), sc.bad_input);
        s.counters
            .insert("shadow_dropped".into(), sc.shadow_dropped);
        s.counters.insert(
            "windows_published".into(),
            m.windows_published.load(Ordering::Relaxed),
        );
        s
    }

    pub(crate) fn scrape(&self) -> Scrape {
        let rt = &self.runtime;
        let closed = self
            .metrics
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut s = Scrape {
            inferences: closed.inferences,
            errors: closed.errors,
            latency: closed.latency,
            no_model: rt.no_model_count(),
            bad_input: rt.bad_input_count(),
            shadow_dropped: rt.shadow().map_or(0, |s| s.dropped_total()),
            active: rt.active().map(|a| a.model_ref().to_string()),
        };
        for m in [rt.active(), rt.previous()].into_iter().flatten() {
            let live = m.recorder().peek();
            s.inferences += live.count();
            s.errors += live.errors();
            s.latency.merge(live.latency());
        }
        s
    }

    pub(crate) fn metrics_text(&self) -> String {
        metrics::render(&self.metrics, &self.scrape())
    }

    pub(crate) fn feedback(
        &self,
        request_id: u64,
        label: &FeedbackLabel,
    ) -> Result<bool, FeedbackError> {
        let rt = &self.runtime;
        let now_ms = rt.clock().now().0;
        let mut bad_name = None;
        let mut result = Err(FeedbackError::Unknown);
        for m in [rt.active(), rt.previous()].into_iter().flatten() {
            let truth = match label {
                FeedbackLabel::Class(i) => Label::Class(*i),
                FeedbackLabel::Value(v) => Label::Value(*v),
                FeedbackLabel::ClassName(n) => match m.labels().iter().position(|l| **l == **n) {
                    Some(i) => Label::Class(u32::try_from(i).unwrap_or(u32::MAX)),
                    None => {
                        bad_name = Some(format!(
                            "{n:?} is not a class of {} ({})",
                            m.model_ref(),
                            m.labels().join(", ")
                        ));
                        continue;
                    }
                },
            };
            result = match m.recorder().feedback(request_id, truth, now_ms) {
                FeedbackOutcome::Unknown => continue,
                FeedbackOutcome::Recorded { correct } => Ok(correct.unwrap_or(true)),
                FeedbackOutcome::Duplicate => Ok(true),
                FeedbackOutcome::Expired => Err(FeedbackError::Expired),
                FeedbackOutcome::Mismatch => Err(FeedbackError::Mismatch(format!(
                    "the label does not fit {} (class index out of range, or value vs class)",
                    m.model_ref()
                ))),
            };
            break;
        }
        if let (Err(FeedbackError::Unknown), Some(detail)) = (&result, bad_name) {
            result = Err(FeedbackError::Mismatch(detail));
        }
        let outcome = match &result {
            Ok(_) => "recorded",
            Err(FeedbackError::Unknown) => "unknown",
            Err(FeedbackError::Expired) => "expired",
            Err(FeedbackError::Mismatch(_)) => "mismatch",
        };
        self.metrics.feedback(outcome);
        result
    }
}
