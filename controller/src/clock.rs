//! The controller's time source, injectable so tests can fake wall-clock time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_protocol::Timestamp;

/// Wall-clock time for manifests, commands, last-seen and retention.
pub trait Clock: Send + Sync + 'static {
    /// Now, as milliseconds since the Unix epoch.
    fn now(&self) -> Timestamp;

    /// Resolves once [`Clock::now`] may have reached `deadline`: shells sleep
    /// on this until their core's next `poll_timeout`. The default waits on
    /// tokio's timer for the wall-clock difference, at most
    /// [`MAX_WALL_WAIT`] (callers loop, so a wall clock that jumps is
    /// noticed); a fake clock resolves when it is advanced past `deadline`.
    fn sleep_until(&self, deadline: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let wait = Duration::from_millis(deadline.ms_since(self.now())).min(MAX_WALL_WAIT);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// Longest single wait of the default [`Clock::sleep_until`].
pub(crate) const MAX_WALL_WAIT: Duration = Duration::from_secs(60);

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
pub(crate) struct FakeClock {
    now: AtomicU64,
    moved: tokio::sync::Notify,
}

#[cfg(test)]
impl FakeClock {
    /// A fake clock at `start`.
    pub(crate) fn new(start: Timestamp) -> Arc<FakeClock> {
        Arc::new(FakeClock {
            now: AtomicU64::new(start.0),
            moved: tokio::sync::Notify::new(),
        })
    }
    /// Moves the clock forward by `ms`.
    pub(crate) fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

#[cfg(test)]
impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, deadline: Timestamp) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let moved = self.moved.notified();
                let mut moved = std::pin::pin!(moved);
                // Registered before the check, so an advance in between
                // still wakes us.
                moved.as_mut().enable();
                if self.now() >= deadline {
                    return;
                }
                moved.await;
            }
        })
    }
}

/// The shared clock handle the controller holds.
pub(crate) type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fake_clock_wakes_sleepers_when_advanced_past_their_deadline() {
        let clock = FakeClock::new(Timestamp(1_000));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(Timestamp(1_500)).await });
        tokio::task::yield_now().await;
        clock.advance(100);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its deadline");
        clock.advance(400);
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .unwrap()
            .unwrap();
        // A deadline already passed resolves at once.
        clock.sleep_until(Timestamp(0)).await;
    }
}
