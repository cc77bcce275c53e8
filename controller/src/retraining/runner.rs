//! The async shell around the [`Scheduler`]: reads the clock, calls the
//! ports, writes files and the store, runs hooks. Decisions stay in the
//! core ([`Scheduler`], [`DriftPolicy`](crate::core::drift::DriftPolicy),
//! [`RetrainJob`]); this file only sequences I/O.
//!
//! # Driving it
//!
//! [`RetrainRunner::run`] is the production loop. Tests (and simulations)
//! call its steps directly: [`RetrainRunner::tick`] (due evaluations,
//! finished captures), [`RetrainRunner::train_job`] (hook → validate →
//! push → rollout), with a fake clock.
//!
//! # Persistence
//!
//! The policy state is saved after every evaluation and every trigger
//! taken, and the job after every transition, so after a restart
//! [`RetrainRunner::open`] resumes: a trigger fired but not yet turned into
//! a job becomes one; queued and capturing jobs ask their devices again
//! (captured samples live in memory only); training jobs run their hook
//! again from the dataset on disk.
//!
//! # Files
//!
//! `DATA_DIR/datasets/<job>.csv` (the dataset) and `DATA_DIR/retrain/<job>/`
//! (`job.json`, `base.onnx`, `model.onnx`, `metrics.json`, `profile.csv`).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use drover_protocol::manifest::ModelManifest;
use drover_protocol::{ModelName, Version};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::store::{self, StoreError};
use crate::clock::SharedClock;
use crate::core::retraining::config::RetrainConfig;
use crate::core::retraining::job::{
    JobError, JobState, JobSummary, JobTrigger, RetrainJob, TriggerKind,
};
use crate::core::retraining::ports::{
    CohortFilter, FleetDevice, FleetOps, ModelSource, PortError, TelemetryQuery, TelemetrySource,
};
use crate::core::retraining::report::{
    ACCURACY_BUCKETS, DriftInput, DriftOverview, ScopeData, ScopeDrift, drift_report,
    reference_profile,
};
use crate::core::retraining::scheduler::{
    DueEvaluation, EvaluationOutcome, PendingTrigger, Scheduler,
};
use crate::db::{Db, DbError};

mod capture;
mod train;
use crate::core::drift::{DriftError, Evaluation};

/// Most cohorts a drift report breaks down (the most populated ones), so a
/// high-cardinality label cannot turn one request into thousands of queries.
pub(crate) const MAX_COHORTS: usize = 50;
/// Alias given to retrained versions until a rollout promotes them.
pub(crate) const CANDIDATE_ALIAS: &str = "candidate";

/// Why a retraining operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrainError {
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database handle failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A port call failed.
    #[error(transparent)]
    Port(#[from] PortError),
    /// A job transition was refused (a bug, or a concurrent change).
    #[error(transparent)]
    Job(#[from] JobError),
    /// The drift layer refused its inputs (bad profile, bad config).
    #[error(transparent)]
    Drift(#[from] DriftError),
    /// A model, version or job does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with a running job.
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The ports a runner talks through.
#[derive(Clone)]
pub struct Ports {
    /// Telemetry histograms.
    pub telemetry: Arc<dyn TelemetrySource>,
    /// Devices, commands, registry writes, rollouts.
    pub fleet: Arc<dyn FleetOps>,
    /// Registry reads.
    pub models: Arc<dyn ModelSource>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ports")
    }
}

/// What a `drover drift` request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRequest {
    /// Model; `None` = every model with a retrain policy.
    pub model: Option<ModelName>,
    /// Version; `None` = the production version.
    pub version: Option<Version>,
    /// Break down per value of this label; `None` = the model's configured
    /// `cohort_key`, if any.
    pub cohort_key: Option<String>,
    /// Range length (ms), ending now; `None` = the model's `window`.
    pub window_ms: Option<u64>,
}

/// What one [`RetrainRunner::tick`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    /// Evaluations run, with the policy's decision (`None` when no scope
    /// had a usable report).
    pub evaluations: Vec<(ModelName, Option<Evaluation>)>,
    /// Evaluations that could not run, with the reason.
    pub errors: Vec<(ModelName, String)>,
    /// Jobs created by triggers.
    pub jobs_created: Vec<u64>,
    /// Jobs whose capture ended (dataset written, or failed).
    pub captures_finished: Vec<u64>,
    /// Jobs ready for [`RetrainRunner::train_job`].
    pub ready: Vec<u64>,
}

