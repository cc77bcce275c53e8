//! Telemetry: storing what agents send, and reading it back merged.
//!
//! - `ingest`: batched, deduplicated telemetry storage, acks, retention.
//! - [`query`]: merged aggregates over stored windows.
//! - [`rollup`]: per-minute rollups by model, version, role and cohort,
//!   written as windows are stored; fleet-level queries read them.
//! - [`summary`]: `GET /v1/telemetry`'s answer, from rollups or windows.

pub(crate) mod ingest;
pub mod query;
pub mod rollup;
pub mod summary;
