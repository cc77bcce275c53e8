//! The agent's own version, in one place: Hello, the status snapshot, the
//! boot check and the manifest admission check (`min_agent_version`) all
//! read [`agent_version`].

use std::sync::OnceLock;

/// This build's version (`major.minor.patch`).
///
/// A build may override it with the environment variable
/// `DROVER_AGENT_VERSION` at compile time (two builds that differ only in
/// version, for update tests and staged releases).
pub const AGENT_VERSION: &str = match option_env!("DROVER_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

static RUNNING: OnceLock<&'static str> = OnceLock::new();

/// The version this process runs as: [`AGENT_VERSION`], unless the binary's
/// `main` named another with [`crate::cli::main_as`] (a second binary target
/// built from the same source under another version, as the simulator's
/// update tests use).
pub fn agent_version() -> &'static str {
    RUNNING.get().copied().unwrap_or(AGENT_VERSION)
}

/// Sets the version for this process; only the first call counts (a
/// binary's `main`, before anything reads it).
pub(crate) fn set_running(version: &'static str) {
    let _ = RUNNING.set(version);
}
