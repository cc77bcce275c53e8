//! The agent's clock: wall-clock milliseconds derived from a monotonic
//! `Instant`, so the hot path pays one `Instant::now()` and times never go
//! backwards when the system clock is adjusted.

use std::time::{Duration, Instant, SystemTime};

use drover_protocol::Timestamp;

/// Monotonic wall clock, fixed at agent start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_wall: Timestamp,
}

impl Clock {
    /// Anchors the clock at the current system time.
    pub fn new() -> Clock {
        Clock {
            base: Instant::now(),
            base_wall: Timestamp::from_system(SystemTime::now()),
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }

    /// The timestamp of `instant`.
    #[inline]
    pub fn at(&self, instant: Instant) -> Timestamp {
        let d = instant.saturating_duration_since(self.base);
        // No u128 division: this runs once per inference.
        let ms = d
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(d.subsec_millis()));
        self.base_wall.plus_ms(ms)
    }

    /// The instant of timestamp `t` (for timers).
    pub fn instant_of(&self, t: Timestamp) -> Instant {
        let ms = t.ms_since(self.base_wall);
        self.base
            .checked_add(Duration::from_millis(ms))
            .unwrap_or_else(|| self.base + Duration::from_secs(86_400 * 365))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_moves_forward() {
        let c = Clock::new();
        let a = c.now();
        let t = a.plus_ms(1500);
        let i = c.instant_of(t);
        assert_eq!(c.at(i), t);
        assert!(c.now() >= a);
    }
}
