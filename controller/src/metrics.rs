//! Counters for `/metrics` (Prometheus text format). Lock-free on the hot
//! paths; the per-kind malformed counters sit behind a mutex because they
//! only move on bad input.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The controller's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Telemetry windows stored.
    pub windows_ingested: AtomicU64,
    /// Telemetry windows received again and acknowledged without storing.
    pub windows_deduped: AtomicU64,
    /// Telemetry acks published.
    pub telemetry_acks_sent: AtomicU64,
    /// Chunks published.
    pub chunks_served: AtomicU64,
    /// Artifact bytes published in chunks.
    pub chunk_bytes: AtomicU64,
    /// Chunk requests refused (unknown artifact, bad range).
    pub chunks_refused: AtomicU64,
    /// Chunk requests dropped because a device's queue was full.
    pub chunk_requests_dropped: AtomicU64,
    /// Signed commands published.
    pub commands_sent: AtomicU64,
    /// Commands devices rejected (ack with a reason).
    pub commands_rejected: AtomicU64,
    /// Inbound messages dropped because the dispatcher queue was full.
    pub inbound_dropped: AtomicU64,
    /// Telemetry windows dropped because the ingest queue was full (the
    /// agent resends them: they stay in its outbox until acknowledged).
    pub ingest_dropped: AtomicU64,
    /// MQTT messages received.
    pub mqtt_messages: AtomicU64,
    /// Key lists pushed to devices.
    pub key_lists_sent: AtomicU64,
    malformed: Mutex<BTreeMap<&'static str, u64>>,
    uplinks_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Devices whose clock was re-synchronised from a signed Hello.
    pub uplink_clock_resyncs: AtomicU64,
    rate: Mutex<RateWindow>,
    /// The embedded broker's gate, when it runs (set once at startup).
    gate: std::sync::OnceLock<std::sync::Arc<crate::fleet::gate::GateCounters>>,
}

/// Gate refusal reasons exported even before they first happen, so a
/// dashboard's `rate()` sees them from zero: the connect, publish and
/// subscribe refusals.
const GATE_REASONS: [&str; 8] = [
    "anonymous",
    "bad_password",
    "unknown_user",
    "client_id",
    "will_topic",
    "publish_topic",
    "subscribe_topic",
    "tls_handshake",
];

/// Uplink refusal kinds exported from zero: forged (bad or missing
/// signature, another device's, unregistered), replayed, stale and
/// throttled uplinks.
const UPLINK_KINDS: [&str; 8] = [
    "bad_signature",
    "wrong_device",
    "unsigned",
    "unregistered",
    "replay",
    "stale",
    "future",
    "throttled",
];

#[derive(Debug, Default)]
struct RateWindow {
    second: u64,
    bytes_this_second: u64,
    last_full_second: u64,
}

