//! drover-agent: the Drover device agent. It receives signed models over
//! MQTT, verifies and runs them with tract, serves local applications over
//! loopback HTTP (or in-process through [`Agent`]), guards new models, and
//! streams telemetry back through a SQLite outbox.
//!
//! # Layout
//! - [`core`]: sans-IO state machines: [`core::deploy`] (one deploy/shadow
//!   job), [`core::guard`] (local rollback), [`core::window`] (telemetry
//!   recording and windowing), [`core::outbox`] (store-and-forward).
//! - [`agent`]: the [`Agent`] handle (start, infer, feedback, status, shutdown).
//! - `driver`: the task that owns the cores and carries out their actions.
//! - `link`: the MQTT connection (rumqttc).
//! - [`store`]: SQLite and the data directory layout.
//! - [`runtime`]: tract models and the atomically swapped serving slots.
//! - `shadow`: the shadow candidate's queue and worker.
//! - `api`: the loopback HTTP API (axum).
//! - [`config`]: the TOML config and its env overrides.
//! - [`cli`], [`install`]: the `drover-agent` command line and systemd install.
//! - [`infer`], [`status`], [`clock`]: request/response, status and time types.

pub mod agent;
pub(crate) mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub(crate) mod driver;
pub mod infer;
pub mod install;
pub(crate) mod link;
pub(crate) mod metrics;
pub mod model;
pub mod runtime;
pub(crate) mod shadow;
pub(crate) mod shared;
pub mod status;
pub mod store;
pub mod version;

pub use agent::{Agent, AgentError};
pub use config::AgentConfig;
pub use infer::{
    FeedbackError, FeedbackLabel, InferError, InferRequest, InferResponse, OutputTensor,
};
pub use status::AgentStatus;
pub use version::AGENT_VERSION;
