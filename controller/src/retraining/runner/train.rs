//! Training: running the hook on a dataset, validating and pushing its
//! model, starting the canary rollout.

use drover_protocol::Version;
use drover_protocol::manifest::Task;

use crate::core::retraining::config::ModelRetrainConfig;
use crate::core::retraining::job::{HookRecord, JobState, RetrainJob};
use crate::core::retraining::ports::PushModel;
use crate::retraining::hook::{HookDataset, HookJob, JOB_SCHEMA, run_hook, validate_model};

use super::{CANDIDATE_ALIAS, RetrainError, RetrainRunner};

impl RetrainRunner {
    /// Runs the hook of a job in `training`, validates its model, pushes
    /// it with lineage and, if configured, starts a rollout. Returns the
    /// job as it ends (failed, pushed or rolled out); a job in any other
    /// state is returned unchanged.
    ///
    /// # Errors
    ///
    /// Only store errors: everything about the hook, the model, the push
    /// and the rollout is recorded in the job.
    pub async fn train_job(&self, id: u64) -> Result<RetrainJob, RetrainError> {
        let mut job = self
            .job(id)
            .await?
            .ok_or_else(|| RetrainError::NotFound(format!("retrain job {id}")))?;
        if job.state != JobState::Training {
            return Ok(job);
        }
        let Some(dataset) = job.dataset.clone() else {
            return self.fail_job(job, "no dataset recorded", self.now()).await;
        };
        let cfg = self.inner.config.for_model(&job.model);
        let models = &self.inner.ports.models;
        let manifest = match models.manifest(job.model.clone(), job.base_version).await {
            Ok(m) => m,
            Err(e) => {
                return self
                    .fail_job(job, format!("reading the base manifest: {e}"), self.now())
                    .await;
            }
        };
        let dir = self.job_dir(id);
        let output = dir.join("model.onnx");
        let base_path = dir.join("base.onnx");
        let prepared = async {
            tokio::fs::create_dir_all(&dir).await?;
            // A model left by an interrupted earlier run must not pass as this run's.
            match tokio::fs::remove_file(&output).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            Ok(())
        };
        if let Err(e) = prepared.await {
            return self
                .fail_job(job, format!("preparing {}: {e}", dir.display()), self.now())
                .await;
        }
        let base_model_path = match models.artifact(job.model.clone(), job.base_version).await {
            Ok(bytes) => tokio::fs::write(&base_path, bytes)
                .await
                .ok()
                .map(|()| base_path.display().to_string()),
            Err(e) => {
                tracing::warn!(job = id, error = %e, "base artifact unavailable; hook runs without it");
                None
            }
        };
        let is_classifier = matches!(manifest.task, Task::Classification { .. });
        let hook_job = HookJob {
            schema: JOB_SCHEMA.to_owned(),
            job_id: id,
            model: job.model.to_string(),
            base_version: job.base_version.0,
            task: if is_classifier {
                "classification"
            } else {
                "regression"
            }
            .to_owned(),
            feature_names: dataset.feature_names.clone(),
            classes: if is_classifier {
                dataset.classes.clone()
            } else {
                Vec::new()
            },
            label_column: dataset.label_column.clone(),
            dataset: HookDataset {
                path: dataset.path.clone(),
                rows: dataset.rows,
                labelled_rows: dataset.labelled_rows,
                captured_rows: dataset.captured_rows,
                reference_rows: dataset.reference_rows,
                sha256: dataset.sha256.clone(),
            },
            base_model_path,
            job_dir: dir.display().to_string(),
            output_path: output.display().to_string(),
            metrics_path: dir.join("metrics.json").display().to_string(),
            trigger: job.trigger.clone(),
            dataset_csv: None,
        };
        let job_file = dir.join("job.json");
        let written = match serde_json::to_vec_pretty(&hook_job) {
            Ok(json) => tokio::fs::write(&job_file, json)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            return self
                .fail_job(
                    job,
                    format!("writing {}: {e}", job_file.display()),
                    self.now(),
                )
                .await;
        }

        let started_at = self.now();
        tracing::info!(job = id, hook = cfg.hook.kind(), "running retrain hook");
        crate::fault::hit("retrain.hook");
        let result = run_hook(&cfg.hook, &hook_job, &job_file).await;
        let now = self.now();
        job.handle_hook_finished(
            now,
            HookRecord {
                kind: cfg.hook.kind().to_owned(),
                started_at,
                finished_at: now,
                exit_code: result.exit_code,
                log: result.log,
            },
        )?;
        self.save_job(&job).await?;
        let output = match result.outcome {
            Ok(out) => out,
            Err(reason) => return self.fail_job(job, reason, now).await,
        };

        let width = manifest.features_per_row().unwrap_or(0);
        let classes = is_classifier.then_some(dataset.classes.len());
        let model_path = output.model_path.clone();
        let checked = tokio::task::spawn_blocking(move || {
            validate_model(&model_path, width, classes)?;
            std::fs::read(&model_path).map_err(|e| format!("reading {}: {e}", model_path.display()))
        })
        .await
        .unwrap_or_else(|e| Err(format!("validation task failed: {e}")));
        let onnx = match checked {
            Ok(bytes) => bytes,
            Err(reason) => return self.fail_job(job, reason, self.now()).await,
        };
        let profile_csv = match tokio::fs::read(dir.join("profile.csv")).await {
            Ok(b) => b,
            Err(e) => {
                return self
                    .fail_job(job, format!("reading the profile CSV: {e}"), self.now())
                    .await;
            }
        };
        let push = PushModel {
            name: job.model.clone(),
            onnx,
            reference_csv: profile_csv,
            labels: is_classifier.then(|| dataset.classes.clone()),
            parent: job.base_version,
            retrain_job: id,
            dataset_sha256: dataset.sha256.clone(),
            training_run: format!("retrain-{id}/{}", cfg.hook.kind()),
            eval_metrics: output.metrics.clone(),
            alias: Some(CANDIDATE_ALIAS.to_owned()),
        };
        let version = match self.inner.ports.fleet.push_model(push).await {
            Ok(v) => v,
            Err(e) => {
                return self
                    .fail_job(job, format!("pushing the model failed: {e}"), self.now())
                    .await;
            }
        };
        // Pushed, not yet recorded in the job.
        crate::fault::hit("retrain.push");
        let now = self.now();
        job.handle_pushed(now, version, output.metrics)?;
        self.save_job(&job).await?;
        tracing::info!(job = id, model = %job.model, %version, "retrained version pushed");
        if cfg.auto_rollout.enabled {
            self.start_rollout(&mut job, &cfg, version).await?;
        }
        self.job_finished(&job, self.now()).await?;
        Ok(job)
    }

