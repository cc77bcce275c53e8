//! The `drover-agent` command line: `init` (write a validated config),
//! `run`, `install` (systemd unit), `status` (ask a running agent).
//! Bad input exits with code 64 (EX_USAGE) and a clear message.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use drover_protocol::{DeviceId, FleetId, PublicKey};

use crate::Agent;
use crate::config::{AgentConfig, parse_labels};

/// Exit code for bad input (sysexits EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit code for everything else that fails.
pub const EX_FAILURE: u8 = 1;

/// A failed command and the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub exit_code: u8,
    /// What went wrong, with context.
    pub error: anyhow::Error,
}

impl CliError {
    fn usage(e: impl Into<anyhow::Error>) -> CliError {
        CliError {
            exit_code: EX_USAGE,
            error: e.into(),
        }
    }

    fn failure(e: impl Into<anyhow::Error>) -> CliError {
        CliError {
            exit_code: EX_FAILURE,
            error: e.into(),
        }
    }
}

/// `drover-agent`: the Drover device agent.
#[derive(Debug, Parser)]
#[command(name = "drover-agent", version, about = "Drover device agent")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a validated, commented config file.
    Init(Box<InitArgs>),
    /// Run the agent until SIGTERM or SIGINT.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// `boot-check` already counted this start (the unit runs it as
        /// ExecStartPre); only the confirmation deadline is kept.
        #[arg(long)]
        boot_checked: bool,
    },
    /// Count the coming start of a new agent binary, or switch
    /// `<data_dir>/bin/current` back to the previous one after too many
    /// (the unit's ExecStartPre, run by the packaged binary).
    BootCheck {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the systemd unit, the data directory and /etc/drover/agent.toml.
    Install {
        /// The config file to install.
        #[arg(long)]
        config: PathBuf,
        /// Install under this root instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The agent binary the unit runs.
        #[arg(long, default_value = "/usr/bin/drover-agent")]
        exec: PathBuf,
    },
    /// Print a running agent's status (GET /v1/status).
    Status {
        /// Read the API address from this config.
        #[arg(long, conflicts_with = "api")]
        config: Option<PathBuf>,
        /// The API address (default 127.0.0.1:7070).
        #[arg(long)]
        api: Option<SocketAddr>,
    },
}

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// This device's id ([a-z0-9_-]).
    #[arg(long)]
    pub device_id: String,
    /// Fleet name.
    #[arg(long)]
    pub fleet: String,
    /// MQTT broker, mqtt://HOST:PORT.
    #[arg(long)]
    pub broker: String,
    /// Root public key: 64 hex characters, or a file holding them.
    #[arg(long)]
    pub root_key: String,
    /// MQTT username.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password.
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Labels, k=v,k2=v2.
    #[arg(long)]
    pub labels: Option<String>,
    /// Hardware class label.
    #[arg(long)]
    pub hardware: Option<String>,
    /// Data directory.
    #[arg(long, default_value = "/var/lib/drover-agent")]
    pub data_dir: PathBuf,
    /// Loopback address of the inference API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Where to write the config.
    #[arg(long)]
    pub out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Parses the root key argument: hex, or a file holding hex.
pub fn parse_root_key(arg: &str) -> anyhow::Result<PublicKey> {
    if let Ok(k) = PublicKey::from_hex(arg) {
        return Ok(k);
    }
    let looks_hex = arg.len() == 64 && arg.chars().all(|c| c.is_ascii_hexdigit());
    if looks_hex {
        anyhow::bail!("--root-key {arg} is not a valid ed25519 public key");
    }
    let text = std::fs::read_to_string(arg).with_context(|| {
        format!("--root-key {arg:?} is neither 64 hex characters nor a readable file")
    })?;
    PublicKey::from_hex(text.trim())
        .map_err(|_| anyhow::anyhow!("{arg}: does not hold a 64-hex-character ed25519 public key"))
}

