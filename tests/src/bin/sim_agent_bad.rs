//! A "bad" agent release for the update tests: a real executable that
//! exits with a failure at every start, as a broken build would. The boot
//! counter must give up on it and go back to the previous binary.

fn main() -> std::process::ExitCode {
    eprintln!("drover-sim-agent-bad: this build fails at start (update tests)");
    std::process::ExitCode::FAILURE
}
