//! The async shell around the rollout engine ([`crate::core::rollout`]): keeps
//! every rollout's state machine, feeds it device events and telemetry, signs
//! and sends the commands it asks for, and persists each step before acting.
//!
//! # Driving loop
//! One task owns every [`Rollout`]. It wakes on a device event, an operator
//! command, or the earliest `poll_timeout`, then for each active rollout:
//! `handle_*` → drain `poll_action`, `poll_metrics_request`, `poll_audit` →
//! persist state + audit in one SQLite transaction → send the commands →
//! answer metrics requests from stored telemetry (which feeds the next step).
//! A `kill -9` between any two steps therefore loses nothing: the restarted
//! controller loads the last persisted state and calls `handle_restart`.

pub(crate) mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use drover_protocol::manifest::AgentVersion;
use drover_protocol::messages::{
    Action, AgentUpdatePhase, AgentUpdateStatus, DeployPhase, ReasonCode,
};
use drover_protocol::release::Arch;
use drover_protocol::{DeviceId, ModelRef, Timestamp, Version};
use serde::Serialize;
use tokio::sync::{Mutex, Notify, broadcast};

use crate::controller::{Controller, DeviceEvent};
use crate::core::rollout::{
    DeployOutcome, DeviceView, Rollout, RolloutAction, RolloutCommand, RolloutError, RolloutKind,
    RolloutSpec, RolloutStatus,
};
use crate::fleet::devices::DeviceInfo;

/// Why a rollout request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutServiceError {
    /// The engine refused the spec or the command.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// Another active rollout covers the same model and devices.
    #[error("conflicts with active rollout {id}: {reason}")]
    Conflict {
        /// The active rollout.
        id: String,
        /// Why they overlap.
        reason: String,
    },
    /// No such rollout.
    #[error("no rollout {0}")]
    NotFound(String),
    /// A rollout with this id exists already.
    #[error("rollout id {0} is taken")]
    Exists(String),
    /// The model version is not in the registry.
    #[error("no model {0}")]
    UnknownModel(String),
    /// A state read or write failed.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for RolloutServiceError {
    fn from(e: rusqlite::Error) -> Self {
        RolloutServiceError::Storage(e.to_string())
    }
}

impl From<crate::db::DbError> for RolloutServiceError {
    fn from(e: crate::db::DbError) -> Self {
        RolloutServiceError::Storage(e.to_string())
    }
}

impl From<crate::controller::ControllerError> for RolloutServiceError {
    fn from(e: crate::controller::ControllerError) -> Self {
        RolloutServiceError::Storage(e.to_string())
    }
}

/// One line of `drover rollout list`.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutSummary {
    /// Rollout id.
    pub id: String,
    /// `name@version`.
    pub model: String,
    /// Phase name.
    pub phase: String,
    /// Still running (not completed, rolled back or aborted).
    pub active: bool,
    /// Devices in the rollout.
    pub devices: u64,
}

/// Full status plus the recent audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutDetail {
    /// Engine status (phase, waves, gates).
    pub status: RolloutStatus,
    /// Latest audit events, oldest first.
    pub audit: Vec<serde_json::Value>,
}

struct State {
    rollouts: BTreeMap<String, Rollout>,
    /// Command sequence → (rollout, device, version) to map rejections back.
    sent: BTreeMap<(String, u64), (String, Version)>,
}

struct Inner {
    ctl: Controller,
    state: Mutex<State>,
    wake: Notify,
    driver: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

/// Handle to the rollout service (cheap to clone).
#[derive(Clone)]
pub struct RolloutService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RolloutService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutService").finish_non_exhaustive()
    }
}

fn parse_ref(s: &Option<String>) -> Option<ModelRef> {
    s.as_deref().and_then(|s| s.parse().ok())
}

