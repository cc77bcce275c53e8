//! Pure decision code: no tokio, no SQLite, no HTTP, no MQTT, no clock reads
//! (`scripts/check_layout.py` enforces it in CI). Every function takes `now`
//! and data as arguments and returns decisions; the shells in the capability
//! folders ([`crate::rollouts`], [`crate::retraining`], ...) do the I/O.
//!
//! - [`auth`]: operator roles and the route table (who may call what).
//! - [`rollout`]: the staged-rollout state machine.
//! - `drift`: PSI / Jensen-Shannon, drift reports, the `DriftPolicy`.
//! - `retraining`: the retraining scheduler, job, capture and dataset cores.
//! - [`uplink`]: device uplink counters, clock offsets, rate limits.

pub mod auth;
pub(crate) mod drift;
pub(crate) mod retraining;
pub mod rollout;
pub mod uplink;
