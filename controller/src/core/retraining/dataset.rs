//! A job's dataset: captured samples (+ labels) as a CSV the hook trains
//! on, topped up with reference rows when labels are scarce.
//!
//! # Format
//!
//! A header of the feature names in input order followed by the label
//! column (last), then one row per sample: the values in Rust's shortest
//! round-trip form and the label — the class *name* for classifiers (the
//! manifest's labels by index), the target value for regressors, empty
//! when the device had no ground truth. Captured rows come first, device by
//! device in the order they were asked; appended reference rows follow.
//! Fields are quoted only when they contain a comma, quote or surrounding
//! whitespace.
//!
//! # Topping up
//!
//! When fewer than `min_labelled_rows` captured rows carry a label, up to
//! `max_reference_rows` rows of the base version's reference CSV (evenly
//! spaced over the file, so the class mix is kept) are appended. They
//! anchor the model to every class it had while the captured rows pull it
//! toward the traffic that drifted; without them a job with a handful of
//! labels would train on too little, or lose a class.
//!
//! # The profile CSV
//!
//! The new version's reference profile should describe the traffic it will
//! serve, so the registry gets the *captured* rows' features (no labels);
//! with fewer than [`MIN_PROFILE_ROWS`] of them, every row of the dataset.

use std::collections::BTreeSet;

use drover_protocol::manifest::Task;
use drover_protocol::messages::{CapturedSample, Label};

use crate::train::{Dataset, TrainError};

/// Fewer captured rows than this make a noisy reference profile (10 bins
/// per feature); the whole dataset is used for the profile instead.
pub(crate) const MIN_PROFILE_ROWS: u64 = 100;

/// Why no dataset could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DatasetError {
    /// Nothing was captured and there is no reference data to fall back on.
    #[error("the dataset is empty: no device sent samples and no reference rows were available")]
    Empty,
    /// A feature has the label column's name.
    #[error("feature `{0}` has the label column's name; set dataset.label_column")]
    LabelClash(String),
}

/// Column names and how labels are written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DatasetLayout<'a> {
    /// Feature names, in input order.
    pub feature_names: &'a [String],
    /// The label column's name.
    pub label_column: &'a str,
    /// Classification (labels by index) or regression.
    pub task: &'a Task,
}

/// Labelled rows from a reference CSV.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ReferenceRows {
    /// Feature values.
    pub rows: Vec<Vec<f32>>,
    /// Label per row.
    pub labels: Vec<String>,
}

/// Reads up to `max_rows` labelled rows (evenly spaced) of `width`
/// features from a reference CSV whose label column is `label_column`, or
/// the last column when that name is missing and the header has one
/// column more than `width`.
pub(crate) fn parse_reference_csv(
    bytes: &[u8],
    label_column: &str,
    width: usize,
    max_rows: usize,
) -> Result<ReferenceRows, String> {
    let data = match Dataset::from_csv_reader(bytes, label_column) {
        Err(TrainError::MissingLabelColumn { header, .. }) if header.len() == width + 1 => {
            let last = header.last().cloned().unwrap_or_default();
            Dataset::from_csv_reader(bytes, &last)
        }
        other => other,
    }
    .map_err(|e| format!("reference CSV: {e}"))?;
    if data.feature_names.len() != width {
        return Err(format!(
            "reference CSV has {} feature columns, the model takes {width}",
            data.feature_names.len()
        ));
    }
    let n = data.rows.len();
    let take = n.min(max_rows);
    let mut out = ReferenceRows::default();
    for i in 0..take {
        // Evenly spaced, so a file sorted by class keeps its mix.
        let row = i * n / take.max(1);
        if let (Some(values), Some(&label)) = (data.rows.get(row), data.labels.get(row)) {
            out.rows.push(values.clone());
            out.labels
                .push(data.classes.get(label).cloned().unwrap_or_default());
        }
    }
    Ok(out)
}

/// The dataset CSV and what is in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BuiltDataset {
    /// The CSV text (see the module docs).
    pub csv: String,
    /// Features-only CSV for the new version's reference profile.
    pub profile_csv: String,
    /// Data rows.
    pub rows: u64,
    /// Rows with a label.
    pub labelled_rows: u64,
    /// Rows from captured samples.
    pub captured_rows: u64,
    /// Rows from the reference CSV.
    pub reference_rows: u64,
    /// Distinct labels, in the reference trainer's class order.
    pub classes: Vec<String>,
}

fn needs_quotes(field: &str) -> bool {
    field.contains([',', '"', '\n', '\r']) || field.trim() != field
}

