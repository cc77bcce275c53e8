//! Captures: asking devices for inputs, collecting uploads, writing the
//! dataset.

use std::collections::BTreeMap;
use std::path::PathBuf;

use drover_protocol::messages::CaptureUpload;
use drover_protocol::{DeviceId, Sha256};

use crate::core::retraining::capture::{
    CaptureLimits, CaptureSession, UploadOutcome, select_capture_devices,
};
use crate::core::retraining::dataset::{DatasetLayout, build_dataset, parse_reference_csv};
use crate::core::retraining::job::{DatasetInfo, JobState, RetrainJob};
use crate::core::retraining::ports::FleetDevice;

use super::{RetrainError, RetrainRunner, feature_names, model_ref_matches};

impl RetrainRunner {
    pub(super) async fn start_capture(
        &self,
        mut job: RetrainJob,
        now: u64,
    ) -> Result<(), RetrainError> {
        let cfg = self.inner.config.for_model(&job.model);
        let manifest = match self
            .inner
            .ports
            .models
            .manifest(job.model.clone(), job.base_version)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                self.fail_job(job, format!("reading the base manifest: {e}"), now)
                    .await?;
                return Ok(());
            }
        };
        let Some(width) = manifest.features_per_row() else {
            self.fail_job(job, "the base model's input shape is not static", now)
                .await?;
            return Ok(());
        };
        let devices = match self.inner.ports.fleet.devices().await {
            Ok(d) => d,
            Err(e) => {
                self.fail_job(job, format!("listing devices: {e}"), now)
                    .await?;
                return Ok(());
            }
        };
        let cohort = job.trigger.cohort.clone();
        let candidates: Vec<FleetDevice> = devices
            .into_iter()
            .filter(|d| d.online && model_ref_matches(d, &job.model))
            .filter(|d| cohort.as_ref().is_none_or(|c| c.matches(&d.labels)))
            .collect();
        let share = job.trigger.report.as_ref().and_then(|r| r.devices.as_ref());
        let picked = select_capture_devices(share, &candidates, cfg.capture.devices);
        let mut requested = Vec::new();
        let mut failures = BTreeMap::new();
        for device in picked {
            match self
                .inner
                .ports
                .fleet
                .request_capture(
                    device.clone(),
                    cfg.capture.samples_per_device,
                    cfg.capture.max_bytes_per_device,
                )
                .await
            {
                Ok(seq) => requested.push((device, seq)),
                Err(e) => {
                    failures.insert(device.to_string(), e.to_string());
                }
            }
        }
        let session = CaptureSession::new(
            job.model.clone(),
            requested,
            failures,
            CaptureLimits {
                max_samples_per_device: cfg.capture.samples_per_device,
                max_bytes_per_device: cfg.capture.max_bytes_per_device,
                width,
            },
            now.saturating_add(cfg.capture.timeout_ms()),
        );
        job.handle_capture_started(now, session.summary())?;
        self.save_job(&job).await?;
        self.core().start_capture(job.id, session);
        Ok(())
    }

    /// Takes one `Up::Capture` from `device` (the id the broker
    /// authenticated). Uploads nobody asked for are ignored; returns what
    /// happened, for the caller's logs and metrics.
    pub fn handle_capture(
        &self,
        device: &DeviceId,
        upload: &CaptureUpload,
    ) -> Option<UploadOutcome> {
        let now = self.now();
        let (job, outcome, over) = {
            let mut core = self.core();
            let (job, outcome) = core.handle_capture(device.as_str(), upload)?;
            let over = core.capture_is_over(job, now);
            (job, outcome, over)
        };
        if let UploadOutcome::Ignored(why) = &outcome {
            tracing::debug!(%device, job, why, "capture upload ignored");
        }
        if over {
            self.inner.wake.notify_one();
        }
        Some(outcome)
    }

    pub(super) async fn finish_capture(
        &self,
        id: u64,
        session: CaptureSession,
        now: u64,
    ) -> Result<(), RetrainError> {
        let Some(mut job) = self.job(id).await? else {
            return Ok(());
        };
        if job.state != JobState::Capturing {
            return Ok(());
        }
        job.handle_capture_progress(now, session.summary())?;
        let samples = session.into_samples();
        let cfg = self.inner.config.for_model(&job.model);
        let manifest = match self
            .inner
            .ports
            .models
            .manifest(job.model.clone(), job.base_version)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                self.fail_job(job, format!("reading the base manifest: {e}"), now)
                    .await?;
                return Ok(());
            }
        };
        let width = manifest.features_per_row().unwrap_or(0);
        let names = feature_names(&manifest, width);
        let layout = DatasetLayout {
            feature_names: &names,
            label_column: &cfg.dataset.label_column,
            task: &manifest.task,
        };
        let labelled = build_dataset(layout, &samples, None)
            .map(|b| b.labelled_rows)
            .unwrap_or(0);
        let mut notes = Vec::new();
        let reference = if (labelled as usize) < cfg.dataset.min_labelled_rows {
            match self
                .inner
                .ports
                .models
                .reference_csv(job.model.clone(), job.base_version)
                .await
            {
                Ok(Some(csv)) => match parse_reference_csv(
                    &csv,
                    &cfg.dataset.label_column,
                    width,
                    cfg.dataset.max_reference_rows,
                ) {
                    Ok(rows) => Some(rows),
                    Err(e) => {
                        notes.push(e);
                        None
                    }
                },
                Ok(None) => {
                    notes.push("the registry kept no reference CSV to top up with".to_owned());
                    None
                }
                Err(e) => {
                    notes.push(format!("reading the reference CSV: {e}"));
                    None
                }
            }
        } else {
            None
        };
        let built = match build_dataset(layout, &samples, reference.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                let mut reason = e.to_string();
                if !notes.is_empty() {
                    reason = format!("{reason} ({})", notes.join("; "));
                }
                self.fail_job(job, reason, now).await?;
                return Ok(());
            }
        };
        for note in &notes {
            tracing::info!(job = id, note = %note, "dataset");
        }
        let path = self.dataset_path(id);
        let dir = self.job_dir(id);
        let write = async {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(&path, built.csv.as_bytes()).await?;
            tokio::fs::write(dir.join("profile.csv"), built.profile_csv.as_bytes()).await
        };
        if let Err(e) = write.await {
            self.fail_job(
                job,
                format!("writing the dataset {}: {e}", path.display()),
                now,
            )
            .await?;
            return Ok(());
        }
        job.handle_dataset_ready(
            now,
            DatasetInfo {
                path: path.display().to_string(),
                rows: built.rows,
                labelled_rows: built.labelled_rows,
                captured_rows: built.captured_rows,
                reference_rows: built.reference_rows,
                sha256: Sha256::of(built.csv.as_bytes()).to_hex(),
                feature_names: names,
                label_column: cfg.dataset.label_column.clone(),
                classes: built.classes,
            },
        )?;
        self.save_job(&job).await?;
        self.core().push_ready(id);
        self.inner.wake.notify_one();
        Ok(())
    }

    pub(super) fn dataset_path(&self, id: u64) -> PathBuf {
        self.inner
            .data_dir
            .join("datasets")
            .join(format!("{id}.csv"))
    }

    pub(super) fn job_dir(&self, id: u64) -> PathBuf {
        self.inner.data_dir.join("retrain").join(id.to_string())
    }
}
