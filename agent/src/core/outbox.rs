//! Telemetry outbox bookkeeping: a bounded queue of windows (oldest evicted
//! first, evictions counted into the next window), what to publish when, and
//! deletion only on the controller's TelemetryAck. The SQLite shell holds the
//! bytes; this core holds sequence numbers and timers. Sans-IO.

use std::collections::BTreeMap;

use drover_protocol::Timestamp;
use drover_protocol::telemetry::TelemetryWindow;

/// Outbox limits and timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxConfig {
    /// Windows kept at most; the oldest is evicted to make room.
    pub capacity: usize,
    /// Windows published and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// An unacknowledged window is published again after this long (ms).
    pub retransmit_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            capacity: 10_000,
            max_in_flight: 32,
            retransmit_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unsent,
    Sent { at: Timestamp },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    state: State,
    /// Evictions this window reports.
    reports: u64,
    /// Ever handed to the link (survives a reconnect's reset to Unsent).
    ever_sent: bool,
}

/// What pushing a window did.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    /// The window, with `evicted_windows` filled in; persist it as-is.
    pub window: TelemetryWindow,
    /// Older windows evicted to make room; delete them in the same transaction.
    pub evicted: Vec<u64>,
}

/// The outbox state machine.
#[derive(Debug, Clone)]
pub struct Outbox {
    cfg: OutboxConfig,
    entries: BTreeMap<u64, Entry>,
    connected: bool,
    evicted_total: u64,
}

impl Outbox {
    /// An outbox holding the persisted windows, as (seq, evictions it
    /// reports). All unsent: after a restart nothing is known to be in flight.
    pub fn new(cfg: OutboxConfig, windows: impl IntoIterator<Item = (u64, u64)>) -> Outbox {
        let cfg = OutboxConfig {
            capacity: cfg.capacity.max(1),
            max_in_flight: cfg.max_in_flight.max(1),
            retransmit_ms: cfg.retransmit_ms.max(1),
        };
        Outbox {
            cfg,
            entries: windows
                .into_iter()
                .map(|(s, reports)| {
                    (
                        s,
                        Entry {
                            state: State::Unsent,
                            reports,
                            ever_sent: false,
                        },
                    )
                })
                .collect(),
            connected: false,
            evicted_total: 0,
        }
    }

    /// Windows held.
    pub fn depth(&self) -> usize {
        self.entries.len()
    }

