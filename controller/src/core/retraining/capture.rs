//! Asking devices for samples: which devices ([`select_capture_devices`]),
//! and collecting their `Up::Capture` uploads ([`CaptureSession`]) within
//! a byte and sample budget. Pure: the runner sends the commands and feeds
//! uploads in.

use std::collections::{BTreeMap, BTreeSet};

use drover_protocol::messages::{CaptureUpload, CapturedSample};
use drover_protocol::{DeviceId, ModelName};

use super::job::CaptureSummary;
use super::ports::FleetDevice;
use crate::core::drift::DeviceDriftShare;

/// Highest part number accepted, so a device cannot grow the bookkeeping
/// without bound by sending empty parts.
const MAX_PART: u32 = 1 << 16;

/// Bytes a sample is charged against the budget: its floats plus a label.
fn sample_bytes(sample: &CapturedSample) -> u64 {
    4 * sample.input.len() as u64 + 8
}

/// The devices to ask, at most `n`: drifting devices from the report's
/// worst list (worst first), then the rest of that list (highest scores
/// first), then the other `candidates` by id. Only `candidates` (the
/// caller's online devices on the right model version and cohort) are ever
/// picked.
pub(crate) fn select_capture_devices(
    share: Option<&DeviceDriftShare>,
    candidates: &[FleetDevice],
    n: usize,
) -> Vec<DeviceId> {
    let eligible: BTreeMap<&str, &DeviceId> =
        candidates.iter().map(|d| (d.id.as_str(), &d.id)).collect();
    let preferred = share.into_iter().flat_map(|s| {
        let drifting = s.worst.iter().filter(|d| d.score > s.threshold);
        drifting.chain(&s.worst).map(|d| d.device.as_str())
    });
    let mut picked = Vec::new();
    let mut seen = BTreeSet::new();
    for id in preferred.chain(eligible.keys().copied()) {
        if picked.len() >= n {
            break;
        }
        if let Some(device) = eligible.get(id) {
            if seen.insert(id) {
                picked.push((*device).clone());
            }
        }
    }
    picked
}

/// What happened to one upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Taken into the session.
    Accepted {
        /// Samples kept.
        kept: u64,
        /// Samples dropped (budget, width, non-finite).
        dropped: u64,
        /// The device has now sent every part.
        device_done: bool,
    },
    /// Not for this session (unknown device, other command, other model,
    /// or a duplicate part).
    Ignored(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
struct DeviceCapture {
    seq: u64,
    samples: Vec<CapturedSample>,
    bytes: u64,
    parts: BTreeSet<u32>,
    last_part: Option<u32>,
}

impl DeviceCapture {
    fn done(&self) -> bool {
        self.last_part
            .is_some_and(|last| self.parts.len() as u64 == u64::from(last) + 1)
    }
}

/// The budget of one capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLimits {
    /// Samples kept per device.
    pub max_samples_per_device: u32,
    /// Bytes kept per device (see `sample_bytes`).
    pub max_bytes_per_device: u32,
    /// Values per sample (the model's features per row); other widths are
    /// dropped.
    pub width: usize,
}

/// One job's capture: the devices asked (with their command sequence),
/// what each sent, and the deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSession {
    model: ModelName,
    deadline: u64,
    limits: CaptureLimits,
    order: Vec<String>,
    devices: BTreeMap<String, DeviceCapture>,
    send_failures: BTreeMap<String, String>,
    dropped: u64,
}

impl CaptureSession {
    /// A session waiting for `requested` (device, command seq) until
    /// `deadline`. Devices the command could not reach are listed in
    /// `send_failures` and not waited for.
    pub fn new(
        model: ModelName,
        requested: Vec<(DeviceId, u64)>,
        send_failures: BTreeMap<String, String>,
        limits: CaptureLimits,
        deadline: u64,
    ) -> CaptureSession {
        let order = requested.iter().map(|(d, _)| d.to_string()).collect();
        let devices = requested
            .into_iter()
            .map(|(d, seq)| {
                (
                    d.to_string(),
                    DeviceCapture {
                        seq,
                        samples: Vec::new(),
                        bytes: 0,
                        parts: BTreeSet::new(),
                        last_part: None,
                    },
                )
            })
            .collect();
        CaptureSession {
            model,
            deadline,
            limits,
            order,
            devices,
            send_failures,
            dropped: 0,
        }
    }

    /// When waiting stops.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// Every asked device has sent its last part (trivially true when no
    /// device could be asked).
    pub fn is_complete(&self) -> bool {
        self.devices.values().all(DeviceCapture::done)
    }

