//! `drover-sim-agent` built as the next version (0.1.1): the same source
//! and fault points, a second binary that differs only in the version it
//! runs as (Hello, boot check, version floor). The agent update tests push
//! it as a release and roll it out.

fn main() -> std::process::ExitCode {
    drover_agent::cli::main_as(drover_sim::service::NEXT_AGENT_VERSION)
}
