//! The agent's own version, in one place: Hello, the status snapshot and the
//! manifest admission check (`min_agent_version`) all read it.

/// This agent's version (`major.minor.patch`), checked against manifests'
/// `min_agent_version` and reported in Hello.
///
/// A build may override it with the environment variable
/// `DROVER_AGENT_VERSION` at compile time (two builds that differ only in
/// version, for update tests and staged releases).
pub const AGENT_VERSION: &str = match option_env!("DROVER_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
