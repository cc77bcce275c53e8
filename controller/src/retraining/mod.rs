//! Closing the loop: drift ⇒ retraining job ⇒ new signed version ⇒ canary
//! rollout.
//!
//! Every `interval` the scheduler measures each configured model's
//! production version over the last `window` (per cohort when configured)
//! against its manifest's reference profile and feeds the result to the
//! model's `DriftPolicy`. A trigger creates a
//! persisted [`RetrainJob`] with the drift report; the controller asks a
//! sample of the drifting devices for captured inputs (+ labels) with the
//! signed Capture command, stores what comes back as the job's dataset,
//! runs the configured hook (the builtin reference trainer, a command, or
//! a webhook), validates the model it produced, pushes it as a new version
//! with lineage (parent, job id, dataset hash, eval metrics) and, if the
//! policy says so, starts a canary rollout. A hook that fails, hangs or
//! produces an invalid model marks the job failed with the reason and never
//! touches the fleet.
//!
//! # Layout
//!
//! The decisions are in `crate::core::retraining` (scheduler, job state
//! machine, capture selection, dataset, drift report, config parsing, the
//! port traits); this folder is the shell:
//!
//! - `runner`: [`RetrainRunner`], the async loop (with `runner/capture` and
//!   `runner/train`); it sleeps until the scheduler's next deadline.
//! - `hook`: builtin / exec / webhook runners, the job JSON, model
//!   validation.
//! - `store`: SQLite tables for jobs and policy states.
//! - `ports`: the port traits implemented over the controller.
//! - `config_file`: reading `controller.toml`.
//!
//! Its routes are `crate::http::retrain` (`/v1/drift`, `/v1/retrain`) and
//! its commands `drover drift`, `drover retrain`, `drover train` in
//! `crate::cli`.

pub(crate) mod config_file;
pub(crate) mod hook;
pub(crate) mod ports;
pub(crate) mod runner;
pub(crate) mod store;

#[cfg(test)]
mod tests;

pub use crate::core::retraining::{
    DriftOverview, FleetOps, JobState, ModelRetrainConfig, ModelSource, PortError, PortFuture,
    RetrainConfig, RetrainJob, Scheduler, TelemetrySource, drift_report,
};
pub use runner::{DriftRequest, Ports, RetrainError, RetrainRunner};
pub use store::DriftPoint;
