//! The pure half of retraining: what to evaluate when, when drift warrants a
//! job, the persisted job state machine, which devices to ask for captures,
//! and how a dataset is assembled. No I/O and no clock: the shell in
//! [`crate::retraining`] passes `now` and data in and carries out the
//! decisions.
//!
//! # Layout
//!
//! - [`ports`]: the traits the shell implements over the controller
//!   ([`TelemetrySource`], [`FleetOps`], [`ModelSource`]) and their data types.
//! - [`config`]: the `[retrain.<model>]` tables of `controller.toml`.
//! - [`job`]: [`RetrainJob`], the persisted state machine.
//! - [`report`]: the pure drift report behind `drover drift`.
//! - [`capture`]: choosing devices and collecting their uploads.
//! - [`dataset`]: the dataset CSV.
//! - [`scheduler`]: the sans-IO core (schedule, policies, captures).

pub(crate) mod capture;
pub(crate) mod config;
pub(crate) mod dataset;
pub(crate) mod job;
pub(crate) mod ports;
pub(crate) mod report;
pub(crate) mod scheduler;

pub use config::{ModelRetrainConfig, RetrainConfig};
pub use job::{JobState, RetrainJob};
pub use ports::{FleetOps, ModelSource, PortError, PortFuture, TelemetrySource};
pub use report::{DriftOverview, drift_report};
pub use scheduler::Scheduler;