/// Builds and validates the config `init` writes.
pub fn init_config(a: &InitArgs) -> anyhow::Result<AgentConfig> {
    let device = DeviceId::new(&a.device_id).context("--device-id")?;
    let fleet = FleetId::new(&a.fleet).context("--fleet")?;
    let root = parse_root_key(&a.root_key)?;
    let mut c = AgentConfig::new(device, fleet, a.broker.clone(), root, a.data_dir.clone());
    c.username = a.username.clone();
    c.password = a.password.clone();
    if let Some(l) = &a.labels {
        c.labels = parse_labels(l).context("--labels")?;
    }
    if let Some(h) = &a.hardware {
        c.hardware = h.clone();
    }
    c.api = Some(a.api);
    c.validate()?;
    Ok(c)
}

fn write_private(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        format!(
            "writing {} (use --force to overwrite an existing file)",
            path.display()
        )
    })?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The whole `drover-agent` process: parse the arguments, set up logging
/// for `run`, start the runtime, dispatch, map errors to exit codes. The
/// binary and the simulator's fault-point build (`drover-sim-agent`) share it.
pub fn main() -> std::process::ExitCode {
    main_as(crate::version::AGENT_VERSION)
}

/// [`main`] for a binary that runs as `version` (`major.minor.patch`)
/// instead of this build's [`crate::version::AGENT_VERSION`]: the
/// simulator's second agent build, which update tests roll out.
pub fn main_as(version: &'static str) -> std::process::ExitCode {
    use std::process::ExitCode;
    crate::version::set_running(version);
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
    match rt.block_on(dispatch(cli, &env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.error);
            ExitCode::from(e.exit_code)
        }
    }
}

