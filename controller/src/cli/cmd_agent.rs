//! `drover agent push|list`: agent releases in the registry.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;

use super::{Ctx, Output, output};
use crate::agent_releases::{AgentReleaseView, check_binary, parse_target};
use crate::http::agents::{AgentPushBody, AgentUpdateBody, AgentUpdateSent};

/// `drover agent` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AgentCmd {
    /// Store an agent binary as a release signed with the agents key. The
    /// binary's ELF header must name the same arch as --arch.
    // `--version` here is the release's version, not drover's own.
    #[command(disable_version_flag = true)]
    Push {
        /// The `drover-agent` executable.
        binary: PathBuf,
        /// `x86_64`, `aarch64` or `armv7`.
        #[arg(long)]
        arch: String,
        /// The `major.minor.patch` version the binary reports.
        #[arg(long)]
        version: String,
    },
    /// List agent releases, newest first.
    List,
    /// Send one device an update to a release (the build for its arch).
    // `--version` here is the release's version, not drover's own.
    #[command(disable_version_flag = true)]
    Update {
        /// The device.
        #[arg(long)]
        device: String,
        /// The release version.
        #[arg(long)]
        version: String,
        /// An explicit rollback below the device's agent version floor.
        #[arg(long)]
        rollback: bool,
    },
}

/// Runs an agent subcommand.
pub(crate) async fn run(cmd: AgentCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Push {
            binary,
            arch,
            version,
        } => {
            let (v, a) = parse_target(&version, &arch)?;
            let bytes =
                std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
            // Checked here too so a wrong file fails before the upload.
            check_binary(&bytes, a).with_context(|| binary.display().to_string())?;
            let body = AgentPushBody {
                version: v.to_string(),
                arch: a.to_string(),
                binary_base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
            };
            let view: AgentReleaseView = ctx.client.post("agent push", "/v1/agents", &body).await?;
            if ctx.output == Output::Json {
                return output::json(&view);
            }
            let what = if view.created {
                "pushed"
            } else {
                "already stored"
            };
            output::line(&format!(
                "{what} agent {} for {} ({} bytes, sha256 {}, signed by agents key {})",
                view.version, view.arch, view.size, view.sha256, view.key_id
            ));
            Ok(())
        }
        AgentCmd::Update {
            device,
            version,
            rollback,
        } => {
            let body = AgentUpdateBody {
                device,
                version,
                rollback,
            };
            let sent: AgentUpdateSent = ctx
                .client
                .post("agent update", "/v1/agents/update", &body)
                .await?;
            if ctx.output == Output::Json {
                return output::json(&sent);
            }
            output::line(&format!(
                "sent agent {} to {} (command {})",
                body.version, sent.device, sent.seq
            ));
            Ok(())
        }
        AgentCmd::List => {
            let list: Vec<AgentReleaseView> =
                ctx.client.get("agent list", "/v1/agents", &[]).await?;
            if ctx.output == Output::Json {
                return output::json(&list);
            }
            let now = output::now_ms();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        r.version.clone(),
                        r.arch.clone(),
                        r.size.to_string(),
                        r.sha256.chars().take(12).collect(),
                        output::age(Some(r.created_at), now),
                    ]
                })
                .collect();
            output::table(&["VERSION", "ARCH", "SIZE", "SHA256", "PUSHED"], &rows);
            Ok(())
        }
    }
}
