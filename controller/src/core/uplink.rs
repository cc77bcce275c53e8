//! What the controller decides about a device's signed uplink once its
//! signature has verified: is the counter new (replay), is it fresh (the
//! device's clock, as learned, within a window of ours), is the device
//! within its rate (token bucket), and should a refusal be logged (once per
//! device per minute). Pure: every call takes `now`.
//!
//! # Clock skew
//! Counters are microseconds since the epoch on the device. The guard keeps
//! each device's clock offset (counter − our clock at the last accepted
//! uplink) and checks a new counter against `now + offset` ± the window, so
//! a device whose clock is hours off still works once its offset is known.
//! The offset is (re)learned from a signed Hello, which the agent sends on
//! every (re)connect: a Hello outside the window is accepted if its counter
//! is new, and counted as a resync. Any other uplink outside the window is
//! refused as stale (or from the future). Replays are refused whatever the
//! window says: the counter must exceed the last accepted one.

use std::collections::HashMap;

use drover_protocol::{DeviceId, Timestamp};

/// Limits of the guard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UplinkPolicy {
    /// A counter may differ this much from the expected device time, µs.
    pub window_us: u64,
    /// Token bucket size: uplinks a device may send in a burst.
    pub burst: u32,
    /// Token refill: sustained uplinks per second per device.
    pub per_second: u32,
    /// A device's refusals are logged at most this often, ms.
    pub log_every_ms: u64,
}

impl Default for UplinkPolicy {
    fn default() -> Self {
        UplinkPolicy {
            window_us: 10 * 60 * 1_000_000,
            // An agent coming back online flushes its outbox (bounded by its
            // in-flight limit) and a download keeps a window of chunk
            // requests: far below this.
            burst: 2_000,
            per_second: 200,
            log_every_ms: 60_000,
        }
    }
}

/// Why an uplink was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The counter is not above the last accepted one.
    Replay {
        /// Last accepted counter.
        last: u64,
        /// Counter received.
        got: u64,
    },
    /// The counter is older than the window allows (µs behind).
    Stale {
        /// How far behind the expected device time.
        behind_us: u64,
    },
    /// The counter is further ahead than the window allows (µs ahead).
    Future {
        /// How far ahead of the expected device time.
        ahead_us: u64,
    },
    /// The device is over its rate.
    Throttled,
}

impl Refusal {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Replay { .. } => "replay",
            Refusal::Stale { .. } => "stale",
            Refusal::Future { .. } => "future",
            Refusal::Throttled => "throttled",
        }
    }
}

/// An accepted uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Set when a Hello outside the window re-synchronised the device's
    /// clock offset: the new offset, µs (device − controller).
    pub resynced_offset_us: Option<i64>,
}

#[derive(Debug, Clone)]
struct DeviceState {
    last_counter: u64,
    offset_us: i64,
    tokens: f64,
    refilled_at: Timestamp,
    logged_at: Option<Timestamp>,
}

/// Per-device counters, clock offsets, buckets and log throttles.
#[derive(Debug, Default)]
pub struct UplinkGuard {
    policy: UplinkPolicy,
    devices: HashMap<DeviceId, DeviceState>,
}

fn now_us(now: Timestamp) -> u64 {
    now.0.saturating_mul(1000)
}

impl UplinkGuard {
    /// A guard with `policy`.
    pub fn new(policy: UplinkPolicy) -> UplinkGuard {
        UplinkGuard {
            policy,
            devices: HashMap::new(),
        }
    }

    fn state(&mut self, device: &DeviceId, now: Timestamp) -> &mut DeviceState {
        let burst = f64::from(self.policy.burst);
        self.devices
            .entry(device.clone())
            .or_insert_with(|| DeviceState {
                last_counter: 0,
                offset_us: 0,
                tokens: burst,
                refilled_at: now,
                logged_at: None,
            })
    }