/// Runs a parsed command. `env` looks up `DROVER_AGENT_*` overrides for `run`.
pub async fn dispatch(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    match cli.command {
        Command::Init(a) => {
            let c = init_config(&a).map_err(CliError::usage)?;
            let text = c.to_commented_toml().map_err(CliError::usage)?;
            write_private(&a.out, &text, a.force).map_err(CliError::failure)?;
            println!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Run {
            config,
            boot_checked,
        } => run(&config, boot_checked, env).await,
        Command::BootCheck { config } => {
            let cfg = AgentConfig::load(&config)
                .and_then(|c| c.apply_env(env))
                .map_err(CliError::usage)?;
            let exe = std::env::current_exe()
                .context("locating the running binary")
                .map_err(CliError::failure)?;
            crate::self_update::pre_start_check(
                &crate::self_update::BinDir::new(&cfg.data_dir),
                crate::core::self_update::BootConfig::default(),
                running_version()?,
                &exe,
            )
            .context("agent boot check")
            .map_err(CliError::failure)
        }
        Command::Install { config, root, exec } => {
            let i = crate::install::install(&config, &root, &exec).map_err(|e| match e {
                crate::install::InstallError::Config(_) => CliError::usage(e),
                crate::install::InstallError::Io { .. } => CliError::failure(e),
            })?;
            println!("unit:     {}", i.unit.display());
            println!("config:   {}", i.config.display());
            println!("data dir: {}", i.data_dir.display());
            println!(
                "next: useradd --system drover; chown -R drover: {}; systemctl enable --now drover-agent",
                i.data_dir.display()
            );
            Ok(())
        }
        Command::Status { config, api } => {
            let addr = match (config, api) {
                (_, Some(a)) => a,
                (Some(c), None) => AgentConfig::load(&c)
                    .map_err(CliError::usage)?
                    .api
                    .ok_or_else(|| {
                        CliError::usage(anyhow::anyhow!("{} configures no api", c.display()))
                    })?,
                (None, None) => SocketAddr::from(([127, 0, 0, 1], 7070)),
            };
            let body = http_get(addr, "/v1/status")
                .await
                .map_err(CliError::failure)?;
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(body);
            println!("{pretty}");
            Ok(())
        }
    }
}

async fn run(
    config: &Path,
    boot_checked: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CliError> {
    let cfg = AgentConfig::load(config)
        .and_then(|c| c.apply_env(env))
        .map_err(|e| {
            CliError::usage(anyhow::Error::new(e).context(format!("config {}", config.display())))
        })?;
    // Before anything that could crash: count this start of a new binary
    // (or fall back to the previous one), see `crate::self_update`.
    let bin = crate::self_update::BinDir::new(&cfg.data_dir);
    let clock = crate::clock::Clock::new();
    let boot = boot_check(&bin, &clock, boot_checked, env)?;
    let agent = Agent::start(cfg).await.map_err(|e| match e {
        crate::AgentError::Config(_) => CliError::usage(e),
        _ => CliError::failure(e),
    })?;
    if let Some(a) = agent.api_addr() {
        tracing::info!(api = %a, "agent running");
    }
    let restart = || CliError {
        exit_code: crate::self_update::EX_RESTART,
        error: anyhow::anyhow!("a new agent binary is staged; restarting into it"),
    };
    if let Some((machine, by)) = boot {
        let confirmed = tokio::select! {
            c = confirm_update(&agent, &bin, machine, by, &clock) => c,
            () = agent.restart_requested() => {
                let _ = agent.shutdown().await;
                return Err(restart());
            }
            r = wait_for_signal() => {
                r.map_err(CliError::failure)?;
                tracing::info!("shutting down");
                return agent.shutdown().await.map_err(CliError::failure);
            }
        };
        if !confirmed {
            let _ = agent.shutdown().await;
            return Err(CliError {
                exit_code: crate::self_update::EX_RESTART,
                error: anyhow::anyhow!(
                    "the new agent binary did not reach the broker in time; restarting into the previous one"
                ),
            });
        }
    }
    tokio::select! {
        r = wait_for_signal() => r.map_err(CliError::failure)?,
        () = agent.restart_requested() => {
            let _ = agent.shutdown().await;
            return Err(restart());
        }
    }
    tracing::info!("shutting down");
    agent.shutdown().await.map_err(CliError::failure)
}

/// The boot check; `Some` when this start is a trial that must confirm.
fn running_version() -> Result<drover_protocol::manifest::AgentVersion, CliError> {
    drover_protocol::manifest::AgentVersion::parse(crate::version::agent_version()).ok_or_else(
        || {
            CliError::failure(anyhow::anyhow!(
                "this build's version {:?} is not major.minor.patch",
                crate::version::agent_version()
            ))
        },
    )
}

fn boot_check(
    bin: &crate::self_update::BinDir,
    clock: &crate::clock::Clock,
    counted: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(crate::core::self_update::SelfUpdate, u64)>, CliError> {
    use crate::self_update::Boot;
    let mut boot_cfg = crate::core::self_update::BootConfig::default();
    if let Some(ms) = env("DROVER_AGENT_UPDATE_CONFIRM_MS") {
        boot_cfg.confirm_within_ms = ms.trim().parse().map_err(|_| {
            CliError::usage(anyhow::anyhow!(
                "DROVER_AGENT_UPDATE_CONFIRM_MS={ms:?} is not a number of milliseconds"
            ))
        })?;
    }
    let running = running_version()?;
    let exe = std::env::current_exe()
        .context("locating the running binary")
        .map_err(CliError::failure)?;
    let boot = crate::self_update::boot_check(bin, boot_cfg, running, &exe, clock.now().0, counted)
        .context("agent boot check")
        .map_err(CliError::failure)?;
    match boot {
        Boot::Run {
            machine,
            confirm_by: Some(by),
        } => Ok(Some((*machine, by))),
        Boot::Run { .. } => Ok(None),
        Boot::Restart => Err(CliError {
            exit_code: crate::self_update::EX_RESTART,
            error: anyhow::anyhow!(
                "the new agent binary failed to start too often; restarting into the previous one"
            ),
        }),
    }
}

/// Waits until the link is up (confirming a trial binary: it becomes the
/// good one) or the deadline passes (falling back). True if confirmed.
async fn confirm_update(
    agent: &Agent,
    bin: &crate::self_update::BinDir,
    mut machine: crate::core::self_update::SelfUpdate,
    by: u64,
    clock: &crate::clock::Clock,
) -> bool {
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(by.saturating_sub(clock.now().0));
    loop {
        let changed = agent.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if agent.status().link.connected {
            let running = machine.record().trial.as_ref().map(|t| t.slot.version);
            let actions = running
                .map(|v| machine.handle_confirmed(v))
                .unwrap_or_default();
            if let Err(e) = bin.apply(machine.record(), &actions) {
                tracing::error!(error = %e, "cannot record the confirmed agent binary");
            }
            tracing::info!(
                version = crate::version::agent_version(),
                "new agent binary confirmed"
            );
            return true;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            let actions = machine.handle_timeout(clock.now().0).unwrap_or_default();
            if let Err(e) = bin.apply(machine.record(), &actions) {
                tracing::error!(error = %e, "cannot switch back to the previous agent binary");
            }
            return false;
        }
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

/// A minimal HTTP/1.1 GET against the loopback API.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
    .with_context(|| format!("connecting to the agent at {addr}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("reading from {addr} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response from {addr}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        anyhow::bail!("{addr}{path}: {status}: {body}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::Sign as _;
    use drover_protocol::testkit::TestKeys;

    fn args(dir: &Path) -> Vec<String> {
        let key = TestKeys::new(1).root.public_key().to_hex();
        [
            "drover-agent",
            "init",
            "--device-id",
            "dev-1",
            "--fleet",
            "prod",
            "--broker",
            "mqtt://127.0.0.1:1883",
            "--root-key",
            &key,
            "--labels",
            "site=a,region=eu",
            "--username",
            "dev-1",
            "--password",
            "pw",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.join("agent.toml").display().to_string()])
        .collect()
    }

    #[tokio::test]
    async fn init_writes_a_config_that_loads_and_refuses_bad_input_with_64() {
        let dir = tempfile::tempdir().unwrap();
        let cli = Cli::try_parse_from(args(dir.path())).unwrap();
        dispatch(cli, &|_| None).await.unwrap();
        let c = AgentConfig::load(&dir.path().join("agent.toml")).unwrap();
        assert_eq!(c.device_id.as_str(), "dev-1");
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.api, Some("127.0.0.1:7070".parse().unwrap()));
        // Refuses to overwrite.
        let cli = Cli::try_parse_from(args(dir.path())).unwrap();
        assert_eq!(
            dispatch(cli, &|_| None).await.unwrap_err().exit_code,
            EX_FAILURE
        );

        for (flag, bad) in [
            ("--device-id", "Dev 1"),
            ("--broker", "http://x"),
            ("--root-key", "/nonexistent/key"),
            ("--labels", "novalue"),
        ] {
            let mut a = args(dir.path());
            let i = a.iter().position(|s| s == flag).unwrap();
            a[i + 1] = bad.to_string();
            let last = a.len() - 1;
            a[last] = dir.path().join("other.toml").display().to_string();
            let cli = Cli::try_parse_from(a).unwrap();
            let e = dispatch(cli, &|_| None).await.unwrap_err();
            assert_eq!(e.exit_code, EX_USAGE, "{flag} {bad}: {:#}", e.error);
        }
    }

    #[test]
    fn root_key_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let k = TestKeys::new(3).root.public_key();
        let p = dir.path().join("root.pub");
        std::fs::write(&p, format!("{}\n", k.to_hex())).unwrap();
        assert_eq!(parse_root_key(p.to_str().unwrap()).unwrap(), k);
        assert_eq!(parse_root_key(&k.to_hex()).unwrap(), k);
    }
}
