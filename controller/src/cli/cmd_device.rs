//! `drover device add` and `drover devices`.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{Ctx, Output, output};
use crate::fleet::devices::{DeviceBundle, DeviceInfo};

/// `drover device` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeviceCmd {
    /// Register a device and write its agent config bundle.
    Add {
        /// Device id ([a-z0-9_-]).
        id: String,
        /// Labels, k=v,...
        #[arg(long)]
        labels: Option<String>,
        /// Directory for agent.toml (and ca.pem, client.pem, client.key).
        #[arg(long)]
        out: PathBuf,
        /// Also issue a client certificate (CN = device id) from the fleet
        /// CA, for brokers that require one (Mosquitto `require_certificate`
        /// + `use_identity_as_username`, EMQX `peer_cert_as_username`).
        #[arg(long)]
        client_cert: bool,
    },
    /// Replace a registered device's labels (what selectors and rollouts
    /// match; a device's own Hello never changes them).
    Label {
        /// Device id.
        id: String,
        /// Labels, k=v,... (empty string: no labels).
        labels: String,
    },
}

/// `drover devices` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DevicesArgs {
    /// Label selector, k=v,...
    #[arg(long)]
    pub selector: Option<String>,
    /// List device ids seen on the broker that were never registered
    /// (their messages are refused; they are never selected).
    #[arg(long, conflicts_with = "selector")]
    pub unregistered: bool,
}

/// Runs a device subcommand.
pub(crate) async fn run(cmd: DeviceCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        DeviceCmd::Label { id, labels } => {
            let d: DeviceInfo = ctx
                .client
                .put(
                    "device label",
                    &format!("/v1/devices/{id}/labels"),
                    &serde_json::json!({ "labels": labels }),
                )
                .await?;
            if ctx.output == Output::Json {
                return output::json(&d);
            }
            output::line(&format!(
                "{}: {}",
                d.id,
                d.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            Ok(())
        }
        DeviceCmd::Add {
            id,
            labels,
            out,
            client_cert,
        } => {
            let bundle: DeviceBundle = ctx
                .client
                .post(
                    "device add",
                    "/v1/devices",
                    &serde_json::json!({ "id": id, "labels": labels, "client_cert": client_cert }),
                )
                .await?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let path = out.join("agent.toml");
            write_private(&path, &bundle.agent_toml)?;
            for (name, text) in bundle.tls.files() {
                write_private(&out.join(name), text)?;
            }
            std::fs::write(
                out.join("README"),
                format!(
                    "Agent bundle for device {} (fleet {}).\nInstall agent.toml on the device, then run:\n  drover-agent run --config agent.toml\n",
                    bundle.device_id, bundle.fleet
                ),
            )
            .with_context(|| format!("writing {}", out.join("README").display()))?;
            if ctx.output == Output::Json {
                return output::json(&bundle);
            }
            output::line(&format!(
                "registered {} in fleet {}",
                bundle.device_id, bundle.fleet
            ));
            output::line(&format!(
                "wrote {} (holds the device's MQTT password and signing key; keep it private)",
                path.display()
            ));
            output::line(&format!(
                "run on the device: drover-agent run --config {}",
                path.display()
            ));
            Ok(())
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// `drover devices`.
pub(crate) async fn list(args: DevicesArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if args.unregistered {
        return list_unregistered(ctx).await;
    }
    let query = args
        .selector
        .map(|s| vec![("selector", s)])
        .unwrap_or_default();
    let devices: Vec<DeviceInfo> = ctx.client.get("devices", "/v1/devices", &query).await?;
    if ctx.output == Output::Json {
        return output::json(&devices);
    }
    let now = drover_protocol::Timestamp::from_system(std::time::SystemTime::now()).0;
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                if d.online { "online" } else { "offline" }.to_string(),
                output::age(d.last_seen, now),
                d.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                output::opt(&d.arch),
                output::opt(&d.agent_version),
                output::opt(&d.active),
                output::opt(&d.previous),
                output::opt(&d.shadow),
                if d.registered { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "DEVICE",
            "STATUS",
            "LAST SEEN",
            "LABELS",
            "ARCH",
            "AGENT",
            "ACTIVE",
            "PREVIOUS",
            "SHADOW",
            "REGISTERED",
        ],
        &rows,
    );
    Ok(())
}

async fn list_unregistered(ctx: &Ctx) -> anyhow::Result<()> {
    let seen: Vec<crate::fleet::uplink::UnregisteredDevice> = ctx
        .client
        .get(
            "devices",
            "/v1/devices",
            &[("unregistered", "true".to_string())],
        )
        .await?;
    if ctx.output == Output::Json {
        return output::json(&seen);
    }
    let now = drover_protocol::Timestamp::from_system(std::time::SystemTime::now()).0;
    let rows: Vec<Vec<String>> = seen
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                output::age(Some(d.first_seen), now),
                output::age(Some(d.last_seen), now),
                d.messages.to_string(),
            ]
        })
        .collect();
    output::table(
        &[
            "UNREGISTERED DEVICE",
            "FIRST SEEN",
            "LAST SEEN",
            "MESSAGES REFUSED",
        ],
        &rows,
    );
    Ok(())
}
