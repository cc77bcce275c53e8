//! Telemetry windowing: the hot-path [`Recorder`] (one per loaded model), the
//! bounded feedback and capture rings it keeps, and the [`Windower`] that
//! closes windows into protocol [`TelemetryWindow`]s with a per-device seq.
//!
//! The recorder takes one uncontended mutex per inference and does no
//! allocation in steady state: counters are fixed-size, the feedback ring
//! allocates each 4096-slot page once on first touch, the capture ring is
//! allocated when the model loads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use drover_protocol::manifest::{ModelManifest, Task, bin_index};
use drover_protocol::messages::{CapturedSample, Label};
use drover_protocol::telemetry::{LatencyHistogram, ModelRole, ShadowStats, TelemetryWindow};
use drover_protocol::{ModelRef, Timestamp};

/// Top-class confidence is counted in this many equal bins over [0, 1].
pub const CONFIDENCE_BINS: usize = 10;

/// Slots per lazily allocated feedback-ring page.
const PAGE: usize = 4096;

/// What a model answered for one input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prediction {
    /// A classifier's predicted class and its probability.
    Class {
        /// Class index (manifest label order).
        index: u32,
        /// Probability of that class.
        confidence: f32,
    },
    /// A regressor's value.
    Value(f32),
}

impl Prediction {
    /// Whether two answers agree: same class, or values within `tolerance`.
    pub fn agrees_with(&self, other: &Prediction, tolerance: f32) -> bool {
        match (self, other) {
            (Prediction::Class { index: a, .. }, Prediction::Class { index: b, .. }) => a == b,
            (Prediction::Value(a), Prediction::Value(b)) => (a - b).abs() <= tolerance,
            _ => false,
        }
    }
}

/// How a model's outputs are histogrammed.
#[derive(Debug, Clone, PartialEq)]
enum OutputBins {
    /// One bin per class.
    Classes(usize),
    /// Bins of the reference output edges (regression).
    Edges(Vec<f32>),
}

/// The fixed shape of one model's windows: which bins exist.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    model: ModelRef,
    feature_edges: Vec<Vec<f32>>,
    feature_offsets: Vec<usize>,
    feature_bins: usize,
    output: OutputBins,
    width: usize,
}

impl WindowSpec {
    /// Bins from the manifest's reference profile.
    pub fn from_manifest(m: &ModelManifest) -> WindowSpec {
        let feature_edges: Vec<Vec<f32>> = m
            .reference
            .features
            .iter()
            .map(|f| f.bins.edges.clone())
            .collect();
        let mut feature_offsets = Vec::with_capacity(feature_edges.len());
        let mut feature_bins = 0;
        for e in &feature_edges {
            feature_offsets.push(feature_bins);
            feature_bins += e.len() + 1;
        }
        let output = match &m.task {
            Task::Classification { labels, .. } => OutputBins::Classes(labels.len()),
            Task::Regression { .. } => OutputBins::Edges(m.reference.output.edges.clone()),
        };
        WindowSpec {
            model: m.model_ref(),
            feature_edges,
            feature_offsets,
            feature_bins,
            output,
            width: m.features_per_row().unwrap_or(0),
        }
    }

    /// The model these windows measure.
    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    fn output_bins(&self) -> usize {
        match &self.output {
            OutputBins::Classes(n) => *n,
            OutputBins::Edges(e) => e.len() + 1,
        }
    }

    fn is_classifier(&self) -> bool {
        matches!(self.output, OutputBins::Classes(_))
    }
}

/// Counters of one model over one (open) window.
#[derive(Debug, Clone, PartialEq)]
pub struct Accum {
    count: u64,
    errors: u64,
    latency: LatencyHistogram,
    features: Vec<u32>,
    outputs: Vec<u32>,
    confidence: [u32; CONFIDENCE_BINS],
    labelled: u64,
    correct: u64,
    abs_error_sum: f64,
}

impl Accum {
    /// Empty counters shaped by `spec`.
    pub fn new(spec: &WindowSpec) -> Accum {
        Accum {
            count: 0,
            errors: 0,
            latency: LatencyHistogram::default(),
            features: vec![0; spec.feature_bins],
            outputs: vec![0; spec.output_bins()],
            confidence: [0; CONFIDENCE_BINS],
            labelled: 0,
            correct: 0,
            abs_error_sum: 0.0,
        }
    }