    /// Whether the session is over at `now`.
    pub fn is_over(&self, now: u64) -> bool {
        self.is_complete() || now >= self.deadline
    }

    /// Takes one upload from `device` (the id the broker authenticated).
    pub fn handle_upload(&mut self, device: &str, upload: &CaptureUpload) -> UploadOutcome {
        let limits = self.limits;
        let Some(capture) = self.devices.get_mut(device) else {
            return UploadOutcome::Ignored("device was not asked");
        };
        if upload.seq != capture.seq {
            return UploadOutcome::Ignored("answers another capture command");
        }
        if upload.model.name != self.model {
            return UploadOutcome::Ignored("samples of another model");
        }
        if capture.last_part.is_some_and(|last| upload.part > last) {
            return UploadOutcome::Ignored("part after the last one");
        }
        if upload.part > MAX_PART || !capture.parts.insert(upload.part) {
            return UploadOutcome::Ignored("duplicate or out-of-range part");
        }
        if upload.last {
            capture.last_part = Some(upload.part);
        }
        let (mut kept, mut dropped) = (0, 0);
        for sample in &upload.samples {
            let bytes = sample_bytes(sample);
            let fits = sample.input.len() == limits.width
                && sample.input.iter().all(|v| v.is_finite())
                && capture.samples.len() < limits.max_samples_per_device as usize
                && capture.bytes + bytes <= u64::from(limits.max_bytes_per_device);
            if fits {
                capture.bytes += bytes;
                capture.samples.push(sample.clone());
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        self.dropped += dropped;
        UploadOutcome::Accepted {
            kept,
            dropped,
            device_done: capture.done(),
        }
    }

    /// The job's view of the capture so far.
    pub fn summary(&self) -> CaptureSummary {
        CaptureSummary {
            requested: self.order.clone(),
            send_failures: self.send_failures.clone(),
            completed: self
                .order
                .iter()
                .filter(|d| self.devices.get(*d).is_some_and(DeviceCapture::done))
                .cloned()
                .collect(),
            samples: self.devices.values().map(|d| d.samples.len() as u64).sum(),
            dropped: self.dropped,
            deadline: self.deadline,
        }
    }

    /// The samples, device by device in the order asked.
    pub fn into_samples(mut self) -> Vec<CapturedSample> {
        let mut out = Vec::new();
        for id in &self.order {
            if let Some(d) = self.devices.remove(id) {
                out.extend(d.samples);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use drover_protocol::messages::Label;
    use drover_protocol::{ModelRef, Version};

    use super::*;
    use crate::core::drift::report::DeviceScore;

    fn dev(id: &str) -> FleetDevice {
        FleetDevice {
            id: DeviceId::new(id).unwrap(),
            labels: BTreeMap::new(),
            online: true,
            active: None,
        }
    }

    fn share(scores: &[(&str, f64)]) -> DeviceDriftShare {
        DeviceDriftShare {
            devices: scores.len() as u64,
            evaluated: scores.len() as u64,
            insufficient: 0,
            drifting: scores.iter().filter(|(_, s)| *s > 0.25).count() as u64,
            share: None,
            threshold: 0.25,
            min_samples_per_device: 1,
            worst: scores
                .iter()
                .map(|(d, s)| DeviceScore {
                    device: (*d).into(),
                    score: *s,
                    feature: "x".into(),
                    samples: 100,
                })
                .collect(),
        }
    }

    fn ids(v: &[DeviceId]) -> Vec<&str> {
        v.iter().map(DeviceId::as_str).collect()
    }

    #[test]
    fn drifting_devices_first_then_scores_then_ids() {
        let candidates: Vec<FleetDevice> = ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .map(dev)
            .collect();
        // `gone` drifts worst but is offline (not a candidate).
        let s = share(&[("gone", 0.9), ("c", 0.8), ("e", 0.5), ("b", 0.1)]);
        assert_eq!(
            ids(&select_capture_devices(Some(&s), &candidates, 2)),
            ["c", "e"]
        );
        assert_eq!(
            ids(&select_capture_devices(Some(&s), &candidates, 5)),
            ["c", "e", "b", "a", "d"]
        );
        assert_eq!(
            ids(&select_capture_devices(None, &candidates, 3)),
            ["a", "b", "c"]
        );
        assert!(select_capture_devices(Some(&s), &[], 3).is_empty());
        assert!(select_capture_devices(Some(&s), &candidates, 0).is_empty());
    }

    fn upload(seq: u64, part: u32, last: bool, samples: Vec<CapturedSample>) -> CaptureUpload {
        CaptureUpload {
            seq,
            model: ModelRef {
                name: ModelName::new("m").unwrap(),
                version: Version(1),
            },
            part,
            last,
            samples,
        }
    }

    fn sample(x: f32) -> CapturedSample {
        CapturedSample {
            input: vec![x, x],
            label: Some(Label::Class(0)),
        }
    }

    fn session(deadline: u64) -> CaptureSession {
        CaptureSession::new(
            ModelName::new("m").unwrap(),
            vec![
                (DeviceId::new("a").unwrap(), 7),
                (DeviceId::new("b").unwrap(), 9),
            ],
            BTreeMap::from([("c".to_owned(), "offline".to_owned())]),
            CaptureLimits {
                max_samples_per_device: 3,
                max_bytes_per_device: 1_000,
                width: 2,
            },
            deadline,
        )
    }

    #[test]
    fn uploads_are_matched_bounded_and_completed() {
        let mut s = session(100);
        assert!(!s.is_complete());
        assert!(!s.is_over(99));
        assert!(s.is_over(100));
        assert_eq!(
            s.handle_upload("z", &upload(7, 0, true, vec![])),
            UploadOutcome::Ignored("device was not asked")
        );
        assert_eq!(
            s.handle_upload("a", &upload(8, 0, true, vec![])),
            UploadOutcome::Ignored("answers another capture command")
        );
        let mut other = upload(7, 0, true, vec![]);
        other.model.name = ModelName::new("n").unwrap();
        assert_eq!(
            s.handle_upload("a", &other),
            UploadOutcome::Ignored("samples of another model")
        );
        // Part 1 (last) before part 0: not done until both arrived.
        let bad_width = CapturedSample {
            input: vec![1.0],
            label: None,
        };
        let nan = CapturedSample {
            input: vec![f32::NAN, 1.0],
            label: None,
        };
        assert_eq!(
            s.handle_upload("a", &upload(7, 1, true, vec![sample(1.0), bad_width, nan])),
            UploadOutcome::Accepted {
                kept: 1,
                dropped: 2,
                device_done: false
            }
        );
        assert_eq!(
            s.handle_upload("a", &upload(7, 1, true, vec![sample(1.0)])),
            UploadOutcome::Ignored("duplicate or out-of-range part")
        );
        assert_eq!(
            s.handle_upload(
                "a",
                &upload(7, 0, false, vec![sample(2.0), sample(3.0), sample(4.0)])
            ),
            UploadOutcome::Accepted {
                kept: 2,
                dropped: 1,
                device_done: true
            }
        );
        assert_eq!(
            s.handle_upload("a", &upload(7, 2, false, vec![sample(9.0)])),
            UploadOutcome::Ignored("part after the last one")
        );
        assert!(!s.is_complete());
        s.handle_upload("b", &upload(9, 0, true, vec![sample(5.0)]));
        assert!(s.is_complete());
        assert!(s.is_over(0));
        let summary = s.summary();
        assert_eq!(summary.requested, ["a", "b"]);
        assert_eq!(summary.completed, ["a", "b"]);
        assert_eq!(summary.samples, 4);
        assert_eq!(summary.dropped, 3);
        assert_eq!(summary.send_failures["c"], "offline");
        let xs: Vec<f32> = s.into_samples().iter().map(|s| s.input[0]).collect();
        assert_eq!(xs, [1.0, 2.0, 3.0, 5.0]);
    }

    #[test]
    fn byte_budget_is_enforced() {
        let mut s = CaptureSession::new(
            ModelName::new("m").unwrap(),
            vec![(DeviceId::new("a").unwrap(), 1)],
            BTreeMap::new(),
            CaptureLimits {
                max_samples_per_device: 1_000,
                max_bytes_per_device: 40,
                width: 2,
            },
            10,
        );
        // 16 bytes per 2-wide sample: two fit in 40.
        let out = s.handle_upload("a", &upload(1, 0, true, vec![sample(1.0); 5]));
        assert_eq!(
            out,
            UploadOutcome::Accepted {
                kept: 2,
                dropped: 3,
                device_done: true
            }
        );
    }

    #[test]
    fn nobody_asked_is_complete_at_once() {
        let s = CaptureSession::new(
            ModelName::new("m").unwrap(),
            Vec::new(),
            BTreeMap::new(),
            CaptureLimits {
                max_samples_per_device: 1,
                max_bytes_per_device: 1,
                width: 1,
            },
            10,
        );
        assert!(s.is_complete());
        assert!(s.into_samples().is_empty());
    }
}
