//! `drover-sim`: the Drover fleet simulator.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Simulate a Drover fleet: real agents, a real controller and broker, in
/// one process.
#[derive(Debug, Parser)]
#[command(name = "drover-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The end-to-end demo on the embedded defaults: rollout, drift,
    /// retraining, canary promotion, and a bad version rolled back.
    Demo {
        /// Number of agents.
        #[arg(long, default_value_t = 50)]
        agents: usize,
        /// Leave the fleet running for exploring with the `drover` CLI.
        #[arg(long)]
        keep_running: bool,
    },
    /// Scale and throughput run: connections, memory, telemetry ingest
    /// rate, rollout dispatch time.
    Bench {
        /// Number of agents.
        #[arg(long, default_value_t = 500)]
        agents: usize,
        /// Inference requests per second per agent.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Telemetry window, milliseconds.
        #[arg(long, default_value_t = 5000)]
        window_ms: u64,
        /// Seconds of steady-state measurement.
        #[arg(long, default_value_t = 20)]
        steady_secs: u64,
    },
    /// Emulated devices for scale runs: thousands of MQTT connections per
    /// worker process speaking the real protocol (no tract, no SQLite).
    Load(drover_sim::load::LoadArgs),
    /// One worker process of `load` (started by it).
    #[command(hide = true)]
    LoadWorker(drover_sim::load::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Demo {
                agents,
                keep_running,
            } => drover_sim::demo::run(drover_sim::demo::DemoOptions {
                agents,
                keep_running,
                ..Default::default()
            })
            .await
            .map(|_| ()),
            Command::Bench {
                agents,
                rate,
                window_ms,
                steady_secs,
            } => {
                drover_sim::bench::run(drover_sim::bench::BenchOptions {
                    agents,
                    rate,
                    window_ms,
                    steady: Duration::from_secs(steady_secs),
                })
                .await
            }
            Command::Load(args) => drover_sim::load::run(args).await.map(|_| ()),
            Command::LoadWorker(args) => drover_sim::load::worker::main(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
