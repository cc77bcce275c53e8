//! The model registry: versions, aliases, lineage, manifests, reference
//! profiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use drover_protocol::ModelName;
use maud::{Markup, PreEscaped, html};

use super::layout::{self, bars, bin_labels, page};
use super::{Dashboard, Session};
use crate::registry::{ManifestView, ModelSummary};

pub(super) async fn models_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
) -> Response {
    let models = match d.ctl.models().await {
        Ok(m) => m,
        Err(e) => return layout::error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut by_name: BTreeMap<String, Vec<ModelSummary>> = BTreeMap::new();
    for m in models {
        by_name.entry(m.name.clone()).or_default().push(m);
    }
    let mut sections = Vec::new();
    for (name, mut versions) in by_name {
        versions.sort_by_key(|m| m.version);
        let mut edges = Vec::new();
        if let Ok(n) = ModelName::new(name.clone()) {
            for v in &versions {
                if v.parent.is_none() {
                    continue;
                }
                if let Ok(stored) = d.ctl.resolve_model(&n, &v.version.to_string()).await {
                    let m = crate::controller::Controller::manifest_view(&stored);
                    edges.push(Edge {
                        parent: m.parent.unwrap_or(0),
                        child: m.version,
                        job: m.retrain_job,
                        dataset: m.dataset_sha256.clone(),
                    });
                }
            }
        }
        sections.push(html! {
            section.model data-model=(name) {
                h2 { (name) }
                table.versions {
                    thead { tr { th { "version" } th { "aliases" } th { "parent" } th { "task" } th { "size" } th { "sha256" } th { "created" } } }
                    tbody {
                        @for v in versions.iter().rev() {
                            tr data-version=(v.version) {
                                td { a href={"/ui/models/" (name) "/" (v.version)} { "v" (v.version) } }
                                td.aliases { (v.aliases.join(", ")) }
                                td { (v.parent.map_or_else(|| "–".into(), |p| format!("v{p}"))) }
                                td { (v.task) }
                                td.num { (v.size) }
                                td { code { (v.sha256.get(..12).unwrap_or(&v.sha256)) } }
                                td { (layout::time(v.created_at)) }
                            }
                        }
                    }
                }
                h3 { "Lineage" }
                (lineage(&versions, &edges))
            }
        });
    }
    let body = html! {
        @if sections.is_empty() { p { "No models yet: " code { "drover model push" } "." } }
        @for s in sections { (s) }
    };
    page(&s, "models", "Models", body)
}

struct Edge {
    parent: u64,
    child: u64,
    job: Option<u64>,
    dataset: Option<String>,
}

/// The parent → child graph as an SVG: one column per generation, each edge
/// labelled with the retraining job and dataset behind it.
fn lineage(versions: &[ModelSummary], edges: &[Edge]) -> Markup {
    let parent: BTreeMap<u64, u64> = versions
        .iter()
        .filter_map(|v| v.parent.map(|p| (v.version, p)))
        .collect();
    let depth = |mut v: u64| {
        let mut d = 0usize;
        while let Some(p) = parent.get(&v) {
            v = *p;
            d += 1;
            if d > versions.len() {
                break; // a cycle cannot happen in the registry; stop anyway
            }
        }
        d
    };
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut pos: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for v in versions {
        let col = depth(v.version);
        let row = rows.entry(col).or_insert(0);
        pos.insert(
            v.version,
            (30.0 + col as f64 * 150.0, 25.0 + *row as f64 * 44.0),
        );
        *row += 1;
    }
    let width = pos.values().map(|p| p.0).fold(0.0, f64::max) + 80.0;
    let height = pos.values().map(|p| p.1).fold(0.0, f64::max) + 40.0;
    let mut svg = format!(
        r#"<svg class="lineage" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">"#
    );
    for e in edges {
        let (Some(a), Some(b)) = (pos.get(&e.parent), pos.get(&e.child)) else {
            continue;
        };
        let label = match (&e.job, &e.dataset) {
            (Some(j), Some(ds)) => format!("job #{j}, data {}", ds.get(..8).unwrap_or(ds)),
            (Some(j), None) => format!("job #{j}"),
            (None, Some(ds)) => format!("data {}", ds.get(..8).unwrap_or(ds)),
            (None, None) => "pushed".into(),
        };
        let _ = write!(
            svg,
            r#"<line class="edge" x1="{:.0}" y1="{:.0}" x2="{:.0}" y2="{:.0}"/><text class="edge-label" x="{:.0}" y="{:.0}">{}</text>"#,
            a.0 + 40.0,
            a.1,
            b.0 - 4.0,
            b.1,
            // Next to the child, so labels of siblings never overlap.
            b.0 - 175.0,
            b.1 - 5.0,
            label
        );
    }
    for v in versions {
        if let Some((x, y)) = pos.get(&v.version) {
            let _ = write!(
                svg,
                r#"<g class="node"><rect x="{:.0}" y="{:.0}" width="44" height="22" rx="4"/><text x="{:.0}" y="{:.0}">v{}</text></g>"#,
                x - 4.0,
                y - 15.0,
                x + 4.0,
                y,
                v.version
            );
        }
    }
    svg.push_str("</svg>");
    PreEscaped(svg)
}

pub(super) async fn model_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let Ok(n) = ModelName::new(name) else {
        return layout::error_page(&s, StatusCode::BAD_REQUEST, "not a model name");
    };
    let m = match d.ctl.resolve_model(&n, &version).await {
        Ok(stored) => crate::controller::Controller::manifest_view(&stored),
        Err(e) => return layout::error_page(&s, StatusCode::NOT_FOUND, &e.to_string()),
    };
    page(
        &s,
        "models",
        &format!("{}@{}", m.name, m.version),
        manifest(&m),
    )
}

