//! `drover rollout start|list|status|pause|resume|abort|rollback`.

use std::time::Duration;

use drover_protocol::duration;
use serde_json::Value;

use crate::cli::{Ctx, Output, output};
use crate::http::rollouts::StartBody;

/// `drover rollout` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RolloutCmd {
    /// Start a staged rollout; prints its id.
    Start(Box<StartArgs>),
    /// List rollouts.
    List,
    /// Per-wave progress, gate values and decisions.
    Status {
        /// Rollout id.
        id: String,
        /// Refresh until the rollout ends.
        #[arg(long)]
        watch: bool,
        /// Audit events shown.
        #[arg(long, default_value_t = 10)]
        audit: u32,
    },
    /// Stop sending commands and advancing.
    Pause {
        /// Rollout id.
        id: String,
    },
    /// Continue a paused rollout (the paused stage bakes afresh).
    Resume {
        /// Rollout id.
        id: String,
    },
    /// Stop for good, leaving devices as they are.
    Abort {
        /// Rollout id.
        id: String,
    },
    /// Staged rollback to the last version that passed on each cohort.
    Rollback {
        /// Rollout id.
        id: String,
    },
}

/// `drover rollout start` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// NAME@VERSION of a model, or `agent@MAJOR.MINOR.PATCH` of an agent
    /// release (`drover agent push`; each device gets the build for its
    /// arch, e.g. with `--selector arch=aarch64`).
    pub model: String,
    /// Only devices whose labels match, e.g. `region=eu,hardware=rpi4`.
    #[arg(long)]
    pub selector: Option<String>,
    /// Cumulative wave percentages (default 1,10,50,100).
    #[arg(long)]
    pub waves: Option<String>,
    /// Bake time per wave, e.g. `10m` (a bare number is seconds).
    #[arg(long, value_parser = duration::parse)]
    pub bake: Option<Duration>,
    /// Shadow phase on the first wave before it serves, e.g. `5m`.
    #[arg(long, value_parser = duration::parse)]
    pub shadow: Option<Duration>,
    /// Gate, e.g. `p95_latency_ratio<=1.2` (repeatable). Metrics:
    /// p95_latency_ratio, p99_latency_ratio, error_rate_delta,
    /// accuracy_delta, output_psi, shadow_agreement.
    #[arg(long = "gate")]
    pub gates: Vec<String>,
    /// Minimum samples per gate and cohort before it can decide.
    #[arg(long)]
    pub min_samples: Option<u64>,
    /// Commanded devices that do not report by then are silent.
    #[arg(long, value_parser = duration::parse)]
    pub device_timeout: Option<Duration>,
    /// `rollback` (default) or `pause`.
    #[arg(long)]
    pub on_fail: Option<String>,
    /// Largest silent share of a wave that may advance, e.g. `5%`.
    #[arg(long)]
    pub max_silent: Option<String>,
    /// Largest share of a wave whose install may fail (for an agent: a new
    /// binary that fell back) before the wave fails, e.g. `5%`.
    #[arg(long)]
    pub max_failed: Option<String>,
    /// Interval between gate evaluations while baking, e.g. `1m`.
    #[arg(long, value_parser = duration::parse)]
    pub metrics_interval: Option<Duration>,
    /// Latency-ratio gates compare quantiles from this floor (default
    /// `1ms`; below it scheduling noise outweighs the model), e.g. `200us`.
    #[arg(long, value_parser = duration::parse)]
    pub latency_floor: Option<Duration>,
    /// Explicit rollout id.
    #[arg(long)]
    pub id: Option<String>,
}

fn num(v: &Value, k: &str) -> String {
    v.get(k).map(|x| x.to_string()).unwrap_or_default()
}

fn phase_text(status: &Value) -> String {
    let p = &status["phase"];
    let name = p["phase"].as_str().unwrap_or("?").to_string();
    match p.get("reason").and_then(Value::as_str) {
        Some(r) => format!("{name} ({r})"),
        None => name,
    }
}

