//! The `drover` binary: see [`drover_controller::cli`].

fn main() -> std::process::ExitCode {
    drover_controller::cli::main()
}
