//! The controller's time source, injectable so tests can fake wall-clock time.

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

use drover_protocol::Timestamp;

/// Wall-clock time for manifests, commands, last-seen and retention.
pub trait Clock: Send + Sync + 'static {
    /// Now, as milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }
}

/// A clock that only moves when told to (tests, simulations).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FakeClock(AtomicU64);

#[cfg(test)]
impl FakeClock {
    /// A fake clock at `start`.
    pub(crate) fn new(start: Timestamp) -> Arc<FakeClock> {
        Arc::new(FakeClock(AtomicU64::new(start.0)))
    }
    /// Moves the clock forward by `ms`.
    pub(crate) fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// The shared clock handle the controller holds.
pub(crate) type SharedClock = Arc<dyn Clock>;
