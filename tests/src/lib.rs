//! drover-sim: a fleet simulator for Drover.
//!
//! # Layout
//! - [`data`]: synthetic sensor streams with drift on cue; the demo's dataset.
//! - [`net`]: free ports, a restartable Mosquitto, a link-cutting TCP proxy.
//! - [`fleet`]: N real agents in one process with input streams and faults.
//! - [`invariants`]: the checks every fault test runs afterwards.
//! - [`disk`]: a small mounted filesystem for the full-disk fault.
//! - [`procs`]: real `drover-agent` / `drover serve` children for the fault
//!   matrix (killed, or aborted at a named fault point).
//! - [`service`]: an agent run the way its systemd unit runs it (boot check,
//!   `bin/current`, restarted on exit), for the agent update tests.
//! - [`demo`]: the narrated end-to-end demo (`drover-sim demo`).
//! - [`fast`]: the fake-clock tier: sans-IO cores of thousands of devices, in memory.
//! - [`bench`]: the scale run (`drover-sim bench`).
//! - [`load`]: emulated devices (real protocol, no tract or SQLite) in
//!   worker processes, thousands each, for scale runs (`drover-sim load`).
//! - [`chaos`]: the seeded chaos run (random faults, invariants at the end).

pub mod bench;
pub mod chaos;
pub mod data;
pub mod demo;
pub mod disk;
pub mod fast;
pub mod fleet;
pub mod invariants;
pub mod load;
pub mod metrics;
pub mod net;
pub mod procs;
pub mod retrain_step;
pub mod service;
pub mod summary;
