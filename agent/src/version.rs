//! The agent's own version, in one place: Hello, the status snapshot and the
//! manifest admission check (`min_agent_version`) all read it.

/// This agent's version (`major.minor.patch`), checked against manifests'
/// `min_agent_version` and reported in Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