    /// Windows evicted since start.
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total
    }

    /// Whether `seq` is held.
    pub fn contains(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    /// Adds a closed window, evicting the oldest ones if full. The evictions
    /// are reported in this very window, which is the next one to leave the
    /// device after them. An evicted window that was never published carries
    /// its own report over; one that was published may have reached the
    /// controller, so its report is not repeated (never over-counted; only a
    /// window lost in flight and then evicted takes its report with it).
    pub fn push(&mut self, mut window: TelemetryWindow) -> Pushed {
        let mut evicted = Vec::new();
        let mut reports = window.evicted_windows;
        while self.entries.len() >= self.cfg.capacity {
            match self.entries.pop_first() {
                Some((seq, e)) => {
                    evicted.push(seq);
                    reports = reports.saturating_add(1);
                    if !e.ever_sent {
                        reports = reports.saturating_add(e.reports);
                    }
                }
                None => break,
            }
        }
        self.evicted_total += evicted.len() as u64;
        window.evicted_windows = reports;
        self.entries.insert(
            window.seq,
            Entry {
                state: State::Unsent,
                reports,
                ever_sent: false,
            },
        );
        Pushed { window, evicted }
    }

    /// The link is up: everything not acknowledged is published again.
    pub fn handle_connected(&mut self) {
        self.connected = true;
        for e in self.entries.values_mut() {
            e.state = State::Unsent;
        }
    }

    /// The link is down: nothing is published until it is back.
    pub fn handle_disconnected(&mut self) {
        self.connected = false;
    }

    /// Forgets a window the agent itself gave up on (it could not be
    /// persisted, or its row is gone).
    pub fn discard(&mut self, seq: u64) -> bool {
        self.entries.remove(&seq).is_some()
    }

    /// The controller persisted these windows: returns those to delete
    /// (only windows ever sent; the others stay).
    ///
    /// A window published strictly before an acknowledged one and still
    /// unacknowledged was lost on the way (typically flushed on reconnect
    /// while the controller had not subscribed again yet, which the broker
    /// drops): it is due again now rather than at the resend timer. A
    /// duplicate this may cause is deduplicated by the controller.
    pub fn handle_ack(&mut self, seqs: &[u64]) -> Vec<u64> {
        let mut latest: Option<Timestamp> = None;
        let deleted: Vec<u64> = seqs
            .iter()
            .copied()
            // Only windows this agent has handed to the link can have been
            // stored by the controller; an ack naming others is wrong.
            .filter(|s| match self.entries.get(s) {
                Some(e) if e.ever_sent => {
                    if let State::Sent { at } = e.state {
                        latest = latest.max(Some(at));
                    }
                    self.entries.remove(s);
                    true
                }
                _ => false,
            })
            .collect();
        if let Some(latest) = latest {
            for e in self.entries.values_mut() {
                if matches!(e.state, State::Sent { at } if at < latest) {
                    e.state = State::Unsent;
                }
            }
        }
        deleted
    }

    fn in_flight(&self, now: Timestamp) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.state, State::Sent { at } if now < at.plus_ms(self.cfg.retransmit_ms)))
            .count()
    }

    /// Up to `max` windows to publish now (oldest first), marked as sent.
    pub fn poll_transmit(&mut self, now: Timestamp, max: usize) -> Vec<u64> {
        if !self.connected {
            return Vec::new();
        }
        let budget = self
            .cfg
            .max_in_flight
            .saturating_sub(self.in_flight(now))
            .min(max);
        let retransmit = self.cfg.retransmit_ms;
        let mut out = Vec::new();
        for (seq, e) in self.entries.iter_mut() {
            if out.len() >= budget {
                break;
            }
            let due = match e.state {
                State::Unsent => true,
                State::Sent { at } => now >= at.plus_ms(retransmit),
            };
            if due {
                e.state = State::Sent { at: now };
                e.ever_sent = true;
                out.push(*seq);
            }
        }
        out
    }

    /// When a published window is next due again, if connected.
    pub fn poll_timeout(&self) -> Option<(Timestamp, &'static str)> {
        if !self.connected {
            return None;
        }
        self.entries
            .values()
            .filter_map(|e| match e.state {
                State::Sent { at } => Some(at.plus_ms(self.cfg.retransmit_ms)),
                State::Unsent => None,
            })
            .min()
            .map(|t| (t, "telemetry_retransmit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_protocol::testkit;

    fn cfg(capacity: usize, max_in_flight: usize) -> OutboxConfig {
        OutboxConfig {
            capacity,
            max_in_flight,
            retransmit_ms: 1000,
        }
    }

    fn window(seq: u64) -> TelemetryWindow {
        testkit::realistic_window(seq)
    }

    #[test]
    fn evicts_oldest_first_and_reports_the_count_in_the_next_window() {
        let mut o = Outbox::new(cfg(3, 10), []);
        for s in 1..=3 {
            let p = o.push(window(s));
            assert!(p.evicted.is_empty());
            assert_eq!(p.window.evicted_windows, 0);
        }
        let p = o.push(window(4));
        assert_eq!(p.evicted, vec![1]);
        assert_eq!(p.window.evicted_windows, 1);
        let p = o.push(window(5));
        assert_eq!(p.evicted, vec![2]);
        assert_eq!(p.window.evicted_windows, 1);
        assert_eq!(o.depth(), 3);
        assert_eq!(o.evicted_total(), 2);
        assert!(!o.contains(2) && o.contains(3));
        // Window 4 carried a report of 1; evicting it carries that on.
        o.push(window(6));
        let p = o.push(window(7));
        assert_eq!(p.evicted, vec![4]);
        assert_eq!(p.window.evicted_windows, 2);
        assert_eq!(o.evicted_total(), 4);
    }

    #[test]
    fn a_published_reporter_is_not_counted_twice() {
        let mut o = Outbox::new(cfg(2, 10), []);
        o.handle_connected();
        o.push(window(1));
        o.push(window(2));
        assert_eq!(o.push(window(3)).window.evicted_windows, 1);
        // Window 3 (reporting 1) is published, then evicted unacknowledged.
        assert_eq!(o.poll_transmit(Timestamp(0), 10), vec![2, 3]);
        o.handle_disconnected();
        assert_eq!(o.push(window(4)).window.evicted_windows, 1);
        assert_eq!(o.push(window(5)).window.evicted_windows, 1);
    }

    #[test]
    fn reported_evictions_always_add_up_to_windows_lost() {
        let mut o = Outbox::new(cfg(2, 10), [(1, 0), (2, 0)]);
        let mut remaining = std::collections::BTreeMap::new();
        for seq in 3..50 {
            let p = o.push(window(seq));
            for e in &p.evicted {
                remaining.remove(e);
            }
            remaining.insert(seq, p.window.evicted_windows);
        }
        let reported: u64 = remaining.values().sum();
        assert_eq!(reported, o.evicted_total());
        assert_eq!(reported, 47);
    }

    #[test]
    fn publishes_only_when_connected_within_the_in_flight_limit() {
        let mut o = Outbox::new(cfg(100, 2), [(1, 0), (2, 0), (3, 0)]);
        assert!(o.poll_transmit(Timestamp(0), 10).is_empty());
        assert_eq!(o.poll_timeout(), None);
        o.handle_connected();
        assert_eq!(o.poll_transmit(Timestamp(0), 10), vec![1, 2]);
        assert!(o.poll_transmit(Timestamp(10), 10).is_empty());
        assert_eq!(o.handle_ack(&[1, 99]), vec![1]);
        assert_eq!(o.poll_transmit(Timestamp(20), 10), vec![3]);
        assert_eq!(
            o.poll_timeout(),
            Some((Timestamp(1000), "telemetry_retransmit"))
        );
    }

    #[test]
    fn unacked_windows_are_republished_after_timeout_and_on_reconnect() {
        let mut o = Outbox::new(cfg(100, 10), []);
        o.handle_connected();
        o.push(window(1));
        o.push(window(2));
        assert_eq!(o.poll_transmit(Timestamp(0), 10), vec![1, 2]);
        assert!(o.poll_transmit(Timestamp(999), 10).is_empty());
        assert_eq!(o.poll_transmit(Timestamp(1000), 1), vec![1]);
        o.handle_disconnected();
        assert!(o.poll_transmit(Timestamp(5000), 10).is_empty());
        o.handle_connected();
        assert_eq!(o.poll_transmit(Timestamp(5001), 10), vec![1, 2]);
        assert_eq!(o.handle_ack(&[1, 2]), vec![1, 2]);
        assert_eq!(o.depth(), 0);
        assert!(o.poll_transmit(Timestamp(99_999), 10).is_empty());
    }

    #[test]
    fn an_ack_for_a_later_window_resends_earlier_lost_ones_at_once() {
        let mut o = Outbox::new(cfg(100, 10), [(1, 0), (2, 0), (3, 0)]);
        o.handle_connected();
        // The backlog flushed on reconnect is lost at the broker.
        assert_eq!(o.poll_transmit(Timestamp(0), 10), vec![1, 2, 3]);
        o.push(window(4));
        assert_eq!(o.poll_transmit(Timestamp(200), 10), vec![4]);
        assert_eq!(o.handle_ack(&[4]), vec![4]);
        // Long before the resend timer (1000 ms).
        assert_eq!(o.poll_transmit(Timestamp(201), 10), vec![1, 2, 3]);
        // Windows published together are not presumed lost by each other's ack.
        assert_eq!(o.handle_ack(&[1]), vec![1]);
        assert!(o.poll_transmit(Timestamp(202), 10).is_empty());
    }

    #[test]
    fn deleted_only_on_ack() {
        let mut o = Outbox::new(cfg(10, 10), [(5, 0)]);
        o.handle_connected();
        for t in 0..10 {
            o.poll_transmit(Timestamp(t * 1000), 10);
        }
        assert_eq!(o.depth(), 1);
        assert!(o.handle_ack(&[6]).is_empty());
        assert_eq!(o.handle_ack(&[5]), vec![5]);
        assert_eq!(o.depth(), 0);
    }
}