    /// Inferences recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Failed inferences recorded.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Latencies recorded.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Feedback received.
    pub fn labelled(&self) -> u64 {
        self.labelled
    }

    #[inline]
    fn record(&mut self, spec: &WindowSpec, latency_us: u64, row: &[f32], p: Option<Prediction>) {
        self.count += 1;
        self.latency.record(latency_us);
        for ((edges, offset), x) in spec
            .feature_edges
            .iter()
            .zip(&spec.feature_offsets)
            .zip(row)
        {
            if let Some(c) = self.features.get_mut(offset + bin_index(edges, *x)) {
                *c += 1;
            }
        }
        match p {
            None => self.errors += 1,
            Some(Prediction::Class { index, confidence }) => {
                if let Some(c) = self.outputs.get_mut(index as usize) {
                    *c += 1;
                }
                // `as` saturates and maps NaN to 0, which is what we want here.
                let bin = ((confidence * CONFIDENCE_BINS as f32) as usize).min(CONFIDENCE_BINS - 1);
                self.confidence[bin] += 1;
            }
            Some(Prediction::Value(v)) => {
                if let OutputBins::Edges(edges) = &spec.output
                    && let Some(c) = self.outputs.get_mut(bin_index(edges, v))
                {
                    *c += 1;
                }
            }
        }
    }
}

/// Sizes of a recorder's bounded memories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Recent request ids remembered for feedback.
    pub feedback_capacity: usize,
    /// Feedback older than this (ms) is refused as expired.
    pub feedback_ttl_ms: u64,
    /// Input rows kept for Capture commands.
    pub capture_capacity: usize,
    /// Share of inputs kept for capture, per mille.
    pub capture_per_mille: u16,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            feedback_capacity: 100_000,
            feedback_ttl_ms: 600_000,
            capture_capacity: 1024,
            capture_per_mille: 1000,
        }
    }
}

/// One inference, as the hot path reports it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The request id handed to the caller (0 = not eligible for feedback).
    pub request_id: u64,
    /// When it finished, ms (same clock as feedback's `now_ms`).
    pub at_ms: u64,
    /// How long it took.
    pub latency_us: u64,
    /// The flattened input row.
    pub row: &'a [f32],
    /// The answer, `None` when inference failed.
    pub prediction: Option<Prediction>,
}

/// What happened to a piece of feedback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackOutcome {
    /// Counted; `correct` is set for classifiers.
    Recorded {
        /// Whether the prediction matched (classification only).
        correct: Option<bool>,
    },
    /// This request already had feedback; not counted twice.
    Duplicate,
    /// The request id is not (or no longer) remembered.
    Unknown,
    /// The request is older than the feedback ttl.
    Expired,
    /// A class label for a regressor, a value for a classifier, or a class
    /// index out of range.
    Mismatch,
}

const OCCUPIED: u32 = 1;
const HAS_PRED: u32 = 2;
const IS_VALUE: u32 = 4;
const LABELLED: u32 = 8;
const CAPTURE_SHIFT: u32 = 8;

/// One remembered request in 16 bytes (four per cache line: the ring takes
/// one write per inference, between tract runs that flush the caches).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The id's bits above the ring index.
    tag: u32,
    /// When, in seconds since the epoch.
    at_s: u32,
    /// Class index, or the value's f32 bits.
    pred: u32,
    /// OCCUPIED | HAS_PRED | IS_VALUE | LABELLED, capture index + 1 above.
    meta: u32,
}

impl Slot {
    fn prediction(&self) -> Option<Prediction> {
        if self.meta & HAS_PRED == 0 {
            None
        } else if self.meta & IS_VALUE != 0 {
            Some(Prediction::Value(f32::from_bits(self.pred)))
        } else {
            Some(Prediction::Class {
                index: self.pred,
                confidence: 0.0,
            })
        }
    }

    fn capture(&self) -> Option<u32> {
        (self.meta >> CAPTURE_SHIFT).checked_sub(1)
    }
}

