//! drover-controller: the central service (`drover serve`) and the operator
//! CLI (`drover`).
//!
//! # Layout
//!
//! Pure decision code lives in [`core`] (no I/O, no clock reads; CI checks
//! it with `scripts/check_layout.py`); every other folder is one
//! capability's shell around it.
//!
//! - [`core`]: the rollout engine, drift detection and the retraining
//!   scheduler/job/capture/dataset cores.
//! - [`fleet`]: inventory, signed commands, the MQTT link and broker, the
//!   artifact chunk server.
//! - [`telemetry`]: ingest and the merged query.
//! - [`registry`]: ONNX inspection (tract), reference profiles, signed
//!   manifests, content-addressed artifacts.
//! - [`agent_releases`]: agent binaries (ELF arch checked) stored
//!   content-addressed with manifests signed by the `agents` key.
//! - [`rollouts`]: the rollout shell ([`rollouts::RolloutService`]).
//! - [`retraining`]: the retraining shell ([`retraining::RetrainRunner`]).
//! - [`train`]: the reference trainer.
//! - [`http`]: every API route; [`cli`]: every `drover` subcommand
//!   (`cli/cmd_NAME.rs`).
//! - [`serve`]: [`serve::ServeConfig`] → [`serve::start`] → a running
//!   controller (phased startup, graceful drain). `main` calls the same.
//! - [`controller`]: the cheap-to-clone [`Controller`] handle every other
//!   part goes through, and [`DeviceEvent`]s.
//! - [`auth`]: operator API tokens (hashed, with roles) and the bearer check.
//! - `dashboard`: the web UI at `/` (server-rendered, same calls and route
//!   table as the API).
//! - `clock`, `db`, `keys`, `metrics`: injectable time, SQLite and its
//!   migrations, key files, `/metrics` counters.
//! - `fault`: test-only fault points (cargo feature `sim`, armed by
//!   `DROVER_SIM_FAULT`) that abort the process at a named phase.
//!
//! Durations and label selectors are `drover_protocol::duration` and
//! `drover_protocol::labels`. Modules are `pub(crate)` unless the binary,
//! `drover-sim` or the integration tests need them.

pub mod agent_releases;
pub mod auth;
pub mod cli;
pub(crate) mod clock;
pub mod controller;
pub mod core;
pub(crate) mod csv_table;
pub(crate) mod dashboard;
pub(crate) mod db;
pub(crate) mod fault;
pub mod fleet;
pub mod http;
pub(crate) mod key_rotation;
pub(crate) mod keys;
pub(crate) mod metrics;
pub mod registry;
pub mod retraining;
pub mod rollouts;
pub mod serve;
pub mod telemetry;
pub mod train;

pub use controller::{Controller, ControllerError, DeviceEvent};