fn push_field(line: &mut String, field: &str) {
    if needs_quotes(field) {
        line.push('"');
        line.push_str(&field.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(field);
    }
}

fn push_values(line: &mut String, values: &[f32]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&v.to_string());
    }
}

fn label_text(task: &Task, label: Option<Label>) -> Option<String> {
    match (task, label?) {
        (Task::Classification { labels, .. }, Label::Class(i)) => {
            labels.get(usize::try_from(i).ok()?).cloned()
        }
        (Task::Regression { .. }, Label::Value(v)) if v.is_finite() => Some(v.to_string()),
        _ => None,
    }
}

/// Same order as the reference trainer: numeric when every label is an
/// integer, else by bytes.
fn class_order(labels: &BTreeSet<String>) -> Vec<String> {
    let mut classes: Vec<String> = labels.iter().cloned().collect();
    let numeric: Option<Vec<i64>> = classes.iter().map(|c| c.parse().ok()).collect();
    if let Some(numbers) = numeric {
        let mut pairs: Vec<(i64, String)> = numbers.into_iter().zip(classes).collect();
        pairs.sort();
        classes = pairs.into_iter().map(|(_, c)| c).collect();
    }
    classes
}

/// Assembles the dataset from captured samples (already checked for width
/// and finiteness) and, if given, reference rows to append.
pub(crate) fn build_dataset(
    layout: DatasetLayout<'_>,
    captured: &[CapturedSample],
    reference: Option<&ReferenceRows>,
) -> Result<BuiltDataset, DatasetError> {
    if let Some(clash) = layout
        .feature_names
        .iter()
        .find(|f| f.as_str() == layout.label_column)
    {
        return Err(DatasetError::LabelClash(clash.clone()));
    }
    let reference_len = reference.map_or(0, |r| r.rows.len());
    if captured.is_empty() && reference_len == 0 {
        return Err(DatasetError::Empty);
    }
    let mut header = String::new();
    for (i, name) in layout.feature_names.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        push_field(&mut header, name);
    }
    let mut csv = header.clone();
    csv.push(',');
    push_field(&mut csv, layout.label_column);
    csv.push('\n');

    let mut labels_seen = BTreeSet::new();
    let mut labelled = 0u64;
    let mut features_only = Vec::with_capacity(captured.len() + reference_len);
    let rows = captured
        .iter()
        .map(|s| (s.input.as_slice(), label_text(layout.task, s.label)))
        .chain(reference.into_iter().flat_map(|r| {
            r.rows
                .iter()
                .zip(&r.labels)
                .map(|(row, label)| (row.as_slice(), Some(label.clone())))
        }));
    for (values, label) in rows {
        let mut line = String::new();
        push_values(&mut line, values);
        features_only.push(line.clone());
        line.push(',');
        if let Some(label) = label.filter(|l| !l.is_empty()) {
            push_field(&mut line, &label);
            labels_seen.insert(label);
            labelled += 1;
        }
        csv.push_str(&line);
        csv.push('\n');
    }

    let captured_rows = captured.len() as u64;
    let profile_rows = if captured_rows >= MIN_PROFILE_ROWS {
        captured.len()
    } else {
        features_only.len()
    };
    let mut profile_csv = header;
    profile_csv.push('\n');
    for line in features_only.iter().take(profile_rows) {
        profile_csv.push_str(line);
        profile_csv.push('\n');
    }
    Ok(BuiltDataset {
        csv,
        profile_csv,
        rows: features_only.len() as u64,
        labelled_rows: labelled,
        captured_rows,
        reference_rows: reference_len as u64,
        classes: class_order(&labels_seen),
    })
}