    /// Restores what was persisted for `device` (last counter, clock offset).
    pub fn restore(
        &mut self,
        device: &DeviceId,
        last_counter: u64,
        offset_us: i64,
        now: Timestamp,
    ) {
        let s = self.state(device, now);
        s.last_counter = s.last_counter.max(last_counter);
        s.offset_us = offset_us;
    }

    /// Forgets a device (its key changed: a new key starts a new counter).
    pub fn forget(&mut self, device: &DeviceId) {
        self.devices.remove(device);
    }

    /// The last accepted counter and the clock offset of `device`.
    pub fn position(&self, device: &DeviceId) -> Option<(u64, i64)> {
        self.devices
            .get(device)
            .map(|s| (s.last_counter, s.offset_us))
    }

    /// Checks counter and rate of a verified uplink; on acceptance records
    /// the counter and the device's clock offset. A refused uplink changes
    /// nothing but the bucket (a throttled flood keeps the device throttled).
    pub fn check(
        &mut self,
        device: &DeviceId,
        counter: u64,
        is_hello: bool,
        now: Timestamp,
    ) -> Result<Accepted, Refusal> {
        let policy = self.policy;
        let s = self.state(device, now);
        // Refill, then spend: a refused message still costs a token, so a
        // device replaying or flooding cannot keep the verifier busy for free.
        let elapsed_ms = now.0.saturating_sub(s.refilled_at.0);
        s.tokens = (s.tokens + elapsed_ms as f64 * f64::from(policy.per_second) / 1000.0)
            .min(f64::from(policy.burst));
        s.refilled_at = now;
        if s.tokens < 1.0 {
            return Err(Refusal::Throttled);
        }
        s.tokens -= 1.0;
        if counter <= s.last_counter {
            return Err(Refusal::Replay {
                last: s.last_counter,
                got: counter,
            });
        }
        let now_us = now_us(now);
        let expected = i128::from(now_us) + i128::from(s.offset_us);
        let diff = i128::from(counter) - expected;
        let window = i128::from(policy.window_us);
        let offset = i64::try_from(i128::from(counter) - i128::from(now_us)).unwrap_or(i64::MAX);
        let mut resynced = None;
        if diff.abs() > window {
            if !is_hello {
                let by = u64::try_from(diff.unsigned_abs()).unwrap_or(u64::MAX);
                return Err(if diff < 0 {
                    Refusal::Stale { behind_us: by }
                } else {
                    Refusal::Future { ahead_us: by }
                });
            }
            resynced = Some(offset);
        }
        s.last_counter = counter;
        s.offset_us = offset;
        Ok(Accepted {
            resynced_offset_us: resynced,
        })
    }

