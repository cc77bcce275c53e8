//! Sans-IO decision cores: pure state machines that take inputs and `now`
//! and return actions. No tokio, SQLite, tract or MQTT in here.
//!
//! - [`deploy`]: one deploy/shadow job from command to activation.
//! - [`guard`]: the local guard that rolls a bad new model back.
//! - [`window`]: telemetry recording and windowing.
//! - [`outbox`]: bounded store-and-forward bookkeeping for windows.
//! - [`self_update`]: admitting an agent release, and the boot counter that
//!   falls back to the previous agent binary.
//! - [`slots`]: which job a Deploy or Shadow command starts, and what happens
//!   to the downloads already running (promotion, supersede, disk budget).

pub mod deploy;
pub mod guard;
pub mod outbox;
pub mod self_update;
pub mod slots;
pub mod window;