/// Recent request ids → prediction, in pages allocated on first use so an idle
/// agent holds almost nothing. Indexed by `id` modulo the capacity (rounded up
/// to a power of two, so a mask and not a division); ids are sequential, so an
/// entry lives until that many later requests overwrite it.
#[derive(Debug)]
struct FeedbackRing {
    cap: usize,
    shift: u32,
    ttl_ms: u64,
    pages: Vec<Option<Box<[Slot]>>>,
}

impl FeedbackRing {
    fn new(cap: usize, ttl_ms: u64) -> FeedbackRing {
        let cap = if cap == 0 { 0 } else { cap.next_power_of_two() };
        FeedbackRing {
            cap,
            shift: cap.trailing_zeros(),
            ttl_ms,
            pages: (0..cap.div_ceil(PAGE)).map(|_| None).collect(),
        }
    }

    #[inline]
    fn index(&self, id: u64) -> Option<(usize, usize)> {
        if self.cap == 0 {
            return None;
        }
        let i = (id & (self.cap as u64 - 1)) as usize;
        Some((i / PAGE, i % PAGE))
    }

    #[inline]
    fn tag(&self, id: u64) -> u32 {
        // Truncation only aliases ids 2^(32 + shift) apart.
        (id >> self.shift) as u32
    }

