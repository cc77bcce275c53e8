//! Reference data: the reference CSV (read with `crate::csv_table`, the
//! same grammar as training datasets), per-feature bins from reference quantiles
//! with their frequencies, the reference output distribution, health-check
//! samples and evaluation metrics.

use std::collections::BTreeMap;

use drover_protocol::manifest::{BinnedProfile, FeatureProfile, HealthSample, bin_index};

/// Bins per feature: 9 edges at the deciles, so underflow and overflow hold
/// the outer tenths (the drift module's convention).
pub const FEATURE_BINS: usize = 10;
/// Health-check rows per manifest.
pub const HEALTH_SAMPLES: usize = 8;
/// Largest reference CSV accepted, in rows.
pub const MAX_ROWS: usize = 1_000_000;

/// Why a reference CSV was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// No header line.
    #[error("reference CSV is empty")]
    Empty,
    /// Not UTF-8 text.
    #[error("reference CSV is not UTF-8 text")]
    NotUtf8,
    /// The header does not have the model's number of feature columns.
    #[error(
        "reference CSV has {found} feature columns ({names}) but the model's input takes {expected} \
         features per row: expected {expected} feature columns (plus an optional `label` column), found {found}"
    )]
    ColumnCount {
        /// Features per row of the model's input.
        expected: usize,
        /// Feature columns found.
        found: usize,
        /// Their names.
        names: String,
    },
    /// A data line has a different number of fields than the header.
    #[error("reference CSV line {line}: {found} fields, the header has {expected}")]
    RowLength {
        /// 1-based line number.
        line: usize,
        /// Header fields.
        expected: usize,
        /// Fields on the line.
        found: usize,
    },
    /// A feature value is not a finite number.
    #[error("reference CSV line {line}, column {column:?}: {value:?} is not a finite number")]
    NotANumber {
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: String,
        /// The text found.
        value: String,
    },
    /// Malformed CSV (quoting); the message names the line.
    #[error("reference CSV {0}")]
    Syntax(String),
    /// No data rows.
    #[error("reference CSV has a header but no rows")]
    NoRows,
    /// More rows than [`MAX_ROWS`].
    #[error("reference CSV has more than {MAX_ROWS} rows")]
    TooManyRows,
}

/// A parsed reference CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceData {
    /// Feature column names, in input order.
    pub feature_names: Vec<String>,
    /// Feature rows.
    pub rows: Vec<Vec<f32>>,
    /// The `label` column, if present.
    pub labels: Option<Vec<String>>,
}

