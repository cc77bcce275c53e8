//! `drover-agent`: see [`drover_agent::cli`].

fn main() -> std::process::ExitCode {
    drover_agent::cli::main()
}