fn print_status(d: &Value) {
    let s = &d["status"];
    output::pairs(&[
        ("rollout", s["id"].as_str().unwrap_or("").to_string()),
        (
            "target",
            s["target_label"]
                .as_str()
                .filter(|l| !l.is_empty())
                .map_or_else(
                    || format!("{}@{}", s["model"].as_str().unwrap_or(""), s["target"]),
                    str::to_string,
                ),
        ),
        ("selector", s["selector"].as_str().unwrap_or("").to_string()),
        ("phase", phase_text(s)),
        ("devices", num(s, "devices")),
    ]);
    let rows = wave_rows(s);
    output::table(
        &[
            "WAVE",
            "PERCENT",
            "TARGETED",
            "UPDATED",
            "FAILED",
            "SILENT",
            "PENDING",
            "RESULT",
            "VERSIONS",
            "FALLBACKS",
        ],
        &rows,
    );
    let gates: Vec<Vec<String>> = s["last_gates"]
        .as_array()
        .map(|g| {
            g.iter()
                .map(|g| {
                    vec![
                        g["gate"]["metric"].as_str().unwrap_or("?").to_string(),
                        g["value"]
                            .as_f64()
                            .map(|v| format!("{v:.4}"))
                            .unwrap_or_else(|| "-".into()),
                        format!(
                            "{} {}",
                            g["gate"]["op"].as_str().unwrap_or(""),
                            g["threshold"]
                        ),
                        format!("{}/{}", g["canary_samples"], g["control_samples"]),
                        g["decision"].as_str().unwrap_or("?").to_string(),
                        g["why"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if !gates.is_empty() {
        output::line("");
        output::table(
            &[
                "GATE",
                "VALUE",
                "THRESHOLD",
                "SAMPLES (canary/control)",
                "DECISION",
                "WHY",
            ],
            &gates,
        );
    }
    if let Some(a) = d["audit"].as_array()
        && !a.is_empty()
    {
        output::line("");
        for ev in a {
            output::line(&format!(
                "  {}  {}",
                ev["at"],
                ev["message"].as_str().unwrap_or("")
            ));
        }
    }
}

fn is_active(d: &Value) -> bool {
    d["status"]["active"].as_bool().unwrap_or(false)
}

/// Runs a `drover rollout` subcommand.
pub(crate) async fn run(cmd: RolloutCmd, ctx: &Ctx) -> anyhow::Result<()> {
    match cmd {
        RolloutCmd::Start(a) => {
            let a = *a;
            let body = StartBody {
                model: a.model,
                id: a.id,
                selector: a.selector,
                waves: a.waves,
                bake: a.bake,
                shadow: a.shadow,
                gates: a.gates,
                min_samples: a.min_samples,
                device_timeout: a.device_timeout,
                on_fail: a.on_fail,
                max_silent: a.max_silent,
                max_failed: a.max_failed,
                metrics_interval: a.metrics_interval,
                rollback_rate_per_min: None,
                latency_floor: a.latency_floor,
            };
            let r: Value = ctx
                .client
                .post("rollout start", "/v1/rollouts", &body)
                .await?;
            if ctx.output == Output::Json {
                return output::json(&r);
            }
            output::line(r["id"].as_str().unwrap_or(""));
            Ok(())
        }
        RolloutCmd::List => {
            let list: Vec<Value> = ctx.client.get("rollout list", "/v1/rollouts", &[]).await?;
            if ctx.output == Output::Json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|r| {
                    vec![
                        r["id"].as_str().unwrap_or("").into(),
                        r["model"].as_str().unwrap_or("").into(),
                        r["phase"].as_str().unwrap_or("").into(),
                        num(r, "devices"),
                    ]
                })
                .collect();
            output::table(&["ID", "MODEL", "PHASE", "DEVICES"], &rows);
            Ok(())
        }
        RolloutCmd::Status { id, watch, audit } => {
            let path = format!("/v1/rollouts/{id}");
            let q = [("audit", audit.to_string())];
            if !watch {
                let d: Value = ctx.client.get("rollout status", &path, &q).await?;
                if ctx.output == Output::Json {
                    return output::json(&d);
                }
                print_status(&d);
                return Ok(());
            }
            let pb = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} devices updated",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            pb.enable_steady_tick(Duration::from_millis(150));
            let last = loop {
                let d: Value = ctx.client.get("rollout status", &path, &q).await?;
                let s = &d["status"];
                let updated: u64 = s["waves"]
                    .as_array()
                    .map(|w| w.iter().filter_map(|w| w["updated"].as_u64()).sum())
                    .unwrap_or(0);
                pb.set_length(s["devices"].as_u64().unwrap_or(0));
                pb.set_position(updated);
                pb.set_message(phase_text(s));
                if !is_active(&d) {
                    break d;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            pb.finish_and_clear();
            if ctx.output == Output::Json {
                return output::json(&last);
            }
            print_status(&last);
            Ok(())
        }
        RolloutCmd::Pause { id } => verb(ctx, &id, "pause").await,
        RolloutCmd::Resume { id } => verb(ctx, &id, "resume").await,
        RolloutCmd::Abort { id } => verb(ctx, &id, "abort").await,
        RolloutCmd::Rollback { id } => verb(ctx, &id, "rollback").await,
    }
}

async fn verb(ctx: &Ctx, id: &str, verb: &str) -> anyhow::Result<()> {
    let s: Value = ctx
        .client
        .post(
            &format!("rollout {verb}"),
            &format!("/v1/rollouts/{id}/{verb}"),
            &serde_json::json!({}),
        )
        .await?;
    if ctx.output == Output::Json {
        return output::json(&s);
    }
    output::line(&format!("{id}: {}", phase_text(&s)));
    Ok(())
}

/// The wave table's rows, one per wave of a status document.
fn wave_rows(s: &Value) -> Vec<Vec<String>> {
    s["waves"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|w| {
                    vec![
                        // `wave` is 1-based already (WaveStatus).
                        w["wave"].as_u64().unwrap_or(0).to_string(),
                        format!("{}%", w["percent"]),
                        num(w, "targeted"),
                        num(w, "updated"),
                        num(w, "failed"),
                        num(w, "silent"),
                        num(w, "pending"),
                        w["passed_at"]
                            .as_u64()
                            .map(|_| "passed".to_string())
                            .or_else(|| w["failed_at"].as_u64().map(|_| "failed".into()))
                            .unwrap_or_default(),
                        // Devices per version they run now: `0.1.0:3 0.2.0:1`.
                        w["versions"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(v, n)| format!("{v}:{n}"))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .unwrap_or_default(),
                        num(w, "fallbacks"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_column_shows_the_one_based_wave_number() {
        let s = serde_json::json!({"waves": [
            {"wave": 1, "percent": 10.0, "targeted": 1, "updated": 1, "failed": 0,
             "silent": 0, "pending": 0, "passed_at": 5},
            {"wave": 2, "percent": 100.0, "targeted": 9, "updated": 0, "failed": 0,
             "silent": 0, "pending": 9, "versions": {"0.1.0": 8, "0.2.0": 1}, "fallbacks": 1},
        ]});
        let rows = wave_rows(&s);
        assert_eq!(rows[0][0], "1");
        assert_eq!(rows[0][7], "passed");
        assert_eq!(rows[1][0], "2");
        assert_eq!(rows[1][8], "0.1.0:8 0.2.0:1");
        assert_eq!(rows[1][9], "1");
    }
}