/// Parses a CSV whose header names the columns: `features` feature columns
/// plus an optional label column (named `label`, or an extra last column).
pub fn parse_csv(bytes: &[u8], features: usize) -> Result<ReferenceData, CsvError> {
    std::str::from_utf8(bytes).map_err(|_| CsvError::NotUtf8)?;
    let mut lines = crate::csv_table::read_rows(bytes)
        .map_err(|e| CsvError::Syntax(e.to_string()))?
        .into_iter();
    let header = lines.next().ok_or(CsvError::Empty)?.fields;
    let label_col = header
        .iter()
        .position(|h| h.eq_ignore_ascii_case("label"))
        .or_else(|| (header.len() == features + 1).then(|| header.len() - 1));
    let feature_cols: Vec<usize> = (0..header.len())
        .filter(|i| Some(*i) != label_col)
        .collect();
    if feature_cols.len() != features {
        return Err(CsvError::ColumnCount {
            expected: features,
            found: feature_cols.len(),
            names: feature_cols
                .iter()
                .filter_map(|i| header.get(*i).cloned())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut rows = Vec::new();
    let mut labels = label_col.map(|_| Vec::new());
    for crate::csv_table::Row { line, fields } in lines {
        if rows.len() >= MAX_ROWS {
            return Err(CsvError::TooManyRows);
        }
        if fields.len() != header.len() {
            return Err(CsvError::RowLength {
                line,
                expected: header.len(),
                found: fields.len(),
            });
        }
        let mut row = Vec::with_capacity(features);
        for &c in &feature_cols {
            let raw = fields.get(c).map(String::as_str).unwrap_or_default();
            let v: f32 = raw
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| CsvError::NotANumber {
                    line,
                    column: header.get(c).cloned().unwrap_or_default(),
                    value: raw.to_string(),
                })?;
            row.push(v);
        }
        rows.push(row);
        if let (Some(labels), Some(c)) = (labels.as_mut(), label_col) {
            labels.push(fields.get(c).cloned().unwrap_or_default());
        }
    }
    if rows.is_empty() {
        return Err(CsvError::NoRows);
    }
    Ok(ReferenceData {
        feature_names: feature_cols
            .iter()
            .filter_map(|i| header.get(*i).cloned())
            .collect(),
        rows,
        labels,
    })
}

/// Quantile bins for `values` (at most [`FEATURE_BINS`]) and each bin's
/// share, binned exactly as agents bin (f32 edges, [`bin_index`]).
pub fn quantile_bins(values: &[f32]) -> BinnedProfile {
    let bins = FEATURE_BINS.min(values.len());
    let samples: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();
    let edges64 = if bins >= 2 {
        crate::core::drift::edges_from_quantiles(&samples, bins).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut edges: Vec<f32> = Vec::with_capacity(edges64.len());
    for e in edges64 {
        let e = e as f32;
        // f64 → f32 can merge neighbouring edges; edges must stay strictly sorted.
        if edges.last().is_none_or(|last| *last < e) {
            edges.push(e);
        }
    }
    let frequencies = frequencies(
        values.iter().map(|v| bin_index(&edges, *v)),
        edges.len() + 1,
    );
    BinnedProfile { edges, frequencies }
}

/// Share of items per index in `0..n`.
pub fn frequencies(indices: impl Iterator<Item = usize>, n: usize) -> Vec<f32> {
    let mut counts = vec![0u64; n];
    let mut total = 0u64;
    for i in indices {
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
            total += 1;
        }
    }
    counts
        .into_iter()
        .map(|c| {
            if total == 0 {
                0.0
            } else {
                (c as f64 / total as f64) as f32
            }
        })
        .collect()
}

/// Per-feature profiles of the reference rows.
pub fn feature_profiles(data: &ReferenceData) -> Vec<FeatureProfile> {
    data.feature_names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let column: Vec<f32> = data.rows.iter().filter_map(|r| r.get(i).copied()).collect();
            FeatureProfile {
                name: name.clone(),
                bins: quantile_bins(&column),
            }
        })
        .collect()
}

/// Health-check rows: up to [`HEALTH_SAMPLES`], taken round-robin over the
/// predicted classes (so every class the model predicts is checked), in row
/// order within a class. `classes[i]` is row i's predicted class, `outputs[i]`
/// its primary output.
pub fn pick_health_samples(
    rows: &[Vec<f32>],
    classes: Option<&[usize]>,
    outputs: &[Vec<f32>],
) -> Vec<HealthSample> {
    let picked: Vec<usize> = match classes {
        Some(classes) => {
            let mut by_class: BTreeMap<usize, std::collections::VecDeque<usize>> = BTreeMap::new();
            for (i, c) in classes.iter().enumerate() {
                by_class.entry(*c).or_default().push_back(i);
            }
            let mut picked = Vec::new();
            while picked.len() < HEALTH_SAMPLES && by_class.values().any(|q| !q.is_empty()) {
                for q in by_class.values_mut() {
                    if picked.len() < HEALTH_SAMPLES
                        && let Some(i) = q.pop_front()
                    {
                        picked.push(i);
                    }
                }
            }
            picked
        }
        None => {
            let n = rows.len();
            let k = HEALTH_SAMPLES.min(n);
            let mut v: Vec<usize> = (0..k).map(|j| j * n / k.max(1)).collect();
            v.dedup();
            v
        }
    };
    picked
        .into_iter()
        .filter_map(|i| {
            Some(HealthSample {
                input: rows.get(i)?.clone(),
                expected: outputs.get(i)?.clone(),
                inputs: vec![],
            })
        })
        .collect()
}

