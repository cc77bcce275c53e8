//! Rollouts: the list, one rollout's waves, gates over time, audit trail,
//! and the pause/resume/abort/rollback buttons.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use maud::{Markup, html};

use super::layout::{self, chart, num, page};
use super::{Dashboard, Session};
use crate::core::rollout::gates::{ControlSource, GateResult};
use crate::core::rollout::{AuditEvent, AuditKind, Phase, RolloutStatus, Stage};

const VERBS: &[&str] = &["pause", "resume", "abort", "rollback"];

fn stage_name(s: Stage) -> String {
    match s {
        Stage::Shadow => "shadow".into(),
        Stage::Wave(0) => "canary (wave 1)".into(),
        Stage::Wave(w) => format!("wave {}", w + 1),
    }
}

pub(super) async fn rollouts_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
) -> Response {
    let list = d.rollouts.list().await;
    let body = html! {
        p { span #rollout-count { (list.len()) } " rollouts, " (list.iter().filter(|r| r.active).count()) " active" }
        table #rollouts {
            thead { tr { th { "rollout" } th { "model" } th { "phase" } th { "devices" } } }
            tbody {
                @for r in list.iter().rev() {
                    tr data-rollout=(r.id) class=@if r.active { "active" } {
                        td { a href={"/ui/rollouts/" (r.id)} { (r.id) } }
                        td { (r.model) }
                        td.phase { (r.phase) }
                        td.num { (r.devices) }
                    }
                }
            }
        }
    };
    page(&s, "rollouts", "Rollouts", body)
}

pub(super) async fn rollout_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let detail = match d.rollouts.detail(&id, 2_000).await {
        Ok(x) => x,
        Err(e) => return layout::error_page(&s, StatusCode::NOT_FOUND, &e.to_string()),
    };
    let events: Vec<AuditEvent> = detail
        .audit
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    let st = &detail.status;
    let can_act = st.active && s.may("POST", &format!("/v1/rollouts/{id}/pause"));
    let body = html! {
        (summary(st))
        @if can_act || (!st.active && s.may("POST", &format!("/v1/rollouts/{id}/rollback"))) {
            div.actions #actions {
                @for verb in VERBS {
                    @if st.active || *verb == "rollback" {
                        form.inline method="post" action={"/ui/rollouts/" (id) "/" (verb)} {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button #{"action-" (verb)} type="submit" class=(verb) { (verb) }
                        }
                    }
                }
            }
        }
        h2 { "Waves" }
        table #waves {
            thead { tr { th { "wave" } th { "%" } th { "targeted" } th { "pending" } th { "in flight" } th { "installed" } th { "failed" } th { "silent" } th { "rolled back" } th { "evaluations" } } }
            tbody {
                @for w in &st.waves {
                    tr data-wave=(w.wave) {
                        td { (w.wave) } td.num { (w.percent) } td.num { (w.targeted) } td.num { (w.pending) }
                        td.num { (w.in_flight) } td.num.updated { (w.updated) } td.num.failed { (w.failed) }
                        td.num.silent { (w.silent) } td.num.rolled-back { (w.rollback.done) } td.num { (w.evaluations) }
                    }
                }
            }
        }
        @if let Some(rb) = &st.rollback {
            h2 { "Rollback" }
            p #rollback { "rolled back " b #rollback-done { (rb.counts.done) } ", queued " (rb.counts.queued)
                ", commanded " (rb.counts.commanded) ", failed " (rb.counts.failed) ", silent " (rb.counts.silent)
                @if !rb.no_target.is_empty() { ", " (rb.no_target.len()) " devices with nowhere safe to go" } }
        }
        h2 { "Gates (latest)" }
        (gates_table("last-gates", &st.last_gates))
        h2 { "Gates over time" }
        (gate_history(&events))
        h2 { "Audit trail" }
        ol #audit {
            @for v in detail.audit.iter().rev() {
                li { span.time { (layout::time(v["at"].as_u64().unwrap_or(0))) } " " (v["message"].as_str().unwrap_or("")) }
            }
        }
    };
    page(&s, "rollouts", &format!("Rollout {id}"), body)
}