/// The inventory entry as the engine sees it, for the rollout `spec`: the
/// version of its model the device serves, or for an agent rollout the
/// agent version it runs. The device's `hardware` and `arch` (from its
/// Hello) are labels too, unless the registry sets them.
pub(crate) fn view_of(d: &DeviceInfo, spec: &RolloutSpec) -> Option<DeviceView> {
    let id = DeviceId::new(d.id.clone()).ok()?;
    let mut labels = d.labels.clone();
    if let Some(h) = &d.hardware {
        labels.entry("hardware".into()).or_insert_with(|| h.clone());
    }
    if let Some(a) = d.arch.as_deref().and_then(Arch::parse) {
        labels
            .entry("arch".into())
            .or_insert_with(|| a.as_str().to_string());
    }
    let version = match spec.kind {
        RolloutKind::Model => parse_ref(&d.active)
            .filter(|r| r.name == spec.model)
            .map(|r| r.version),
        RolloutKind::Agent => d
            .agent_version
            .as_deref()
            .and_then(AgentVersion::parse)
            .map(AgentVersion::packed),
    };
    Some(DeviceView {
        id,
        labels,
        online: d.online,
        version,
        last_seen: Timestamp(d.last_seen.unwrap_or(0)),
    })
}

/// An agent's report on an update of itself, as the engine's outcome.
fn agent_outcome_of(status: &AgentUpdateStatus) -> Option<DeployOutcome> {
    Some(match &status.phase {
        AgentUpdatePhase::Running => DeployOutcome::Active {
            version: status.version.packed(),
        },
        AgentUpdatePhase::Failed(reason) if reason.code == ReasonCode::Superseded => return None,
        AgentUpdatePhase::Failed(reason) => DeployOutcome::Failed {
            version: status.version.packed(),
            reason: reason.to_string(),
            retryable: reason.retryable(),
        },
        AgentUpdatePhase::FellBack { running, reason } => DeployOutcome::FellBack {
            to: Some(running.packed()),
            reason: format!("agent {} fell back to {running}: {reason}", status.version),
        },
        AgentUpdatePhase::Downloading { .. } | AgentUpdatePhase::Restarting => return None,
    })
}

fn outcome_of(phase: &DeployPhase, model: &ModelRef) -> Option<DeployOutcome> {
    Some(match phase {
        DeployPhase::Active => DeployOutcome::Active {
            version: model.version,
        },
        DeployPhase::Shadowing => DeployOutcome::Shadowing {
            version: model.version,
        },
        // The device took a newer command for the same slot (a command sent
        // again after a reconnect, see `lost_commands`): that one's report
        // is the outcome, this is no failure.
        DeployPhase::Failed(reason) if reason.code == ReasonCode::Superseded => return None,
        DeployPhase::Failed(reason) => DeployOutcome::Failed {
            version: model.version,
            reason: reason.to_string(),
            retryable: reason.retryable(),
        },
        DeployPhase::RolledBack { to, reason } => DeployOutcome::RolledBack {
            to: to
                .as_ref()
                .filter(|r| r.name == model.name)
                .map(|r| r.version),
            reason: reason.to_string(),
        },
        _ => return None,
    })
}

impl RolloutService {
    /// Loads stored rollouts (resuming active ones after a restart) and
    /// starts the driving task.
    pub async fn start(ctl: Controller) -> Result<RolloutService, RolloutServiceError> {
        let now = ctl.now();
        let mut loaded = ctl.db().call(|c| Ok(store::load_all(c)?)).await?;
        let mut rollouts = BTreeMap::new();
        for r in loaded.iter_mut() {
            if r.is_active() {
                r.handle_restart(now);
                tracing::info!(rollout = %r.id(), phase = r.phase().name(), "resuming rollout");
            }
        }
        for r in loaded {
            rollouts.insert(r.id().to_string(), r);
        }
        let svc = RolloutService {
            inner: Arc::new(Inner {
                ctl: ctl.clone(),
                state: Mutex::new(State {
                    rollouts,
                    sent: BTreeMap::new(),
                }),
                wake: Notify::new(),
                driver: std::sync::Mutex::new(None),
            }),
        };
        // Membership may have changed while the controller was down.
        svc.resync().await;
        let events = ctl.subscribe();
        let driver = svc.clone();
        let handle = tokio::spawn(async move { driver.run(events).await });
        if let Ok(mut d) = svc.inner.driver.lock() {
            *d = Some(handle.abort_handle());
        }
        Ok(svc)
    }

    /// Stops the driving task (controller shutdown). Persisted state is
    /// what a restarted controller resumes from.
    pub fn stop(&self) {
        if let Ok(mut d) = self.inner.driver.lock()
            && let Some(h) = d.take()
        {
            h.abort();
        }
    }

