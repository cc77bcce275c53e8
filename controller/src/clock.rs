//! The controller's time source, injectable so tests can fake wall-clock time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drover_protocol::Timestamp;

/// Wall-clock time for manifests, commands, last-seen and retention.
pub trait Clock: Send + Sync + 'static {
    /// Now, as milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// A fake clock at `start`.
    pub fn new(start: Timestamp) -> Arc<FakeClock> {
        Arc::new(FakeClock(AtomicU64::new(start.0)))
    }
    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock.
    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// The shared clock handle the controller holds.
pub type SharedClock = Arc<dyn Clock>;
