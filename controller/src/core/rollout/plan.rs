//! Wave assignment: which device gets the candidate when.
//!
//! # Device order
//!
//! Each device's place is [`device_hash`]: the first 8 bytes (big-endian) of
//! `SHA-256("drover-rollout\0" ‖ rollout id ‖ "\0" ‖ device id)`. SHA-256 is
//! fixed by its standard, so the order is the same in every process, on every
//! platform and in every future version; salting with the rollout id gives
//! each rollout a different canary, so the same few devices do not carry the
//! risk of every rollout. Ties (practically impossible) are broken by device id.
//!
//! # Wave sizes
//!
//! Waves are cumulative percentages `p_i` of the `N` matching devices. The
//! cumulative count after wave `i` is `ceil(p_i · N / 100)`, raised to at
//! least one more than the wave before (every wave gets at least one device)
//! and lowered so that every later wave can still get one; when `N` is
//! smaller than the number of waves, the first `N` waves get one device each
//! and the rest are empty (and are skipped). See [`cumulative_sizes`].
//!
//! # Canary stratification
//!
//! A device's cohort is its values for the spec's cohort label keys (by
//! default `region` and `hardware`; a missing label counts as the value `-`),
//! see [`cohort_of`]. With `k` canary slots and `C` cohorts ([`stratify`]):
//!
//! - `k >= C`: every cohort gets one canary device, and the remaining `k - C`
//!   slots are shared in proportion to each cohort's remaining devices
//!   (`size - 1`), by the largest-remainder method (ties: cohort name).
//! - `k < C`: the `k` largest cohorts get one device each (ties: cohort name).
//!
//! Within a cohort the canary devices are the first ones in device order. The
//! other waves take the remaining devices in device order.
//!
//! # Devices that join later
//!
//! A device that starts matching the selector after the plan was made never
//! joins the canary (the canary is a fixed, stratified sample). It joins the
//! first non-canary wave whose last planned device's hash is `>=` its own hash
//! (the last wave if none): the wave its hash would have put it in had it been
//! there from the start, so joiners spread over the waves in proportion.

use std::collections::BTreeMap;

use drover_protocol::DeviceId;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The stable 64-bit position of `device` in rollout `rollout_id`'s order.
pub fn device_hash(rollout_id: &str, device: &DeviceId) -> u64 {
    let mut h = sha2::Sha256::new();
    h.update(b"drover-rollout\0");
    h.update(rollout_id.as_bytes());
    h.update(b"\0");
    h.update(device.as_str().as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The cohort of a device: `key=value` for each cohort key, joined with `/`;
/// a missing label is `-`.
pub fn cohort_of(labels: &BTreeMap<String, String>, keys: &[String]) -> String {
    let mut out = String::new();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(labels.get(k).map_or("-", String::as_str));
    }
    out
}

/// Cumulative device counts after each wave, for `n` devices and cumulative
/// `percents` (see the module docs). The last entry is always `n`.
pub fn cumulative_sizes(n: usize, percents: &[f64]) -> Vec<usize> {
    let w = percents.len();
    let mut out = Vec::with_capacity(w);
    let mut prev = 0usize;
    for (i, p) in percents.iter().enumerate() {
        // The epsilon keeps 10 % of 2000 at 200 despite binary rounding.
        let wanted = if i + 1 == w {
            n
        } else {
            ((p / 100.0) * n as f64 - 1e-9).ceil().max(0.0) as usize
        };
        let lo = prev + 1;
        let hi = n.saturating_sub(w - 1 - i).max(lo);
        let c = wanted.clamp(lo, hi).min(n);
        out.push(c);
        prev = c;
    }
    out
}

/// How many canary slots each cohort gets, for `k` slots (see the module docs).
pub fn stratify(cohort_sizes: &BTreeMap<String, usize>, k: usize) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    let cohorts: Vec<(&String, usize)> = cohort_sizes
        .iter()
        .filter(|(_, s)| **s > 0)
        .map(|(c, s)| (c, *s))
        .collect();
    let total: usize = cohorts.iter().map(|(_, s)| s).sum();
    let k = k.min(total);
    if k < cohorts.len() {
        let mut by_size = cohorts.clone();
        // Largest first; BTreeMap order already breaks ties by name (stable sort).
        by_size.sort_by_key(|c| std::cmp::Reverse(c.1));
        for (c, _) in by_size.into_iter().take(k) {
            out.insert(c.clone(), 1);
        }
        return out;
    }
    let rest = k - cohorts.len();
    let spare: usize = total - cohorts.len();
    let mut given = 0usize;
    let mut remainders: Vec<(u128, &String)> = Vec::new();
    for (c, s) in &cohorts {
        // Exact integer arithmetic: quota = rest · (s − 1) / spare.
        let (q, r) = if spare == 0 {
            (0, 0)
        } else {
            let num = rest as u128 * (*s as u128 - 1);
            (num / spare as u128, num % spare as u128)
        };
        out.insert((*c).clone(), 1 + q as usize);
        given += q as usize;
        remainders.push((r, c));
    }
    remainders.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, c) in remainders.into_iter().take(rest - given) {
        if let Some(n) = out.get_mut(c) {
            *n += 1;
        }
    }
    out
}

