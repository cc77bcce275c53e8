//! Pre-encoded telemetry windows: a realistic window is built once per
//! model and encoded again only to move its timestamps (every half window:
//! the controller selects windows for rollout gates and prunes them by
//! their end time), and each emulated device only splices its window
//! sequence number in. A
//! window body is `version byte, Up::Telemetry tag, varint seq, rest`, so
//! the template keeps the bytes before and after the sequence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use drover_protocol::codec;
use drover_protocol::messages::Up;
use drover_protocol::telemetry::TelemetryWindow;
use drover_protocol::testkit::realistic_window;
use drover_protocol::{ModelRef, Timestamp};

/// One encoded window with a hole for its sequence number.
#[derive(Debug)]
pub struct WindowTemplate {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// Not splicable (the layout was not as expected): encoded in full.
    whole: Option<TelemetryWindow>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl WindowTemplate {
    /// A template for `model`'s windows of `window_ms` ending now.
    pub fn new(model: &ModelRef, window_ms: u64) -> WindowTemplate {
        let mut w = realistic_window(0);
        w.model = model.clone();
        WindowTemplate::ending_now(w, window_ms)
    }

    fn ending_now(mut w: TelemetryWindow, window_ms: u64) -> WindowTemplate {
        let end = Timestamp::from_system(SystemTime::now());
        w.start = Timestamp(end.0.saturating_sub(window_ms));
        w.end = end;
        WindowTemplate::from_window(w)
    }

    /// A template for `w` (whose `seq` is ignored).
    pub fn from_window(mut w: TelemetryWindow) -> WindowTemplate {
        w.seq = 0;
        let zero = codec::encode_up(&Up::Telemetry(w.clone())).ok();
        let t = zero.and_then(|b| {
            // The sequence is the byte that encodes 0 right after the tag.
            let at = 2;
            if b.get(at) != Some(&0) {
                return None;
            }
            Some(WindowTemplate {
                head: b.get(..at)?.to_vec(),
                tail: b.get(at + 1..)?.to_vec(),
                whole: None,
            })
        });
        let probe = 300_000_123u64;
        match t {
            Some(t) if t.check(probe, &w) => t,
            _ => WindowTemplate {
                head: Vec::new(),
                tail: Vec::new(),
                whole: Some(w),
            },
        }
    }

    fn check(&self, seq: u64, w: &TelemetryWindow) -> bool {
        let mut want = w.clone();
        want.seq = seq;
        matches!(
            codec::decode_up(&self.encode(seq)),
            Ok(Up::Telemetry(got)) if got == want
        )
    }

    /// The encoded `Up::Telemetry` for window `seq` (unsealed).
    pub fn encode(&self, seq: u64) -> Vec<u8> {
        if let Some(w) = &self.whole {
            let mut w = w.clone();
            w.seq = seq;
            return codec::encode_up(&Up::Telemetry(w)).unwrap_or_default();
        }
        let mut out = Vec::with_capacity(self.head.len() + 10 + self.tail.len());
        out.extend_from_slice(&self.head);
        put_varint(&mut out, seq);
        out.extend_from_slice(&self.tail);
        out
    }

    /// Whether the fast path is used (the layout check passed).
    pub fn is_spliced(&self) -> bool {
        self.whole.is_none()
    }
}

/// The templates one worker process shares among its devices.
#[derive(Debug)]
pub struct Templates {
    window_ms: u64,
    refresh: Duration,
    /// Per model: the window (built once), when it was last encoded, and
    /// that encoding.
    cache: Mutex<HashMap<ModelRef, Cached>>,
}

type Cached = (TelemetryWindow, Instant, Arc<WindowTemplate>);

impl Templates {
    /// An empty cache for windows of `window_ms`.
    pub fn new(window_ms: u64) -> Templates {
        Templates {
            window_ms,
            refresh: Duration::from_millis(window_ms / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(30)),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The current template for `model`.
    pub fn get(&self, model: &ModelRef) -> Arc<WindowTemplate> {
        let Ok(mut cache) = self.cache.lock() else {
            return Arc::new(WindowTemplate::new(model, self.window_ms));
        };
        match cache.get_mut(model) {
            Some((_, at, t)) if at.elapsed() < self.refresh => t.clone(),
            Some((w, at, t)) => {
                *t = Arc::new(WindowTemplate::ending_now(w.clone(), self.window_ms));
                *at = Instant::now();
                t.clone()
            }
            None => {
                let mut w = realistic_window(0);
                w.model = model.clone();
                let t = Arc::new(WindowTemplate::ending_now(w.clone(), self.window_ms));
                cache.insert(model.clone(), (w, Instant::now(), t.clone()));
                t
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spliced_windows_decode_to_the_window_with_its_sequence() {
        let model: ModelRef = "sensor@7".parse().unwrap();
        let t = WindowTemplate::new(&model, 1000);
        assert!(t.is_spliced());
        for seq in [0, 1, 127, 128, 300, 70_000, u64::MAX] {
            match codec::decode_up(&t.encode(seq)).unwrap() {
                Up::Telemetry(w) => {
                    assert_eq!(w.seq, seq);
                    assert_eq!(w.model, model);
                    assert_eq!(w.count, 6000);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