/// Maps label strings to class indices: by name in `labels`, else as an
/// integer index. Returns the first label that fits neither.
pub fn label_indices(values: &[String], labels: &[String]) -> Result<Vec<usize>, String> {
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    values
        .iter()
        .map(|v| {
            index
                .get(v.as_str())
                .copied()
                .or_else(|| v.parse::<usize>().ok().filter(|i| *i < labels.len()))
                .ok_or_else(|| v.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_label_column() {
        let d = parse_csv(b"a,b,label\n1,2,x\n3,4.5,y\n\n", 2).unwrap();
        assert_eq!(d.feature_names, ["a", "b"]);
        assert_eq!(d.rows, vec![vec![1.0, 2.0], vec![3.0, 4.5]]);
        assert_eq!(d.labels.unwrap(), ["x", "y"]);
        let d = parse_csv(b"a,b\n1,2\n", 2).unwrap();
        assert!(d.labels.is_none());
    }

    #[test]
    fn quoted_fields_work_as_in_datasets() {
        let d = parse_csv(
            b"\"a\", b ,label\n\"1\",2,\"fault, severe\"\n3, \"4.5\" ,\"say \"\"hi\"\"\"\n",
            2,
        )
        .unwrap();
        assert_eq!(d.feature_names, ["a", "b"]);
        assert_eq!(d.rows, vec![vec![1.0, 2.0], vec![3.0, 4.5]]);
        assert_eq!(
            d.labels,
            Some(vec!["fault, severe".to_string(), "say \"hi\"".to_string()])
        );
        assert!(matches!(
            parse_csv(b"a,b\n1,\"2\n", 2),
            Err(CsvError::Syntax(m)) if m.contains("line 2")
        ));
    }

    #[test]
    fn csv_errors_are_specific() {
        let e = parse_csv(b"a,b,c,label\n1,2,3,x\n", 4).unwrap_err();
        assert!(matches!(
            e,
            CsvError::ColumnCount {
                expected: 4,
                found: 3,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("expected 4") && msg.contains("found 3"),
            "{msg}"
        );
        assert!(matches!(
            parse_csv(b"a,b\n1,2,3\n", 2),
            Err(CsvError::RowLength { line: 2, .. })
        ));
        assert!(matches!(
            parse_csv(b"a,b\n1,zz\n", 2),
            Err(CsvError::NotANumber { line: 2, .. })
        ));
        assert!(matches!(
            parse_csv(b"a,b\n1,NaN\n", 2),
            Err(CsvError::NotANumber { .. })
        ));
        assert_eq!(parse_csv(b"", 2), Err(CsvError::Empty));
        assert_eq!(parse_csv(b"a,b\n", 2), Err(CsvError::NoRows));
        assert_eq!(parse_csv(&[0xff, 0xfe], 2), Err(CsvError::NotUtf8));
    }

    #[test]
    fn quantile_bins_are_sorted_and_sum_to_one() {
        let values: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 10.0)
            .collect();
        let b = quantile_bins(&values);
        assert_eq!(b.edges.len(), 9);
        assert!(b.edges.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b.frequencies.len(), 10);
        let sum: f32 = b.frequencies.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        for f in &b.frequencies {
            assert!((f - 0.1).abs() < 0.01, "{f}");
        }
        // Constant feature: one edge, everything in the bin above it.
        let c = quantile_bins(&[3.0; 50]);
        assert_eq!(c.edges, vec![3.0]);
        assert_eq!(c.frequencies, vec![0.0, 1.0]);
        let one = quantile_bins(&[1.0]);
        assert!(one.edges.is_empty());
        assert_eq!(one.frequencies, vec![1.0]);
    }

    #[test]
    fn health_samples_cover_classes() {
        let rows: Vec<Vec<f32>> = (0..20).map(|i| vec![i as f32]).collect();
        let classes: Vec<usize> = (0..20).map(|i| if i < 17 { 0 } else { i - 16 }).collect();
        let outputs: Vec<Vec<f32>> = rows.clone();
        let s = pick_health_samples(&rows, Some(&classes), &outputs);
        assert_eq!(s.len(), 8);
        let inputs: Vec<f32> = s.iter().map(|h| h.input[0]).collect();
        assert!(inputs.contains(&17.0) && inputs.contains(&18.0) && inputs.contains(&19.0));
        let r = pick_health_samples(&rows, None, &outputs);
        assert_eq!(r.len(), 8);
    }

    #[test]
    fn labels_map_by_name_or_index() {
        let labels = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            label_indices(&["b".into(), "0".into()], &labels).unwrap(),
            vec![1, 0]
        );
        assert_eq!(label_indices(&["z".into()], &labels).unwrap_err(), "z");
    }
}
