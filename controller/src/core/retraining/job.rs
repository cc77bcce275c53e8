//! [`RetrainJob`]: one retraining attempt, as a persisted state machine.
//!
//! ```text
//! queued ──▶ capturing ──▶ training ──▶ pushed ──▶ rolled_out
//!    │           │            │
//!    └───────────┴────────────┴──────▶ failed (reason)
//! ```
//!
//! Transitions are `handle_*` methods taking `now`; anything else is a
//! [`JobError::InvalidTransition`] and leaves the job unchanged. `pushed`
//! is final unless an automatic rollout starts; `failed` and `rolled_out`
//! are final. A job is *finished* for the drift policy once it is failed,
//! rolled out, or pushed with no rollout to start.

use std::collections::BTreeMap;
use std::fmt;

use drover_protocol::{ModelName, Version};
use serde::{Deserialize, Serialize};

use super::ports::CohortFilter;
use crate::core::drift::DriftReport;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Created; devices not asked yet.
    Queued,
    /// Waiting for captured samples.
    Capturing,
    /// Dataset written; the hook runs (or is about to).
    Training,
    /// The new version is in the registry.
    Pushed,
    /// Pushed, and a rollout of it started.
    RolledOut,
    /// Gave up; `failure` says why. The fleet was not touched.
    Failed,
}

impl JobState {
    /// The name used in JSON, SQL and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Capturing => "capturing",
            JobState::Training => "training",
            JobState::Pushed => "pushed",
            JobState::RolledOut => "rolled_out",
            JobState::Failed => "failed",
        }
    }

    /// Parses [`JobState::as_str`].
    pub fn parse(s: &str) -> Option<JobState> {
        [
            JobState::Queued,
            JobState::Capturing,
            JobState::Training,
            JobState::Pushed,
            JobState::RolledOut,
            JobState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    /// Queued, capturing or training: work remains.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Capturing | JobState::Training
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition that is not allowed from the job's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// `event` cannot happen in state `from`.
    #[error("retrain job {job}: cannot {event} while {from}")]
    InvalidTransition {
        /// Job id.
        job: u64,
        /// State the job is in.
        from: JobState,
        /// What was attempted.
        event: &'static str,
    },
}

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// The drift policy fired.
    Drift,
    /// `drover retrain run` / `POST /v1/retrain`.
    Manual,
}

/// Why a job exists, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTrigger {
    /// Drift or manual.
    pub kind: TriggerKind,
    /// Human-readable reason (the policy's, or "manual").
    pub reason: String,
    /// When it fired (Unix ms).
    pub at: u64,
    /// The cohort whose drift fired it, when evaluated per cohort.
    pub cohort: Option<CohortFilter>,
    /// The drift report of the window that fired it.
    pub report: Option<DriftReport>,
}

/// Which devices were asked for samples, and what came back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSummary {
    /// Devices a Capture command was sent to, in the order chosen.
    pub requested: Vec<String>,
    /// Devices the command could not be sent to, with the reason.
    pub send_failures: BTreeMap<String, String>,
    /// Devices whose last part arrived.
    pub completed: Vec<String>,
    /// Samples kept.
    pub samples: u64,
    /// Samples dropped (over the byte or sample budget, wrong width, not finite).
    pub dropped: u64,
    /// When waiting stops (Unix ms).
    pub deadline: u64,
}

/// The job's dataset file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// `DATA_DIR/datasets/<job>.csv`.
    pub path: String,
    /// Data rows (header excluded).
    pub rows: u64,
    /// Rows with a label.
    pub labelled_rows: u64,
    /// Rows from captured samples (the first `captured_rows` rows).
    pub captured_rows: u64,
    /// Rows appended from the base version's reference CSV (after the
    /// captured ones).
    pub reference_rows: u64,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Feature column names, in input order.
    pub feature_names: Vec<String>,
    /// Label column name.
    pub label_column: String,
    /// Distinct labels present, in the trainer's class order.
    pub classes: Vec<String>,
}

