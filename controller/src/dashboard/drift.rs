//! Drift (PSI heatmap, reference vs current histograms, fleet score over
//! time) and retraining jobs.

use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use drover_protocol::ModelName;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, bars, bin_labels, chart, num, page, proportions, psi_style};
use super::{Dashboard, Session};
use crate::core::drift::report::DriftReport;
use crate::core::retraining::report::{DriftOverview, ScopeDrift};
use crate::retraining::runner::DriftRequest;
use crate::telemetry::query::TelemetryFilter;

/// Points on the "fleet drift score over time" chart.
const DRIFT_CHART_POINTS: u32 = 500;

pub(super) async fn drift_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
) -> Response {
    let overviews = match d
        .retrain
        .drift(DriftRequest {
            model: None,
            version: None,
            cohort_key: None,
            window_ms: None,
        })
        .await
    {
        Ok(o) => o,
        Err(e) => return layout::error_page(&s, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let mut sections = Vec::new();
    for o in &overviews {
        sections.push(model_drift(&d, o).await);
    }
    let body = html! {
        @if overviews.is_empty() {
            p #drift-none { "No model has a retraining policy (" code { "[retrain.<model>]" } " in controller.toml), so no drift is evaluated." }
        }
        @for s in sections { (s) }
    };
    page(&s, "drift", "Drift", body)
}

fn scope_name(s: &ScopeDrift) -> String {
    s.cohort
        .as_ref()
        .map_or_else(|| "fleet".into(), ToString::to_string)
}

async fn model_drift(d: &Dashboard, o: &DriftOverview) -> Markup {
    let model = o.model.as_str();
    let scopes: Vec<&ScopeDrift> = std::iter::once(&o.fleet).chain(o.cohorts.iter()).collect();
    let features: Vec<String> = o
        .fleet
        .report
        .as_ref()
        .map(|r| r.features.iter().map(|f| f.name.clone()).collect())
        .unwrap_or_default();
    let psi = |r: &DriftReport, name: &str| {
        r.features
            .iter()
            .chain(r.output.iter())
            .find(|f| f.name == name)
            .map(|f| f.psi)
    };
    let history = d
        .retrain
        .drift_history(&o.model, DRIFT_CHART_POINTS)
        .await
        .unwrap_or_default();
    let reference = d
        .ctl
        .resolve_model(&o.model, &o.version.0.to_string())
        .await
        .ok()
        .map(|m| m.manifest.reference.clone());
    let current = d
        .ctl
        .telemetry_summary(TelemetryFilter {
            model: Some(model.to_string()),
            version: Some(o.version.0),
            role: Some("active".into()),
            from_ms: Some(o.from_ms),
            to_ms: Some(o.to_ms),
            ..TelemetryFilter::default()
        })
        .await
        .ok()
        .map(|t| t.merged.features);
    let fleet = o.fleet.report.as_ref();
    html! {
        section.model data-model=(model) {
            h2 { (model) "@" (o.version.0) }
            p { "Window " (layout::time(o.from_ms)) " – " (layout::time(o.to_ms)) ", cohorts by " code { (o.cohort_key.as_deref().unwrap_or("(none)")) } }
            section.cards {
                div.card { div.big.fleet-score id={"fleet-score-" (model)} { (num(fleet.map(|r| r.fleet_score), 4)) } div { "fleet drift score (max PSI)" } }
                div.card { div.big id={"drift-share-" (model)} {
                    @match fleet.and_then(|r| r.devices.as_ref()) {
                        Some(dv) => { (dv.drifting) " / " (dv.evaluated) }
                        None => { "–" }
                    }
                } div { "devices drifting / evaluated" } }
                div.card { div.big id={"drift-samples-" (model)} { (fleet.map_or(0, |r| r.samples)) } div { "samples" } }
                div.card { div.big id={"drift-verdict-" (model)} { (if o.fleet.is_drifting() { "drifting" } else if fleet.is_some() { "stable" } else { "no data" }) } div { "verdict" } }
            }
            @if let Some(e) = &o.fleet.error { p.error { (e) } }
            h3 { "PSI by feature and cohort" }
            table.heatmap id={"heatmap-" (model)} {
                thead { tr { th { "feature" } @for sc in &scopes { th { (scope_name(sc)) } } } }
                tbody {
                    @for f in features.iter().chain(fleet.and_then(|r| r.output.as_ref()).map(|o| &o.name)) {
                        tr data-feature=(f) {
                            th { (f) }
                            @for sc in &scopes {
                                @match sc.report.as_ref().and_then(|r| psi(r, f)) {
                                    Some(v) => { td.num data-scope=(scope_name(sc)) style=(psi_style(v)) { (format!("{v:.3}")) } }
                                    None => { td.num data-scope=(scope_name(sc)) { "–" } }
                                }
                            }
                        }
                    }
                }
            }
            h3 { "Fleet drift score over time" }
            (chart(&format!("drift-chart-{model}"), "fleet drift score",
                &history.iter().map(|p| p.at as f64 / 1000.0).collect::<Vec<_>>(),
                &[
                    ("max PSI".into(), history.iter().map(|p| p.fleet_score).collect()),
                    ("share of devices drifting".into(), history.iter().map(|p| p.share_drifting).collect()),
                ]))
            p.note #{"drift-history-note-" (model)} {
                (history.len()) " scheduled evaluation(s) shown, the latest " (DRIFT_CHART_POINTS) " at most (stored by the controller, "
                code { "GET /v1/drift/history?model=" (model) } ")"
                @if let Some(last) = history.last() { "; last: " (layout::time(last.at)) ", " (last.verdict) " (" (last.scope) ")" }
                "."
            }
            @if let Some(reference) = &reference {
                h3 { "Reference (grey) vs current (red)" }
                div.hists {
                    @for (i, f) in reference.features.iter().enumerate() {
                        @let cur = current.as_ref().and_then(|c| c.get(i)).map(|c| proportions(c));
                        figure.hist {
                            (bars(&bin_labels(&f.bins.edges), &f.bins.frequencies.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), cur.as_deref()))
                            figcaption { (f.name) " (PSI " (num(fleet.and_then(|r| psi(r, &f.name)), 3)) ")" }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn retraining_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
) -> Response {
    let jobs = match d.retrain.jobs(None, 200).await {
        Ok(j) => j,
        Err(e) => return layout::error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut names: Vec<String> = d
        .ctl
        .models()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.dedup();
    let body = html! {
        @if s.may("POST", "/v1/retrain") && !names.is_empty() {
            form.inline #retrain-form method="post" action="/ui/retraining/run" {
                input type="hidden" name="csrf" value=(s.csrf);
                label for="retrain-model" { "Retrain now: " }
                select #retrain-model name="model" { @for n in &names { option value=(n) { (n) } } }
                button #retrain-run type="submit" { "Run" }
            }
        }
        p { span #job-count { (jobs.len()) } " jobs (newest first)" }
        table #jobs {
            thead { tr { th { "job" } th { "model" } th { "trigger" } th { "reason" } th { "state" } th { "produced" } th { "rollout" } th { "created" } } }
            tbody {
                @for j in &jobs {
                    tr data-job=(j.id) {
                        td { a href={"/ui/retraining/" (j.id)} { "#" (j.id) } }
                        td { (j.model) "@" (j.base_version.0) }
                        td { (format!("{:?}", j.trigger).to_lowercase()) }
                        td { (j.reason) }
                        td.state { (j.state) @if let Some(f) = &j.failure { " — " (f) } }
                        td { (j.result_version.map_or_else(|| "–".into(), |v| format!("v{}", v.0))) }
                        td { @match &j.rollout_id { Some(r) => { a href={"/ui/rollouts/" (r)} { (r) } } None => { "–" } } }
                        td { (layout::time(j.created_at)) }
                    }
                }
            }
        }
    };
    page(&s, "retraining", "Retraining", body)
}

pub(super) async fn job_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Path(id): Path<u64>,
) -> Response {
    let job = match d.retrain.job(id).await {
        Ok(Some(j)) => j,
        Ok(None) => return layout::error_page(&s, StatusCode::NOT_FOUND, "no such job"),
        Err(e) => return layout::error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let pretty = |v: serde_json::Value| serde_json::to_string_pretty(&v).unwrap_or_default();
    let body = html! {
        table #job {
            tr { th { "model" } td { (job.model) "@" (job.base_version.0) } }
            tr { th { "state" } td #job-state { (job.state) @if let Some(f) = &job.failure { " — " (f) } } }
            tr { th { "trigger" } td { (job.trigger.reason) } }
            tr { th { "capture" } td { @if let Some(c) = &job.capture { (c.samples) " samples from " (c.completed.len()) " of " (c.requested.len()) " devices, " (c.dropped) " dropped" } @else { "–" } } }
            tr { th { "dataset" } td { @if let Some(ds) = &job.dataset { (ds.rows) " rows (" (ds.labelled_rows) " labelled, " (ds.captured_rows) " captured), sha256 " code { (ds.sha256.get(..12).unwrap_or(&ds.sha256)) } } @else { "–" } } }
            tr { th { "produced" } td { @match job.result_version { Some(v) => { a href={"/ui/models/" (job.model) "/" (v.0)} { "v" (v.0) } } None => { "–" } } } }
            tr { th { "rollout" } td { @match &job.rollout_id { Some(r) => { a href={"/ui/rollouts/" (r)} { (r) } } None => { (job.rollout_error.as_deref().unwrap_or("–")) } } } }
        }
        @if !job.eval_metrics.is_empty() {
            h2 { "Metrics" }
            table #job-metrics { @for (k, v) in &job.eval_metrics { tr { th { (k) } td.num { (format!("{v:.4}")) } } } }
        }
        @if let Some(h) = &job.hook {
            h2 { "Hook output (" (h.kind) ", exit " (h.exit_code.map_or_else(|| "–".into(), |c| c.to_string())) ")" }
            pre #hook-log { (h.log) }
        }
        h2 { "History" }
        pre { (pretty(serde_json::to_value(&job.history).unwrap_or_default())) }
    };
    page(&s, "retraining", &format!("Retraining job #{id}"), body)
}

#[derive(Debug, Deserialize)]
pub(super) struct RunForm {
    model: String,
}

/// `POST /ui/retraining/run`: the API's manual-trigger handler.
pub(super) async fn retrain_action(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Form(f): Form<RunForm>,
) -> Response {
    if ModelName::new(f.model.clone()).is_err() {
        return layout::error_page(&s, StatusCode::BAD_REQUEST, "not a model name");
    }
    let body = Bytes::from(serde_json::json!({ "model": f.model }).to_string());
    let api = crate::http::retrain::RetrainApi {
        runner: d.retrain.clone(),
    };
    match crate::http::retrain::run(State(api), body).await {
        Ok((_, Json(job))) => {
            tracing::info!(target: "drover::audit", by = %s.actor.name, job = job.id, "dashboard retraining run");
            Redirect::to(&format!("/ui/retraining/{}", job.id)).into_response()
        }
        Err(e) => layout::error_page(&s, e.status, &e.body.detail),
    }
}