struct Inner {
    ports: Ports,
    db: Db,
    data_dir: PathBuf,
    config: RetrainConfig,
    clock: SharedClock,
    core: Mutex<Scheduler>,
    wake: Notify,
}

/// The retraining service: cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct RetrainRunner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RetrainRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrainRunner")
            .field("data_dir", &self.inner.data_dir)
            .field(
                "models",
                &self.inner.config.models.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn model_ref_matches(device: &FleetDevice, model: &ModelName) -> bool {
    device.active.as_ref().is_some_and(|a| &a.name == model)
}

impl RetrainRunner {
    /// Creates the tables if needed, restores the policies and resumes
    /// unfinished work (see the module docs).
    ///
    /// # Errors
    ///
    /// The store cannot be read, or a model's policy settings are invalid.
    pub async fn open(
        ports: Ports,
        db: Db,
        data_dir: PathBuf,
        config: RetrainConfig,
        clock: SharedClock,
    ) -> Result<RetrainRunner, RetrainError> {
        let now = clock.now().0;
        let states = db
            .call(|conn| Ok(store::migrate(conn).and_then(|()| store::load_policy_states(conn))))
            .await??;
        let core = Scheduler::new(&config, states, now)?;
        let runner = RetrainRunner {
            inner: Arc::new(Inner {
                ports,
                db,
                data_dir,
                clock,
                core: Mutex::new(core),
                config,
                wake: Notify::new(),
            }),
        };
        runner.resume(now).await?;
        Ok(runner)
    }

    fn core(&self) -> MutexGuard<'_, Scheduler> {
        // Every core method leaves it consistent before returning, so a
        // panic elsewhere while holding the lock cannot corrupt it.
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> u64 {
        self.inner.clock.now().0
    }

    /// The configuration in force.
    pub fn config(&self) -> &RetrainConfig {
        &self.inner.config
    }

    async fn with_store<R, F>(&self, f: F) -> Result<R, RetrainError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        Ok(self.inner.db.call(move |conn| Ok(f(conn))).await??)
    }

    async fn save_job(&self, job: &RetrainJob) -> Result<(), RetrainError> {
        let job = job.clone();
        self.with_store(move |c| store::update_job(c, &job)).await
    }

    async fn save_policy(&self, model: &ModelName, now: u64) -> Result<(), RetrainError> {
        let Some(state) = self.core().policy_state(model).cloned() else {
            return Ok(());
        };
        let model = model.clone();
        self.with_store(move |c| store::save_policy_state(c, &model, &state, now))
            .await
    }

    async fn resume(&self, now: u64) -> Result<(), RetrainError> {
        let models: Vec<ModelName> = self.core().models().cloned().collect();
        for model in &models {
            let pending = self.core().poll_trigger(model);
            if let Some(pending) = pending {
                tracing::info!(%model, "turning a trigger saved before the restart into a job");
                self.create_drift_job(model, pending, now).await?;
            }
        }
        let active = self.with_store(store::active_jobs).await?;
        for job in active.iter().cloned() {
            tracing::info!(job = job.id, state = %job.state, "resuming retrain job");
            match job.state {
                JobState::Queued | JobState::Capturing => self.start_capture(job, now).await?,
                JobState::Training => self.core().push_ready(job.id),
                _ => {}
            }
        }
        // Pushed, its automatic rollout started (or about to) but not
        // recorded: start it again; an existing rollout of this job is
        // adopted (its id is derived from the job), not duplicated.
        for mut job in self.with_store(store::pushed_without_rollout).await? {
            let cfg = self.inner.config.for_model(&job.model);
            let Some(version) = job.result_version else {
                continue;
            };
            if !cfg.auto_rollout.enabled {
                continue;
            }
            tracing::info!(
                job = job.id,
                "recording the automatic rollout a restart interrupted"
            );
            self.start_rollout(&mut job, &cfg, version).await?;
        }
        for model in &models {
            let in_flight = self.core().job_in_flight(model);
            let drift_job_active = active
                .iter()
                .any(|j| &j.model == model && j.trigger.kind == TriggerKind::Drift);
            if in_flight && !drift_job_active {
                // The job ended but the policy was not told before the
                // restart: tell it now, with the job's outcome.
                let m = model.clone();
                let last = self
                    .with_store(move |c| store::list_jobs(c, Some(&m), 20))
                    .await?
                    .into_iter()
                    .find(|j| j.trigger == TriggerKind::Drift);
                let ok = last.is_some_and(|j| j.state != JobState::Failed);
                self.core().handle_job_finished(now, model, ok);
                self.save_policy(model, now).await?;
            }
        }
        Ok(())
    }

    /// Runs due evaluations and finishes captures that are complete or past
    /// their deadline. Errors of one model are reported in the result and
    /// do not stop the others.
    pub async fn tick(&self) -> TickReport {
        let now = self.now();
        let mut report = TickReport::default();
        loop {
            let due = self.core().poll_due(now);
            let Some(due) = due else { break };
            let model = due.model.clone();
            match self.evaluate(due, now).await {
                Ok((evaluation, job)) => {
                    report.evaluations.push((model, evaluation));
                    report.jobs_created.extend(job);
                }
                Err(e) => {
                    tracing::warn!(%model, error = %e, "drift evaluation failed");
                    report.errors.push((model, e.to_string()));
                }
            }
        }
        loop {
            let done = self.core().poll_capture_done(now);
            let Some((job, session)) = done else { break };
            report.captures_finished.push(job);
            if let Err(e) = self.finish_capture(job, session, now).await {
                tracing::error!(job, error = %e, "finishing a capture failed");
            }
        }
        report.ready = self.core().take_ready();
        report
    }

    async fn evaluate(
        &self,
        due: DueEvaluation,
        now: u64,
    ) -> Result<(Option<Evaluation>, Option<u64>), RetrainError> {
        let model = due.model.clone();
        let cfg = self.inner.config.for_model(&model);
        let version = self
            .inner
            .ports
            .models
            .production_version(model.clone())
            .await?
            .ok_or_else(|| RetrainError::NotFound(format!("{model} has no production version")))?;
        let manifest = self
            .inner
            .ports
            .models
            .manifest(model.clone(), version)
            .await?;
        let profile = reference_profile(&manifest).map_err(|e| {
            RetrainError::Invalid(format!(
                "{model}@{version} has no usable reference profile: {e}"
            ))
        })?;
        let mut scopes = Vec::new();
        if let Some(key) = &due.cohort_key {
            for cohort in self.cohorts(&model, key).await? {
                let data = self
                    .scope_data(&model, version, Some(cohort), due.from_ms, due.to_ms, false)
                    .await?;
                scopes.push(ScopeDrift::assess(&profile, &cfg.policy, &data));
            }
        }
        if scopes.is_empty() {
            let data = self
                .scope_data(&model, version, None, due.from_ms, due.to_ms, false)
                .await?;
            scopes.push(ScopeDrift::assess(&profile, &cfg.policy, &data));
        }
        let outcome = self.core().handle_evaluation(now, &model, version, &scopes);
        let point = drift_point(now, version, &scopes, outcome.as_ref());
        let (m, keep) = (model.clone(), store::DRIFT_HISTORY_KEEP);
        self.with_store(move |c| store::record_drift_point(c, &m, &point, keep))
            .await?;
        let Some(outcome) = outcome else {
            let why: Vec<String> = scopes.iter().filter_map(|s| s.error.clone()).collect();
            return Err(RetrainError::Invalid(format!(
                "telemetry does not fit the reference profile: {}",
                why.join("; ")
            )));
        };
        tracing::debug!(%model, evaluation = ?outcome.evaluation, "drift evaluated");
        self.save_policy(&model, now).await?;
        let pending = self.core().poll_trigger(&model);
        let job = match pending {
            Some(pending) => Some(self.create_drift_job(&model, pending, now).await?),
            None => None,
        };
        Ok((Some(outcome.evaluation), job))
    }

    /// `model`'s last `limit` scheduled drift evaluations, oldest first
    /// (the fleet drift score over time).
    pub async fn drift_history(
        &self,
        model: &ModelName,
        limit: u32,
    ) -> Result<Vec<store::DriftPoint>, RetrainError> {
        let model = model.clone();
        self.with_store(move |c| store::drift_points(c, &model, limit))
            .await
    }

    /// The values of `key` among devices serving `model`, most populated
    /// first, at most [`MAX_COHORTS`].
    async fn cohorts(
        &self,
        model: &ModelName,
        key: &str,
    ) -> Result<Vec<CohortFilter>, RetrainError> {
        let devices = self.inner.ports.fleet.devices().await?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for d in devices.iter().filter(|d| model_ref_matches(d, model)) {
            if let Some(v) = d.labels.get(key) {
                *counts.entry(v.clone()).or_default() += 1;
            }
        }
        let mut values: Vec<(String, usize)> = counts.into_iter().collect();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(values
            .into_iter()
            .take(MAX_COHORTS)
            // A label an older agent reported that is not a valid label
            // cannot name a cohort.
            .filter_map(|(value, _)| CohortFilter::new(key, value).ok())
            .collect())
    }

    async fn scope_data(
        &self,
        model: &ModelName,
        version: Version,
        cohort: Option<CohortFilter>,
        from_ms: u64,
        to_ms: u64,
        with_accuracy: bool,
    ) -> Result<ScopeData, RetrainError> {
        let query = TelemetryQuery {
            model: model.clone(),
            version,
            cohort: cohort.clone(),
            from_ms,
            to_ms,
        };
        let slice = self
            .inner
            .ports
            .telemetry
            .observed(query.clone(), true)
            .await?;
        let accuracy = if with_accuracy {
            let bucket = (to_ms.saturating_sub(from_ms) / ACCURACY_BUCKETS).max(1);
            self.inner.ports.telemetry.accuracy(query, bucket).await?
        } else {
            Vec::new()
        };
        Ok(ScopeData {
            cohort,
            slice,
            accuracy,
        })
    }

    async fn active_job_of(&self, model: &ModelName) -> Result<Option<u64>, RetrainError> {
        let active = self.with_store(store::active_jobs).await?;
        Ok(active.iter().find(|j| &j.model == model).map(|j| j.id))
    }

    async fn create_drift_job(
        &self,
        model: &ModelName,
        pending: PendingTrigger,
        now: u64,
    ) -> Result<u64, RetrainError> {
        let version = match pending.version {
            Some(v) => Some(v),
            None => {
                self.inner
                    .ports
                    .models
                    .production_version(model.clone())
                    .await?
            }
        };
        let busy = self.active_job_of(model).await?;
        let trigger = JobTrigger {
            kind: TriggerKind::Drift,
            reason: pending.trigger.reason.clone(),
            at: pending.trigger.at,
            cohort: pending.cohort.clone(),
            report: Some(pending.trigger.report.clone()),
        };
        let job = RetrainJob::new(0, model.clone(), version.unwrap_or_default(), trigger, now);
        let job = self.with_store(move |c| store::insert_job(c, &job)).await?;
        // Persist the taken trigger only after the job exists.
        self.save_policy(model, now).await?;
        tracing::info!(job = job.id, %model, reason = %job.trigger.reason, "drift triggered retraining");
        let id = job.id;
        if let Some(other) = busy {
            self.fail_job(
                job,
                format!("retrain job {other} is still running for {model}"),
                now,
            )
            .await?;
        } else if version.is_none() {
            self.fail_job(job, format!("{model} has no production version"), now)
                .await?;
        } else {
            self.start_capture(job, now).await?;
        }
        Ok(id)
    }

    /// `drover retrain run N`: a job without drift, from the production
    /// version, with the model's (or the default) settings.
    ///
    /// # Errors
    ///
    /// [`RetrainError::NotFound`] without a production version,
    /// [`RetrainError::Conflict`] while another job of the model runs.
    pub async fn run_manual(&self, model: &ModelName) -> Result<RetrainJob, RetrainError> {
        let now = self.now();
        let version = self
            .inner
            .ports
            .models
            .production_version(model.clone())
            .await?
            .ok_or_else(|| RetrainError::NotFound(format!("{model} has no production version")))?;
        if let Some(other) = self.active_job_of(model).await? {
            return Err(RetrainError::Conflict(format!(
                "retrain job {other} is still running for {model}"
            )));
        }
        let trigger = JobTrigger {
            kind: TriggerKind::Manual,
            reason: "manual run".into(),
            at: now,
            cohort: None,
            report: None,
        };
        let job = RetrainJob::new(0, model.clone(), version, trigger, now);
        let job = self.with_store(move |c| store::insert_job(c, &job)).await?;
        let id = job.id;
        self.start_capture(job, now).await?;
        self.inner.wake.notify_one();
        self.job(id)
            .await?
            .ok_or_else(|| RetrainError::NotFound(format!("retrain job {id}")))
    }

    async fn fail_job(
        &self,
        mut job: RetrainJob,
        reason: impl Into<String>,
        now: u64,
    ) -> Result<RetrainJob, RetrainError> {
        let reason = reason.into();
        tracing::warn!(job = job.id, model = %job.model, %reason, "retrain job failed");
        self.core().cancel_capture(job.id);
        job.handle_failed(now, reason)?;
        self.save_job(&job).await?;
        self.job_finished(&job, now).await?;
        Ok(job)
    }

    async fn job_finished(&self, job: &RetrainJob, now: u64) -> Result<(), RetrainError> {
        if job.trigger.kind == TriggerKind::Drift && job.is_finished() {
            self.core()
                .handle_job_finished(now, &job.model, job.state != JobState::Failed);
            self.save_policy(&job.model, now).await?;
        }
        Ok(())
    }

    /// One job.
    pub async fn job(&self, id: u64) -> Result<Option<RetrainJob>, RetrainError> {
        self.with_store(move |c| store::get_job(c, id)).await
    }

    /// The newest jobs (of `model`), newest first.
    pub async fn jobs(
        &self,
        model: Option<ModelName>,
        limit: usize,
    ) -> Result<Vec<JobSummary>, RetrainError> {
        self.with_store(move |c| store::list_jobs(c, model.as_ref(), limit))
            .await
    }

    /// `drover drift`: one [`DriftOverview`] per model asked for.
    ///
    /// # Errors
    ///
    /// Unknown model or version, no production version, no reference
    /// profile, port failures.
    pub async fn drift(&self, request: DriftRequest) -> Result<Vec<DriftOverview>, RetrainError> {
        let now = self.now();
        let models: Vec<ModelName> = match &request.model {
            Some(m) => vec![m.clone()],
            None => self.inner.config.models.keys().cloned().collect(),
        };
        let mut out = Vec::new();
        for model in models {
            let cfg = self.inner.config.for_model(&model);
            let version = match request.version {
                Some(v) => v,
                None => self
                    .inner
                    .ports
                    .models
                    .production_version(model.clone())
                    .await?
                    .ok_or_else(|| {
                        RetrainError::NotFound(format!(
                            "{model} has no production version; ask for NAME@VERSION"
                        ))
                    })?,
            };
            let manifest = self
                .inner
                .ports
                .models
                .manifest(model.clone(), version)
                .await?;
            let window = request.window_ms.unwrap_or_else(|| cfg.window_ms());
            let (from_ms, to_ms) = (now.saturating_sub(window), now);
            let cohort_key = request
                .cohort_key
                .clone()
                .or_else(|| cfg.cohort_key.clone());
            let fleet = self
                .scope_data(&model, version, None, from_ms, to_ms, true)
                .await?;
            let mut cohorts = Vec::new();
            if let Some(key) = &cohort_key {
                for cohort in self.cohorts(&model, key).await? {
                    cohorts.push(
                        self.scope_data(&model, version, Some(cohort), from_ms, to_ms, true)
                            .await?,
                    );
                }
            }
            let overview = drift_report(DriftInput {
                model: &model,
                version,
                manifest: &manifest,
                policy: &cfg.policy,
                from_ms,
                to_ms,
                now,
                cohort_key: cohort_key.as_deref(),
                fleet,
                cohorts,
            })
            .map_err(|e| {
                RetrainError::Invalid(format!(
                    "{model}@{version} has no usable reference profile: {e}"
                ))
            })?;
            out.push(overview);
        }
        Ok(out)
    }

    /// The production loop: ticks when something is due (or a capture
    /// completes, or a job is queued), trains ready jobs in the background,
    /// and returns when `shutdown` resolves (running hooks are killed).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut training: JoinSet<()> = JoinSet::new();
        loop {
            let report = self.tick().await;
            for id in report.ready {
                let me = self.clone();
                training.spawn(async move {
                    if let Err(e) = me.train_job(id).await {
                        tracing::error!(job = id, error = %e, "retrain job could not be recorded");
                    }
                });
            }
            // Sleep until the scheduler's next deadline (at least 10 ms on,
            // so a deadline the tick could not clear cannot spin) or an input.
            let now = self.now();
            let deadline = self
                .core()
                .poll_timeout()
                .map(|(at, _)| at.max(now.saturating_add(10)));
            let clock = self.inner.clock.clone();
            let sleep = async move {
                match deadline {
                    Some(at) => clock.sleep_until(drover_protocol::Timestamp(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = sleep => {}
                () = self.inner.wake.notified() => {}
                Some(_) = training.join_next(), if !training.is_empty() => {}
            }
        }
        training.abort_all();
        while training.join_next().await.is_some() {}
    }
}

/// The history point of one scheduled evaluation: the judged scope's
/// numbers (the worst cohort when cohorts are assessed) and the verdict.
fn drift_point(
    now: u64,
    version: Version,
    scopes: &[ScopeDrift],
    outcome: Option<&EvaluationOutcome>,
) -> store::DriftPoint {
    let scope = outcome.and_then(|o| scopes.get(o.scope)).or(scopes.first());
    let report = scope.and_then(|s| s.report.as_ref());
    let verdict = match outcome.map(|o| &o.evaluation) {
        None => "no_report",
        Some(Evaluation::Inconclusive { .. }) => "inconclusive",
        Some(Evaluation::Stable { .. }) => "stable",
        Some(Evaluation::Drifting { .. }) => "drifting",
        Some(Evaluation::Suppressed { .. }) => "suppressed",
        Some(Evaluation::Triggered { .. }) => "triggered",
    };
    store::DriftPoint {
        at: now,
        version: version.0,
        fleet_score: report.map(|r| r.fleet_score).filter(|v| v.is_finite()),
        share_drifting: report
            .and_then(|r| r.devices.as_ref())
            .and_then(|d| d.share),
        scope: scope
            .and_then(|s| s.cohort.as_ref())
            .map_or_else(|| "fleet".to_string(), ToString::to_string),
        verdict: verdict.to_string(),
    }
}

/// Feature names for the dataset header: the manifest's reference profile
/// names when they match the input width, else `f0..`.
fn feature_names(manifest: &ModelManifest, width: usize) -> Vec<String> {
    let names: Vec<String> = manifest
        .reference
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    if names.len() == width && names.iter().all(|n| !n.is_empty()) {
        names
    } else {
        (0..width).map(|i| format!("f{i}")).collect()
    }
}
