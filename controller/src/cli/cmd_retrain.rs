//! `drover retrain list|show|run`, a client of `/v1/retrain`.

use crate::cli::ApiClient;
use crate::cli::output::{self, Output, f4, now_ms};
use crate::core::retraining::job::RetrainJob;
use crate::http::retrain::{JobList, RunBody};

/// `drover retrain …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RetrainCmd {
    /// Recent retraining jobs, newest first.
    List {
        /// Only this model's jobs.
        #[arg(long)]
        model: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job: trigger, drift report, dataset, hook log, resulting version.
    Show {
        /// Job id.
        id: u64,
    },
    /// Retrain a model now, without waiting for drift.
    Run {
        /// Model name.
        model: String,
    },
}

/// Runs `drover retrain list|show|run`.
pub(crate) async fn run_retrain(
    cmd: RetrainCmd,
    client: &ApiClient,
    out: Output,
) -> anyhow::Result<()> {
    match cmd {
        RetrainCmd::List { model, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(m) = model {
                query.push(("model", m));
            }
            let list: JobList = client.get("retrain jobs", "/v1/retrain", &query).await?;
            if out == Output::Json {
                return output::json(&list);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = list
                .jobs
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        format!("{}@{}", j.model, j.base_version),
                        j.state.to_string(),
                        format!("{:?}", j.trigger).to_lowercase(),
                        output::opt(&j.result_version),
                        output::opt(&j.rollout_id),
                        output::age(Some(j.created_at), now),
                        j.failure.clone().unwrap_or_else(|| j.reason.clone()),
                    ]
                })
                .collect();
            output::table(
                &[
                    "ID", "BASE", "STATE", "TRIGGER", "VERSION", "ROLLOUT", "CREATED", "REASON",
                ],
                &rows,
            );
            Ok(())
        }
        RetrainCmd::Show { id } => {
            let job: RetrainJob = client
                .get("retrain job", &format!("/v1/retrain/{id}"), &[])
                .await?;
            if out == Output::Json {
                return output::json(&job);
            }
            print_job(&job);
            Ok(())
        }
        RetrainCmd::Run { model } => {
            let job: RetrainJob = client
                .post("start retraining", "/v1/retrain", &RunBody { model })
                .await?;
            if out == Output::Json {
                return output::json(&job);
            }
            output::line(&format!(
                "retrain job {} started for {}@{} ({}); follow it with `drover retrain show {}`",
                job.id, job.model, job.base_version, job.state, job.id
            ));
            Ok(())
        }
    }
}

fn print_job(job: &RetrainJob) {
    let now = now_ms();
    let mut pairs = vec![
        ("job", job.id.to_string()),
        ("model", format!("{}@{}", job.model, job.base_version)),
        ("state", job.state.to_string()),
    ];
    if let Some(f) = &job.failure {
        pairs.push(("failure", f.clone()));
    }
    pairs.push((
        "trigger",
        format!("{:?}: {}", job.trigger.kind, job.trigger.reason).to_lowercase(),
    ));
    if let Some(c) = &job.trigger.cohort {
        pairs.push(("cohort", c.to_string()));
    }
    if let Some(r) = &job.trigger.report {
        pairs.push((
            "drift",
            format!(
                "fleet score {} (worst {}), {} samples",
                f4(r.fleet_score),
                r.worst.as_deref().unwrap_or("-"),
                r.samples
            ),
        ));
    }
    pairs.push(("created", output::age(Some(job.created_at), now)));
    pairs.push(("updated", output::age(Some(job.updated_at), now)));
    if let Some(c) = &job.capture {
        pairs.push((
            "capture",
            format!(
                "{} device(s) asked, {} done, {} samples ({} dropped){}",
                c.requested.len(),
                c.completed.len(),
                c.samples,
                c.dropped,
                if c.send_failures.is_empty() {
                    String::new()
                } else {
                    format!(", {} unreachable", c.send_failures.len())
                }
            ),
        ));
    }
    if let Some(d) = &job.dataset {
        pairs.push(("dataset", d.path.clone()));
        pairs.push((
            "rows",
            format!(
                "{} ({} labelled; {} captured, {} from the reference)",
                d.rows, d.labelled_rows, d.captured_rows, d.reference_rows
            ),
        ));
        pairs.push(("sha256", d.sha256.clone()));
    }
    if let Some(h) = &job.hook {
        pairs.push((
            "hook",
            format!(
                "{} ran {}{}",
                h.kind,
                drover_protocol::duration::format(std::time::Duration::from_millis(
                    h.finished_at.saturating_sub(h.started_at)
                )),
                h.exit_code
                    .map_or_else(String::new, |c| format!(", exit code {c}"))
            ),
        ));
    }
    if let Some(v) = job.result_version {
        pairs.push(("version", format!("{}@{v}", job.model)));
    }
    if let Some(r) = &job.rollout_id {
        pairs.push(("rollout", r.clone()));
    }
    if let Some(r) = &job.rollout_error {
        pairs.push(("rollout error", r.clone()));
    }
    if !job.eval_metrics.is_empty() {
        let metrics: Vec<String> = job
            .eval_metrics
            .iter()
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        pairs.push(("metrics", metrics.join(" ")));
    }
    output::pairs(&pairs);
    output::line("");
    let rows: Vec<Vec<String>> = job
        .history
        .iter()
        .map(|t| {
            vec![
                output::age(Some(t.at), now),
                t.state.to_string(),
                t.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["WHEN", "STATE", "NOTE"], &rows);
    if let Some(h) = job.hook.as_ref().filter(|h| !h.log.trim().is_empty()) {
        output::line("");
        output::line("hook log:");
        output::line(h.log.trim_end());
    }
}
