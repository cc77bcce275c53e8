//! `drover drift`: the drift report, a client of `/v1/drift`.

use anyhow::anyhow;

use crate::cli::ApiClient;
use crate::cli::output::{self, Output, f4};
use crate::core::drift::Verdict;
use crate::core::retraining::report::{DriftOverview, ScopeDrift};
use crate::http::retrain::{DriftResponse, parse_model_arg};
use drover_protocol::duration;

/// `drover drift [N[@V]] [--cohort KEY] [--window 1h]`.
#[derive(Debug, Clone, clap::Args)]
pub struct DriftArgs {
    /// Model, `NAME` or `NAME@VERSION`; default: every model with a retrain
    /// policy, at its production version.
    pub model: Option<String>,
    /// Also break the report down per value of this device label.
    #[arg(long, value_name = "LABEL_KEY")]
    pub cohort: Option<String>,
    /// Time range ending now (`30m`, `1h`, `1d`); default: the model's
    /// configured window.
    #[arg(long, value_parser = duration::parse)]
    pub window: Option<std::time::Duration>,
}

/// Runs `drover drift`.
pub(crate) async fn run_drift(
    args: DriftArgs,
    client: &ApiClient,
    out: Output,
) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(m) = &args.model {
        parse_model_arg(m).map_err(|e| anyhow!("{m}: {e}"))?;
        query.push(("model", m.clone()));
    }
    if let Some(c) = &args.cohort {
        query.push(("cohort", c.clone()));
    }
    if let Some(w) = args.window {
        query.push(("window", duration::format(w)));
    }
    let response: DriftResponse = client.get("drift report", "/v1/drift", &query).await?;
    match out {
        Output::Json => output::json(&response),
        Output::Table => {
            if response.reports.is_empty() {
                output::line("no model has a retrain policy; name one: drover drift NAME");
            }
            for (i, report) in response.reports.iter().enumerate() {
                if i > 0 {
                    output::line("");
                }
                print_overview(report);
            }
            Ok(())
        }
    }
}

fn scope_name(s: &ScopeDrift) -> String {
    s.cohort
        .as_ref()
        .map_or_else(|| "fleet".to_owned(), |c| c.to_string())
}

fn verdict(s: &ScopeDrift) -> String {
    match &s.verdict {
        Some(Verdict::Stable) => "stable".into(),
        Some(Verdict::Drifting { .. }) => "DRIFTING".into(),
        Some(Verdict::Insufficient { samples }) => format!("insufficient ({samples})"),
        None => "error".into(),
    }
}

fn print_overview(o: &DriftOverview) {
    let window = duration::format(std::time::Duration::from_millis(
        o.to_ms.saturating_sub(o.from_ms),
    ));
    output::line(&format!(
        "{}@{} over the last {window} (drifting: PSI > {}{}, at least {} samples; device PSI > {})",
        o.model,
        o.version,
        o.thresholds.psi,
        o.thresholds
            .js
            .map_or_else(String::new, |js| format!(" or JS > {js}")),
        o.thresholds.min_samples,
        o.device_psi_threshold
    ));
    let scopes: Vec<&ScopeDrift> = std::iter::once(&o.fleet).chain(&o.cohorts).collect();
    let rows: Vec<Vec<String>> = scopes
        .iter()
        .map(|s| {
            let r = s.report.as_ref();
            let devices = r.and_then(|r| r.devices.as_ref());
            vec![
                scope_name(s),
                verdict(s),
                r.map_or("-".into(), |r| f4(r.fleet_score)),
                r.and_then(|r| r.worst.clone())
                    .unwrap_or_else(|| "-".into()),
                r.map_or("-".into(), |r| r.samples.to_string()),
                devices.map_or("-".into(), |d| {
                    format!(
                        "{}/{}{}",
                        d.drifting,
                        d.evaluated,
                        d.share
                            .map_or_else(String::new, |s| format!(" ({:.1}%)", s * 100.0))
                    )
                }),
                s.accuracy.accuracy.map_or("-".into(), f4),
                s.accuracy
                    .slope_per_hour
                    .map_or("-".into(), |v| format!("{v:+.4}")),
            ]
        })
        .collect();
    output::table(
        &[
            "SCOPE",
            "VERDICT",
            "SCORE",
            "WORST",
            "SAMPLES",
            "DEVICES_DRIFTING",
            "ACCURACY",
            "ACC/H",
        ],
        &rows,
    );
    for s in scopes {
        if let Some(Verdict::Drifting { reason }) = &s.verdict {
            output::line(&format!("{}: {reason}", scope_name(s)));
        }
        if let Some(e) = &s.error {
            output::line(&format!("{}: {e}", scope_name(s)));
        }
    }
    if let Some(r) = &o.fleet.report {
        output::line("");
        let rows: Vec<Vec<String>> = r
            .features
            .iter()
            .chain(r.output.as_ref())
            .map(|f| {
                let flag = if f.psi > o.thresholds.psi { "*" } else { "" };
                vec![
                    format!("{}{flag}", f.name),
                    f4(f.psi),
                    f4(f.js),
                    f.samples.to_string(),
                ]
            })
            .collect();
        output::table(&["FEATURE (fleet)", "PSI", "JS", "SAMPLES"], &rows);
        if let Some(worst) = r.devices.as_ref().filter(|d| !d.worst.is_empty()) {
            output::line("");
            let rows: Vec<Vec<String>> = worst
                .worst
                .iter()
                .map(|d| {
                    vec![
                        d.device.clone(),
                        f4(d.score),
                        d.feature.clone(),
                        d.samples.to_string(),
                    ]
                })
                .collect();
            output::table(&["WORST DEVICE", "PSI", "FEATURE", "SAMPLES"], &rows);
        }
    }
}