/// How the hook ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    /// `builtin`, `exec` or `webhook`.
    pub kind: String,
    /// When it started (Unix ms).
    pub started_at: u64,
    /// When it ended (Unix ms).
    pub finished_at: u64,
    /// Process exit code (exec).
    pub exit_code: Option<i32>,
    /// Captured output, each stream cut to its configured tail.
    pub log: String,
}

/// One state change, for `drover retrain show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// When (Unix ms).
    pub at: u64,
    /// The state entered.
    pub state: JobState,
    /// Context (e.g. the failure reason, the pushed version).
    pub note: Option<String>,
}

/// One retraining attempt. Plain serde data: persisted as JSON after every
/// transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainJob {
    /// Job id (assigned by the store; lineage `retrain_job`).
    pub id: u64,
    /// Model retrained.
    pub model: ModelName,
    /// Version it starts from (lineage `parent`).
    pub base_version: Version,
    /// Current state.
    pub state: JobState,
    /// Why it failed, when `state` is `failed`.
    pub failure: Option<String>,
    /// Why it exists.
    pub trigger: JobTrigger,
    /// Created (Unix ms).
    pub created_at: u64,
    /// Last transition (Unix ms).
    pub updated_at: u64,
    /// Capture requests and results.
    pub capture: Option<CaptureSummary>,
    /// The dataset handed to the hook.
    pub dataset: Option<DatasetInfo>,
    /// The hook's run and logs.
    pub hook: Option<HookRecord>,
    /// The version pushed.
    pub result_version: Option<Version>,
    /// The hook's evaluation metrics.
    pub eval_metrics: BTreeMap<String, f64>,
    /// The rollout started for `result_version`.
    pub rollout_id: Option<String>,
    /// Why an automatic rollout could not start (the version stays pushed).
    pub rollout_error: Option<String>,
    /// Every state entered, oldest first.
    pub history: Vec<Transition>,
}

impl RetrainJob {
    /// A queued job. `id` is 0 until the store assigns one.
    pub fn new(
        id: u64,
        model: ModelName,
        base_version: Version,
        trigger: JobTrigger,
        now: u64,
    ) -> RetrainJob {
        RetrainJob {
            id,
            model,
            base_version,
            state: JobState::Queued,
            failure: None,
            trigger,
            created_at: now,
            updated_at: now,
            capture: None,
            dataset: None,
            hook: None,
            result_version: None,
            eval_metrics: BTreeMap::new(),
            rollout_id: None,
            rollout_error: None,
            history: vec![Transition {
                at: now,
                state: JobState::Queued,
                note: None,
            }],
        }
    }

    /// Whether the drift policy should hear that this job ended.
    pub fn is_finished(&self) -> bool {
        !self.state.is_active()
    }

    fn expect(&self, allowed: &[JobState], event: &'static str) -> Result<(), JobError> {
        if allowed.contains(&self.state) {
            Ok(())
        } else {
            Err(JobError::InvalidTransition {
                job: self.id,
                from: self.state,
                event,
            })
        }
    }

    fn enter(&mut self, now: u64, state: JobState, note: Option<String>) {
        self.state = state;
        self.updated_at = now.max(self.updated_at);
        self.history.push(Transition {
            at: now,
            state,
            note,
        });
    }

    /// Capture commands went out (queued → capturing). Also allowed while
    /// capturing: after a restart the capture starts over.
    pub fn handle_capture_started(
        &mut self,
        now: u64,
        capture: CaptureSummary,
    ) -> Result<(), JobError> {
        self.expect(&[JobState::Queued, JobState::Capturing], "start capturing")?;
        let note = format!("{} device(s) asked", capture.requested.len());
        self.capture = Some(capture);
        self.enter(now, JobState::Capturing, Some(note));
        Ok(())
    }

    /// Capture finished (complete or timed out) with these results; the
    /// state does not change.
    pub fn handle_capture_progress(
        &mut self,
        now: u64,
        capture: CaptureSummary,
    ) -> Result<(), JobError> {
        self.expect(&[JobState::Capturing], "record capture results")?;
        self.capture = Some(capture);
        self.updated_at = now.max(self.updated_at);
        Ok(())
    }

