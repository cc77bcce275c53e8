//! `drover-agent` with the `sim` fault points (the fault matrix spawns it);
//! the same code as the agent crate's `main.rs`.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use clap::Parser as _;
use drover_agent::cli::{self, Cli, Command, EX_FAILURE, EX_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if matches!(cli.command, Command::Run { .. }) {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .init();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EX_FAILURE);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    match rt.block_on(cli::dispatch(cli, &env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.exit_code)
        }
    }
}
