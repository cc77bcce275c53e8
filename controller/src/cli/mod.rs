//! The `drover` command line: `serve` runs the controller; every other
//! subcommand is a client of its HTTP API (like kubectl).
//!
//! # Adding a subcommand (rollout, drift, retrain, train)
//! Put its clap `Args`/`Subcommand` type and an
//! `async fn run(args, ctx: &Ctx) -> anyhow::Result<()>` in a new
//! `cli/cmd_NAME.rs`, add a variant to [`Command`] and one arm to
//! [`dispatch`]. Use [`Ctx::client`] for the API and `output` for
//! table/JSON printing (respect [`Ctx::output`]).

pub(crate) mod client;
pub(crate) mod cmd_agent;
pub(crate) mod cmd_deploy;
pub(crate) mod cmd_device;
pub(crate) mod cmd_drift;
pub(crate) mod cmd_keys;
pub(crate) mod cmd_misc;
pub(crate) mod cmd_model;
pub(crate) mod cmd_retrain;
pub(crate) mod cmd_rollout;
pub(crate) mod cmd_serve;
pub(crate) mod cmd_token;
pub(crate) mod cmd_train;
pub(crate) mod output;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

pub use client::ApiClient;
pub use output::Output;

/// `drover`: deploy signed ONNX models to edge devices over MQTT.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, propagate_version = true)]
pub struct Cli {
    /// Controller API URL.
    #[arg(
        long,
        global = true,
        env = "DROVER_CONTROLLER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub controller: String,
    /// CA certificate(s), PEM, that the controller's HTTPS certificate must
    /// chain to.
    #[arg(long, global = true, env = "DROVER_CA")]
    pub ca: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (embedded broker, HTTP API, MQTT link).
    Serve(Box<cmd_serve::ServeArgs>),
    /// Signing keys.
    #[command(subcommand)]
    Keys(cmd_keys::KeysCmd),
    /// Model registry.
    #[command(subcommand)]
    Model(cmd_model::ModelCmd),
    /// Agent releases (the agent binary, for updates over the air).
    #[command(subcommand)]
    Agent(cmd_agent::AgentCmd),
    /// Register devices.
    #[command(subcommand)]
    Device(cmd_device::DeviceCmd),
    /// List devices.
    Devices(cmd_device::DevicesArgs),
    /// Broker configuration.
    #[command(subcommand)]
    Broker(cmd_misc::BrokerCmd),
    /// Deploy a model version to one device and wait for the result.
    Deploy(cmd_deploy::DeployArgs),
    /// Staged rollouts over a label selector.
    #[command(subcommand)]
    Rollout(crate::cli::cmd_rollout::RolloutCmd),
    /// Drift of the fleet's inputs and outputs against the reference profile.
    Drift(crate::cli::cmd_drift::DriftArgs),
    /// Retraining jobs.
    #[command(subcommand)]
    Retrain(crate::cli::cmd_retrain::RetrainCmd),
    /// Train a model with the reference trainer (runs locally, no Python).
    Train(crate::cli::cmd_train::TrainArgs),
    /// Merged telemetry.
    Telemetry(cmd_misc::TelemetryArgs),
    /// API tokens (admin): create, list, revoke.
    #[command(subcommand)]
    Token(cmd_token::TokenCmd),
    /// Save an API token for later commands (DROVER_TOKEN overrides it).
    Login(cmd_token::LoginArgs),
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// What every client subcommand gets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// API client.
    pub client: ApiClient,
    /// Output format.
    pub output: Output,
    /// The `--ca` PEM bytes, if given.
    pub ca: Option<Vec<u8>>,
}

/// Runs a parsed client command.
pub async fn dispatch(command: Command, ctx: &Ctx) -> anyhow::Result<()> {
    match command {
        Command::Keys(c) => cmd_keys::run(c, ctx).await,
        Command::Model(c) => cmd_model::run(c, ctx).await,
        Command::Agent(c) => cmd_agent::run(c, ctx).await,
        Command::Device(c) => cmd_device::run(c, ctx).await,
        Command::Devices(a) => cmd_device::list(a, ctx).await,
        Command::Broker(c) => cmd_misc::broker(c, ctx).await,
        Command::Deploy(a) => cmd_deploy::run(a, ctx).await,
        Command::Rollout(c) => crate::cli::cmd_rollout::run(c, ctx).await,
        Command::Drift(a) => crate::cli::cmd_drift::run_drift(a, &ctx.client, ctx.output).await,
        Command::Retrain(c) => {
            crate::cli::cmd_retrain::run_retrain(c, &ctx.client, ctx.output).await
        }
        Command::Train(a) => crate::cli::cmd_train::run_train(a, &ctx.client, ctx.output).await,
        Command::Telemetry(a) => cmd_misc::telemetry(a, ctx).await,
        Command::Token(c) => cmd_token::run(c, ctx).await,
        Command::Login(a) => cmd_token::login(a, ctx, ctx.ca.as_deref()).await,
        Command::Serve(_) | Command::Completions { .. } => Ok(()),
    }
}

/// The `drover` binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => cmd_serve::main(*args),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "drover", &mut script);
            output::emit_bytes(&script);
            ExitCode::SUCCESS
        }
        command => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
                )
                .with_writer(std::io::stderr)
                .try_init();
            let result = (|| -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let ca = match &cli.ca {
                    Some(p) => Some(
                        std::fs::read(p)
                            .map_err(|e| anyhow::anyhow!("--ca {}: {e}", p.display()))?,
                    ),
                    None => None,
                };
                let ctx = Ctx {
                    client: ApiClient::with_auth(
                        &cli.controller,
                        cmd_token::resolve_token(),
                        ca.as_deref(),
                    )?,
                    output: cli.output,
                    ca,
                };
                rt.block_on(dispatch(command, &ctx))
            })();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
