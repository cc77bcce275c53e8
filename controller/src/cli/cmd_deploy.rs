//! `drover deploy NAME@VERSION --device ID [--shadow]`: sends the signed
//! command, then follows the deployment with a byte progress bar until the
//! device reports Active/Shadowing (exit 0) or a failure (exit non-zero).

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{Ctx, Output, output};
use crate::fleet::commands::Deployment;

/// `drover deploy` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// NAME@VERSION (or NAME@ALIAS).
    pub model: String,
    /// Target device.
    #[arg(long)]
    pub device: String,
    /// Run as shadow candidate instead of activating.
    #[arg(long)]
    pub shadow: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Send and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
}

/// Runs `drover deploy`.
pub(crate) async fn run(args: DeployArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let d: Deployment = ctx
        .client
        .post(
            "deploy",
            "/v1/deploy",
            &serde_json::json!({ "model": args.model, "device": args.device, "shadow": args.shadow }),
        )
        .await?;
    if args.no_wait {
        if ctx.output == Output::Json {
            return output::json(&d);
        }
        output::line(&format!("deployment {} sent (command {})", d.id, d.seq));
        return Ok(());
    }
    let pb = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(format!("{} -> {}: sent", d.model, d.device));
    pb.enable_steady_tick(Duration::from_millis(120));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let last = loop {
        let cur: Deployment = ctx
            .client
            .get("deployment", &format!("/v1/deployments/{}", d.id), &[])
            .await?;
        if cur.total > 0 {
            pb.set_length(cur.total);
            pb.set_position(cur.received);
        }
        pb.set_message(format!("{} -> {}: {}", cur.model, cur.device, cur.state));
        if cur.done {
            break cur;
        }
        if Instant::now() > deadline {
            pb.abandon();
            bail!(
                "timed out after {}s waiting for {} on {} (last state: {})",
                args.timeout_secs,
                cur.model,
                cur.device,
                cur.state
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    pb.finish_and_clear();
    if ctx.output == Output::Json {
        output::json(&last)?;
    }
    if !last.ok {
        bail!(
            "deploy of {} to {} {}: {}",
            last.model,
            last.device,
            last.state,
            last.reason.as_deref().unwrap_or("no reason given")
        );
    }
    if ctx.output == Output::Table {
        output::line(&format!(
            "{} is {} on {}",
            last.model, last.state, last.device
        ));
    }
    Ok(())
}
