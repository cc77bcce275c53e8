//! Sans-IO decision cores: pure state machines that take inputs and `now`
//! and return actions. No tokio, SQLite, tract or MQTT in here.
//!
//! - [`deploy`]: one deploy/shadow job from command to activation.
//! - [`guard`]: the local guard that rolls a bad new model back.
//! - [`window`]: telemetry recording and windowing.
//! - [`outbox`]: bounded store-and-forward bookkeeping for windows.

pub mod deploy;
pub mod guard;
pub mod outbox;
pub mod window;