/// A device as the planner sees it.
#[derive(Debug, Clone)]
pub(crate) struct PlanInput {
    pub(crate) id: DeviceId,
    pub(crate) hash: u64,
    pub(crate) cohort: String,
}

/// The result of planning: a wave per device, and what joiners need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Wave index per device.
    pub(crate) assignment: BTreeMap<DeviceId, u32>,
    /// Planned devices per wave (not cumulative).
    pub(crate) sizes: Vec<usize>,
    /// Canary devices per cohort.
    pub(crate) canary_cohorts: BTreeMap<String, usize>,
    /// Joiner routing, see [`JoinerBounds`].
    pub(crate) bounds: JoinerBounds,
}

/// For each non-empty non-canary wave, the hash of its last planned device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub(crate) struct JoinerBounds {
    bounds: Vec<(u64, u32)>,
    last_wave: u32,
}

impl JoinerBounds {
    /// The wave a device with `hash` joins (see the module docs).
    pub(crate) fn wave_for(&self, hash: u64) -> u32 {
        let i = self.bounds.partition_point(|(b, _)| *b < hash);
        self.bounds.get(i).map_or(self.last_wave, |(_, w)| *w)
    }
}

/// Plans `devices` over cumulative `percents` (at least one wave).
pub(crate) fn plan(mut devices: Vec<PlanInput>, percents: &[f64]) -> Plan {
    devices.sort_by(|a, b| (a.hash, &a.id).cmp(&(b.hash, &b.id)));
    let n = devices.len();
    let cumulative = cumulative_sizes(n, percents);
    let canary_size = cumulative.first().copied().unwrap_or(0);

    let mut cohort_sizes: BTreeMap<String, usize> = BTreeMap::new();
    for d in &devices {
        *cohort_sizes.entry(d.cohort.clone()).or_default() += 1;
    }
    let canary_cohorts = stratify(&cohort_sizes, canary_size);
    let mut left = canary_cohorts.clone();
    let mut assignment = BTreeMap::new();
    let mut rest = Vec::with_capacity(n);
    for d in devices {
        match left.get_mut(&d.cohort) {
            Some(slots) if *slots > 0 => {
                *slots -= 1;
                assignment.insert(d.id, 0);
            }
            _ => rest.push(d),
        }
    }

    let last_wave = u32::try_from(percents.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let mut sizes = vec![canary_size];
    let mut bounds = Vec::new();
    let mut iter = rest.into_iter();
    for (i, pair) in cumulative.windows(2).enumerate() {
        let wave = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let take = pair[1] - pair[0];
        let mut last_hash = None;
        for d in iter.by_ref().take(take) {
            last_hash = Some(d.hash);
            assignment.insert(d.id, wave);
        }
        sizes.push(take);
        if let Some(h) = last_hash {
            bounds.push((h, wave));
        }
    }
    Plan {
        assignment,
        sizes,
        canary_cohorts,
        bounds: JoinerBounds { bounds, last_wave },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // Pinned so that a change of hash (which would reshuffle every
        // running rollout after an upgrade) fails loudly.
        let d = DeviceId::new("dev-1").unwrap();
        let h = device_hash("r1", &d);
        assert_eq!(h, device_hash("r1", &d));
        assert_ne!(h, device_hash("r2", &d));
        assert_eq!(format!("{h:016x}"), "626973c75e3146d4");
    }

    #[test]
    fn sizes_follow_percentages_with_one_device_minimum() {
        let p = [1.0, 10.0, 50.0, 100.0];
        assert_eq!(cumulative_sizes(2000, &p), vec![20, 200, 1000, 2000]);
        assert_eq!(cumulative_sizes(150, &p), vec![2, 15, 75, 150]);
        assert_eq!(cumulative_sizes(10, &p), vec![1, 2, 5, 10]);
        assert_eq!(cumulative_sizes(5, &p), vec![1, 2, 3, 5]);
        assert_eq!(cumulative_sizes(4, &p), vec![1, 2, 3, 4]);
        assert_eq!(cumulative_sizes(2, &p), vec![1, 2, 2, 2]);
        assert_eq!(cumulative_sizes(3, &[99.0, 100.0]), vec![2, 3]);
    }

    #[test]
    fn stratify_covers_every_cohort_then_proportional() {
        let sizes: BTreeMap<String, usize> = [("a", 700), ("b", 200), ("c", 90), ("d", 10)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let s = stratify(&sizes, 20);
        assert_eq!(s.values().sum::<usize>(), 20);
        assert!(s.values().all(|v| *v >= 1));
        assert!(s["a"] > s["b"] && s["b"] > s["d"]);
        let s = stratify(&sizes, 2);
        assert_eq!(s.len(), 2);
        assert!(s.contains_key("a") && s.contains_key("b"));
        let s = stratify(&sizes, 2000);
        assert_eq!(s["d"], 10);
    }
}
