//! Unit tests of the window core, driven by a fake clock (`Timestamp`s the
//! tests choose).

use super::*;
use drover_protocol::testkit;

fn spec() -> WindowSpec {
    let m = testkit::manifest("sensor", 1, b"x", Timestamp(0));
    WindowSpec::from_manifest(&m)
}

fn regression_spec() -> WindowSpec {
    let mut m = testkit::manifest("reg", 1, b"x", Timestamp(0));
    m.task = Task::Regression {
        output: "variable".into(),
    };
    m.reference.output.edges = vec![0.0, 10.0];
    WindowSpec::from_manifest(&m)
}

fn rec(id: u64, at: u64, row: &[f32], p: Option<Prediction>) -> Record<'_> {
    Record {
        request_id: id,
        at_ms: at,
        latency_us: 100 + id,
        row,
        prediction: p,
    }
}

fn class(index: u32, confidence: f32) -> Option<Prediction> {
    Some(Prediction::Class { index, confidence })
}

#[test]
fn records_bins_outputs_confidence_and_errors() {
    let r = Recorder::new(spec(), RecorderConfig::default());
    r.record(&rec(1, 0, &[-5.0, 0.5, 1.0, f32::NAN], class(2, 0.95)));
    r.record(&rec(2, 0, &[0.0, 0.0, 0.0, 0.0], class(0, 0.41)));
    r.record(&rec(3, 0, &[0.0, 0.0, 0.0, 0.0], None));
    let mut w = Windower::new(Timestamp(0), 1000, 7);
    let b = w.poll_window(Timestamp(1000)).unwrap();
    let win = w.seal(&b, r.spec(), ModelRole::Active, r.take(), None);
    assert_eq!(win.seq, 7);
    assert_eq!((win.count, win.errors), (3, 1));
    assert_eq!(win.latency.count(), 3);
    assert_eq!(win.features.len(), 4);
    // Edges [-1, 0, 1]: a value equal to an edge belongs to the bin above it.
    assert_eq!(win.features[0], vec![1, 0, 2, 0]);
    assert_eq!(win.features[1], vec![0, 0, 3, 0]);
    assert_eq!(win.features[2], vec![0, 0, 2, 1]);
    assert_eq!(win.features[3], vec![0, 0, 2, 1], "NaN lands in overflow");
    assert_eq!(win.outputs, vec![1, 0, 1]);
    assert_eq!(win.confidence[9], 1);
    assert_eq!(win.confidence[4], 1);
    assert_eq!((win.start, win.end), (Timestamp(0), Timestamp(1000)));
    // Taking resets.
    assert_eq!(r.take().count(), 0);
}

#[test]
fn regression_outputs_use_reference_edges_and_no_confidence() {
    let r = Recorder::new(regression_spec(), RecorderConfig::default());
    for v in [-1.0, 5.0, 5.0, 20.0] {
        r.record(&rec(1, 0, &[0.0; 4], Some(Prediction::Value(v))));
    }
    let mut w = Windower::new(Timestamp(0), 1000, 1);
    let b = w.close_now(Timestamp(10));
    let win = w.seal(&b, r.spec(), ModelRole::Active, r.take(), None);
    assert_eq!(win.outputs, vec![1, 2, 1]);
    assert!(win.confidence.is_empty());
}

#[test]
fn feedback_counts_once_and_knows_unknown_expired_and_mismatch() {
    let cfg = RecorderConfig {
        feedback_capacity: 8,
        feedback_ttl_ms: 1000,
        ..RecorderConfig::default()
    };
    let r = Recorder::new(spec(), cfg);
    r.record(&rec(10, 0, &[0.0; 4], class(1, 0.9)));
    r.record(&rec(11, 0, &[0.0; 4], class(2, 0.9)));
    assert_eq!(
        r.feedback(10, Label::Class(1), 500),
        FeedbackOutcome::Recorded {
            correct: Some(true)
        }
    );
    assert_eq!(
        r.feedback(10, Label::Class(1), 500),
        FeedbackOutcome::Duplicate
    );
    assert_eq!(
        r.feedback(11, Label::Class(0), 500),
        FeedbackOutcome::Recorded {
            correct: Some(false)
        }
    );
    assert_eq!(
        r.feedback(12, Label::Class(0), 500),
        FeedbackOutcome::Unknown
    );
    r.record(&rec(13, 0, &[0.0; 4], class(0, 0.9)));
    // The ttl is kept at one-second granularity.
    assert_eq!(
        r.feedback(13, Label::Class(0), 2001),
        FeedbackOutcome::Expired
    );
    assert_eq!(
        r.feedback(13, Label::Class(9), 5),
        FeedbackOutcome::Mismatch
    );
    assert_eq!(
        r.feedback(13, Label::Value(1.0), 5),
        FeedbackOutcome::Mismatch
    );
    // Eight more requests overwrite id 13's slot.
    for id in 14..22 {
        r.record(&rec(id, 0, &[0.0; 4], class(0, 0.9)));
    }
    assert_eq!(r.feedback(13, Label::Class(0), 5), FeedbackOutcome::Unknown);
    let a = r.take();
    assert_eq!((a.labelled, a.correct), (2, 1));
}

