//! drover-sim: a fleet simulator for Drover.
//!
//! # Layout
//! - [`data`]: synthetic sensor streams with drift on cue; the demo's dataset.

pub mod data;
