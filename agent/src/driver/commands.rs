//! What arrives from the link: decoded payloads, signed commands, and the
//! commands that act without a download (rollback, capture, configure).

use std::sync::Arc;

use drover_protocol::codec::{self, MAX_UP_PAYLOAD};
use drover_protocol::messages::{
    AgentSettings, CaptureUpload, CapturedSample, CommandAck, DeployPhase, Down, Reason,
    ReasonCode, Up,
};
use drover_protocol::topic::Channel;
use drover_protocol::{
    Action, Command, ModelName, ModelRef, Signed, Timestamp, TrustError, Version,
};

use crate::core::deploy::{ChunkOutcome, JobKind};
use crate::core::slots::Slot;
use crate::link::{Delivery, LinkEvent};
use crate::runtime::LoadedModel;

use super::Driver;
use super::files::{blocking, load_installed};

impl Driver {
    // ---- link events -------------------------------------------------

    pub(super) async fn handle_link_event(&mut self, ev: LinkEvent) {
        let now = self.now();
        match ev {
            LinkEvent::Connected => {
                self.connected = true;
                self.outbox.handle_connected();
                self.rerequest_agent_chunks(now);
                self.report_fallback().await;
                for j in [&mut self.deploy_job, &mut self.shadow_job]
                    .into_iter()
                    .flatten()
                {
                    j.core.handle_link(true, now);
                }
                self.drive_jobs().await;
                self.publish_outbox(now).await;
            }
            LinkEvent::Disconnected => {
                self.connected = false;
                self.outbox.handle_disconnected();
                for j in [&mut self.deploy_job, &mut self.shadow_job]
                    .into_iter()
                    .flatten()
                {
                    j.core.handle_link(false, now);
                }
            }
            LinkEvent::Message { channel, payload } => {
                self.handle_payload(channel, &payload, now).await;
            }
        }
    }

