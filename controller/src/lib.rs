//! drover-controller: the central service (`drover serve`) and the operator
//! CLI (`drover`).
//!
//! # Layout
//! - [`serve`]: [`serve::ServeConfig`] → [`serve::start`] → a running
//!   controller (phased startup, graceful drain). `main` calls the same.
//! - [`controller`]: the cheap-to-clone [`Controller`] handle every other
//!   part (HTTP, MQTT link, rollouts, drift, simulator) goes through, and
//!   [`DeviceEvent`]s.
//! - [`clock`]: injectable wall-clock time.
//! - [`db`]: SQLite (WAL) and the ordered [`db::MIGRATIONS`] list other
//!   modules append to.
//! - [`keys`]: root/models/commands key files, rotation, key lists.
//! - [`registry`]: ONNX inspection (tract), reference profiles, signed
//!   manifests, content-addressed artifacts.
//! - [`devices`]: inventory rows, selectors, credentials, agent bundles,
//!   Mosquitto password/ACL files.
//! - [`commands`]: signed commands with per-device sequences, deploys, and
//!   the handlers for Hello/status/Ack/DeployStatus.
//! - [`link`]: the MQTT client (rumqttc) and the inbound dispatcher.
//! - [`broker`]: the embedded rumqttd broker and `--broker` parsing.
//! - [`ingest`]: batched, deduplicated telemetry storage, acks, retention.
//! - [`telemetry_query`]: merged aggregates over stored windows.
//! - [`artifacts`]: the rate-capped, fair chunk server.
//! - [`metrics`]: counters behind `/metrics`.
//! - [`http`]: the axum API ([`http::router`]).
//! - [`auth`]: operator API tokens (hashed, with roles) and the bearer check.
//! - [`cli`]: the `drover` command line (clap), a client of the HTTP API.
//! - [`drift`], [`train`], [`rollout`]: owned by their modules.

pub mod auth;
pub mod cli;
pub(crate) mod clock;
pub mod controller;
pub mod core;
pub(crate) mod db;
pub mod fleet;
pub mod http;
pub(crate) mod keys;
pub(crate) mod metrics;
pub mod registry;
pub mod retraining;
pub mod rollouts;
pub mod serve;
pub mod telemetry;
pub mod train;

pub use controller::{Controller, ControllerError, DeviceEvent};
