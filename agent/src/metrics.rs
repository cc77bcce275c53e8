//! Counters shared by the shells (link, driver, API) and their Prometheus
//! text rendering. Per-inference counts are not kept here: they come from the
//! recorders (closed windows plus the open one), so the hot path touches no
//! extra shared cache line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use drover_protocol::LatencyHistogram;

/// Totals of closed windows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Closed {
    pub(crate) inferences: u64,
    pub(crate) errors: u64,
    pub(crate) latency: LatencyHistogram,
}

/// Agent-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    rejected_commands: Mutex<BTreeMap<String, u64>>,
    malformed: Mutex<BTreeMap<String, u64>>,
    http_errors: Mutex<BTreeMap<String, u64>>,
    deploy_failures: Mutex<BTreeMap<String, u64>>,
    feedback: Mutex<BTreeMap<String, u64>>,
    store_failures: Mutex<BTreeMap<String, u64>>,
    pub(crate) closed: Mutex<Closed>,
    pub(crate) link_connected: AtomicBool,
    pub(crate) link_reconnects: AtomicU64,
    pub(crate) link_dropped: AtomicU64,
    pub(crate) windows_published: AtomicU64,
    pub(crate) outbox_depth: AtomicU64,
    pub(crate) outbox_evicted: AtomicU64,
    pub(crate) chunks_received: AtomicU64,
    pub(crate) chunks_ignored: AtomicU64,
    pub(crate) shadow_dropped_closed: AtomicU64,
    /// Woken whenever the driver publishes state or the link goes up or
    /// down, so callers can await a change instead of polling.
    pub(crate) changed: tokio::sync::Notify,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(key.to_string()).or_insert(0) += 1;
}