    /// Plans and starts a rollout.
    pub async fn create(
        &self,
        mut spec: RolloutSpec,
    ) -> Result<RolloutSummary, RolloutServiceError> {
        let ctl = &self.inner.ctl;
        let known = match spec.kind {
            RolloutKind::Model => ctl.model(&spec.model, spec.target).await?.is_some(),
            RolloutKind::Agent => {
                let label = spec.version_label(spec.target);
                ctl.agent_releases()
                    .await
                    .map_err(|e| RolloutServiceError::Storage(e.to_string()))?
                    .iter()
                    .any(|r| r.version == label)
            }
        };
        if !known {
            return Err(RolloutServiceError::UnknownModel(spec.target_label()));
        }
        let now = ctl.now();
        if spec.id.is_empty() {
            // Ids take no dots: `agent@0.2.0` becomes `agent-v0-2-0-…`.
            let version = spec.version_label(spec.target).replace('.', "-");
            spec.id = format!("{}-v{version}-{}", spec.model, now.0 % 1_000_000_000);
        }
        let model = spec.model.to_string();
        let failed: BTreeSet<Version> = ctl
            .db()
            .call(move |c| Ok(store::failed_versions(c, &model)?))
            .await?
            .into_iter()
            .map(Version)
            .collect();
        let devices = ctl
            .devices(&drover_protocol::labels::Selector::default())
            .await?;
        let views: Vec<DeviceView> = devices.iter().filter_map(|d| view_of(d, &spec)).collect();
        // Nothing to compare against when no matching device runs any
        // version of the model yet: a first install (see RolloutSpec::initial).
        // An agent rollout's gates read the models the devices serve: with
        // none served anywhere, it advances on install success and bake alone.
        spec.initial = match spec.kind {
            RolloutKind::Model => views
                .iter()
                .filter(|v| spec.selector.matches(&v.labels))
                .all(|v| v.version.is_none()),
            RolloutKind::Agent => {
                spec.gates.is_empty() && {
                    let matching: BTreeSet<&str> = views
                        .iter()
                        .filter(|v| spec.selector.matches(&v.labels))
                        .map(|v| v.id.as_str())
                        .collect();
                    devices
                        .iter()
                        .filter(|d| matching.contains(d.id.as_str()))
                        .all(|d| d.active.is_none())
                }
            }
        };
        let mut st = self.inner.state.lock().await;
        if st.rollouts.contains_key(&spec.id) {
            return Err(RolloutServiceError::Exists(spec.id));
        }
        for other in st.rollouts.values().filter(|r| r.is_active()) {
            if let Some(c) = other.overlaps(&spec, &views) {
                return Err(RolloutServiceError::Conflict {
                    id: other.id().to_string(),
                    reason: c.to_string(),
                });
            }
        }
        let mut rollout = Rollout::new(spec, views, failed, now)?;
        let audit: Vec<_> = std::iter::from_fn(|| rollout.poll_audit()).collect();
        let json_state = rollout.clone();
        ctl.db()
            .call(move |c| Ok(store::save(c, &json_state, &audit, now.0)?))
            .await?;
        let summary = summary_of(&rollout);
        st.rollouts.insert(rollout.id().to_string(), rollout);
        drop(st);
        // Saved, nothing dispatched yet.
        crate::fault::hit("rollout.start");
        self.inner.wake.notify_one();
        Ok(summary)
    }

    /// Every rollout, oldest first.
    pub async fn list(&self) -> Vec<RolloutSummary> {
        let st = self.inner.state.lock().await;
        st.rollouts.values().map(summary_of).collect()
    }

    /// One rollout's status and its latest audit events.
    pub async fn detail(
        &self,
        id: &str,
        audit_limit: u32,
    ) -> Result<RolloutDetail, RolloutServiceError> {
        let status = {
            let st = self.inner.state.lock().await;
            st.rollouts
                .get(id)
                .map(Rollout::status)
                .ok_or_else(|| RolloutServiceError::NotFound(id.to_string()))?
        };
        let id = id.to_string();
        let audit = self
            .inner
            .ctl
            .db()
            .call(move |c| Ok(store::audit(c, &id, audit_limit)?))
            .await?;
        Ok(RolloutDetail { status, audit })
    }