/// The labelled rows of a dataset CSV written by [`build_dataset`] (the
/// label is the last field; unlabelled rows end with a comma), for
/// trainers that need a label on every row.
pub(crate) fn labelled_only(csv: &str) -> String {
    let mut lines = csv.lines();
    let mut out = String::with_capacity(csv.len());
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for line in lines.filter(|l| !l.trim().is_empty() && !l.ends_with(',')) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task::Classification {
            labels: vec!["normal".into(), "warning".into(), "fault".into()],
            probabilities: "probabilities".into(),
            label: Some("label".into()),
        }
    }

    fn names() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    fn s(a: f32, b: f32, label: Option<Label>) -> CapturedSample {
        CapturedSample {
            input: vec![a, b],
            label,
        }
    }

    #[test]
    fn captured_rows_with_class_names_and_blanks() {
        let task = task();
        let names = names();
        let layout = DatasetLayout {
            feature_names: &names,
            label_column: "label",
            task: &task,
        };
        let built = build_dataset(
            layout,
            &[
                s(1.5, -2.0, Some(Label::Class(2))),
                s(0.1, 3.0, None),
                s(4.0, 5.0, Some(Label::Class(9))),
                s(6.0, 7.0, Some(Label::Value(1.0))),
                s(8.0, 9.0, Some(Label::Class(0))),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            built.csv,
            "a,b,label\n1.5,-2,fault\n0.1,3,\n4,5,\n6,7,\n8,9,normal\n"
        );
        assert_eq!(built.rows, 5);
        assert_eq!(built.labelled_rows, 2);
        assert_eq!(built.captured_rows, 5);
        assert_eq!(built.classes, ["fault", "normal"]);
        // Fewer than MIN_PROFILE_ROWS captured: every row, features only.
        assert_eq!(built.profile_csv, "a,b\n1.5,-2\n0.1,3\n4,5\n6,7\n8,9\n");
        assert_eq!(
            labelled_only(&built.csv),
            "a,b,label\n1.5,-2,fault\n8,9,normal\n"
        );
        let data = Dataset::from_csv_reader(labelled_only(&built.csv).as_bytes(), "label").unwrap();
        assert_eq!(data.classes, built.classes);
    }

    #[test]
    fn reference_rows_are_appended_and_evenly_spaced() {
        let csv = "a,b,label\n".to_owned()
            + &(0..10)
                .map(|i| format!("{i},{i},{}\n", if i < 5 { "normal" } else { "fault" }))
                .collect::<String>();
        let rows = parse_reference_csv(csv.as_bytes(), "label", 2, 4).unwrap();
        assert_eq!(rows.rows.len(), 4);
        let firsts: Vec<f32> = rows.rows.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, [0.0, 2.0, 5.0, 7.0]);
        assert_eq!(rows.labels, ["normal", "normal", "fault", "fault"]);

        let task = task();
        let names = names();
        let captured: Vec<CapturedSample> = (0..MIN_PROFILE_ROWS)
            .map(|i| s(i as f32, 0.0, None))
            .collect();
        let built = build_dataset(
            DatasetLayout {
                feature_names: &names,
                label_column: "label",
                task: &task,
            },
            &captured,
            Some(&rows),
        )
        .unwrap();
        assert_eq!(built.rows, MIN_PROFILE_ROWS + 4);
        assert_eq!(built.reference_rows, 4);
        assert_eq!(built.labelled_rows, 4);
        assert!(built.csv.ends_with("7,7,fault\n"));
        // Enough captured rows: the profile is theirs alone.
        assert_eq!(
            built.profile_csv.lines().count() as u64,
            MIN_PROFILE_ROWS + 1
        );
    }

    #[test]
    fn reference_csv_label_column_fallback_and_errors() {
        let csv = b"x,y,target\n1,2,a\n3,4,b\n";
        let rows = parse_reference_csv(csv, "label", 2, 10).unwrap();
        assert_eq!(rows.labels, ["a", "b"]);
        let err = parse_reference_csv(csv, "label", 3, 10).unwrap_err();
        assert!(err.contains("reference CSV"), "{err}");
        let err = parse_reference_csv(b"x,label\n1,a\n2,b\n", "label", 2, 10).unwrap_err();
        assert!(err.contains("1 feature columns"), "{err}");
    }

    #[test]
    fn regression_labels_and_quoting() {
        let task = Task::Regression {
            output: "variable".into(),
        };
        let names = vec!["x, y".to_owned()];
        let built = build_dataset(
            DatasetLayout {
                feature_names: &names,
                label_column: "target",
                task: &task,
            },
            &[
                CapturedSample {
                    input: vec![1.0],
                    label: Some(Label::Value(2.5)),
                },
                CapturedSample {
                    input: vec![2.0],
                    label: Some(Label::Class(1)),
                },
            ],
            None,
        )
        .unwrap();
        assert_eq!(built.csv, "\"x, y\",target\n1,2.5\n2,\n");
        assert_eq!(built.labelled_rows, 1);
    }

    #[test]
    fn errors() {
        let task = task();
        let names = names();
        let layout = DatasetLayout {
            feature_names: &names,
            label_column: "label",
            task: &task,
        };
        assert_eq!(build_dataset(layout, &[], None), Err(DatasetError::Empty));
        let clash = vec!["label".to_owned()];
        assert_eq!(
            build_dataset(
                DatasetLayout {
                    feature_names: &clash,
                    ..layout
                },
                &[s(1.0, 2.0, None)],
                None
            ),
            Err(DatasetError::LabelClash("label".into()))
        );
    }

    #[test]
    fn numeric_classes_sort_numerically() {
        let set: BTreeSet<String> = ["10", "9", "-1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(class_order(&set), ["-1", "9", "10"]);
    }
}