fn snapshot(m: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    m.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Metrics {
    /// Wakes everyone awaiting a change.
    pub(crate) fn touch(&self) {
        self.changed.notify_waiters();
    }

    /// A command refused by the trust rules, by reason code.
    pub(crate) fn rejected_command(&self, code: &str) {
        bump(&self.rejected_commands, code);
    }

    /// A payload that did not decode, by kind.
    pub(crate) fn malformed(&self, kind: &str) {
        bump(&self.malformed, kind);
    }

    /// An HTTP request refused, by error code.
    pub(crate) fn http_error(&self, code: &str) {
        bump(&self.http_errors, code);
    }

    /// A deploy that failed, by reason code.
    pub(crate) fn deploy_failed(&self, code: &str) {
        bump(&self.deploy_failures, code);
    }

    /// A store write that failed where the driver carries on anyway (the
    /// failure is logged and counted, never dropped), by operation.
    pub(crate) fn store_failed(&self, op: &str) {
        bump(&self.store_failures, op);
    }

    pub(crate) fn store_failures(&self) -> BTreeMap<String, u64> {
        snapshot(&self.store_failures)
    }

    /// Feedback by outcome (`recorded`, `unknown`, `expired`, ...).
    pub(crate) fn feedback(&self, outcome: &str) {
        bump(&self.feedback, outcome);
    }

    pub(crate) fn rejected_commands(&self) -> BTreeMap<String, u64> {
        snapshot(&self.rejected_commands)
    }

    pub(crate) fn malformed_payloads(&self) -> BTreeMap<String, u64> {
        snapshot(&self.malformed)
    }

    pub(crate) fn http_errors(&self) -> BTreeMap<String, u64> {
        snapshot(&self.http_errors)
    }

    pub(crate) fn feedback_outcomes(&self) -> BTreeMap<String, u64> {
        snapshot(&self.feedback)
    }

    pub(crate) fn deploy_failures(&self) -> BTreeMap<String, u64> {
        snapshot(&self.deploy_failures)
    }

    /// Adds a closed window's totals.
    pub(crate) fn add_closed(&self, inferences: u64, errors: u64, latency: &LatencyHistogram) {
        let mut c = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        c.inferences += inferences;
        c.errors += errors;
        c.latency.merge(latency);
    }
}

/// Live values gathered at scrape time.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    pub(crate) inferences: u64,
    pub(crate) errors: u64,
    pub(crate) latency: LatencyHistogram,
    pub(crate) no_model: u64,
    pub(crate) bad_input: u64,
    pub(crate) shadow_dropped: u64,
    pub(crate) active: Option<String>,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition.
pub(crate) fn render(m: &Metrics, s: &Scrape) -> String {
    let mut o = String::new();
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    counter(
        &mut o,
        "drover_agent_inferences_total",
        "Inferences run.",
        s.inferences,
    );
    counter(
        &mut o,
        "drover_agent_inference_errors_total",
        "Inferences that failed.",
        s.errors,
    );
    counter(
        &mut o,
        "drover_agent_no_model_total",
        "Requests refused because no model was active.",
        s.no_model,
    );
    counter(
        &mut o,
        "drover_agent_bad_input_total",
        "Requests that did not fit the model's input.",
        s.bad_input,
    );
    counter(
        &mut o,
        "drover_agent_shadow_dropped_total",
        "Sampled inputs dropped because the shadow queue was full.",
        s.shadow_dropped + m.shadow_dropped_closed.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "drover_agent_link_reconnects_total",
        "MQTT connections lost.",
        m.link_reconnects.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "drover_agent_link_dropped_total",
        "Reports dropped because the offline queue was full.",
        m.link_dropped.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "drover_agent_windows_published_total",
        "Telemetry windows published (including re-publishes).",
        m.windows_published.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "drover_agent_outbox_evicted_total",
        "Telemetry windows evicted from a full outbox.",
        m.outbox_evicted.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "drover_agent_chunks_received_total",
        "Artifact chunks accepted.",
        m.chunks_received.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "drover_agent_chunks_ignored_total",
        "Artifact chunks ignored (unrequested, duplicate, foreign).",
        m.chunks_ignored.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        o,
        "# HELP drover_agent_outbox_depth Telemetry windows waiting for acknowledgement.\n\
         # TYPE drover_agent_outbox_depth gauge\ndrover_agent_outbox_depth {}",
        m.outbox_depth.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP drover_agent_link_up Whether the MQTT link is connected.\n\
         # TYPE drover_agent_link_up gauge\ndrover_agent_link_up {}",
        u8::from(m.link_connected.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        o,
        "# HELP drover_agent_inference_latency_us Inference latency quantiles since start, µs.\n\
         # TYPE drover_agent_inference_latency_us summary"
    );
    for q in [0.5, 0.9, 0.95, 0.99] {
        if let Some(v) = s.latency.quantile(q) {
            let _ = writeln!(
                o,
                "drover_agent_inference_latency_us{{quantile=\"{q}\"}} {v}"
            );
        }
    }
    let _ = writeln!(
        o,
        "drover_agent_inference_latency_us_sum {}\ndrover_agent_inference_latency_us_count {}",
        (s.latency.mean() * s.latency.count() as f64).round(),
        s.latency.count()
    );
    let labelled =
        |o: &mut String, name: &str, help: &str, label: &str, map: BTreeMap<String, u64>| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, v) in map {
                let _ = writeln!(o, "{name}{{{label}=\"{}\"}} {v}", esc(&k));
            }
        };
    labelled(
        &mut o,
        "drover_agent_rejected_commands_total",
        "Commands refused, by reason.",
        "reason",
        m.rejected_commands(),
    );
    labelled(
        &mut o,
        "drover_agent_malformed_payloads_total",
        "MQTT payloads that did not decode, by kind.",
        "kind",
        m.malformed_payloads(),
    );
    labelled(
        &mut o,
        "drover_agent_http_errors_total",
        "HTTP requests refused, by error.",
        "error",
        m.http_errors(),
    );
    labelled(
        &mut o,
        "drover_agent_feedback_total",
        "Feedback by outcome (unknown and expired ids included).",
        "outcome",
        m.feedback_outcomes(),
    );
    labelled(
        &mut o,
        "drover_agent_deploy_failures_total",
        "Deploys that failed, by reason.",
        "reason",
        m.deploy_failures(),
    );
    labelled(
        &mut o,
        "drover_agent_store_failures_total",
        "Store writes that failed and were carried on past, by operation.",
        "op",
        m.store_failures(),
    );
    if let Some(a) = &s.active {
        let _ = writeln!(
            o,
            "# HELP drover_agent_active_model The serving model.\n\
             # TYPE drover_agent_active_model gauge\ndrover_agent_active_model{{model=\"{}\"}} 1",
            esc(a)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_quantiles() {
        let m = Metrics::default();
        m.rejected_command("replayed_command");
        m.rejected_command("replayed_command");
        m.malformed("down:malformed");
        let mut s = Scrape::default();
        for us in 1..=100 {
            s.latency.record(us);
        }
        s.inferences = 100;
        s.active = Some("sensor@1".into());
        let text = render(&m, &s);
        assert!(text.contains("drover_agent_inferences_total 100"));
        assert!(
            text.contains("drover_agent_rejected_commands_total{reason=\"replayed_command\"} 2")
        );
        assert!(text.contains("drover_agent_malformed_payloads_total{kind=\"down:malformed\"} 1"));
        assert!(text.contains("drover_agent_inference_latency_us{quantile=\"0.5\"}"));
        assert!(text.contains("drover_agent_active_model{model=\"sensor@1\"} 1"));
    }
}