    /// Records in the rollout's audit trail that operator `by` (a token
    /// name) did `action` (`start`, `pause`, ...).
    pub async fn record_actor(
        &self,
        id: &str,
        by: &str,
        action: &str,
    ) -> Result<(), RolloutServiceError> {
        let now = self.inner.ctl.now();
        let (id, by, action) = (id.to_string(), by.to_string(), action.to_string());
        self.inner
            .ctl
            .db()
            .call(move |c| Ok(store::append_actor(c, &id, now.0, &by, &action)?))
            .await?;
        Ok(())
    }

    /// Pause, resume, abort or roll back.
    pub async fn command(
        &self,
        id: &str,
        cmd: RolloutCommand,
    ) -> Result<RolloutStatus, RolloutServiceError> {
        let now = self.inner.ctl.now();
        let status = {
            let mut st = self.inner.state.lock().await;
            let r = st
                .rollouts
                .get_mut(id)
                .ok_or_else(|| RolloutServiceError::NotFound(id.to_string()))?;
            r.handle_command(now, cmd)?;
            r.status()
        };
        self.step().await;
        Ok(status)
    }

    /// Feeds the whole inventory to every active rollout (after a restart or
    /// when events were missed).
    async fn resync(&self) {
        let Ok(devices) = self
            .inner
            .ctl
            .devices(&drover_protocol::labels::Selector::default())
            .await
        else {
            return;
        };
        let now = self.inner.ctl.now();
        let mut st = self.inner.state.lock().await;
        let live = live_ids(&st);
        for r in st.rollouts.values_mut().filter(|r| live.contains(r.id())) {
            let spec = r.spec().clone();
            for d in &devices {
                if let Some(v) = view_of(d, &spec) {
                    let _ = r.handle_device(now, v);
                }
            }
        }
    }