    #[inline]
    fn insert(&mut self, id: u64, at_ms: u64, pred: Option<Prediction>, capture: Option<u32>) {
        let Some((page, at)) = self.index(id) else {
            return;
        };
        let (pred, kind) = match pred {
            None => (0, 0),
            Some(Prediction::Class { index, .. }) => (index, HAS_PRED),
            Some(Prediction::Value(v)) => (v.to_bits(), HAS_PRED | IS_VALUE),
        };
        let capture = capture.map_or(0, |c| c.saturating_add(1)) << CAPTURE_SHIFT;
        let slot = Slot {
            tag: self.tag(id),
            at_s: u32::try_from(at_ms / 1000).unwrap_or(u32::MAX),
            pred,
            meta: OCCUPIED | kind | capture,
        };
        let len = PAGE.min(self.cap - page * PAGE);
        if let Some(p) = self.pages.get_mut(page) {
            let p = p.get_or_insert_with(|| vec![Slot::default(); len].into_boxed_slice());
            if let Some(s) = p.get_mut(at) {
                *s = slot;
            }
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Slot> {
        let (page, at) = self.index(id)?;
        let tag = self.tag(id);
        let s = self.pages.get_mut(page)?.as_mut()?.get_mut(at)?;
        (s.meta & OCCUPIED != 0 && s.tag == tag && id != 0).then_some(s)
    }
}

/// The last `cap` sampled input rows, in one flat buffer allocated up front.
#[derive(Debug)]
struct CaptureRing {
    width: usize,
    cap: usize,
    data: Vec<f32>,
    ids: Vec<u64>,
    labels: Vec<Option<Label>>,
    next: usize,
    len: usize,
    seen: u64,
}

impl CaptureRing {
    fn new(cap: usize, width: usize) -> CaptureRing {
        let cap = if width == 0 { 0 } else { cap };
        CaptureRing {
            width,
            cap,
            data: vec![0.0; cap * width],
            ids: vec![0; cap],
            labels: vec![None; cap],
            next: 0,
            len: 0,
            seen: 0,
        }
    }

    /// Keeps `per_mille` of rows, evenly spread (no RNG on the hot path).
    #[inline]
    fn maybe_push(&mut self, id: u64, row: &[f32], per_mille: u32) -> Option<u32> {
        let n = self.seen;
        self.seen += 1;
        let pm = u64::from(per_mille.min(1000));
        if self.cap == 0 || row.len() != self.width || (n + 1) * pm / 1000 == n * pm / 1000 {
            return None;
        }
        let at = self.next;
        let dst = self.data.get_mut(at * self.width..(at + 1) * self.width)?;
        dst.copy_from_slice(row);
        *self.ids.get_mut(at)? = id;
        *self.labels.get_mut(at)? = None;
        self.next = if at + 1 == self.cap { 0 } else { at + 1 };
        self.len = (self.len + 1).min(self.cap);
        Some(at as u32)
    }

    fn label(&mut self, at: u32, id: u64, label: Label) {
        let at = at as usize;
        if self.ids.get(at) == Some(&id)
            && let Some(l) = self.labels.get_mut(at)
        {
            *l = Some(label);
        }
    }

    /// Up to `max` most recent rows, oldest first.
    fn recent(&self, max: usize) -> Vec<CapturedSample> {
        let n = self.len.min(max);
        let mut out = Vec::with_capacity(n);
        for k in (0..n).rev() {
            let at = (self.next + self.cap - 1 - k) % self.cap;
            if let Some(row) = self.data.get(at * self.width..(at + 1) * self.width) {
                out.push(CapturedSample {
                    input: row.to_vec(),
                    label: self.labels.get(at).copied().flatten(),
                });
            }
        }
        out
    }
}

#[derive(Debug)]
struct RecState {
    accum: Accum,
    ring: FeedbackRing,
    capture: CaptureRing,
}

/// Records inferences of one model; shared by every request thread.
#[derive(Debug)]
pub struct Recorder {
    spec: WindowSpec,
    state: Mutex<RecState>,
    capture_per_mille: AtomicU32,
}

impl Recorder {
    /// A recorder for `spec`, with bounded memories sized by `cfg`.
    pub fn new(spec: WindowSpec, cfg: RecorderConfig) -> Recorder {
        let state = RecState {
            accum: Accum::new(&spec),
            ring: FeedbackRing::new(cfg.feedback_capacity, cfg.feedback_ttl_ms),
            capture: CaptureRing::new(cfg.capture_capacity, spec.width),
        };
        Recorder {
            spec,
            state: Mutex::new(state),
            capture_per_mille: AtomicU32::new(u32::from(cfg.capture_per_mille)),
        }
    }

    /// The window shape.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecState> {
        // A panic while holding this lock can only leave counters half-updated;
        // telemetry is better slightly off than gone.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one inference. The hot path: no allocation in steady state.
    #[inline]
    pub fn record(&self, r: &Record<'_>) {
        let per_mille = self.capture_per_mille.load(Ordering::Relaxed);
        let mut st = self.lock();
        st.accum
            .record(&self.spec, r.latency_us, r.row, r.prediction);
        if r.request_id != 0 {
            let capture = st.capture.maybe_push(r.request_id, r.row, per_mille);
            st.ring.insert(r.request_id, r.at_ms, r.prediction, capture);
        }
    }

    /// Applies ground truth for `request_id` to the open window.
    pub fn feedback(&self, request_id: u64, truth: Label, now_ms: u64) -> FeedbackOutcome {
        let classes = match self.spec.output {
            OutputBins::Classes(n) => n,
            OutputBins::Edges(_) => 0,
        };
        let mut st = self.lock();
        let ttl = st.ring.ttl_ms;
        let Some(slot) = st.ring.get_mut(request_id) else {
            return FeedbackOutcome::Unknown;
        };
        let age_ms = (now_ms / 1000).saturating_sub(u64::from(slot.at_s)) * 1000;
        if age_ms > ttl {
            return FeedbackOutcome::Expired;
        }
        if slot.meta & LABELLED != 0 {
            return FeedbackOutcome::Duplicate;
        }
        let (correct, abs_err) = match (slot.prediction(), truth) {
            (Some(Prediction::Class { index, .. }), Label::Class(t)) if (t as usize) < classes => {
                (Some(index == t), None)
            }
            (None, Label::Class(t)) if (t as usize) < classes => (Some(false), None),
            (Some(Prediction::Value(v)), Label::Value(t)) if t.is_finite() => {
                (None, Some(f64::from((v - t).abs())))
            }
            _ => return FeedbackOutcome::Mismatch,
        };
        slot.meta |= LABELLED;
        let capture = slot.capture();
        st.accum.labelled += 1;
        if correct == Some(true) {
            st.accum.correct += 1;
        }
        if let Some(e) = abs_err {
            st.accum.abs_error_sum += e;
        }
        if let Some(at) = capture {
            st.capture.label(at, request_id, truth);
        }
        FeedbackOutcome::Recorded { correct }
    }

    /// Takes the open window's counters, leaving fresh ones.
    pub fn take(&self) -> Accum {
        let fresh = Accum::new(&self.spec);
        std::mem::replace(&mut self.lock().accum, fresh)
    }

    /// A copy of the open window's counters (for metrics scrapes).
    pub fn peek(&self) -> Accum {
        self.lock().accum.clone()
    }

    /// Up to `max` most recent captured rows, oldest first, with labels.
    pub fn captured(&self, max: usize) -> Vec<CapturedSample> {
        self.lock().capture.recent(max)
    }

    /// Changes the capture sampling rate.
    pub fn set_capture_per_mille(&self, per_mille: u16) {
        self.capture_per_mille
            .store(u32::from(per_mille.min(1000)), Ordering::Relaxed);
    }
}

/// Start and end of a closed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBounds {
    /// Window start.
    pub start: Timestamp,
    /// Window end.
    pub end: Timestamp,
}

/// Decides when windows close and numbers them. Sans-IO: time comes in.
#[derive(Debug, Clone)]
pub struct Windower {
    len_ms: u64,
    start: Timestamp,
    next_seq: u64,
}

impl Windower {
    /// Shortest window length accepted (also from a Configure command).
    pub const MIN_LEN_MS: u64 = 50;
    /// Longest window length accepted.
    pub const MAX_LEN_MS: u64 = 3_600_000;