fn manifest(m: &ManifestView) -> Markup {
    let shape = |s: &[Option<u64>]| {
        s.iter()
            .map(|d| d.map_or_else(|| "N".into(), |d| d.to_string()))
            .collect::<Vec<_>>()
            .join(" × ")
    };
    html! {
        table #manifest {
            tr { th { "sha256" } td { code { (m.sha256) } } }
            tr { th { "size" } td #model-size { (m.size) " bytes" } }
            tr { th { "aliases" } td #model-aliases { (m.aliases.join(", ")) } }
            tr { th { "parent" } td { (m.parent.map_or_else(|| "–".into(), |p| format!("v{p}"))) } }
            tr { th { "retraining job" } td { (m.retrain_job.map_or_else(|| "–".into(), |j| format!("#{j}"))) } }
            tr { th { "dataset" } td { code { (m.dataset_sha256.as_deref().unwrap_or("–")) } } }
            tr { th { "training run" } td { (m.training_run.as_deref().unwrap_or("–")) } }
            tr { th { "latency budget (p95)" } td { (m.latency_budget_us.map_or_else(|| "–".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))) } }
            tr { th { "signed by" } td { code { (m.signed_by) } } }
            tr { th { "created / expires" } td { (layout::time(m.created_at)) " / " (layout::time(m.expires_at)) } }
            tr { th { "min agent version" } td { (m.min_agent_version) } }
        }
        @if !m.eval_metrics.is_empty() {
            h2 { "Evaluation" }
            table { @for (k, v) in &m.eval_metrics { tr { th { (k) } td.num { (format!("{v:.4}")) } } } }
        }
        h2 { "IO schema" }
        table #io-schema {
            thead { tr { th { "" } th { "name" } th { "type" } th { "shape" } } }
            tbody {
                @for t in &m.inputs { tr { td { "input" } td { (t.name) } td { (format!("{:?}", t.dtype)) } td { (shape(&t.shape)) } } }
                @for t in &m.outputs { tr { td { "output" } td { (t.name) } td { (format!("{:?}", t.dtype)) } td { (shape(&t.shape)) } } }
            }
        }
        h2 { "Reference profile" }
        div.hists {
            @for f in &m.reference.features {
                figure.hist {
                    (bars(&bin_labels(&f.bins.edges), &f.bins.frequencies.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), None))
                    figcaption { (f.name) }
                }
            }
            @if !m.reference.output.frequencies.is_empty() {
                figure.hist {
                    (bars(&bin_labels(&m.reference.output.edges), &m.reference.output.frequencies.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(), None))
                    figcaption { "output" }
                }
            }
        }
    }
}
