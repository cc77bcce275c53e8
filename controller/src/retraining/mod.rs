//! Closing the loop: drift ⇒ retraining job ⇒ new signed version ⇒ canary
//! rollout.
//!
//! Every `interval` the scheduler measures each configured model's
//! production version over the last `window` (per cohort when configured)
//! against its manifest's reference profile and feeds the result to the
//! model's [`DriftPolicy`](crate::core::drift::DriftPolicy). A trigger creates a
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
//! - [`ports`]: the traits the rest of the controller implements
//!   ([`TelemetrySource`], [`FleetOps`], [`ModelSource`]).
//! - [`config`]: the `[retrain.<model>]` tables of `controller.toml`.
//! - [`job`]: [`RetrainJob`], the persisted state machine.
//! - [`store`]: SQLite tables for jobs and policy states.
//! - [`report`]: the pure drift report behind `drover drift`.
//! - [`capture`]: choosing devices and collecting their uploads.
//! - [`dataset`]: the dataset CSV.
//! - [`hook`]: builtin / exec / webhook runners, the job JSON, model
//!   validation.
//! - [`scheduler`]: the sans-IO core (schedule, policies, captures).
//! - [`runner`]: the async shell ([`RetrainRunner`]).
//! - [`http`]: `/v1/drift` and `/v1/retrain` routes.
//! - [`cli`]: `drover drift`, `drover retrain`, `drover train`.
//!
//! # Wiring (controller side)
//!
//! 1. Append [`store::MIGRATIONS`] to the controller's migration list.
//! 2. Implement the three [`ports`] over the controller and build
//!    [`RetrainRunner::open`] with its `Db`, data dir, clock and
//!    [`RetrainConfig::load_default`].
//! 3. Spawn [`RetrainRunner::run`] with the shutdown signal; call
//!    [`RetrainRunner::handle_capture`] for every `Up::Capture`.
//! 4. Merge [`http::routes`] into the API router and add the [`cli`]
//!    commands to `drover`.

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