    /// True if a refusal for `device` should be logged now (once per
    /// `log_every_ms`); counting happens regardless.
    pub fn should_log(&mut self, device: &DeviceId, now: Timestamp) -> bool {
        let every = self.policy.log_every_ms;
        let s = self.state(device, now);
        match s.logged_at {
            Some(t) if now.0 < t.0.saturating_add(every) => false,
            _ => {
                s.logged_at = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp(1_800_000_000_000);

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    fn us(t: Timestamp) -> u64 {
        t.0 * 1000
    }

    #[test]
    fn replays_and_stale_counters_are_refused() {
        let mut g = UplinkGuard::new(UplinkPolicy::default());
        let d = dev("d1");
        assert_eq!(
            g.check(&d, us(T0), false, T0),
            Ok(Accepted {
                resynced_offset_us: None
            })
        );
        assert_eq!(
            g.check(&d, us(T0), false, T0),
            Err(Refusal::Replay {
                last: us(T0),
                got: us(T0)
            })
        );
        assert!(
            matches!(
                g.check(&d, us(T0) - 1, true, T0),
                Err(Refusal::Replay { .. })
            ),
            "a replayed Hello is a replay too"
        );
        // 11 minutes later, a counter from 11 minutes ago is stale.
        let later = T0.plus_ms(11 * 60_000);
        assert_eq!(
            g.check(&d, us(T0) + 5, false, later),
            Err(Refusal::Stale {
                behind_us: 11 * 60_000_000 - 5
            })
        );
        assert!(matches!(
            g.check(&d, us(later) + 11 * 60_000_000, false, later),
            Err(Refusal::Future { .. })
        ));
        // A refused uplink moved nothing: the next good one is accepted.
        assert!(g.check(&d, us(later), false, later).is_ok());
        assert_eq!(g.position(&d), Some((us(later), 0)));
    }

    #[test]
    fn a_skewed_device_resyncs_with_hello_and_keeps_working() {
        let mut g = UplinkGuard::new(UplinkPolicy::default());
        let d = dev("slow-clock");
        let three_hours = 3 * 3_600_000_000u64;
        // Its telemetry alone is refused: nothing learned about its clock yet.
        assert!(matches!(
            g.check(&d, us(T0) - three_hours, false, T0),
            Err(Refusal::Stale { .. })
        ));
        // Its Hello (sent on every connect) teaches the controller its offset.
        let a = g.check(&d, us(T0) - three_hours + 1, true, T0).unwrap();
        assert_eq!(a.resynced_offset_us, Some(-(three_hours as i64) + 1));
        // From then on its uplinks follow its own clock.
        let t1 = T0.plus_ms(30_000);
        assert_eq!(
            g.check(&d, us(t1) - three_hours, false, t1),
            Ok(Accepted {
                resynced_offset_us: None
            })
        );
        // A device clock drifting slowly stays inside the window.
        let t2 = T0.plus_ms(60 * 60_000);
        assert!(
            g.check(&d, us(t2) - three_hours + 2_000_000, false, t2)
                .is_ok()
        );
        // Persisted and restored, the offset carries over a controller restart.
        let (last, offset) = g.position(&d).unwrap();
        let mut again = UplinkGuard::new(UplinkPolicy::default());
        again.restore(&d, last, offset, t2);
        let t3 = t2.plus_ms(1_000);
        assert!(
            again
                .check(&d, us(t3) - three_hours + 2_000_000, false, t3)
                .is_ok()
        );
        assert!(matches!(
            again.check(&d, last, false, t3),
            Err(Refusal::Replay { .. })
        ));
    }

    #[test]
    fn a_flooding_device_is_throttled_and_others_are_not() {
        let policy = UplinkPolicy {
            burst: 10,
            per_second: 5,
            ..UplinkPolicy::default()
        };
        let mut g = UplinkGuard::new(policy);
        let (flood, quiet) = (dev("flood"), dev("quiet"));
        let mut c = us(T0);
        let mut accepted = 0;
        let mut throttled = 0;
        for _ in 0..100 {
            c += 1;
            match g.check(&flood, c, false, T0) {
                Ok(_) => accepted += 1,
                Err(Refusal::Throttled) => throttled += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!((accepted, throttled), (10, 90));
        assert!(g.check(&quiet, us(T0), false, T0).is_ok());
        // One second later five more tokens are there, and no more.
        let t1 = T0.plus_ms(1_000);
        let ok = (0..10)
            .filter(|_| {
                c += 1;
                g.check(&flood, c, false, t1).is_ok()
            })
            .count();
        assert_eq!(ok, 5);
        // The bucket never holds more than the burst.
        let t2 = T0.plus_ms(3_600_000);
        let mut c2 = us(t2);
        let ok = (0..50)
            .filter(|_| {
                c2 += 1;
                g.check(&flood, c2, false, t2).is_ok()
            })
            .count();
        assert_eq!(ok, 10);
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_device() {
        let mut g = UplinkGuard::new(UplinkPolicy::default());
        let (a, b) = (dev("a"), dev("b"));
        assert!(g.should_log(&a, T0));
        assert!(!g.should_log(&a, T0.plus_ms(59_999)));
        assert!(g.should_log(&b, T0.plus_ms(1)));
        assert!(g.should_log(&a, T0.plus_ms(60_000)));
    }
}