    /// The dataset is written (capturing → training).
    pub fn handle_dataset_ready(&mut self, now: u64, dataset: DatasetInfo) -> Result<(), JobError> {
        self.expect(&[JobState::Capturing], "start training")?;
        let note = format!(
            "{} rows ({} labelled, {} captured, {} from the reference)",
            dataset.rows, dataset.labelled_rows, dataset.captured_rows, dataset.reference_rows
        );
        self.dataset = Some(dataset);
        self.enter(now, JobState::Training, Some(note));
        Ok(())
    }

    /// The hook returned (successfully or not); the state does not change
    /// (success continues with validation and the push, failure with
    /// [`RetrainJob::handle_failed`]).
    pub fn handle_hook_finished(&mut self, now: u64, record: HookRecord) -> Result<(), JobError> {
        self.expect(&[JobState::Training], "record the hook run")?;
        self.hook = Some(record);
        self.updated_at = now.max(self.updated_at);
        Ok(())
    }

    /// The new version is in the registry (training → pushed).
    pub fn handle_pushed(
        &mut self,
        now: u64,
        version: Version,
        eval_metrics: BTreeMap<String, f64>,
    ) -> Result<(), JobError> {
        self.expect(&[JobState::Training], "record a push")?;
        self.result_version = Some(version);
        self.eval_metrics = eval_metrics;
        self.enter(now, JobState::Pushed, Some(format!("version {version}")));
        Ok(())
    }

    /// A rollout of the pushed version started (pushed → rolled_out).
    pub fn handle_rollout_started(&mut self, now: u64, rollout_id: String) -> Result<(), JobError> {
        self.expect(&[JobState::Pushed], "record a rollout")?;
        let note = format!("rollout {rollout_id}");
        self.rollout_id = Some(rollout_id);
        self.enter(now, JobState::RolledOut, Some(note));
        Ok(())
    }

    /// The automatic rollout could not start; the job stays pushed.
    pub fn handle_rollout_failed(&mut self, now: u64, reason: String) -> Result<(), JobError> {
        self.expect(&[JobState::Pushed], "record a rollout failure")?;
        self.rollout_error = Some(reason);
        self.updated_at = now.max(self.updated_at);
        Ok(())
    }

    /// The job gives up (from queued, capturing or training).
    pub fn handle_failed(&mut self, now: u64, reason: impl Into<String>) -> Result<(), JobError> {
        self.expect(
            &[JobState::Queued, JobState::Capturing, JobState::Training],
            "fail",
        )?;
        let reason = reason.into();
        self.failure = Some(reason.clone());
        self.enter(now, JobState::Failed, Some(reason));
        Ok(())
    }
}

/// The list view of a job (no report, no logs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Job id.
    pub id: u64,
    /// Model.
    pub model: ModelName,
    /// Base version.
    pub base_version: Version,
    /// State.
    pub state: JobState,
    /// Drift or manual.
    pub trigger: TriggerKind,
    /// Trigger reason.
    pub reason: String,
    /// Failure reason.
    pub failure: Option<String>,
    /// Version pushed.
    pub result_version: Option<Version>,
    /// Rollout started.
    pub rollout_id: Option<String>,
    /// Created (Unix ms).
    pub created_at: u64,
    /// Last change (Unix ms).
    pub updated_at: u64,
}

