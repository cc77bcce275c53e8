//! drover-agent: the Drover device agent. It receives signed models over
//! MQTT, verifies and runs them with tract, serves local applications over
//! loopback HTTP (or in-process through [`Agent`]), guards new models, and
//! streams telemetry back through a SQLite outbox.
//!
//! # Layout
//! - [`core`]: sans-IO state machines, each taking `now`: [`core::deploy`]
//!   (one deploy/shadow job), [`core::slots`] (which job a command starts:
//!   already active, shadow of active, promotion, supersede, disk budget),
//!   [`core::guard`] (local rollback), [`core::window`] (telemetry recording
//!   and windowing), [`core::outbox`] (store-and-forward).
//! - [`agent`]: the [`Agent`] handle (start, infer, feedback, status,
//!   `changed`, shutdown).
//! - `shared`: what the handle, the driver and the HTTP API share (config,
//!   serving slots, counters, status).
//! - `driver`: the task that owns the cores and carries out their actions,
//!   split by concern: `mod.rs` (state, loop, timers, Hello/status),
//!   `commands` (payloads and signed commands), `jobs` (deploy and shadow
//!   jobs, activation, rollback, disk hygiene), `telemetry` (windows, guard,
//!   outbox), `files` (blocking file helpers).
//! - `link`: the MQTT connection (rumqttc); `tls`: its rustls config
//!   (pinned CA, optional client certificate).
//! - [`store`]: SQLite and the data directory layout.
//! - [`model`]: a model loaded by tract (plan, health checks, predictions).
//! - [`runtime`]: the atomically swapped serving slots and the inference hot
//!   path.
//! - `shadow`: the shadow candidate's queue and worker.
//! - `api`: the loopback HTTP API (axum).
//! - [`config`]: the TOML config and its env overrides.
//! - [`cli`], [`install`]: the `drover-agent` command line and systemd install.
//! - [`self_update`]: `<data_dir>/bin/` (staged agent binaries, the `current`
//!   link, the boot record) and the boot check `run` does first.
//! - [`infer`]: requests, responses, feedback labels and their errors.
//! - [`input_limit`]: how large a request may be, from the model's inputs.
//! - [`status`], [`clock`], [`version`]: status snapshot, time (tokio's clock,
//!   so paused-time tests drive the timers), the agent's version.
//!
//! Imports point one way (`a` ← `b`: `b` imports `a`; no file imports one
//! that imports it back, `scripts/check_layout.py` checks): `core` imports
//! nothing of the shell; `infer` ← `model` ← `shadow` ← `runtime`;
//! `shared` ← `api`, `driver` ← `agent`.
//!
//! Cargo feature `sim`: `Agent::set_simulated_extra_latency` for the fleet
//! simulator's "slow device" fault, and the `fault` points that abort the
//! process at a named phase when `DROVER_SIM_FAULT` asks (the fault matrix);
//! device builds leave it off.

pub mod agent;
pub(crate) mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub(crate) mod driver;
pub(crate) mod fault;
pub(crate) mod http_serve;
pub mod infer;
pub mod input_limit;
pub mod install;
pub(crate) mod link;
pub(crate) mod metrics;
pub mod model;
pub mod runtime;
pub mod self_update;
pub(crate) mod shadow;
pub(crate) mod shared;
pub mod status;
pub mod store;
pub(crate) mod tls;
pub mod version;

pub use agent::{Agent, AgentError};
pub use config::AgentConfig;
pub use infer::{
    FeedbackError, FeedbackLabel, InferError, InferRequest, InferResponse, OutputTensor,
};
pub use status::AgentStatus;
pub use version::AGENT_VERSION;
