//! The driver: one task that owns the sans-IO cores (deploy jobs, guard,
//! windower, outbox) and the trust state, feeds them link events, timers and
//! commands, and carries out their actions against the store, tract, the
//! serving slots and the link. Every state change that matters is committed
//! to the store before the action it enables.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use drover_protocol::codec::{self, MAX_UP_PAYLOAD};
use drover_protocol::ids::Sha256Hasher;
use drover_protocol::manifest::{AgentVersion, ModelManifest};
use drover_protocol::messages::{
    AgentSettings, CaptureUpload, CapturedSample, CommandAck, DeployPhase, DeployStatus, Down,
    Hello, Reason, ReasonCode, Up,
};
use drover_protocol::telemetry::{ModelRole, TelemetryWindow};
use drover_protocol::topic::Channel;
use drover_protocol::{
    Action, Command, ModelName, ModelRef, Sha256, Signed, Timestamp, TrustState, Version,
};

use crate::config::AgentConfig;
use crate::core::deploy::{
    self, ChunkOutcome, DeployAction, DeployJob, JobKind, PendingDownload, RangeSet,
};
use crate::core::guard::{Guard, GuardDecision};
use crate::core::outbox::Outbox;
use crate::core::window::{WindowBounds, Windower};
use crate::link::{Delivery, Link, LinkEvent};
use crate::runtime::LoadedModel;
use crate::shadow::Shadow;
use crate::shared::Shared;
use crate::status::DownloadStatus;
use crate::store::{InstalledModel, Pointers, Slot, StoreError, StoreHandle};

/// Requests from the `Agent` handle.
#[derive(Debug)]
pub(crate) enum Control {
    /// Flush, say Offline, disconnect, stop.
    Shutdown(oneshot::Sender<()>),
}

/// A deploy core plus what the shell holds for it.
struct JobShell {
    core: DeployJob,
    slot: Slot,
    /// Where the artifact bytes are: the partial file, or an installed file
    /// when the artifact was already on disk.
    file: PathBuf,
    installed: bool,
    loaded: Option<Arc<LoadedModel>>,
}

/// Everything restored from the data directory at start.
pub(crate) struct Restored {
    pub(crate) trust: TrustState,
    pub(crate) pointers: Pointers,
    pub(crate) settings: AgentSettings,
    pub(crate) outbox_seqs: Vec<(u64, u64)>,
    pub(crate) next_window_seq: u64,
    pub(crate) pending: Vec<(Slot, PendingDownload)>,
    pub(crate) shadow: Option<Arc<Shadow>>,
}

pub(crate) struct Driver {
    cfg: AgentConfig,
    shared: Arc<Shared>,
    store: StoreHandle,
    link: Link,
    hello: watch::Sender<Hello>,
    trust: TrustState,
    pointers: Pointers,
    settings: AgentSettings,
    deploy_job: Option<JobShell>,
    shadow_job: Option<JobShell>,
    guard: Guard,
    windower: Windower,
    outbox: Outbox,
    connected: bool,
    retired: Vec<Arc<LoadedModel>>,
    shadow: Option<Arc<Shadow>>,
    last_ack: Option<Timestamp>,
}

fn agent_version() -> AgentVersion {
    AgentVersion::parse(crate::version::AGENT_VERSION).unwrap_or_default()
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> Result<R, Reason> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Reason::new(ReasonCode::Internal, format!("worker task failed: {e}")))
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)?;
    // Durable before the store says these bytes are held.
    f.sync_data()
}

fn digest_file(path: &Path) -> std::io::Result<(Sha256, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(buf.get(..k).unwrap_or_default());
        n += k as u64;
    }
    Ok((h.finish(), n))
}

/// Reads, checks and loads an installed model file.
pub(crate) fn load_installed(
    path: &Path,
    manifest: ModelManifest,
    cfg: &AgentConfig,
) -> Result<LoadedModel, Reason> {
    let bytes = std::fs::read(path)
        .map_err(|e| Reason::new(ReasonCode::NotInstalled, format!("{}: {e}", path.display())))?;
    drover_protocol::trust::check_artifact(&manifest, Sha256::of(&bytes), bytes.len() as u64)
        .map_err(|e| e.reason())?;
    LoadedModel::load(&bytes, manifest, cfg.recorder()).map_err(|e| e.reason())
}

