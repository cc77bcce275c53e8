//! `drover` with the `sim` fault points (the fault matrix spawns
//! `drover-sim-controller serve ...` and kills it at a named phase).

fn main() -> std::process::ExitCode {
    drover_controller::cli::main()
}