    /// Opens the first window at `now`; `next_seq` continues the device's numbering.
    pub fn new(now: Timestamp, len_ms: u64, next_seq: u64) -> Windower {
        Windower {
            len_ms: len_ms.clamp(Self::MIN_LEN_MS, Self::MAX_LEN_MS),
            start: now,
            next_seq: next_seq.max(1),
        }
    }

    /// Window length in ms.
    pub fn len_ms(&self) -> u64 {
        self.len_ms
    }

    /// Changes the length; the open window ends at its new length.
    pub fn set_len_ms(&mut self, len_ms: u64) {
        self.len_ms = len_ms.clamp(Self::MIN_LEN_MS, Self::MAX_LEN_MS);
    }

    /// Sequence the next sealed window gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// When the open window closes.
    pub fn poll_timeout(&self) -> (Timestamp, &'static str) {
        (self.start.plus_ms(self.len_ms), "telemetry_window")
    }

    /// Closes the open window if it is due. After a long stall (suspend, a
    /// blocked shell) the late window stretches to `now` instead of emitting
    /// a burst of empty ones.
    pub fn poll_window(&mut self, now: Timestamp) -> Option<WindowBounds> {
        let due = self.start.plus_ms(self.len_ms);
        if now < due {
            return None;
        }
        let end = if now >= due.plus_ms(self.len_ms) {
            now
        } else {
            due
        };
        Some(self.close_at(end))
    }

    /// Closes the open window at `now` regardless (shutdown, model swap).
    pub fn close_now(&mut self, now: Timestamp) -> WindowBounds {
        let end = now.max(self.start);
        self.close_at(end)
    }

    fn close_at(&mut self, end: Timestamp) -> WindowBounds {
        let b = WindowBounds {
            start: self.start,
            end,
        };
        self.start = end;
        b
    }

    /// Turns one recorder's counters into a numbered window.
    pub fn seal(
        &mut self,
        bounds: &WindowBounds,
        spec: &WindowSpec,
        role: ModelRole,
        accum: Accum,
        shadow: Option<ShadowStats>,
    ) -> TelemetryWindow {
        let seq = self.next_seq;
        self.next_seq += 1;
        let features = spec
            .feature_offsets
            .iter()
            .zip(&spec.feature_edges)
            .map(|(off, e)| {
                accum
                    .features
                    .get(*off..off + e.len() + 1)
                    .map(<[u32]>::to_vec)
                    .unwrap_or_default()
            })
            .collect();
        TelemetryWindow {
            seq,
            model: spec.model.clone(),
            role,
            start: bounds.start,
            end: bounds.end,
            count: accum.count,
            errors: accum.errors,
            latency: accum.latency,
            features,
            outputs: accum.outputs,
            confidence: if spec.is_classifier() {
                accum.confidence.to_vec()
            } else {
                Vec::new()
            },
            labelled: accum.labelled,
            correct: accum.correct,
            abs_error_sum: accum.abs_error_sum,
            shadow,
            evicted_windows: 0,
        }
    }
}

#[cfg(test)]
mod tests;
