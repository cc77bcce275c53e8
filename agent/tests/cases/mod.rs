//! Test cases, one module per behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod agent_update;
mod binary;
mod cli;
mod deploy;
mod guard;
mod malformed;
mod outage;
mod refusals;
mod resume;
mod rollback_race;
mod self_update;
mod shadow;
mod timers;