#[test]
fn regression_feedback_sums_absolute_error() {
    let r = Recorder::new(regression_spec(), RecorderConfig::default());
    r.record(&rec(1, 0, &[0.0; 4], Some(Prediction::Value(2.0))));
    r.record(&rec(2, 0, &[0.0; 4], Some(Prediction::Value(-1.0))));
    assert_eq!(
        r.feedback(1, Label::Value(3.5), 0),
        FeedbackOutcome::Recorded { correct: None }
    );
    assert_eq!(
        r.feedback(2, Label::Value(-1.0), 0),
        FeedbackOutcome::Recorded { correct: None }
    );
    assert_eq!(
        r.feedback(2, Label::Class(0), 0),
        FeedbackOutcome::Duplicate
    );
    let a = r.take();
    assert_eq!(a.labelled, 2);
    assert!((a.abs_error_sum - 1.5).abs() < 1e-9);
}

#[test]
fn capture_ring_keeps_recent_rows_with_labels_and_samples_evenly() {
    let cfg = RecorderConfig {
        capture_capacity: 3,
        capture_per_mille: 1000,
        ..RecorderConfig::default()
    };
    let r = Recorder::new(spec(), cfg);
    for id in 1..=5u64 {
        r.record(&rec(id, 0, &[id as f32; 4], class(0, 0.5)));
    }
    r.feedback(4, Label::Class(2), 0);
    let got = r.captured(10);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].input, vec![3.0; 4]);
    assert_eq!(got[1].label, Some(Label::Class(2)));
    assert_eq!(got[2].input, vec![5.0; 4]);
    assert_eq!(r.captured(1).len(), 1);

    let cfg = RecorderConfig {
        capture_capacity: 1000,
        capture_per_mille: 100,
        ..RecorderConfig::default()
    };
    let r = Recorder::new(spec(), cfg);
    for id in 1..=1000u64 {
        r.record(&rec(id, 0, &[0.0; 4], class(0, 0.5)));
    }
    assert_eq!(r.captured(usize::MAX).len(), 100);
    r.set_capture_per_mille(0);
    for id in 1001..=2000u64 {
        r.record(&rec(id, 0, &[0.0; 4], class(0, 0.5)));
    }
    assert_eq!(r.captured(usize::MAX).len(), 100);
}

#[test]
fn windows_close_on_time_with_increasing_seq_and_stretch_after_a_stall() {
    let mut w = Windower::new(Timestamp(1000), 100, 1);
    assert_eq!(w.poll_timeout().0, Timestamp(1100));
    assert!(w.poll_window(Timestamp(1099)).is_none());
    let b = w.poll_window(Timestamp(1100)).unwrap();
    assert_eq!((b.start, b.end), (Timestamp(1000), Timestamp(1100)));
    let b = w.poll_window(Timestamp(1250)).unwrap();
    assert_eq!((b.start, b.end), (Timestamp(1100), Timestamp(1200)));
    // Stall: one long window, not a burst.
    let b = w.poll_window(Timestamp(5000)).unwrap();
    assert_eq!((b.start, b.end), (Timestamp(1200), Timestamp(5000)));
    assert!(w.poll_window(Timestamp(5000)).is_none());
    let s = spec();
    let a = w.seal(&b, &s, ModelRole::Active, Accum::new(&s), None);
    let c = w.seal(&b, &s, ModelRole::Shadow, Accum::new(&s), None);
    assert_eq!((a.seq, c.seq), (1, 2));
    w.set_len_ms(1);
    assert_eq!(w.len_ms(), Windower::MIN_LEN_MS);
}

#[test]
fn agreement() {
    let a = Prediction::Class {
        index: 1,
        confidence: 0.5,
    };
    let b = Prediction::Class {
        index: 1,
        confidence: 0.9,
    };
    assert!(a.agrees_with(&b, 0.0));
    assert!(Prediction::Value(1.0).agrees_with(&Prediction::Value(1.05), 0.1));
    assert!(!Prediction::Value(1.0).agrees_with(&Prediction::Value(1.5), 0.1));
    assert!(!a.agrees_with(&Prediction::Value(1.0), 10.0));
}
