//! `drover-agent` with the `sim` fault points (the fault matrix spawns it
//! and kills it at a named phase).

fn main() -> std::process::ExitCode {
    drover_agent::cli::main()
}