    pub(super) async fn start_rollout(
        &self,
        job: &mut RetrainJob,
        cfg: &ModelRetrainConfig,
        version: Version,
    ) -> Result<(), RetrainError> {
        let mut id = format!("retrain-{}-{}-v{}", job.id, job.model, version.0);
        id.truncate(crate::core::rollout::spec::MAX_ROLLOUT_ID_LEN);
        let cohort_key = job
            .trigger
            .cohort
            .as_ref()
            .map(|c| c.key().to_owned())
            .or_else(|| cfg.cohort_key.clone());
        let started = match cfg.auto_rollout.rollout_spec(
            id,
            job.model.clone(),
            version,
            cohort_key.as_deref(),
        ) {
            Ok(spec) => self
                .inner
                .ports
                .fleet
                .start_rollout(spec)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let now = self.now();
        match started {
            Ok(rollout) => {
                // Started and saved by the rollout service, not yet in the job.
                crate::fault::hit("retrain.auto_rollout");
                tracing::info!(job = job.id, %rollout, "canary rollout started");
                job.handle_rollout_started(now, rollout)?;
            }
            Err(reason) => {
                tracing::warn!(job = job.id, %reason, "automatic rollout did not start");
                job.handle_rollout_failed(now, reason)?;
            }
        }
        self.save_job(job).await
    }
}
