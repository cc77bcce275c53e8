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
pub mod runtime;
pub(crate) mod shadow;
pub mod status;
pub mod store;

pub use agent::{Agent, AgentError, FeedbackError, FeedbackLabel};
pub use config::AgentConfig;
pub use infer::{InferError, InferRequest, InferResponse, OutputTensor};
pub use status::AgentStatus;

/// This agent's version (`major.minor.patch`), checked against manifests'
/// `min_agent_version` and reported in Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
