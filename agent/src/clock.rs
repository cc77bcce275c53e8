//! The agent's clock: wall-clock milliseconds derived from a monotonic
//! instant, so times never go backwards when the system clock is adjusted.
//!
//! The shell's "now" (window boundaries, deadlines, command expiry) comes
//! from tokio's clock, which is the system's monotonic clock unless a test
//! pauses it (`tokio::time::pause`, `#[tokio::test(start_paused = true)]`).
//! A paused-time test therefore drives the driver's timers and the
//! timestamps it compares them with together: `tokio::time::sleep(window)`
//! closes a telemetry window without waiting for one. The inference hot path
//! stamps requests with [`Clock::at`] on the instant it already measured.

use std::time::{Duration, Instant, SystemTime};

use drover_protocol::Timestamp;

/// Monotonic wall clock, fixed at agent start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_wall: Timestamp,
}

/// Tokio's idea of now (the system clock unless a test paused it); outside a
/// runtime it is the system clock.
fn instant_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Clock {
    /// Anchors the clock at the current system time.
    pub fn new() -> Clock {
        Clock::anchored(Timestamp::from_system(SystemTime::now()))
    }

    /// Anchors the clock so that now reads `wall` (tests pick the start).
    pub fn anchored(wall: Timestamp) -> Clock {
        Clock {
            base: instant_now(),
            base_wall: wall,
        }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        self.at(instant_now())
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

    /// A tokio deadline at timestamp `t`.
    pub fn deadline_of(&self, t: Timestamp) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.instant_of(t))
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

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_paused_time() {
        let c = Clock::anchored(Timestamp(1_000_000));
        assert_eq!(c.now(), Timestamp(1_000_000));
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(c.now(), Timestamp(1_090_000));
        // A deadline computed from a timestamp fires at that timestamp.
        let deadline = c.deadline_of(Timestamp(1_100_000));
        tokio::time::sleep_until(deadline).await;
        assert_eq!(c.now(), Timestamp(1_100_000));
    }
}
