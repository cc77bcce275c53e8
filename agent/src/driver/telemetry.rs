//! Telemetry: sealing windows into the outbox, the local guard's verdicts
//! on them, and publishing unacknowledged windows.

use std::sync::Arc;

use drover_protocol::Timestamp;
use drover_protocol::messages::{DeployPhase, Reason, ReasonCode};
use drover_protocol::telemetry::{ModelRole, TelemetryWindow};

use crate::core::guard::GuardDecision;
use crate::core::window::WindowBounds;
use crate::link::Delivery;
use crate::runtime::LoadedModel;

use super::Driver;

impl Driver {
    // ---- telemetry ----------------------------------------------------

    pub(super) async fn close_windows(&mut self, b: WindowBounds) {
        let rt = self.shared.runtime.clone();
        let mut windows: Vec<TelemetryWindow> = Vec::new();
        let shadow_stats = self.shadow.as_ref().map(|s| s.take_stats());
        if shadow_stats.is_some() {
            // A shadow evaluation's comparisons taken, not yet in a window.
            crate::fault::hit("shadow.window");
        }
        if let Some(a) = rt.active() {
            let acc = a.recorder().take();
            windows.push(
                self.windower
                    .seal(&b, a.recorder().spec(), ModelRole::Active, acc, None),
            );
        }
        let mut others: Vec<Arc<LoadedModel>> = std::mem::take(&mut self.retired);
        others.extend(rt.previous());
        for m in others {
            let acc = m.recorder().take();
            if acc.count() > 0 || acc.labelled() > 0 {
                windows.push(self.windower.seal(
                    &b,
                    m.recorder().spec(),
                    ModelRole::Active,
                    acc,
                    None,
                ));
            }
        }
        if let Some(s) = &self.shadow {
            // The comparison travels with the candidate's own window: it
            // names the version compared, which a rollout's shadow gate
            // selects by (the active model's window does not say which
            // candidate it was compared with).
            let c = s.candidate();
            let acc = c.recorder().take();
            let compared = shadow_stats
                .as_ref()
                .is_some_and(|s| s.compared > 0 || s.errors > 0 || s.dropped > 0);
            if acc.count() > 0 || compared {
                windows.push(self.windower.seal(
                    &b,
                    c.recorder().spec(),
                    ModelRole::Shadow,
                    acc,
                    shadow_stats,
                ));
            }
        }
        let mut decisions = Vec::new();
        for w in windows {
            if w.role == ModelRole::Active {
                self.shared
                    .metrics
                    .add_closed(w.count, w.errors, &w.latency);
            }
            if w.role == ModelRole::Active && self.guard.watching().is_some() {
                crate::fault::hit("guard.window");
            }
            if let Some(d) = self.guard.handle_window(&w) {
                decisions.push(d);
            }
            let pushed = self.outbox.push(w);
            let evicted = pushed.evicted.len() as u64;
            if evicted > 0 {
                self.shared
                    .metrics
                    .outbox_evicted
                    .fetch_add(evicted, std::sync::atomic::Ordering::Relaxed);
            }
            let seq = pushed.window.seq;
            let r = self
                .store
                .call(move |s| s.outbox_push(&pushed.window, &pushed.evicted))
                .await;
            if let Err(e) = r {
                tracing::error!(seq, error = %e, "persisting a telemetry window; dropping it");
                self.outbox.discard(seq);
            }
            // Committed to the outbox, not yet sent.
            crate::fault::hit("telemetry.outbox");
        }
        for d in decisions {
            self.handle_guard(d).await;
        }
    }

    pub(super) async fn handle_guard(&mut self, d: GuardDecision) {
        match d {
            GuardDecision::Passed { model } => tracing::info!(%model, "local guard: model passed"),
            GuardDecision::GaveUp { model } => {
                tracing::info!(%model, "local guard: not enough traffic to judge; stopped watching");
            }
            GuardDecision::RollBack { from, reason } => {
                let rt = self.shared.runtime.clone();
                if rt.active().map(|a| a.model_ref().clone()) != Some(from.clone()) {
                    return;
                }
                let Some(prev) = rt.previous() else {
                    tracing::error!(%from, %reason, "local guard wants a rollback but there is no previous model");
                    self.report(
                        0,
                        from,
                        DeployPhase::Failed(Reason::new(
                            ReasonCode::GuardNoPrevious,
                            reason.detail,
                        )),
                    );
                    return;
                };
                let to = prev.model_ref().clone();
                tracing::warn!(%from, %to, %reason, "local guard rolling back");
                match self.rollback_to(prev, false).await {
                    Ok(_) => self.report(
                        0,
                        from,
                        DeployPhase::RolledBack {
                            to: Some(to),
                            reason,
                        },
                    ),
                    Err(r) => self.report(0, from, DeployPhase::Failed(r)),
                }
            }
        }
    }

    pub(super) async fn publish_outbox(&mut self, now: Timestamp) {
        if !self.connected {
            return;
        }
        let seqs = self.outbox.poll_transmit(now, usize::MAX);
        if seqs.is_empty() {
            return;
        }
        let r = self
            .store
            .call(move |s| {
                seqs.into_iter()
                    .map(|q| s.outbox_payload(q).map(|p| (q, p)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await;
        match r {
            Ok(payloads) => {
                for (seq, p) in payloads {
                    match p {
                        Some(p) => {
                            self.link.send_encoded(p, Delivery::BestEffort);
                            self.shared
                                .metrics
                                .windows_published
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        None => {
                            self.outbox.discard(seq);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the outbox"),
        }
    }
}
