//! The driver: one task that owns the sans-IO cores (deploy jobs, guard,
//! windower, outbox, slot arbitration) and the trust state, feeds them link
//! events, timers and commands, and carries out their actions against the
//! store, tract, the serving slots and the link. Every state change that
//! matters is committed to the store before the action it enables.
//!
//! By concern: this file holds the state and the loop (timers, Hello and
//! status); [`commands`] handles what arrives from the link (payloads,
//! signed commands, rollback, capture, configure); [`jobs`] carries out
//! deploy and shadow jobs (arbitration, downloads, activation, disk
//! hygiene); [`telemetry`] closes windows, runs the local guard and
//! publishes the outbox; [`agent_update`] downloads and stages a new agent
//! binary; [`files`] holds the blocking file helpers.

mod agent_update;
mod commands;
pub(crate) mod files;
mod jobs;
mod telemetry;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use drover_protocol::messages::{AgentSettings, Command, DeployPhase, DeployStatus, Hello, Up};
use drover_protocol::{ModelRef, Sha256, Timestamp, TrustState};

use crate::config::AgentConfig;
use crate::core::deploy::{DeployJob, JobKind, PendingDownload};
use crate::core::guard::Guard;
use crate::core::outbox::Outbox;
use crate::core::slots::Slot;
use crate::core::window::Windower;
use crate::link::{Delivery, Link, LinkEvent};
use crate::runtime::LoadedModel;
use crate::shadow::Shadow;
use crate::shared::Shared;
use crate::status::DownloadStatus;
use crate::store::{Pointers, StoreHandle};

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
    /// A command accepted before the stop whose action had not started.
    pub(crate) unfinished: Option<Command>,
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
    /// `(issued_at, local now)` of the newest accepted command: the
    /// controller's clock, for command expiry (`commands::command_now`).
    controller_time: Option<(Timestamp, Timestamp)>,
    /// See [`Restored::unfinished`]; taken by `run`.
    unfinished: Option<Command>,
    /// A download of a new agent binary.
    agent_update: Option<agent_update::UpdateJob>,
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
            controller_time: None,
            unfinished: None,
            agent_update: None,
            cfg,
            shared,
            store,
            link,
            hello,
        };
        // A restored download already carries its command's action out.
        d.unfinished = restored
            .unfinished
            .filter(|c| !restored.pending.iter().any(|(_, p)| p.seq == c.seq));
        for (slot, p) in restored.pending {
            d.resume(slot, p, now);
        }
        d.publish_state();
        d
    }

    fn now(&self) -> Timestamp {
        self.shared.runtime.clock().now()
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
        if let Some(cmd) = self.unfinished.take() {
            let now = self.now();
            self.act_on_unfinished(cmd, now).await;
        }
        // Jobs restored at start may already hold every byte.
        self.drive_jobs().await;
        loop {
            let now = self.now();
            self.tick(now).await;
            self.publish_state();
            // The clock reads tokio's time, so under paused time (tests) this
            // sleep and `now` above advance together.
            let deadline = self
                .shared
                .runtime
                .clock()
                .deadline_of(self.next_deadline());
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
            self.agent_update.as_ref().map(|j| {
                (
                    j.timeout(self.cfg.deploy().request_timeout_ms),
                    "agent chunks",
                )
            }),
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
        if self
            .agent_update
            .as_ref()
            .is_some_and(|j| now >= j.timeout(self.cfg.deploy().request_timeout_ms))
        {
            self.rerequest_agent_chunks(now);
        }
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
            agent_version: crate::version::agent_version().to_string(),
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
        drop(st);
        metrics.touch();
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
}
