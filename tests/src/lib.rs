//! drover-sim: a fleet simulator for Drover.
//!
//! # Layout
//! - [`data`]: synthetic sensor streams with drift on cue; the demo's dataset.
//! - [`net`]: free ports, a restartable Mosquitto, a link-cutting TCP proxy.

pub mod data;
pub mod net;