fn summary(st: &RolloutStatus) -> Markup {
    html! {
        table #rollout-summary {
            @if st.kind == crate::core::rollout::RolloutKind::Agent {
                tr { th { "agent" } td { (st.target_label) } }
            } @else {
                tr { th { "model" } td { a href={"/ui/models/" (st.model) "/" (st.target.0)} { (st.model) "@" (st.target.0) } } }
            }
            tr { th { "phase" } td #phase { b { (st.phase.name()) } (phase_detail(&st.phase)) } }
            tr { th { "selector" } td { code { (if st.selector.is_empty() { "(all)" } else { st.selector.as_str() }) } } }
            tr { th { "devices" } td #rollout-devices { (st.devices) @if st.departed > 0 { " (" (st.departed) " departed)" } } }
            @if let Some((at, why)) = &st.next_timeout { tr { th { "next" } td { (why) " at " (layout::time(at.0)) } } }
        }
    }
}

fn phase_detail(p: &Phase) -> Markup {
    match p {
        Phase::Deploying { stage, .. } => html! { " — " (stage_name(*stage)) },
        Phase::Baking { stage, until, .. } => {
            html! { " — " (stage_name(*stage)) ", gates may pass from " (layout::time(until.0)) }
        }
        Phase::Paused { reason, .. } => html! { " — " span #pause-reason { (reason) } },
        _ => html! {},
    }
}

fn control(c: &ControlSource) -> String {
    match c {
        ControlSource::Live => "live".into(),
        ControlSource::Baseline { wave, .. } => format!("baseline of wave {}", wave + 1),
        ControlSource::NotNeeded => "not needed".into(),
        ControlSource::Missing => "missing".into(),
    }
}

fn gates_table(id: &str, gates: &[GateResult]) -> Markup {
    html! {
        table id=(id) .gates {
            thead { tr { th { "gate" } th { "threshold" } th { "observed" } th { "canary" } th { "control" } th { "canary n" } th { "control n" } th { "control from" } th { "decision" } th { "why" } } }
            tbody {
                @for g in gates {
                    tr data-gate=(g.gate.metric.to_string()) class=(decision_name(g)) {
                        td { (g.gate) } td.num.threshold { (g.threshold) } td.num.value { (num(g.value, 4)) }
                        td.num.canary-value { (num(g.canary_value, 4)) } td.num.control-value { (num(g.control_value, 4)) }
                        td.num { (g.canary_samples) } td.num { (g.control_samples) } td { (control(&g.control)) }
                        td.decision { (decision_name(g)) } td.why { (g.why) }
                    }
                }
            }
        }
    }
}

fn decision_name(g: &GateResult) -> &'static str {
    match g.decision {
        crate::core::rollout::gates::Decision::Pass => "pass",
        crate::core::rollout::gates::Decision::Fail => "fail",
        crate::core::rollout::gates::Decision::Inconclusive => "inconclusive",
    }
}

/// Every gate evaluation in the audit trail: a chart per gate (value and
/// threshold against time) and the table behind it.
fn gate_history(events: &[AuditEvent]) -> Markup {
    let evals: Vec<(u64, Stage, &GateResult)> = events
        .iter()
        .filter_map(|e| match &e.event {
            AuditKind::GatesEvaluated { stage, results, .. } => Some((e.at.0, *stage, results)),
            _ => None,
        })
        .flat_map(|(at, stage, results)| results.iter().map(move |g| (at, stage, g)))
        .collect();
    if evals.is_empty() {
        return html! { p #gate-history-none { "No gate evaluated yet." } };
    }
    let mut by_gate: BTreeMap<String, Vec<(u64, &GateResult)>> = BTreeMap::new();
    for (at, _, g) in &evals {
        by_gate
            .entry(g.gate.to_string())
            .or_default()
            .push((*at, g));
    }
    html! {
        div.charts {
            @for (i, (gate, points)) in by_gate.iter().enumerate() {
                (chart(
                    &format!("gate-chart-{i}"),
                    gate,
                    &points.iter().map(|(at, _)| *at as f64 / 1000.0).collect::<Vec<_>>(),
                    &[
                        ("observed".into(), points.iter().map(|(_, g)| g.value).collect()),
                        ("threshold".into(), points.iter().map(|(_, g)| Some(g.threshold)).collect()),
                    ],
                ))
                @if points.iter().any(|(_, g)| g.canary_value.is_some() || g.control_value.is_some()) {
                    (chart(
                        &format!("gate-sides-chart-{i}"),
                        &format!("{gate}: canary and control"),
                        &points.iter().map(|(at, _)| *at as f64 / 1000.0).collect::<Vec<_>>(),
                        &[
                            ("canary".into(), points.iter().map(|(_, g)| g.canary_value).collect()),
                            ("control".into(), points.iter().map(|(_, g)| g.control_value).collect()),
                        ],
                    ))
                }
            }
        }
        details #gate-history open {
            summary { (evals.len()) " gate evaluations" }
            table.gates {
                thead { tr { th { "time" } th { "stage" } th { "gate" } th { "observed" } th { "canary" } th { "control" } th { "canary n" } th { "control n" } th { "decision" } } }
                tbody {
                    @for (at, stage, g) in evals.iter().rev() {
                        tr class=(decision_name(g)) {
                            td { (layout::time(*at)) } td { (stage_name(*stage)) } td { (g.gate) }
                            td.num { (num(g.value, 4)) } td.num { (num(g.canary_value, 4)) } td.num { (num(g.control_value, 4)) }
                            td.num { (g.canary_samples) } td.num { (g.control_samples) }
                            td { (decision_name(g)) }
                        }
                    }
                }
            }
        }
    }
}

/// `POST /ui/rollouts/{id}/{verb}`: the API's own handler, with the
/// session's actor, so the audit trail and the checks are the API's.
pub(super) async fn rollout_action(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Path((id, verb)): Path<(String, String)>,
) -> Response {
    let result = crate::http::rollouts::command(
        State(d.rollouts.clone()),
        Some(Extension(s.actor.clone())),
        Path((id.clone(), verb.clone())),
    )
    .await;
    match result {
        Ok(Json(_)) => {
            tracing::info!(target: "drover::audit", by = %s.actor.name, rollout = %id, %verb, "dashboard action");
            Redirect::to(&format!("/ui/rollouts/{id}")).into_response()
        }
        Err(e) => layout::error_page(&s, e.status, &e.body.detail),
    }
}