/// Increments an atomic counter.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Exports the gate's counters (embedded broker only).
    pub fn set_gate(&self, gate: std::sync::Arc<crate::fleet::gate::GateCounters>) {
        let _ = self.gate.set(gate);
    }

    /// Counts a malformed or refused inbound payload by error kind.
    pub fn malformed(&self, kind: &'static str) {
        let mut m = self.malformed.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(kind).or_default() += 1;
    }

    /// Counts an uplink refused on a device's word (unsigned, unregistered,
    /// bad signature, replay, throttled, uncommanded report...), by kind.
    pub fn uplink_refused(&self, kind: &'static str) {
        let mut m = self
            .uplinks_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry(kind).or_default() += 1;
    }

    /// Refused uplinks so far, by kind.
    pub fn uplinks_refused_counts(&self) -> BTreeMap<&'static str, u64> {
        self.uplinks_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refused uplinks of one kind.
    pub fn uplinks_refused_of(&self, kind: &str) -> u64 {
        self.uplinks_refused_counts()
            .get(kind)
            .copied()
            .unwrap_or_default()
    }

    /// Malformed payloads so far, by kind.
    pub fn malformed_counts(&self) -> BTreeMap<&'static str, u64> {
        self.malformed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Total malformed payloads.
    pub fn malformed_total(&self) -> u64 {
        self.malformed_counts().values().sum()
    }

    /// Records `bytes` of chunk data sent at monotonic second `now_s`.
    pub(crate) fn chunk_sent(&self, bytes: u64, now_s: u64) {
        inc(&self.chunks_served);
        self.chunk_bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if r.second != now_s {
            r.last_full_second = if now_s == r.second + 1 {
                r.bytes_this_second
            } else {
                0
            };
            r.second = now_s;
            r.bytes_this_second = 0;
        }
        r.bytes_this_second += bytes;
    }

    /// Chunk bytes sent during the last full second.
    pub fn chunk_bytes_per_second(&self) -> u64 {
        self.rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_full_second
    }

    /// Renders Prometheus text; `gauges` are computed by the caller.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, u64); 13] = [
            (
                "drover_telemetry_windows_ingested_total",
                "Telemetry windows stored.",
                get(&self.windows_ingested),
            ),
            (
                "drover_telemetry_windows_deduped_total",
                "Telemetry windows received again (acknowledged, not stored twice).",
                get(&self.windows_deduped),
            ),
            (
                "drover_telemetry_acks_sent_total",
                "TelemetryAck messages published.",
                get(&self.telemetry_acks_sent),
            ),
            (
                "drover_chunks_served_total",
                "Artifact chunks published.",
                get(&self.chunks_served),
            ),
            (
                "drover_chunk_bytes_total",
                "Artifact bytes published.",
                get(&self.chunk_bytes),
            ),
            (
                "drover_chunk_requests_refused_total",
                "Chunk requests refused (unknown artifact or range).",
                get(&self.chunks_refused),
            ),
            (
                "drover_chunk_requests_dropped_total",
                "Chunk requests dropped (device queue full).",
                get(&self.chunk_requests_dropped),
            ),
            (
                "drover_commands_sent_total",
                "Signed commands published.",
                get(&self.commands_sent),
            ),
            (
                "drover_commands_rejected_total",
                "Commands devices rejected.",
                get(&self.commands_rejected),
            ),
            (
                "drover_inbound_dropped_total",
                "Inbound MQTT messages dropped (dispatcher queue full).",
                get(&self.inbound_dropped),
            ),
            (
                "drover_ingest_dropped_total",
                "Telemetry windows dropped (ingest queue full; agents resend).",
                get(&self.ingest_dropped),
            ),
            (
                "drover_mqtt_messages_total",
                "MQTT messages received.",
                get(&self.mqtt_messages),
            ),
            (
                "drover_key_lists_sent_total",
                "Key lists pushed to devices.",
                get(&self.key_lists_sent),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP drover_malformed_payloads_total Refused inbound payloads, by error kind.\n\
             # TYPE drover_malformed_payloads_total counter"
        );
        for (kind, v) in self.malformed_counts() {
            let _ = writeln!(
                out,
                "drover_malformed_payloads_total{{kind=\"{kind}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP drover_uplinks_refused_total Device uplinks refused (signature, replay, \
             registration, rate limit, uncommanded reports), by kind.\n\
             # TYPE drover_uplinks_refused_total counter"
        );
        let mut refused = self.uplinks_refused_counts();
        for kind in UPLINK_KINDS {
            refused.entry(kind).or_default();
        }
        for (kind, v) in refused {
            let _ = writeln!(out, "drover_uplinks_refused_total{{kind=\"{kind}\"}} {v}");
        }
        if let Some(gate) = self.gate.get() {
            let _ = writeln!(
                out,
                "# HELP drover_mqtt_gate_accepted_total Broker connections authenticated by the gate.\n\
                 # TYPE drover_mqtt_gate_accepted_total counter\ndrover_mqtt_gate_accepted_total {}",
                gate.accepted()
            );
            let _ = writeln!(
                out,
                "# HELP drover_mqtt_gate_refused_total Broker connects, publishes and subscribes \
                 the gate refused, by reason.\n\
                 # TYPE drover_mqtt_gate_refused_total counter"
            );
            let mut refused = gate.refused();
            for reason in GATE_REASONS {
                refused.entry(reason).or_default();
            }
            for (reason, v) in refused {
                let _ = writeln!(
                    out,
                    "drover_mqtt_gate_refused_total{{reason=\"{reason}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP drover_uplink_clock_resyncs_total Device clock offsets re-learned from a signed Hello.\n\
             # TYPE drover_uplink_clock_resyncs_total counter\ndrover_uplink_clock_resyncs_total {}",
            get(&self.uplink_clock_resyncs)
        );
        let _ = writeln!(
            out,
            "# HELP drover_chunk_bytes_per_second Artifact bytes sent during the last full second.\n\
             # TYPE drover_chunk_bytes_per_second gauge\ndrover_chunk_bytes_per_second {}",
            self.chunk_bytes_per_second()
        );
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
