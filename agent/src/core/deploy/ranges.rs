//! The byte ranges a download holds: sorted, disjoint, merged, so "what is
//! still missing" and "is this chunk new" are cheap to answer.

/// Sorted, disjoint, merged half-open byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Normalises arbitrary ranges (empty ones dropped, overlaps merged).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> RangeSet {
        let mut s = RangeSet::default();
        for (a, b) in ranges {
            s.insert(a, b);
        }
        s
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b < start {
                out.push((a, b));
            } else if a > end {
                if !placed {
                    out.push((start, end));
                    placed = true;
                }
                out.push((a, b));
            } else {
                start = start.min(a);
                end = end.max(b);
            }
        }
        if !placed {
            out.push((start, end));
        }
        self.0 = out;
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    /// Whether all of `[start, end)` is covered.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.0.iter().any(|&(a, b)| a <= start && end <= b)
    }

    /// The ranges.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// First position at or after `from` that is not covered.
    pub(super) fn next_missing(&self, from: u64) -> u64 {
        let mut pos = from;
        for &(a, b) in &self.0 {
            if a <= pos && pos < b {
                pos = b;
            }
        }
        pos
    }

    /// Start of the first range beginning after `pos`.
    pub(super) fn next_start_after(&self, pos: u64) -> Option<u64> {
        self.0.iter().map(|(a, _)| *a).find(|a| *a > pos)
    }
}