impl From<&RetrainJob> for JobSummary {
    fn from(job: &RetrainJob) -> JobSummary {
        JobSummary {
            id: job.id,
            model: job.model.clone(),
            base_version: job.base_version,
            state: job.state,
            trigger: job.trigger.kind,
            reason: job.trigger.reason.clone(),
            failure: job.failure.clone(),
            result_version: job.result_version,
            rollout_id: job.rollout_id.clone(),
            created_at: job.created_at,
            updated_at: job.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manual(now: u64) -> RetrainJob {
        RetrainJob::new(
            7,
            ModelName::new("m").unwrap(),
            Version(3),
            JobTrigger {
                kind: TriggerKind::Manual,
                reason: "manual".into(),
                at: now,
                cohort: None,
                report: None,
            },
            now,
        )
    }

    fn dataset() -> DatasetInfo {
        DatasetInfo {
            path: "/d/7.csv".into(),
            rows: 10,
            labelled_rows: 8,
            captured_rows: 10,
            reference_rows: 0,
            sha256: "ab".into(),
            feature_names: vec!["a".into()],
            label_column: "label".into(),
            classes: vec!["x".into(), "y".into()],
        }
    }

    fn hook() -> HookRecord {
        HookRecord {
            kind: "exec".into(),
            started_at: 5,
            finished_at: 6,
            exit_code: Some(0),
            log: String::new(),
        }
    }

    #[test]
    fn happy_path_with_rollout() {
        let mut job = manual(1);
        assert_eq!(job.state, JobState::Queued);
        assert!(!job.is_finished());
        job.handle_capture_started(2, CaptureSummary::default())
            .unwrap();
        job.handle_capture_progress(3, CaptureSummary::default())
            .unwrap();
        job.handle_dataset_ready(4, dataset()).unwrap();
        job.handle_hook_finished(6, hook()).unwrap();
        job.handle_pushed(7, Version(4), BTreeMap::from([("acc".into(), 0.9)]))
            .unwrap();
        assert!(job.is_finished());
        job.handle_rollout_started(8, "r1".into()).unwrap();
        assert_eq!(job.state, JobState::RolledOut);
        assert_eq!(job.result_version, Some(Version(4)));
        assert_eq!(job.rollout_id.as_deref(), Some("r1"));
        assert_eq!(job.updated_at, 8);
        let states: Vec<JobState> = job.history.iter().map(|t| t.state).collect();
        assert_eq!(
            states,
            [
                JobState::Queued,
                JobState::Capturing,
                JobState::Training,
                JobState::Pushed,
                JobState::RolledOut
            ]
        );
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<RetrainJob>(&json).unwrap(), job);
    }

    #[test]
    fn failure_from_every_active_state_and_not_after() {
        for steps in 0..3 {
            let mut job = manual(1);
            if steps >= 1 {
                job.handle_capture_started(2, CaptureSummary::default())
                    .unwrap();
            }
            if steps >= 2 {
                job.handle_dataset_ready(3, dataset()).unwrap();
            }
            job.handle_failed(9, "timeout after 1s").unwrap();
            assert_eq!(job.state, JobState::Failed);
            assert_eq!(job.failure.as_deref(), Some("timeout after 1s"));
            assert!(job.is_finished());
            let before = job.clone();
            assert_eq!(
                job.handle_failed(10, "again"),
                Err(JobError::InvalidTransition {
                    job: 7,
                    from: JobState::Failed,
                    event: "fail"
                })
            );
            assert!(job.handle_pushed(10, Version(9), BTreeMap::new()).is_err());
            assert_eq!(job, before, "a refused transition changes nothing");
        }
    }

    #[test]
    fn out_of_order_transitions_are_refused() {
        let mut job = manual(1);
        assert!(job.handle_dataset_ready(2, dataset()).is_err());
        assert!(job.handle_hook_finished(2, hook()).is_err());
        assert!(job.handle_pushed(2, Version(4), BTreeMap::new()).is_err());
        assert!(job.handle_rollout_started(2, "r".into()).is_err());
        let err = job.handle_rollout_started(2, "r".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "retrain job 7: cannot record a rollout while queued"
        );
        job.handle_capture_started(2, CaptureSummary::default())
            .unwrap();
        // A restart re-enters capturing.
        job.handle_capture_started(3, CaptureSummary::default())
            .unwrap();
        job.handle_dataset_ready(4, dataset()).unwrap();
        job.handle_pushed(5, Version(4), BTreeMap::new()).unwrap();
        assert!(job.handle_failed(6, "x").is_err(), "pushed is not undone");
        job.handle_rollout_failed(6, "spec refused".into()).unwrap();
        assert_eq!(job.state, JobState::Pushed);
        assert_eq!(job.rollout_error.as_deref(), Some("spec refused"));
    }

    #[test]
    fn states_round_trip_as_text() {
        for s in [
            "queued",
            "capturing",
            "training",
            "pushed",
            "rolled_out",
            "failed",
        ] {
            assert_eq!(JobState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(JobState::parse("done"), None);
        assert_eq!(
            serde_json::to_string(&JobState::RolledOut).unwrap(),
            "\"rolled_out\""
        );
    }
}
