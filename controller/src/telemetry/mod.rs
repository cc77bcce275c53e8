//! Telemetry: storing what agents send, and reading it back merged.
//!
//! - [`ingest`]: batched, deduplicated telemetry storage, acks, retention.
//! - [`query`]: merged aggregates over stored windows.

pub(crate) mod ingest;
pub mod query;
