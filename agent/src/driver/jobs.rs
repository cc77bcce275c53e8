//! Deploy and shadow jobs: starting one as slot arbitration decides,
//! carrying out its actions (chunk I/O, verify, load, health check,
//! activate), shadow workers, rollbacks and disk hygiene.

use std::path::PathBuf;
use std::sync::Arc;

use drover_protocol::manifest::ModelManifest;
use drover_protocol::messages::{DeployPhase, DeployStatus, Reason, ReasonCode, Up};
use drover_protocol::{ModelRef, Signed, Timestamp};

use crate::core::deploy::{DeployAction, DeployJob, JobKind, PendingDownload, RangeSet};
use crate::core::slots::{self, Arbitration, JobView, Serving, Slot, Slots, StartPlan};
use crate::link::Delivery;
use crate::runtime::LoadedModel;
use crate::shadow::Shadow;
use crate::store::{InstalledModel, StoreError};

use super::files::{agent_version, blocking, digest_file, write_at};
use super::{Driver, JobShell};

impl Driver {
    pub(super) fn resume(&mut self, slot: Slot, p: PendingDownload, now: Timestamp) {
        let m = match self.trust.verify_manifest(&p.manifest, now) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a pending download whose manifest no longer verifies");
                if let Ok(m) = p.manifest.decode_unverified() {
                    self.report(p.seq, m.model_ref(), DeployPhase::Failed(e.reason()));
                }
                let (store, metrics) = (self.store.clone(), self.shared.metrics.clone());
                tokio::spawn(async move {
                    if let Err(e) = store.call(move |s| s.delete_pending(slot)).await {
                        // The next start tries (and refuses) it again: harmless, but counted.
                        tracing::error!(error = %e, "forgetting a pending download");
                        metrics.store_failed("delete_pending");
                    }
                });
                return;
            }
        };
        tracing::info!(model = %m.model_ref(), held = ?p.held, "resuming download");
        let file = self.partial_path(&m.artifact.sha256);
        let core = DeployJob::resume(p, m, self.cfg.deploy(), now);
        let shell = JobShell {
            core,
            slot,
            file,
            installed: false,
            loaded: None,
        };
        match slot {
            Slot::Deploy => self.deploy_job = Some(shell),
            Slot::Shadow => self.shadow_job = Some(shell),
        }
    }

    /// What the device serves, for slot arbitration.
    pub(super) fn serving(&self) -> Serving {
        let runtime = &self.shared.runtime;
        let size = |m: Option<Arc<LoadedModel>>| m.map_or(0, |m| m.manifest().artifact.size);
        Serving {
            active: self.pointers.active.clone(),
            shadow: self.pointers.shadow.clone(),
            shadow_running: self.shadow.is_some(),
            active_bytes: size(runtime.active()),
            previous_bytes: size(runtime.previous()),
            shadow_bytes: self
                .shadow
                .as_ref()
                .map_or(0, |s| s.candidate().manifest().artifact.size),
        }
    }

    /// Starts a Deploy or Shadow job as [`slots::arbitrate`] decides, then
    /// carries out the decision: cancel what it replaces, seed the new job
    /// with the bytes it takes over, persist it before downloading.
    pub(super) async fn start_job(
        &mut self,
        seq: u64,
        kind: JobKind,
        signed: Signed<ModelManifest>,
        now: Timestamp,
    ) {
        let m = match signed.decode_unverified() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "verified manifest does not decode");
                return;
            }
        };
        let model = m.model_ref();
        let serving = self.serving();
        let limits = self.cfg.limits();
        fn view(j: &Option<JobShell>) -> Option<JobView<'_>> {
            j.as_ref().map(|j| JobView {
                job: &j.core,
                installed: j.installed,
            })
        }
        let decision = slots::arbitrate(
            seq,
            kind,
            &m,
            &Slots {
                serving: &serving,
                deploy: view(&self.deploy_job),
                shadow: view(&self.shadow_job),
                agent: agent_version(),
                limits: &limits,
            },
        );
        let plan = match decision {
            Arbitration::AlreadyActive => {
                self.report(seq, model, DeployPhase::Active);
                return;
            }
            Arbitration::Refuse(r) => {
                self.report(seq, model, DeployPhase::Failed(r));
                return;
            }
            Arbitration::RestartShadow { sample_per_mille } => {
                let phase = match self.shadow.clone() {
                    Some(cur) => {
                        match self
                            .begin_shadow(cur.candidate().clone(), sample_per_mille)
                            .await
                        {
                            Ok(()) => DeployPhase::Shadowing,
                            Err(r) => DeployPhase::Failed(r),
                        }
                    }
                    None => DeployPhase::Failed(Reason::new(
                        ReasonCode::Internal,
                        "shadow restart without a running shadow",
                    )),
                };
                self.report(seq, model, phase);
                return;
            }
            Arbitration::Start(plan) => plan,
        };
        let StartPlan {
            slot,
            promote,
            supersede,
            mut held,
        } = plan;
        if let Some(reason) = promote {
            let other = match slot {
                Slot::Deploy => self.shadow_job.take(),
                Slot::Shadow => self.deploy_job.take(),
            };
            if let Some(mut old) = other {
                old.core.cancel(reason, false);
                let old_slot = old.slot;
                self.run_actions(&mut old).await;
                // Left behind, the row would resume a second download of the
                // same artifact after a restart: count and log, carry on.
                if let Err(e) = self.store.call(move |s| s.delete_pending(old_slot)).await {
                    tracing::error!(slot = old_slot.as_str(), error = %e, "forgetting a promoted download");
                    self.shared.metrics.store_failed("delete_pending");
                }
            }
        }
        let current = match slot {
            Slot::Deploy => self.deploy_job.take(),
            Slot::Shadow => self.shadow_job.take(),
        };
        if let (Some(mut old), Some(s)) = (current, supersede) {
            old.core.cancel(s.reason, s.discard);
            self.run_actions(&mut old).await;
        }
        let sha = m.artifact.sha256;
        // Already on disk (a rollback target, a former shadow): no download.
        let installed = {
            let r = model.clone();
            match self.store.call(move |s| s.model(&r)).await {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(%model, error = %e, "looking up installed models; downloading");
                    self.shared.metrics.store_failed("model_lookup");
                    None
                }
            }
        }
        .filter(|i| i.sha256 == sha)
        .map(|_| self.model_path(&sha))
        .filter(|p| p.exists());
        let (file, is_installed) = match installed {
            Some(p) => {
                held = RangeSet::from_ranges([(0, m.artifact.size)]);
                (p, true)
            }
            None => (self.partial_path(&sha), false),
        };
        if held.total() == 0 && !is_installed {
            // A stale partial file from an earlier job must not pass as held bytes.
            let f = file.clone();
            let r = blocking(
                move || match std::fs::OpenOptions::new().write(true).open(&f) {
                    Ok(h) => h.set_len(0),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                },
            )
            .await;
            if let Err(e) = r
                .map_err(|r| r.detail)
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                tracing::warn!(file = %file.display(), error = %e, "truncating a stale partial file");
            }
        }
        let mut core = DeployJob::new(seq, kind, signed, m, held, self.cfg.deploy(), now);
        if !is_installed {
            let p = core.pending();
            if let Err(e) = self.store.call(move |s| s.put_pending(slot, &p)).await {
                core.cancel(Reason::new(ReasonCode::StoreFailed, e.to_string()), true);
            }
        }
        core.handle_link(self.connected, now);
        let shell = JobShell {
            core,
            slot,
            file,
            installed: is_installed,
            loaded: None,
        };
        match slot {
            Slot::Deploy => self.deploy_job = Some(shell),
            Slot::Shadow => self.shadow_job = Some(shell),
        }
        self.drive_jobs().await;
    }

    pub(super) async fn drive_jobs(&mut self) {
        for slot in [Slot::Deploy, Slot::Shadow] {
            let taken = match slot {
                Slot::Deploy => self.deploy_job.take(),
                Slot::Shadow => self.shadow_job.take(),
            };
            let Some(mut j) = taken else { continue };
            self.run_actions(&mut j).await;
            if !j.core.is_finished() {
                match slot {
                    Slot::Deploy => self.deploy_job = Some(j),
                    Slot::Shadow => self.shadow_job = Some(j),
                }
            }
        }
    }

    pub(super) async fn run_actions(&mut self, j: &mut JobShell) {
        while let Some(a) = j.core.poll_action() {
            match a {
                DeployAction::RequestChunk(req) => {
                    if self.connected {
                        self.link.send(&Up::ChunkRequest(req), Delivery::BestEffort);
                    }
                }
                DeployAction::WriteChunk { offset, data } => {
                    let path = j.file.clone();
                    let r = blocking(move || write_at(&path, offset, &data)).await;
                    match r {
                        Ok(Ok(())) => {
                            let p = j.core.pending();
                            let slot = j.slot;
                            if let Err(e) = self.store.call(move |s| s.put_pending(slot, &p)).await
                            {
                                j.core
                                    .handle_write_failed(&format!("recording progress: {e}"));
                            }
                            crate::fault::hit("deploy.download");
                        }
                        Ok(Err(e)) => j
                            .core
                            .handle_write_failed(&format!("{}: {e}", j.file.display())),
                        Err(r) => j.core.handle_write_failed(&r.detail),
                    }
                }
                DeployAction::Verify => {
                    crate::fault::hit("deploy.verify");
                    let path = j.file.clone();
                    match blocking(move || digest_file(&path)).await {
                        Ok(Ok((sha, size))) => j.core.handle_digest(sha, size),
                        Ok(Err(e)) => j.core.handle_write_failed(&format!("reading back: {e}")),
                        Err(r) => j.core.handle_write_failed(&r.detail),
                    }
                }
                DeployAction::Load => {
                    crate::fault::hit("deploy.load");
                    let path = j.file.clone();
                    let manifest = j.core.manifest().clone();
                    let cfg = self.cfg.recorder();
                    let r = blocking(move || {
                        let bytes = std::fs::read(&path).map_err(|e| {
                            Reason::new(ReasonCode::LoadFailed, format!("{}: {e}", path.display()))
                        })?;
                        LoadedModel::load(&bytes, manifest, cfg).map_err(|e| e.reason())
                    })
                    .await
                    .and_then(|r| r);
                    match r {
                        Ok(lm) => {
                            j.loaded = Some(Arc::new(lm));
                            j.core.handle_loaded(Ok(()));
                        }
                        Err(r) => j.core.handle_loaded(Err(r)),
                    }
                }
                DeployAction::RunHealthChecks => {
                    crate::fault::hit("deploy.health_check");
                    let r = match j.loaded.clone() {
                        Some(lm) => blocking(move || lm.health_check()).await.and_then(|r| r),
                        None => Err(Reason::new(
                            ReasonCode::Internal,
                            "health check without a loaded model",
                        )),
                    };
                    j.core.handle_health(r);
                }
                DeployAction::Activate => {
                    crate::fault::hit("deploy.activate");
                    let r = match j.core.kind() {
                        JobKind::Deploy => self.activate(j).await,
                        JobKind::Shadow { sample_per_mille } => {
                            self.install_shadow(j, sample_per_mille).await
                        }
                    };
                    j.core.handle_activated(r);
                }
                DeployAction::Report(s) => {
                    let DeployStatus { seq, model, phase } = s;
                    self.report(seq, model, phase);
                }
                DeployAction::Discard => {
                    let slot = j.slot;
                    let file = (!j.installed).then(|| j.file.clone());
                    let r = self
                        .store
                        .call(move |s| {
                            if let Some(f) = file {
                                let _ = std::fs::remove_file(f);
                            }
                            s.delete_pending(slot)
                        })
                        .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "discarding a failed download");
                    }
                }
            }
        }
    }

    /// Moves the verified artifact into place (if it was a download).
    pub(super) async fn install_file(&self, j: &JobShell) -> Result<(), Reason> {
        if j.installed {
            return Ok(());
        }
        let from = j.file.clone();
        let to = self.model_path(&j.core.sha256());
        blocking(move || std::fs::rename(&from, &to))
            .await?
            .map_err(|e| Reason::new(ReasonCode::InstallFailed, e.to_string()))
    }

    pub(super) fn installed_record(j: &JobShell) -> InstalledModel {
        InstalledModel {
            model: j.core.model_ref(),
            sha256: j.core.sha256(),
            size: j.core.manifest().artifact.size,
            manifest: j.core.signed_manifest().clone(),
        }
    }

    pub(super) async fn activate(&mut self, j: &mut JobShell) -> Result<(), Reason> {
        let loaded = j.loaded.clone().ok_or_else(|| {
            Reason::new(ReasonCode::Internal, "activation without a loaded model")
        })?;
        let model = j.core.model_ref();
        self.install_file(j).await?;
        let mut pointers = self.pointers.clone();
        if pointers.active.as_ref() != Some(&model) {
            pointers.previous = pointers.active.take();
        }
        pointers.active = Some(model.clone());
        let promoting_shadow = pointers.shadow.as_ref() == Some(&model);
        if promoting_shadow {
            pointers.shadow = None;
        }
        let mut trust = self.trust.clone();
        trust.raise_floor(&model.name, model.version);
        let rec = Self::installed_record(j);
        let (p, t, slot) = (pointers.clone(), trust.clone(), j.slot);
        self.store
            .call(move |s| s.commit_install(&rec, &p, &t, Some(slot)))
            .await
            .map_err(|e| Reason::new(ReasonCode::StoreFailed, e.to_string()))?;
        self.trust = trust;
        self.pointers = pointers;
        let runtime = &self.shared.runtime;
        let old_active = runtime.set_active(Some(loaded));
        if let Some(old_prev) = runtime.set_previous(old_active) {
            self.retired.push(old_prev);
        }
        if promoting_shadow {
            self.drop_shadow_runtime();
        }
        self.guard
            .arm(model.clone(), j.core.manifest().latency_budget_us);
        tracing::info!(%model, "model activated");
        self.hygiene().await;
        self.publish_state();
        Ok(())
    }

    pub(super) fn drop_shadow_runtime(&mut self) {
        if let Some(old) = self.shared.runtime.set_shadow(None) {
            self.retire_shadow(&old);
        }
        self.shadow = None;
    }

    pub(super) fn retire_shadow(&mut self, old: &Arc<Shadow>) {
        self.shared
            .metrics
            .shadow_dropped_closed
            .fetch_add(old.dropped_total(), std::sync::atomic::Ordering::Relaxed);
        self.retired.push(old.candidate().clone());
    }

    pub(super) async fn begin_shadow(
        &mut self,
        candidate: Arc<LoadedModel>,
        per_mille: u16,
    ) -> Result<(), Reason> {
        let clock = *self.shared.runtime.clock();
        let shadow = Shadow::start(candidate, per_mille, self.cfg.shadow_queue, clock)
            .map_err(|e| Reason::new(ReasonCode::ShadowFailed, e.to_string()))?;
        let mut pointers = self.pointers.clone();
        pointers.shadow = Some(shadow.candidate().model_ref().clone());
        pointers.shadow_per_mille = per_mille;
        let p = pointers.clone();
        self.store
            .call(move |s| s.set_pointers(&p))
            .await
            .map_err(|e| Reason::new(ReasonCode::StoreFailed, e.to_string()))?;
        self.pointers = pointers;
        if let Some(old) = self.shared.runtime.set_shadow(Some(shadow.clone())) {
            if !Arc::ptr_eq(old.candidate(), shadow.candidate()) {
                self.retire_shadow(&old);
            } else {
                self.shared
                    .metrics
                    .shadow_dropped_closed
                    .fetch_add(old.dropped_total(), std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.shadow = Some(shadow);
        self.publish_state();
        Ok(())
    }

    pub(super) async fn install_shadow(
        &mut self,
        j: &mut JobShell,
        per_mille: u16,
    ) -> Result<(), Reason> {
        let loaded = j
            .loaded
            .clone()
            .ok_or_else(|| Reason::new(ReasonCode::Internal, "shadow without a loaded model"))?;
        self.install_file(j).await?;
        let rec = Self::installed_record(j);
        let mut pointers = self.pointers.clone();
        pointers.shadow = Some(rec.model.clone());
        pointers.shadow_per_mille = per_mille;
        let (p, t, slot) = (pointers, self.trust.clone(), j.slot);
        self.store
            .call(move |s| s.commit_install(&rec, &p, &t, Some(slot)))
            .await
            .map_err(|e| Reason::new(ReasonCode::StoreFailed, e.to_string()))?;
        self.begin_shadow(loaded, per_mille).await?;
        self.hygiene().await;
        Ok(())
    }

    pub(super) async fn stop_shadow(&mut self) {
        if self.pointers.shadow.is_none() && self.shadow.is_none() {
            return;
        }
        let mut pointers = self.pointers.clone();
        pointers.shadow = None;
        pointers.shadow_per_mille = 0;
        let p = pointers.clone();
        if let Err(e) = self.store.call(move |s| s.set_pointers(&p)).await {
            tracing::error!(error = %e, "persisting shadow stop");
        }
        self.pointers = pointers;
        self.drop_shadow_runtime();
        self.hygiene().await;
        self.publish_state();
    }

    /// Removes installed models and files that are neither active, previous
    /// nor shadow, and partial files no job owns.
    pub(super) async fn hygiene(&mut self) {
        let keep = self.pointers.clone();
        let partial_keep: Vec<PathBuf> = [&self.deploy_job, &self.shadow_job]
            .into_iter()
            .flatten()
            .filter(|j| !j.installed)
            .map(|j| j.file.clone())
            .chain(
                self.agent_update
                    .as_ref()
                    .map(|j| j.partial().to_path_buf()),
            )
            .collect();
        let r = self
            .store
            .call(move |s| -> Result<(), StoreError> {
                let mut kept_files = Vec::new();
                for m in s.models()? {
                    if keep.holds(&m.model) {
                        kept_files.push(s.model_path(&m.sha256));
                    } else {
                        tracing::info!(model = %m.model, "removing model no longer active, previous or shadow");
                        s.remove_model(&m.model)?;
                    }
                }
                // The newest agent download left by an earlier run is kept
                // even with no job owning it: the UpdateAgent command sent
                // again after this restart resumes it (one update at a time).
                let mut partial_keep = partial_keep;
                let newest_agent_part = std::fs::read_dir(s.dir().join("partial"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("agent-"))
                    .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                    .max();
                partial_keep.extend(newest_agent_part.map(|(_, p)| p));
                for (dir, keep) in [("models", &kept_files), ("partial", &partial_keep)] {
                    let dir = s.dir().join(dir);
                    let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                    for e in entries.flatten() {
                        let p = e.path();
                        if !keep.contains(&p) {
                            let _ = std::fs::remove_file(&p);
                        }
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "disk hygiene");
        }
    }

    pub(super) async fn rollback_to(
        &mut self,
        target: Arc<LoadedModel>,
        keep_previous: bool,
    ) -> Result<Option<ModelRef>, Reason> {
        let runtime = self.shared.runtime.clone();
        let from = runtime.active().map(|m| m.model_ref().clone());
        let target_ref = target.model_ref().clone();
        let mut pointers = self.pointers.clone();
        pointers.active = Some(target_ref.clone());
        pointers.previous = if keep_previous { from.clone() } else { None };
        if pointers.shadow.as_ref() == Some(&target_ref) {
            pointers.shadow = None;
        }
        let p = pointers.clone();
        self.store
            .call(move |s| s.set_pointers(&p))
            .await
            .map_err(|e| Reason::new(ReasonCode::StoreFailed, e.to_string()))?;
        let was_shadow = self.pointers.shadow.as_ref() == Some(&target_ref);
        self.pointers = pointers;
        let old_active = runtime.set_active(Some(target.clone()));
        let (new_prev, dropped_active) = if keep_previous {
            (old_active, None)
        } else {
            (None, old_active)
        };
        let old_prev = runtime.set_previous(new_prev);
        for m in [old_prev, dropped_active].into_iter().flatten() {
            if !Arc::ptr_eq(&m, &target) {
                self.retired.push(m);
            }
        }
        if was_shadow {
            self.drop_shadow_runtime();
        }
        self.guard.disarm();
        self.hygiene().await;
        self.publish_state();
        Ok(from)
    }
}