    async fn run(self, mut events: broadcast::Receiver<DeviceEvent>) {
        loop {
            self.step().await;
            let deadline = {
                let st = self.inner.state.lock().await;
                let live = live_ids(&st);
                st.rollouts
                    .values()
                    .filter(|r| live.contains(r.id()))
                    .filter_map(|r| r.poll_timeout().map(|(t, _)| t))
                    .min()
            };
            // Sleep until the earliest core deadline (device timeouts, bake
            // ends, metrics requests) or an input; with no deadline only an
            // input can change anything.
            let sleep: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> =
                match deadline {
                    Some(t) => self.inner.ctl.sleep_until(t),
                    None => Box::pin(std::future::pending()),
                };
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => self.handle_event(ev).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "rollout service lagged behind device events; resyncing");
                        self.resync().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = self.inner.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// Commands a device came back without. Its Hello (sent on every new
    /// session) says it accepted commands up to `last`. A rollout command to
    /// it numbered above that was lost with a session: devices connect with
    /// clean sessions, so the broker keeps nothing for them while they are
    /// away (a crash right after the command went out, a link cut). One
    /// numbered up to `last` was accepted, but the device may have died
    /// before acting on it: the agent records the sequence before it
    /// starts (and persists) the job, so a crash in between loses the
    /// command while the Hello says it was accepted. Either way the device
    /// is still waiting on it as far as the rollout knows, so each goes back
    /// to its rollout, which sends a fresh command now instead of waiting
    /// out the device timeout. A device that was in fact working on it
    /// takes the fresh command as the same install (the job it supersedes
    /// keeps its downloaded bytes, and its `superseded` report is not a
    /// failure, see `outcome_of`); a command that crossed the Hello in
    /// flight is sent twice, likewise. Entries of devices no longer waiting
    /// on them are dropped.
    async fn lost_commands(&self, device: &DeviceId, last: u64) {
        let now = self.inner.ctl.now();
        let mut st = self.inner.state.lock().await;
        let key = device.to_string();
        let outstanding: Vec<(u64, (String, Version))> = st
            .sent
            .range((key.clone(), 0)..=(key.clone(), u64::MAX))
            .map(|((_, seq), v)| (*seq, v.clone()))
            .collect();
        for (seq, (rollout, version)) in outstanding {
            st.sent.remove(&(key.clone(), seq));
            if let Some(r) = st.rollouts.get_mut(&rollout)
                && let Ok(true) = r.handle_command_lost(now, device, version)
            {
                let why = if seq > last {
                    "command lost with the device's session"
                } else {
                    "device came back on a new session before reporting on its command"
                };
                tracing::info!(rollout = %rollout, %device, seq, last, "{why}; sending it again");
            }
        }
    }

    async fn handle_event(&self, ev: DeviceEvent) {
        let now = self.inner.ctl.now();
        if let DeviceEvent::Hello { device, hello } = &ev {
            self.lost_commands(device, hello.last_command_seq).await;
        }
        let device = match &ev {
            DeviceEvent::Hello { device, .. }
            | DeviceEvent::Online { device }
            | DeviceEvent::Offline { device } => Some(device.clone()),
            _ => None,
        };
        if let Some(device) = device {
            let Ok(Some(info)) = self.inner.ctl.device(&device).await else {
                return;
            };
            let mut st = self.inner.state.lock().await;
            let live = live_ids(&st);
            for r in st.rollouts.values_mut().filter(|r| live.contains(r.id())) {
                if let Some(v) = view_of(&info, &r.spec().clone()) {
                    // An error here is a device the engine does not know; it
                    // only matters for joiners, which handle_device admits.
                    let _ = r.handle_device(now, v);
                }
            }
            return;
        }
        let mut st = self.inner.state.lock().await;
        match ev {
            DeviceEvent::DeployStatus { device, status } => {
                let Some(outcome) = outcome_of(&status.phase, &status.model) else {
                    return;
                };
                let live = live_ids(&st);
                for r in st.rollouts.values_mut().filter(|r| live.contains(r.id())) {
                    if r.spec().kind == RolloutKind::Model && r.spec().model == status.model.name {
                        let _ = r.handle_deploy_report(now, &device, outcome.clone());
                    }
                }
            }
            DeviceEvent::AgentUpdate { device, status } => {
                let Some(outcome) = agent_outcome_of(&status) else {
                    return;
                };
                let live = live_ids(&st);
                for r in st.rollouts.values_mut().filter(|r| live.contains(r.id())) {
                    if r.spec().kind == RolloutKind::Agent {
                        let _ = r.handle_deploy_report(now, &device, outcome.clone());
                    }
                }
            }
            DeviceEvent::Ack { device, ack } => {
                let Err(reason) = &ack.result else { return };
                let Some((rollout, version)) = st.sent.remove(&(device.to_string(), ack.seq))
                else {
                    return;
                };
                let Some(r) = st.rollouts.get_mut(&rollout) else {
                    return;
                };
                if reason.code == ReasonCode::CommandExpired {
                    // Reached the device too late: a fresh command, not a
                    // failed install (the core decides; see there).
                    let _ = r.handle_command_expired(now, &device, version, &reason.to_string());
                } else {
                    let outcome = DeployOutcome::Failed {
                        version,
                        reason: reason.to_string(),
                        retryable: reason.retryable(),
                    };
                    let _ = r.handle_deploy_report(now, &device, outcome);
                }
            }
            _ => {}
        }
    }

    /// One pass over every active rollout: timeouts, outputs, persistence,
    /// then commands and metrics. Repeats while metrics answers produce more
    /// work, bounded so one rollout cannot starve the event loop.
    async fn step(&self) {
        for _ in 0..8 {
            let now = self.inner.ctl.now();
            let mut work = Vec::new();
            {
                let mut st = self.inner.state.lock().await;
                // Every rollout is drained, not only active ones: the step
                // that ends a rollout (its last report or metrics answer)
                // leaves the Completed audit and final state still queued,
                // and an ended rollout still answers joiners with deploys.
                for r in st.rollouts.values_mut() {
                    if r.is_active() || r.poll_timeout().is_some() {
                        r.handle_timeout(now);
                    }
                    let actions: Vec<_> = std::iter::from_fn(|| r.poll_action(now)).collect();
                    let requests: Vec<_> =
                        std::iter::from_fn(|| r.poll_metrics_request(now)).collect();
                    let audit: Vec<_> = std::iter::from_fn(|| r.poll_audit()).collect();
                    if actions.is_empty() && requests.is_empty() && audit.is_empty() {
                        continue;
                    }
                    work.push((r.clone(), actions, requests, audit));
                }
            }
            if work.is_empty() {
                return;
            }
            let mut answered = false;
            for (snapshot, actions, requests, audit) in work {
                for ev in &audit {
                    tracing::info!(rollout = %snapshot.id(), "{}", ev.message);
                }
                let completed = audit.iter().any(|ev| {
                    matches!(ev.event, crate::core::rollout::AuditKind::Completed { .. })
                });
                let (model, target) = (snapshot.spec().model.clone(), snapshot.spec().target);
                let is_model = snapshot.spec().kind == RolloutKind::Model;
                let baking = snapshot.phase().name() == "baking";
                let id = snapshot.id().to_string();
                // Persist before acting (the engine's persistence contract).
                let saved = self
                    .inner
                    .ctl
                    .db()
                    .call(move |c| Ok(store::save(c, &snapshot, &audit, now.0)?))
                    .await;
                if let Err(e) = saved {
                    tracing::error!(rollout = %id, error = %e, "cannot persist rollout; not acting on it");
                    continue;
                }
                if baking {
                    crate::fault::hit("rollout.bake");
                }
                if completed && is_model {
                    // A version that reached every device is what drift is
                    // measured against from now on.
                    if let Err(e) = self.inner.ctl.set_alias(&model, "production", target).await {
                        tracing::warn!(rollout = %id, error = %e, "cannot move the production alias");
                    }
                }
                for a in actions {
                    self.execute(&id, a).await;
                }
                for req in requests {
                    // A gate (or bake) evaluation asked for, not yet answered.
                    crate::fault::hit("rollout.gate");
                    let req2 = req.clone();
                    let answer = self
                        .inner
                        .ctl
                        .db()
                        .call(move |c| Ok(crate::telemetry::query::rollout_metrics(c, &req2)?))
                        .await;
                    match answer {
                        Ok((canary, control, stats)) => {
                            for _ in 0..stats.undecodable {
                                self.inner.ctl.metrics().malformed("stored_window");
                            }
                            let mut st = self.inner.state.lock().await;
                            if let Some(r) = st.rollouts.get_mut(&id) {
                                if let Err(e) =
                                    r.handle_metrics(self.inner.ctl.now(), req.id, canary, control)
                                {
                                    tracing::debug!(rollout = %id, error = %e, "metrics answer not used");
                                }
                                answered = true;
                            }
                        }
                        Err(e) => tracing::warn!(rollout = %id, error = %e, "metrics query failed"),
                    }
                }
            }
            if !answered {
                // Actions went out; the next inputs are device reports.
                let mut more = false;
                let st = self.inner.state.lock().await;
                let live = live_ids(&st);
                for r in st.rollouts.values().filter(|r| live.contains(r.id())) {
                    if let Some((t, _)) = r.poll_timeout()
                        && t <= self.inner.ctl.now()
                    {
                        more = true;
                    }
                }
                if !more {
                    return;
                }
            }
        }
    }

    async fn execute(&self, rollout: &str, action: RolloutAction) {
        let ctl = &self.inner.ctl;
        let device = action.device().clone();
        let (model, version, kind) = {
            let st = self.inner.state.lock().await;
            let Some(r) = st.rollouts.get(rollout) else {
                return;
            };
            (r.spec().model.clone(), r.spec().target, r.spec().kind)
        };
        let rollback = matches!(action, RolloutAction::Rollback { .. });
        let (cmd, about) = if kind == RolloutKind::Agent {
            match self.agent_command(&device, action).await {
                Ok(c) => c,
                Err(outcome) => {
                    // Nothing can be sent (no release for the device's
                    // arch): the engine hears it as the device's report.
                    tracing::warn!(rollout, %device, ?outcome, "agent rollout command not sent");
                    let now = ctl.now();
                    let mut st = self.inner.state.lock().await;
                    if let Some(r) = st.rollouts.get_mut(rollout) {
                        let _ = r.handle_deploy_report(now, &device, outcome);
                    }
                    drop(st);
                    self.inner.wake.notify_one();
                    return;
                }
            }
        } else {
            match action {
                RolloutAction::Deploy { version, .. } => {
                    match ctl.manifest(&model, version).await {
                        Ok(manifest) => (Action::Deploy { manifest }, version),
                        Err(e) => {
                            tracing::error!(%device, error = %e, "no manifest to deploy");
                            return;
                        }
                    }
                }
                RolloutAction::Shadow { version, .. } => {
                    match ctl.manifest(&model, version).await {
                        Ok(manifest) => (
                            Action::Shadow {
                                manifest,
                                sample_per_mille: 1000,
                            },
                            version,
                        ),
                        Err(e) => {
                            tracing::error!(%device, error = %e, "no manifest to shadow");
                            return;
                        }
                    }
                }
                RolloutAction::StopShadow { .. } => (Action::StopShadow, version),
                RolloutAction::Rollback { to, .. } => (
                    Action::Rollback {
                        model: model.clone(),
                        to: Some(to),
                        reason: format!("rollout {rollout}"),
                    },
                    to,
                ),
            }
        };
        match ctl.send_command(&device, cmd).await {
            Ok(seq) => {
                // One command out, the rest of the wave not yet.
                crate::fault::hit(if rollback {
                    "rollout.rollback"
                } else {
                    "rollout.dispatch"
                });
                let mut st = self.inner.state.lock().await;
                st.sent
                    .insert((device.to_string(), seq), (rollout.to_string(), about));
                // Bound the map: old rejections no longer matter once
                // the engine has timed the device out.
                while st.sent.len() > 100_000 {
                    st.sent.pop_first();
                }
            }
            Err(e) => tracing::warn!(%device, error = %e, "rollout command not sent"),
        }
    }
}

impl RolloutService {
    /// The UpdateAgent command for `action` of an agent rollout: the
    /// release of its version built for the device's arch (from its
    /// Hello), marked as a rollback for one. `Err` is the outcome to
    /// record instead when there is nothing to send.
    async fn agent_command(
        &self,
        device: &DeviceId,
        action: RolloutAction,
    ) -> Result<(Action, Version), DeployOutcome> {
        let (version, rollback) = match action {
            RolloutAction::Deploy { version, .. } => (version, false),
            RolloutAction::Rollback { to, .. } => (to, true),
            // Refused by the spec (an agent has no shadow phase).
            RolloutAction::Shadow { version, .. } => (version, false),
            RolloutAction::StopShadow { .. } => {
                return Err(DeployOutcome::Failed {
                    version: Version(0),
                    reason: "an agent has no shadow".into(),
                    retryable: false,
                });
            }
        };
        let fail = |reason: String| DeployOutcome::Failed {
            version,
            reason,
            retryable: false,
        };
        let Some(av) = AgentVersion::from_packed(version) else {
            return Err(fail(format!("{version} is not an agent version")));
        };
        let info = self.inner.ctl.device(device).await.ok().flatten();
        let Some(arch) = info.and_then(|i| i.arch).as_deref().and_then(Arch::parse) else {
            return Err(fail(format!(
                "{device} has not reported an arch Drover ships agents for"
            )));
        };
        match self.inner.ctl.agent_release(av, arch).await {
            Ok((_, release)) => Ok((Action::UpdateAgent { release, rollback }, version)),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

/// Rollouts that take device events: every active one, plus the newest
/// rollout of each model even when it has ended (completed or rolled back),
/// so a device that comes back or joins later still gets the version of its
/// wave. Older ended rollouts are history: feeding them too would send a
/// returning device conflicting versions.
fn live_ids(st: &State) -> BTreeSet<String> {
    let mut newest: BTreeMap<String, (Timestamp, String)> = BTreeMap::new();
    let mut live = BTreeSet::new();
    for r in st.rollouts.values() {
        if r.is_active() {
            live.insert(r.id().to_string());
        }
        if matches!(r.phase(), crate::core::rollout::Phase::Aborted { .. }) {
            continue;
        }
        let key = r.spec().model.to_string();
        let created = r.created_at();
        let replace = newest
            .get(&key)
            .is_none_or(|(t, id)| (created, r.id()) > (*t, id.as_str()));
        if replace {
            newest.insert(key, (created, r.id().to_string()));
        }
    }
    live.extend(newest.into_values().map(|(_, id)| id));
    live
}

fn summary_of(r: &Rollout) -> RolloutSummary {
    let status = r.status();
    RolloutSummary {
        id: r.id().to_string(),
        model: r.spec().target_label(),
        phase: r.phase().name().to_string(),
        active: r.is_active(),
        devices: status.devices,
    }
}

#[cfg(test)]
mod tests;
