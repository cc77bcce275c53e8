//! The fleet overview, the device list and one device's page.

use std::collections::{BTreeMap, BTreeSet};

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use drover_protocol::DeviceId;
use drover_protocol::labels::Selector;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, chart, ms, num, page};
use super::{Dashboard, Session};
use crate::fleet::devices::DeviceInfo;
use crate::retraining::runner::DriftRequest;
use crate::telemetry::query::TelemetryFilter;

/// A device's cohort: `region × hardware`, as the rollout planner
/// stratifies canaries.
pub(super) fn cohort(d: &DeviceInfo) -> String {
    let region = d.labels.get("region").map_or("-", String::as_str);
    let hw = d
        .hardware
        .as_deref()
        .or(d.labels.get("hardware").map(String::as_str))
        .unwrap_or("-");
    format!("{region} × {hw}")
}

/// Online now, offline (seen before), or silent (never connected).
pub(super) fn state(d: &DeviceInfo) -> &'static str {
    if d.online {
        "online"
    } else if d.last_seen.is_some() {
        "offline"
    } else {
        "silent"
    }
}

#[derive(Default)]
struct CohortRow {
    online: u64,
    offline: u64,
    silent: u64,
    versions: BTreeMap<String, u64>,
}

pub(super) async fn fleet_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
) -> Response {
    let devices = match d.ctl.devices(&Selector::default()).await {
        Ok(v) => v,
        Err(e) => return layout::error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let mut cohorts: BTreeMap<String, CohortRow> = BTreeMap::new();
    let mut versions: BTreeSet<String> = BTreeSet::new();
    let (mut online, mut offline, mut silent) = (0u64, 0u64, 0u64);
    for dev in &devices {
        let row = cohorts.entry(cohort(dev)).or_default();
        match state(dev) {
            "online" => (online += 1, row.online += 1),
            "offline" => (offline += 1, row.offline += 1),
            _ => (silent += 1, row.silent += 1),
        };
        let v = dev.active.clone().unwrap_or_else(|| "none".into());
        *row.versions.entry(v.clone()).or_insert(0) += 1;
        versions.insert(v);
    }
    let rollouts = d.rollouts.list().await;
    let paused: Vec<_> = rollouts.iter().filter(|r| r.phase == "paused").collect();
    let drifting: Vec<(String, String)> = d
        .retrain
        .drift(DriftRequest {
            model: None,
            version: None,
            cohort_key: None,
            window_ms: None,
        })
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.fleet.is_drifting())
        .map(|o| {
            let why = match &o.fleet.verdict {
                Some(crate::core::drift::report::Verdict::Drifting { reason }) => reason.clone(),
                _ => String::new(),
            };
            (format!("{}@{}", o.model, o.version), why)
        })
        .collect();
    let failing: Vec<&DeviceInfo> = devices
        .iter()
        .filter(|dev| dev.deploy.as_ref().is_some_and(|r| r.phase == "failed"))
        .collect();
    let body = html! {
        section.cards {
            div.card { div.big #total-devices { (devices.len()) } div { "devices" } }
            div.card.ok { div.big #online { (online) } div { "online" } }
            div.card.warn { div.big #offline { (offline) } div { "offline" } }
            div.card.bad { div.big #silent { (silent) } div { "silent (never connected)" } }
            div.card { div.big #active-rollouts { (rollouts.iter().filter(|r| r.active).count()) } div { "active rollouts" } }
        }
        h2 { "Open alerts" }
        @if paused.is_empty() && drifting.is_empty() && failing.is_empty() {
            p #alerts-none { "None." }
        }
        ul #alerts {
            @for r in &paused {
                li.alert data-kind="paused" { "Rollout " a href={"/ui/rollouts/" (r.id)} { (r.id) } " (" (r.model) ") is paused" }
            }
            @for (m, why) in &drifting {
                li.alert data-kind="drift" { "Drift on " a href="/ui/drift" { (m) } ": " (why) }
            }
            @for dev in failing.iter().take(20) {
                li.alert data-kind="failing" {
                    "Device " a href={"/ui/devices/" (dev.id)} { (dev.id) } " failed to install "
                    (dev.deploy.as_ref().map_or("", |r| r.model.as_str())) ": "
                    (dev.deploy.as_ref().and_then(|r| r.reason.clone()).unwrap_or_default())
                }
            }
            @if failing.len() > 20 { li { (failing.len() - 20) " more failing devices" } }
        }
        h2 { "Cohorts (region × hardware)" }
        table #cohorts {
            thead { tr {
                th { "cohort" } th { "online" } th { "offline" } th { "silent" }
                @for v in &versions { th { "active " (v) } }
            } }
            tbody {
                @for (name, row) in &cohorts {
                    tr data-cohort=(name) {
                        td { a href={"/ui/devices?selector=" (selector_of(name))} { (name) } }
                        td.num.online { (row.online) } td.num { (row.offline) } td.num { (row.silent) }
                        @for v in &versions { td.num data-version=(v) { (row.versions.get(v).copied().unwrap_or(0)) } }
                    }
                }
            }
        }
    };
    page(&s, "fleet", "Fleet", body)
}

/// The selector text matching a cohort name from [`cohort`].
fn selector_of(cohort: &str) -> String {
    let mut parts = Vec::new();
    if let Some((region, hw)) = cohort.split_once(" × ") {
        if region != "-" {
            parts.push(format!("region={region}"));
        }
        if hw != "-" {
            parts.push(format!("hardware={hw}"));
        }
    }
    parts.join(",")
}

#[derive(Debug, Deserialize)]
pub(super) struct DevicesQuery {
    #[serde(default)]
    selector: String,
}

pub(super) async fn devices_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Query(q): Query<DevicesQuery>,
) -> Response {
    let (devices, error) = match Selector::parse(&q.selector) {
        Ok(sel) => match d.ctl.devices(&sel).await {
            Ok(v) => (v, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        },
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let now = d.ctl.now().0;
    let body = html! {
        form.filter method="get" action="/ui/devices" {
            label for="selector" { "Selector" }
            input #selector type="text" name="selector" value=(q.selector) placeholder="region=eu,hardware=pi4";
            button type="submit" { "Filter" }
        }
        @if let Some(e) = error { p.error { (e) } }
        p { span #device-count { (devices.len()) } " devices" }
        table #devices {
            thead { tr { th { "device" } th { "state" } th { "cohort" } th { "active" } th { "previous" } th { "shadow" } th { "last seen" } th { "agent" } } }
            tbody {
                @for dev in &devices {
                    tr data-device=(dev.id) {
                        td { a href={"/ui/devices/" (dev.id)} { (dev.id) } }
                        td class=(state(dev)) { (state(dev)) }
                        td { (cohort(dev)) }
                        td { (dev.active.as_deref().unwrap_or("–")) }
                        td { (dev.previous.as_deref().unwrap_or("–")) }
                        td { (dev.shadow.as_deref().unwrap_or("–")) }
                        td { (dev.last_seen.map_or_else(|| "never".into(), |t| ago(now, t))) }
                        td { (dev.agent_version.as_deref().unwrap_or("–")) }
                    }
                }
            }
        }
    };
    page(&s, "devices", "Devices", body)
}

fn ago(now: u64, t: u64) -> String {
    let s = now.saturating_sub(t) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// Buckets of the device's "over time" charts.
const BUCKETS: u64 = 20;
const BUCKET_MS: u64 = 30_000;

pub(super) async fn device_page(
    State(d): State<Dashboard>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = DeviceId::new(id) else {
        return layout::error_page(&s, StatusCode::BAD_REQUEST, "not a device id");
    };
    let dev = match d.ctl.device(&id).await {
        Ok(Some(dev)) => dev,
        Ok(None) => return layout::error_page(&s, StatusCode::NOT_FOUND, "unknown device"),
        Err(e) => return layout::error_page(&s, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let filter = |from_ms: Option<u64>, to_ms: Option<u64>| TelemetryFilter {
        devices: Some(vec![id.to_string()]),
        per_device: true,
        role: Some("active".into()),
        from_ms,
        to_ms,
        ..TelemetryFilter::default()
    };
    let total = d.ctl.telemetry_summary(filter(None, None)).await.ok();
    let now = d.ctl.now().0;
    let start = now.saturating_sub(BUCKETS * BUCKET_MS);
    let mut xs = Vec::new();
    let (mut p50, mut p95, mut p99, mut err, mut acc) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in 0..BUCKETS {
        let from = start + b * BUCKET_MS;
        let Ok(t) = d
            .ctl
            .telemetry_summary(filter(Some(from), Some(from + BUCKET_MS)))
            .await
        else {
            continue;
        };
        let m = t.merged;
        xs.push((from + BUCKET_MS) as f64 / 1000.0);
        let as_ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
        p50.push(as_ms(m.p50_us));
        p95.push(as_ms(m.p95_us));
        p99.push(as_ms(m.p99_us));
        err.push(m.error_rate);
        acc.push(m.accuracy);
    }
    let deploys = d.ctl.deploy_history(&id, 20).await.unwrap_or_default();
    let body = html! {
        (device_facts(&dev))
        h2 { "Last deploys" }
        @if deploys.is_empty() {
            p #dev-deploys-none { "No model command sent to this device yet." }
        } @else {
            table #dev-deploys {
                thead { tr { th { "seq" } th { "command" } th { "model" } th { "sent" } th { "outcome" } } }
                tbody {
                    @for r in &deploys {
                        tr data-seq=(r.seq) {
                            td.num { (r.seq) } td { (r.kind) } td { (r.model.as_deref().unwrap_or("–")) }
                            td { (layout::time(r.issued_at)) } td.outcome { (r.result.as_deref().unwrap_or("no answer yet")) }
                        }
                    }
                }
            }
        }
        h2 { "Telemetry (active model, all stored windows)" }
        @if let Some(t) = &total {
            table #device-telemetry {
                tr { th { "inferences" } td #dev-count { (t.merged.count) } }
                tr { th { "errors" } td #dev-errors { (t.merged.errors) } }
                tr { th { "p50 / p95 / p99 (ms)" } td #dev-latency { (ms(t.merged.p50_us)) " / " (ms(t.merged.p95_us)) " / " (ms(t.merged.p99_us)) } }
                tr { th { "accuracy" } td #dev-accuracy { (num(t.merged.accuracy, 3)) " (" (t.merged.labelled) " labelled)" } }
            }
        }
        h2 { "Over the last " (BUCKETS * BUCKET_MS / 60_000) " minutes" }
        (chart("latency-chart", "latency (ms)", &xs, &[("p50".into(), p50), ("p95".into(), p95), ("p99".into(), p99)]))
        (chart("quality-chart", "error rate and accuracy", &xs, &[("error rate".into(), err), ("accuracy".into(), acc)]))
    };
    page(&s, "devices", &format!("Device {id}"), body)
}

fn device_facts(dev: &DeviceInfo) -> Markup {
    html! {
        table #device-facts {
            tr { th { "state" } td #dev-state { (state(dev)) } }
            tr { th { "cohort" } td { (cohort(dev)) } }
            tr { th { "labels" } td { @for (k, v) in &dev.labels { code { (k) "=" (v) } " " } } }
            tr { th { "active" } td #dev-active { (dev.active.as_deref().unwrap_or("–")) } }
            tr { th { "previous" } td #dev-previous { (dev.previous.as_deref().unwrap_or("–")) } }
            tr { th { "shadow" } td #dev-shadow { (dev.shadow.as_deref().unwrap_or("–")) } }
            tr { th { "agent" } td { (dev.agent_version.as_deref().unwrap_or("–")) " on " (dev.arch.as_deref().unwrap_or("?")) } }
            tr { th { "command sequence" } td { "issued " (dev.issued_seq) ", reported " (dev.reported_seq) } }
            tr { th { "telemetry outbox" } td { (dev.outbox_depth) " windows waiting" } }
            tr { th { "last deploy" } td #dev-deploy {
                @match &dev.deploy {
                    Some(r) => { (r.model) ": " b { (r.phase) } @if let Some(why) = &r.reason { " — " (why) } " at " (layout::time(r.at)) }
                    None => { "none" }
                }
            } }
        }
    }
}