impl Driver {
    pub(crate) fn new(
        cfg: AgentConfig,
        shared: Arc<Shared>,
        store: StoreHandle,
        link: Link,
        hello: watch::Sender<Hello>,
        restored: Restored,
    ) -> Driver {
        let now = shared.runtime.clock().now();
        let window_ms = restored
            .settings
            .telemetry_window_ms
            .unwrap_or(cfg.telemetry_window_ms);
        let mut d = Driver {
            guard: Guard::new(cfg.guard()),
            windower: Windower::new(now, window_ms, restored.next_window_seq),
            outbox: Outbox::new(cfg.outbox(), restored.outbox_seqs),
            trust: restored.trust,
            pointers: restored.pointers,
            settings: restored.settings,
            deploy_job: None,
            shadow_job: None,
            connected: false,
            retired: Vec::new(),
            shadow: restored.shadow,
            last_ack: None,
            cfg,
            shared,
            store,
            link,
            hello,
        };
        for (slot, p) in restored.pending {
            d.resume(slot, p, now);
        }
        d.publish_state();
        d
    }

    fn now(&self) -> Timestamp {
        self.shared.runtime.clock().now()
    }

    fn resume(&mut self, slot: Slot, p: PendingDownload, now: Timestamp) {
        let m = match self.trust.verify_manifest(&p.manifest, now) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a pending download whose manifest no longer verifies");
                if let Ok(m) = p.manifest.decode_unverified() {
                    self.report(p.seq, m.model_ref(), DeployPhase::Failed(e.reason()));
                }
                let store = self.store.clone();
                tokio::spawn(async move {
                    let _ = store.call(move |s| s.delete_pending(slot)).await;
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

    fn partial_path(&self, sha: &Sha256) -> PathBuf {
        self.cfg
            .data_dir
            .join("partial")
            .join(format!("{}.part", sha.to_hex()))
    }

    fn model_path(&self, sha: &Sha256) -> PathBuf {
        self.cfg
            .data_dir
            .join("models")
            .join(format!("{}.onnx", sha.to_hex()))
    }

    pub(crate) async fn run(
        mut self,
        mut events: mpsc::Receiver<LinkEvent>,
        mut control: mpsc::Receiver<Control>,
    ) {
        // Jobs restored at start may already hold every byte.
        self.drive_jobs().await;
        loop {
            let now = self.now();
            self.tick(now).await;
            self.publish_state();
            let deadline = self.next_deadline();
            let deadline =
                tokio::time::Instant::from_std(self.shared.runtime.clock().instant_of(deadline));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle_link_event(ev).await,
                    None => break,
                },
                c = control.recv() => {
                    let done = c.map(|Control::Shutdown(done)| done);
                    self.shutdown().await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn next_deadline(&self) -> Timestamp {
        let mut t = self.windower.poll_timeout().0;
        for (d, _) in [
            self.outbox.poll_timeout(),
            self.deploy_job.as_ref().and_then(|j| j.core.poll_timeout()),
            self.shadow_job.as_ref().and_then(|j| j.core.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(d);
        }
        t
    }

    async fn tick(&mut self, now: Timestamp) {
        while let Some(b) = self.windower.poll_window(now) {
            self.close_windows(b).await;
        }
        for j in [&mut self.deploy_job, &mut self.shadow_job]
            .into_iter()
            .flatten()
        {
            j.core.handle_timeout(now);
        }
        self.drive_jobs().await;
        self.publish_outbox(now).await;
    }

    async fn shutdown(&mut self) {
        let now = self.now();
        let b = self.windower.close_now(now);
        self.close_windows(b).await;
        self.publish_state();
        self.link.shutdown().await;
        // Dropping the last handle closes the queue; the worker thread ends.
        self.shared.runtime.set_shadow(None);
        self.shadow = None;
    }

    /// Updates Hello (re-sent on every connect) and the status snapshot.
    fn publish_state(&mut self) {
        let s = |m: &Option<ModelRef>| m.as_ref().map(ToString::to_string);
        let hello = Hello {
            agent_version: crate::version::AGENT_VERSION.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            hardware: self.cfg.hardware.clone(),
            labels: self.cfg.labels.clone(),
            active: self.pointers.active.clone(),
            previous: self.pointers.previous.clone(),
            shadow: self.pointers.shadow.clone(),
            last_command_seq: self.trust.last_command_seq(),
            key_list_version: self.trust.key_list().map_or(0, |k| k.version),
            outbox_depth: self.outbox.depth() as u64,
        };
        self.hello.send_if_modified(|h| {
            if *h == hello {
                false
            } else {
                *h = hello.clone();
                true
            }
        });
        let metrics = &self.shared.metrics;
        metrics.outbox_depth.store(
            self.outbox.depth() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let downloads = [&self.deploy_job, &self.shadow_job]
            .into_iter()
            .flatten()
            .map(|j| DownloadStatus {
                model: j.core.model_ref().to_string(),
                kind: match j.core.kind() {
                    JobKind::Deploy => "deploy".into(),
                    JobKind::Shadow { .. } => "shadow".into(),
                },
                seq: j.core.seq(),
                received: j.core.held_bytes(),
                total: j.core.manifest().artifact.size,
            })
            .collect();
        let mut st = self
            .shared
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner());
        st.active = s(&self.pointers.active);
        st.previous = s(&self.pointers.previous);
        st.shadow = s(&self.pointers.shadow);
        st.shadow_per_mille = self.pointers.shadow_per_mille;
        st.outbox_depth = self.outbox.depth() as u64;
        st.outbox_evicted = self.outbox.evicted_total();
        st.last_ack_ms = self.last_ack.map(|t| t.0);
        st.last_command_seq = hello.last_command_seq;
        st.key_list_version = hello.key_list_version;
        st.telemetry_window_ms = self.windower.len_ms();
        st.downloads = downloads;
    }

    fn report(&self, seq: u64, model: ModelRef, phase: DeployPhase) {
        if let DeployPhase::Failed(r) = &phase {
            tracing::warn!(%model, seq, reason = %r, "deploy failed");
            self.shared.metrics.deploy_failed(r.code.as_str());
        } else {
            tracing::info!(%model, seq, ?phase, "deploy status");
        }
        self.link.send(
            &Up::DeployStatus(DeployStatus { seq, model, phase }),
            Delivery::Reliable,
        );
    }

    // ---- link events -------------------------------------------------

    async fn handle_link_event(&mut self, ev: LinkEvent) {
        let now = self.now();
        match ev {
            LinkEvent::Connected => {
                self.connected = true;
                self.outbox.handle_connected();
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

    async fn handle_payload(&mut self, channel: Channel, payload: &[u8], now: Timestamp) {
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
            Down::TelemetryAck(ack) => {
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

    async fn handle_command(&mut self, signed: &Signed<Command>, now: Timestamp) {
        let mut next = self.trust.clone();
        let cmd = match next.accept_command(signed, now) {
            Ok(c) => c,
            Err(e) => {
                let seq = signed.decode_unverified().map(|c| c.seq).unwrap_or(0);
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
        let t = next.clone();
        if let Err(e) = self.store.call(move |s| s.save_trust(&t)).await {
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
        self.act(cmd, now).await;
    }

    async fn act(&mut self, cmd: Command, now: Timestamp) {
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
        }
    }

    fn disk_in_use(&self, kind: JobKind) -> u64 {
        let runtime = &self.shared.runtime;
        let size = |m: Option<Arc<LoadedModel>>| m.map_or(0, |m| m.manifest().artifact.size);
        let shadow = self
            .shadow
            .as_ref()
            .map_or(0, |s| s.candidate().manifest().artifact.size);
        let other_download = match kind {
            JobKind::Deploy => self.shadow_job.as_ref(),
            JobKind::Shadow { .. } => self.deploy_job.as_ref(),
        }
        .map_or(0, |j| j.core.manifest().artifact.size);
        // What stays on disk once this job completes: a deploy drops the old
        // previous, a shadow drops the old shadow.
        match kind {
            JobKind::Deploy => size(runtime.active()) + shadow + other_download,
            JobKind::Shadow { .. } => {
                size(runtime.active()) + size(runtime.previous()) + other_download
            }
        }
    }

    async fn start_job(
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
        match kind {
            JobKind::Deploy if self.pointers.active.as_ref() == Some(&model) => {
                self.report(seq, model, DeployPhase::Active);
                return;
            }
            JobKind::Shadow { sample_per_mille } => {
                if self.pointers.active.as_ref() == Some(&model) {
                    let r = Reason::new(
                        ReasonCode::ShadowIsActive,
                        format!("{model} is the active model"),
                    );
                    self.report(seq, model, DeployPhase::Failed(r));
                    return;
                }
                if self.pointers.shadow.as_ref() == Some(&model)
                    && let Some(cur) = self.shadow.clone()
                {
                    let r = self
                        .begin_shadow(cur.candidate().clone(), sample_per_mille)
                        .await;
                    let phase = match r {
                        Ok(()) => DeployPhase::Shadowing,
                        Err(r) => DeployPhase::Failed(r),
                    };
                    self.report(seq, model, phase);
                    return;
                }
            }
            JobKind::Deploy => {}
        }
        if let Err(r) = deploy::admit(
            &m,
            agent_version(),
            &self.cfg.limits(),
            self.disk_in_use(kind),
        ) {
            self.report(seq, model, DeployPhase::Failed(r));
            return;
        }
        let slot = match kind {
            JobKind::Deploy => Slot::Deploy,
            JobKind::Shadow { .. } => Slot::Shadow,
        };
        let sha = m.artifact.sha256;
        let mut held = RangeSet::default();
        let previous_job = match slot {
            Slot::Deploy => self.deploy_job.take(),
            Slot::Shadow => self.shadow_job.take(),
        };
        // A shadow download of the artifact now being deployed is promoted:
        // the deploy takes over its bytes.
        let other = match slot {
            Slot::Deploy => &mut self.shadow_job,
            Slot::Shadow => &mut self.deploy_job,
        };
        if other.as_ref().is_some_and(|j| j.core.sha256() == sha) {
            if slot == Slot::Shadow {
                let r = Reason::new(
                    ReasonCode::AlreadyDeploying,
                    format!("{model} is being deployed"),
                );
                self.report(seq, model, DeployPhase::Failed(r));
                if let Some(j) = previous_job {
                    self.shadow_job = Some(j);
                }
                return;
            }
            if let Some(mut old) = other.take() {
                if !old.installed {
                    held = old.core.held().clone();
                }
                old.core.cancel(
                    Reason::new(ReasonCode::Superseded, format!("deployed by command {seq}")),
                    false,
                );
                let old_slot = old.slot;
                self.run_actions(&mut old).await;
                let _ = self.store.call(move |s| s.delete_pending(old_slot)).await;
            }
        }
        if let Some(mut old) = previous_job {
            let same = old.core.sha256() == sha && !old.installed;
            if same {
                held = old.core.held().clone();
            }
            old.core.cancel(
                Reason::new(
                    ReasonCode::Superseded,
                    format!("superseded by command {seq}"),
                ),
                !same,
            );
            self.run_actions(&mut old).await;
        }
        // Already on disk (a rollback target, a former shadow): no download.
        let installed = {
            let r = model.clone();
            self.store.call(move |s| s.model(&r)).await.ok().flatten()
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
            let f = file.clone();
            let _ = blocking(move || {
                if f.exists() {
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&f)
                        .and_then(|h| h.set_len(0));
                }
            })
            .await;
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

    async fn drive_jobs(&mut self) {
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

    async fn run_actions(&mut self, j: &mut JobShell) {
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
                        }
                        Ok(Err(e)) => j
                            .core
                            .handle_write_failed(&format!("{}: {e}", j.file.display())),
                        Err(r) => j.core.handle_write_failed(&r.detail),
                    }
                }
                DeployAction::Verify => {
                    let path = j.file.clone();
                    match blocking(move || digest_file(&path)).await {
                        Ok(Ok((sha, size))) => j.core.handle_digest(sha, size),
                        Ok(Err(e)) => j.core.handle_write_failed(&format!("reading back: {e}")),
                        Err(r) => j.core.handle_write_failed(&r.detail),
                    }
                }
                DeployAction::Load => {
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
    async fn install_file(&self, j: &JobShell) -> Result<(), Reason> {
        if j.installed {
            return Ok(());
        }
        let from = j.file.clone();
        let to = self.model_path(&j.core.sha256());
        blocking(move || std::fs::rename(&from, &to))
            .await?
            .map_err(|e| Reason::new(ReasonCode::InstallFailed, e.to_string()))
    }

    fn installed_record(j: &JobShell) -> InstalledModel {
        InstalledModel {
            model: j.core.model_ref(),
            sha256: j.core.sha256(),
            size: j.core.manifest().artifact.size,
            manifest: j.core.signed_manifest().clone(),
        }
    }

    async fn activate(&mut self, j: &mut JobShell) -> Result<(), Reason> {
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

    fn drop_shadow_runtime(&mut self) {
        if let Some(old) = self.shared.runtime.set_shadow(None) {
            self.retire_shadow(&old);
        }
        self.shadow = None;
    }

    fn retire_shadow(&mut self, old: &Arc<Shadow>) {
        self.shared
            .metrics
            .shadow_dropped_closed
            .fetch_add(old.dropped_total(), std::sync::atomic::Ordering::Relaxed);
        self.retired.push(old.candidate().clone());
    }

    async fn begin_shadow(
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

    async fn install_shadow(&mut self, j: &mut JobShell, per_mille: u16) -> Result<(), Reason> {
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

    async fn stop_shadow(&mut self) {
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
    async fn hygiene(&mut self) {
        let keep = self.pointers.clone();
        let partial_keep: Vec<PathBuf> = [&self.deploy_job, &self.shadow_job]
            .into_iter()
            .flatten()
            .filter(|j| !j.installed)
            .map(|j| j.file.clone())
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

    async fn rollback_to(
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

    async fn rollback_commanded(
        &mut self,
        seq: u64,
        name: ModelName,
        to: Option<Version>,
        why: String,
    ) {
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

    async fn load_installed_model(&self, target: &ModelRef) -> Result<Arc<LoadedModel>, Reason> {
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

    fn capture(&self, seq: u64, max_samples: u32, max_bytes: u32) {
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
        }
    }

    async fn configure(&mut self, s: AgentSettings) {
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

    // ---- telemetry ----------------------------------------------------

    async fn close_windows(&mut self, b: WindowBounds) {
        let rt = self.shared.runtime.clone();
        let mut windows: Vec<TelemetryWindow> = Vec::new();
        let shadow_stats = self.shadow.as_ref().map(|s| s.take_stats());
        if let Some(a) = rt.active() {
            let acc = a.recorder().take();
            windows.push(self.windower.seal(
                &b,
                a.recorder().spec(),
                ModelRole::Active,
                acc,
                shadow_stats,
            ));
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
            let c = s.candidate();
            let acc = c.recorder().take();
            if acc.count() > 0 {
                windows.push(self.windower.seal(
                    &b,
                    c.recorder().spec(),
                    ModelRole::Shadow,
                    acc,
                    None,
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
                self.outbox.handle_ack(&[seq]);
            }
        }
        for d in decisions {
            self.handle_guard(d).await;
        }
    }

    async fn handle_guard(&mut self, d: GuardDecision) {
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

    async fn publish_outbox(&mut self, now: Timestamp) {
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
                            self.outbox.handle_ack(&[seq]);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the outbox"),
        }
    }
}
