//! `drover broker acl` and `drover telemetry`.

use std::path::PathBuf;

use anyhow::Context as _;

use super::{Ctx, Output, output};
use crate::fleet::devices::BrokerAcl;
use crate::telemetry::summary::TelemetrySummary;

/// `drover broker` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BrokerCmd {
    /// Print (or write) a Mosquitto password file and ACL for the registered devices.
    Acl {
        /// Write `drover.passwd` and `drover.acl` into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `drover broker ...`.
pub(crate) async fn broker(cmd: BrokerCmd, ctx: &Ctx) -> anyhow::Result<()> {
    let BrokerCmd::Acl { out } = cmd;
    let acl: BrokerAcl = ctx.client.get("broker acl", "/v1/broker/acl", &[]).await?;
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("drover.passwd"), &acl.password_file)?;
        std::fs::write(dir.join("drover.acl"), &acl.acl_file)?;
    }
    if ctx.output == Output::Json {
        return output::json(&acl);
    }
    output::line("# ---- password_file (drover.passwd) ----");
    output::line(acl.password_file.trim_end());
    output::line("# ---- acl_file (drover.acl) ----");
    output::line(acl.acl_file.trim_end());
    output::line(&format!("# {}", acl.notes));
    Ok(())
}

/// `drover telemetry` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// NAME or NAME@VERSION.
    #[arg(long)]
    pub model: Option<String>,
    /// Device ids, comma-separated.
    #[arg(long)]
    pub device: Option<String>,
    /// Only windows ending at or after this (ms since epoch). Without
    /// `--device` and on a whole minute, the answer comes from the
    /// per-minute rollups, per cohort; otherwise from the raw windows.
    #[arg(long)]
    pub since_ms: Option<u64>,
}

/// `drover telemetry`.
pub(crate) async fn telemetry(args: TelemetryArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut q = Vec::new();
    if let Some(m) = args.model {
        q.push(("model", m));
    }
    if let Some(d) = args.device {
        q.push(("device", d));
    }
    if let Some(s) = args.since_ms {
        q.push(("since_ms", s.to_string()));
    }
    let s: TelemetrySummary = ctx.client.get("telemetry", "/v1/telemetry", &q).await?;
    if ctx.output == Output::Json {
        return output::json(&s);
    }
    let row = |who: &str, a: &crate::telemetry::query::AggregateView| {
        vec![
            who.to_string(),
            a.windows.to_string(),
            a.count.to_string(),
            a.errors.to_string(),
            output::opt(&a.p50_us),
            output::opt(&a.p95_us),
            output::opt(&a.p99_us),
            a.accuracy.map_or("-".into(), |x| format!("{x:.3}")),
        ]
    };
    let mut rows = vec![row("(all)", &s.merged)];
    rows.extend(s.devices.iter().map(|(d, a)| row(d, a)));
    // A fleet-level answer comes from the rollups, broken down by cohort.
    rows.extend(s.cohorts.iter().map(|(c, a)| row(c, a)));
    let first = if s.cohorts.is_empty() {
        "DEVICE"
    } else {
        "COHORT"
    };
    output::table(
        &[
            first, "WINDOWS", "COUNT", "ERRORS", "P50_US", "P95_US", "P99_US", "ACCURACY",
        ],
        &rows,
    );
    Ok(())
}