    pub(super) async fn handle_payload(
        &mut self,
        channel: Channel,
        payload: &[u8],
        now: Timestamp,
    ) {
        let msg = match codec::decode_down(payload, channel) {
            Ok(m) => m,
            Err(e) => {
                let kind = match e {
                    drover_protocol::CodecError::Empty => "empty",
                    drover_protocol::CodecError::TooLarge { .. } => "too_large",
                    drover_protocol::CodecError::UnsupportedVersion { .. } => "unsupported_version",
                    drover_protocol::CodecError::Malformed(_) => "malformed",
                    drover_protocol::CodecError::TrailingBytes(_) => "trailing_bytes",
                    drover_protocol::CodecError::Encode(_) => "encode",
                };
                self.shared
                    .metrics
                    .malformed(&format!("{}_{kind}", channel.as_str()));
                tracing::warn!(channel = channel.as_str(), error = %e, len = payload.len(), "undecodable payload");
                return;
            }
        };
        if codec::down_channel(&msg) != channel {
            self.shared
                .metrics
                .malformed(&format!("{}_wrong_channel", channel.as_str()));
            tracing::warn!(channel = channel.as_str(), "message on the wrong channel");
            return;
        }
        match msg {
            Down::Command(signed) => self.handle_command(&signed, now).await,
            Down::TelemetryAck(_) => {
                // Unsigned: any client of the broker could have sent it.
                self.shared.metrics.malformed("unsigned_telemetry_ack");
                tracing::warn!("ignored an unsigned telemetry ack");
            }
            Down::SignedTelemetryAck(signed) => {
                let ack = match self.trust.verify_controller(&signed, now) {
                    Ok(a) if a.device == self.cfg.device_id && a.fleet == self.cfg.fleet => a,
                    Ok(_) => {
                        self.shared.metrics.malformed("telemetry_ack_other_device");
                        tracing::warn!("ignored a telemetry ack bound to another device");
                        return;
                    }
                    Err(e) => {
                        self.shared.metrics.malformed("telemetry_ack_refused");
                        tracing::warn!(error = %e, "ignored a telemetry ack that does not verify");
                        return;
                    }
                };
                let deleted = self.outbox.handle_ack(&ack.seqs);
                self.last_ack = Some(now);
                if !deleted.is_empty() {
                    let r = self.store.call(move |s| s.outbox_delete(&deleted)).await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "deleting acknowledged windows");
                    }
                }
                self.publish_outbox(now).await;
            }
            Down::Chunk(chunk) => {
                let metrics = self.shared.metrics.clone();
                if self.handle_agent_chunk(&chunk, now).await {
                    metrics
                        .chunks_received
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                let slot = [&self.deploy_job, &self.shadow_job]
                    .into_iter()
                    .flatten()
                    .find(|j| j.core.sha256() == chunk.sha256)
                    .map(|j| j.slot);
                let outcome = match slot {
                    Some(Slot::Deploy) => self
                        .deploy_job
                        .as_mut()
                        .map(|j| j.core.handle_chunk(chunk, now)),
                    Some(Slot::Shadow) => self
                        .shadow_job
                        .as_mut()
                        .map(|j| j.core.handle_chunk(chunk, now)),
                    None => None,
                };
                match outcome {
                    Some(ChunkOutcome::Accepted) => {
                        metrics
                            .chunks_received
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some(ChunkOutcome::Invalid(kind)) => {
                        metrics.malformed(kind);
                        metrics
                            .chunks_ignored
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {
                        metrics
                            .chunks_ignored
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                self.drive_jobs().await;
            }
            Down::KeyList(list) => {
                let mut next = self.trust.clone();
                match next.handle_key_list(&list, now) {
                    Ok(()) if next != self.trust => {
                        let t = next.clone();
                        match self.store.call(move |s| s.save_trust(&t)).await {
                            Ok(()) => {
                                tracing::info!(
                                    version = next.key_list().map_or(0, |k| k.version),
                                    "key list installed"
                                );
                                self.trust = next;
                            }
                            Err(e) => tracing::error!(error = %e, "persisting the key list"),
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "key list refused");
                        self.shared.metrics.rejected_command(e.code().as_str());
                    }
                }
            }
        }
    }

    // ---- commands -----------------------------------------------------

    /// The time a command's expiry is judged against: the controller's
    /// clock as the newest accepted command carried it (its `issued_at`),
    /// advanced by this device's monotonic clock since, never the device's
    /// own wall clock, which may be hours off (no RTC, no NTP yet) and must
    /// not make every command look expired or eternal. Before the first
    /// command of this run, the command's own issue time: the first command
    /// after a start is not refused as expired; sequence numbers still
    /// refuse every replay.
    fn command_now(&self, signed: &Signed<Command>, now: Timestamp) -> Timestamp {
        match self.controller_time {
            Some((issued, at)) => issued.plus_ms(now.0.saturating_sub(at.0)),
            None => signed.decode_unverified().map_or(now, |c| c.issued_at),
        }
    }

    pub(super) async fn handle_command(&mut self, signed: &Signed<Command>, now: Timestamp) {
        let mut next = self.trust.clone();
        let cmd = match next.accept_command(signed, self.command_now(signed, now)) {
            Ok(c) => c,
            Err(e) => {
                // Only a verified, fresh command of ours is answered with its
                // sequence: a forged, foreign or replayed one is answered with
                // 0, so a replay of captured commands can never turn a
                // finished deployment into a failure.
                let attributable = matches!(
                    e,
                    TrustError::CommandExpired { .. }
                        | TrustError::ManifestExpired { .. }
                        | TrustError::Downgrade { .. }
                        | TrustError::ArtifactMismatch { .. }
                );
                let seq = if attributable {
                    signed.decode_unverified().map(|c| c.seq).unwrap_or(0)
                } else {
                    0
                };
                tracing::warn!(seq, error = %e, "command refused");
                self.shared.metrics.rejected_command(e.code().as_str());
                self.link.send(
                    &Up::Ack(CommandAck {
                        seq,
                        result: Err(e.reason()),
                    }),
                    Delivery::Reliable,
                );
                return;
            }
        };
        let (t, c) = (next.clone(), cmd.clone());
        if let Err(e) = self.store.call(move |s| s.accept_command(&t, &c)).await {
            tracing::error!(error = %e, "persisting trust state; refusing the command");
            self.link.send(
                &Up::Ack(CommandAck {
                    seq: cmd.seq,
                    result: Err(Reason::new(ReasonCode::StoreFailed, e.to_string())),
                }),
                Delivery::Reliable,
            );
            return;
        }
        self.trust = next;
        if self
            .controller_time
            .is_none_or(|(issued, _)| cmd.issued_at > issued)
        {
            self.controller_time = Some((cmd.issued_at, now));
        }
        tracing::info!(
            seq = cmd.seq,
            action = cmd.action.kind(),
            "command accepted"
        );
        self.link.send(
            &Up::Ack(CommandAck {
                seq: cmd.seq,
                result: Ok(()),
            }),
            Delivery::Reliable,
        );
        crate::fault::hit("command.accepted");
        self.act(cmd, now).await;
        self.forget_accepted().await;
    }

    /// Carries out a command accepted before the process stopped whose
    /// action had not durably started (see `Store::accept_command`).
    pub(super) async fn act_on_unfinished(&mut self, cmd: Command, now: Timestamp) {
        tracing::info!(
            seq = cmd.seq,
            action = cmd.action.kind(),
            "carrying out a command accepted before the restart"
        );
        self.act(cmd, now).await;
        self.forget_accepted().await;
    }

    /// The accepted command's action has started: a restart must not run it
    /// again (a download in flight resumes from its own record).
    async fn forget_accepted(&mut self) {
        if let Err(e) = self.store.call(|s| s.clear_accepted_command()).await {
            tracing::error!(error = %e, "forgetting the accepted command");
            self.shared.metrics.store_failed("clear_accepted_command");
        }
    }

    pub(super) async fn act(&mut self, cmd: Command, now: Timestamp) {
        let seq = cmd.seq;
        match cmd.action {
            Action::Deploy { manifest } => {
                self.start_job(seq, JobKind::Deploy, manifest, now).await
            }
            Action::Shadow {
                manifest,
                sample_per_mille,
            } => {
                let kind = JobKind::Shadow {
                    sample_per_mille: sample_per_mille.min(1000),
                };
                self.start_job(seq, kind, manifest, now).await;
            }
            Action::StopShadow => {
                if let Some(mut j) = self.shadow_job.take() {
                    j.core.cancel(
                        Reason::new(ReasonCode::Cancelled, format!("stopped by command {seq}")),
                        true,
                    );
                    self.run_actions(&mut j).await;
                }
                self.stop_shadow().await;
            }
            Action::Rollback { model, to, reason } => {
                self.rollback_commanded(seq, model, to, reason).await;
            }
            Action::Capture {
                max_samples,
                max_bytes,
            } => self.capture(seq, max_samples, max_bytes),
            Action::Configure(settings) => self.configure(settings).await,
            Action::UpdateAgent { release, rollback } => {
                self.start_agent_update(seq, release, rollback, now).await
            }
        }
    }

    pub(super) async fn rollback_commanded(
        &mut self,
        seq: u64,
        name: ModelName,
        to: Option<Version>,
        why: String,
    ) {
        // The rollback wins over a deploy of the same model still in
        // flight: left running, that download would finish and activate
        // the version the controller was just told is gone.
        if self
            .deploy_job
            .as_ref()
            .is_some_and(|j| j.core.manifest().name == name)
            && let Some(mut j) = self.deploy_job.take()
        {
            j.core.cancel(
                Reason::new(
                    ReasonCode::Cancelled,
                    format!("superseded by rollback command {seq}"),
                ),
                true,
            );
            self.run_actions(&mut j).await;
            self.hygiene().await;
        }
        let target = match to {
            None => self.pointers.previous.clone().filter(|p| p.name == name),
            Some(v) => Some(ModelRef {
                name: name.clone(),
                version: v,
            }),
        };
        let current = self.pointers.active.clone();
        let report_model = current.clone().unwrap_or(ModelRef {
            name: name.clone(),
            version: to.unwrap_or_default(),
        });
        let Some(target) = target else {
            let r = Reason::new(
                ReasonCode::NotInstalled,
                format!("no previous version of {name} is installed"),
            );
            self.report(seq, report_model, DeployPhase::Failed(r));
            return;
        };
        let reason = Reason::new(ReasonCode::Commanded, why);
        if current.as_ref() == Some(&target) {
            self.report(
                seq,
                target.clone(),
                DeployPhase::RolledBack {
                    to: Some(target),
                    reason,
                },
            );
            return;
        }
        let loaded = match self.shared.runtime.previous() {
            Some(p) if p.model_ref() == &target => Ok(p),
            _ => self.load_installed_model(&target).await,
        };
        let loaded = match loaded {
            Ok(l) => l,
            Err(r) => {
                self.report(seq, target, DeployPhase::Failed(r));
                return;
            }
        };
        match self.rollback_to(loaded, true).await {
            Ok(from) => {
                tracing::info!(to = %target, "rolled back by command");
                self.report(
                    seq,
                    from.unwrap_or(target.clone()),
                    DeployPhase::RolledBack {
                        to: Some(target),
                        reason,
                    },
                );
            }
            Err(r) => self.report(seq, target, DeployPhase::Failed(r)),
        }
    }

    pub(super) async fn load_installed_model(
        &self,
        target: &ModelRef,
    ) -> Result<Arc<LoadedModel>, Reason> {
        let r = target.clone();
        let inst = self
            .store
            .call(move |s| s.model(&r))
            .await
            .map_err(|e| Reason::new(ReasonCode::StoreFailed, e.to_string()))?
            .ok_or_else(|| {
                Reason::new(
                    ReasonCode::NotInstalled,
                    format!("{target} is not installed"),
                )
            })?;
        let manifest = inst
            .manifest
            .decode_unverified()
            .map_err(|e| Reason::new(ReasonCode::NotInstalled, e.to_string()))?;
        let path = self.model_path(&inst.sha256);
        let cfg = self.cfg.clone();
        blocking(move || load_installed(&path, manifest, &cfg))
            .await?
            .map(Arc::new)
    }

    pub(super) fn capture(&self, seq: u64, max_samples: u32, max_bytes: u32) {
        let Some(active) = self.shared.runtime.active() else {
            tracing::warn!(seq, "capture requested with no active model");
            return;
        };
        let mut samples = active.recorder().captured(max_samples as usize);
        // Newest first within the byte budget.
        let mut budget = u64::from(max_bytes);
        let mut keep = 0;
        for s in samples.iter().rev() {
            let cost = s.input.len() as u64 * 4 + 8;
            if cost > budget {
                break;
            }
            budget -= cost;
            keep += 1;
        }
        let samples = samples.split_off(samples.len() - keep);
        let model = active.model_ref().clone();
        // Leave room for the envelope; each part stays under the up limit.
        let part_budget = MAX_UP_PAYLOAD - 4096;
        let mut parts: Vec<Vec<CapturedSample>> = vec![Vec::new()];
        let mut size = 0;
        for s in samples {
            let cost = s.input.len() * 5 + 16;
            if size + cost > part_budget && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                size = 0;
            }
            size += cost;
            if let Some(p) = parts.last_mut() {
                p.push(s);
            }
        }
        let n = parts.len();
        for (i, samples) in parts.into_iter().enumerate() {
            let up = Up::Capture(CaptureUpload {
                seq,
                model: model.clone(),
                part: i as u32,
                last: i + 1 == n,
                samples,
            });
            self.link.send(&up, Delivery::Reliable);
            // Between two parts of an upload (or after the only one).
            crate::fault::hit("capture.upload");
        }
    }

    pub(super) async fn configure(&mut self, s: AgentSettings) {
        if let Some(ms) = s.telemetry_window_ms {
            self.windower.set_len_ms(ms);
            self.settings.telemetry_window_ms = Some(self.windower.len_ms());
        }
        if let Some(pm) = s.capture_per_mille {
            let pm = pm.min(1000);
            self.settings.capture_per_mille = Some(pm);
            let rt = &self.shared.runtime;
            for m in [rt.active(), rt.previous()].into_iter().flatten() {
                m.recorder().set_capture_per_mille(pm);
            }
        }
        let saved = self.settings.clone();
        if let Err(e) = self.store.call(move |st| st.save_settings(&saved)).await {
            tracing::error!(error = %e, "persisting settings");
        }
        self.publish_state();
    }
}
