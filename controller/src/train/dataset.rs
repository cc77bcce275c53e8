//! Labelled tabular data read from CSV.
//!
//! The parser is deliberately small: one record per line, comma separated,
//! fields trimmed, optional double quotes (`""` inside quotes is a literal
//! quote). Quoted fields cannot span lines. Blank lines are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::error::TrainError;

/// A labelled dataset: numeric features plus one class label per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Feature column names, in file order (the label column removed).
    pub feature_names: Vec<String>,
    /// One row per record, `feature_names.len()` values each, all finite.
    pub rows: Vec<Vec<f32>>,
    /// Class index per row, into `classes`.
    pub labels: Vec<usize>,
    /// Distinct label values. Sorted numerically when every label is an
    /// integer, otherwise by bytes; so class indices do not depend on row order.
    pub classes: Vec<String>,
}

impl Dataset {
    /// Reads a CSV file whose header names `label_column` and whose other
    /// columns are numeric features.
    pub fn from_csv_path(path: &Path, label_column: &str) -> Result<Dataset, TrainError> {
        let file = std::fs::File::open(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_csv_reader(file, label_column)
    }

    /// Reads CSV from any reader; see [`Dataset::from_csv_path`].
    pub fn from_csv_reader(reader: impl Read, label_column: &str) -> Result<Dataset, TrainError> {
        let mut lines = BufReader::new(reader)
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line));

        let (header_line, header) = loop {
            match lines.next() {
                None => return Err(TrainError::Empty),
                Some((n, line)) => {
                    let line = line?;
                    let line = line.strip_prefix('\u{feff}').unwrap_or(&line);
                    if !line.trim().is_empty() {
                        break (n, split_fields(line, n)?);
                    }
                }
            }
        };

        let mut seen = BTreeSet::new();
        for name in &header {
            if !seen.insert(name.as_str()) {
                return Err(TrainError::DuplicateColumn { name: name.clone() });
            }
            check_name(name, header_line)?;
        }
        let label_ix = header
            .iter()
            .position(|h| h == label_column)
            .ok_or_else(|| TrainError::MissingLabelColumn {
                label_column: label_column.to_owned(),
                header: header.clone(),
            })?;
        if header.len() < 2 {
            return Err(TrainError::NoFeatures {
                label_column: label_column.to_owned(),
            });
        }
        let feature_names: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != label_ix)
            .map(|(_, h)| h.clone())
            .collect();

        let mut rows = Vec::new();
        let mut raw_labels = Vec::new();
        for (n, line) in lines {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let fields = split_fields(&line, n)?;
            if fields.len() != header.len() {
                return Err(TrainError::RaggedRow {
                    line: n,
                    expected: header.len(),
                    found: fields.len(),
                });
            }
            let mut row = Vec::with_capacity(feature_names.len());
            for (i, field) in fields.iter().enumerate() {
                if i == label_ix {
                    continue;
                }
                match field.parse::<f32>() {
                    Ok(v) if v.is_finite() => row.push(v),
                    _ => {
                        return Err(TrainError::NonNumeric {
                            line: n,
                            column: header[i].clone(),
                            value: field.clone(),
                        });
                    }
                }
            }
            let label = &fields[label_ix];
            if label.is_empty() {
                return Err(TrainError::EmptyLabel { line: n });
            }
            check_name(label, n)?;
            rows.push(row);
            raw_labels.push(fields[label_ix].clone());
        }
        if rows.is_empty() {
            return Err(TrainError::NoRows);
        }

        let classes = sorted_classes(&raw_labels);
        if let [only] = classes.as_slice() {
            return Err(TrainError::SingleClass {
                class: only.clone(),
            });
        }
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let labels = raw_labels.iter().map(|l| index[l.as_str()]).collect();

        Ok(Dataset {
            feature_names,
            rows,
            labels,
            classes,
        })
    }

    /// The bytes [`Dataset::sha256_hex`] hashes: a header line of feature
    /// names, then one line per row with each value in Rust's shortest
    /// round-trip form and the class *name*. So the hash ignores formatting
    /// (`1.50` vs `1.5`, quoting, blank lines) and the label column's
    /// position, but changes with any value, row order, or name.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = String::from("drover-dataset-v1\n");
        out.push_str(&self.feature_names.join(","));
        out.push('\n');
        for (row, &label) in self.rows.iter().zip(&self.labels) {
            for v in row {
                out.push_str(&format!("{v},"));
            }
            out.push_str(self.classes.get(label).map_or("", String::as_str));
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Hex SHA-256 of [`Dataset::canonical_bytes`], recorded as lineage.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// Checks the invariants the parser guarantees, for datasets built by hand.
    pub(crate) fn validate(&self) -> Result<(), TrainError> {
        let invalid = |m: String| Err(TrainError::InvalidDataset(m));
        if self.rows.is_empty() {
            return Err(TrainError::NoRows);
        }
        if self.feature_names.is_empty() {
            return invalid("no feature columns".into());
        }
        if self.classes.len() < 2 {
            return invalid(format!("{} classes; need at least two", self.classes.len()));
        }
        if self.labels.len() != self.rows.len() {
            return invalid(format!(
                "{} labels for {} rows",
                self.labels.len(),
                self.rows.len()
            ));
        }
        for (i, (row, &label)) in self.rows.iter().zip(&self.labels).enumerate() {
            if row.len() != self.feature_names.len() {
                return invalid(format!(
                    "row {i} has {} values for {} features",
                    row.len(),
                    self.feature_names.len()
                ));
            }
            if row.iter().any(|v| !v.is_finite()) {
                return invalid(format!("row {i} has a non-finite value"));
            }
            if label >= self.classes.len() {
                return invalid(format!("row {i} has label index {label}"));
            }
        }
        Ok(())
    }
}

/// Names end up comma-joined in ONNX metadata, so a comma would make them
/// ambiguous to whoever splits them again.
fn check_name(name: &str, line: usize) -> Result<(), TrainError> {
    if name.contains(',') {
        return Err(TrainError::CommaInName {
            line,
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn split_fields(line: &str, line_no: usize) -> Result<Vec<String>, TrainError> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut field = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(TrainError::UnterminatedQuote { line: line_no }),
                    Some('"') if chars.next_if_eq(&'"').is_some() => field.push('"'),
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(TrainError::TextAfterQuote { line: line_no }),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_owned());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim_end().to_owned());
        }
    }
}

fn class_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

fn sorted_classes(labels: &[String]) -> Vec<String> {
    let distinct: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
    let mut classes: Vec<String> = distinct.into_iter().map(str::to_owned).collect();
    let all_integers = classes.iter().all(|c| c.parse::<i64>().is_ok());
    if all_integers {
        classes.sort_by(|a, b| class_order(a, b));
    }
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dataset, TrainError> {
        Dataset::from_csv_reader(text.as_bytes(), "label")
    }

    #[test]
    fn parses_quotes_whitespace_and_blank_lines() {
        let ds =
            parse("\u{feff} a , \"b\" ,label\r\n1, 2.5 ,\"x \"\"y\"\"\"\n\n-3,4e1,z\n").unwrap();
        assert_eq!(ds.feature_names, ["a", "b"]);
        assert_eq!(ds.rows, vec![vec![1.0, 2.5], vec![-3.0, 40.0]]);
        assert_eq!(ds.classes, ["x \"y\"", "z"]);
        assert_eq!(ds.labels, [0, 1]);
    }

    #[test]
    fn label_column_may_be_anywhere() {
        let ds = parse("label,a,b\nb,1,2\na,3,4\n").unwrap();
        assert_eq!(ds.feature_names, ["a", "b"]);
        assert_eq!(ds.classes, ["a", "b"]);
        assert_eq!(ds.labels, [1, 0]);
    }

    #[test]
    fn integer_classes_sort_numerically() {
        let ds = parse("a,label\n1,10\n2,2\n3,-1\n4,2\n").unwrap();
        assert_eq!(ds.classes, ["-1", "2", "10"]);
        assert_eq!(ds.labels, [2, 1, 0, 1]);
    }

    #[test]
    fn mixed_classes_sort_by_bytes() {
        let ds = parse("a,label\n1,10\n2,2\n3,x\n").unwrap();
        assert_eq!(ds.classes, ["10", "2", "x"]);
        assert_eq!(ds.labels, [0, 1, 2]);
    }

    #[test]
    fn string_classes_sort_by_bytes_regardless_of_row_order() {
        let a = parse("x,label\n1,warning\n2,fault\n3,normal\n").unwrap();
        let b = parse("x,label\n3,normal\n1,warning\n2,fault\n").unwrap();
        assert_eq!(a.classes, ["fault", "normal", "warning"]);
        assert_eq!(a.classes, b.classes);
    }

    #[test]
    fn empty_file() {
        assert!(matches!(parse(""), Err(TrainError::Empty)));
        assert!(matches!(parse("\n  \n"), Err(TrainError::Empty)));
    }

    #[test]
    fn header_only() {
        assert!(matches!(parse("a,label\n\n"), Err(TrainError::NoRows)));
    }

    #[test]
    fn ragged_row_names_the_line() {
        let err = parse("a,b,label\n1,2,x\n\n3,y\n").unwrap_err();
        assert!(
            matches!(
                err,
                TrainError::RaggedRow {
                    line: 4,
                    expected: 3,
                    found: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "line 4: expected 3 fields, found 2");
    }

    #[test]
    fn non_numeric_names_line_and_column() {
        let err = parse("a,b,label\n1,2,x\n1,two,y\n").unwrap_err();
        match &err {
            TrainError::NonNumeric {
                line,
                column,
                value,
            } => {
                assert_eq!((*line, column.as_str(), value.as_str()), (3, "b", "two"));
            }
            other => panic!("{other:?}"),
        }
        for bad in ["", "nan", "inf", "1,5"] {
            let text = format!("a,label\n\"{bad}\",x\n");
            assert!(
                matches!(parse(&text), Err(TrainError::NonNumeric { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_label_column() {
        let err = Dataset::from_csv_reader("a,b,class\n1,2,x\n".as_bytes(), "label").unwrap_err();
        assert!(matches!(
            &err,
            TrainError::MissingLabelColumn { label_column, header }
                if label_column == "label" && header == &["a", "b", "class"]
        ));
    }

    #[test]
    fn single_class() {
        let err = parse("a,label\n1,x\n2,x\n").unwrap_err();
        assert!(matches!(&err, TrainError::SingleClass { class } if class == "x"));
    }

    #[test]
    fn other_header_and_label_errors() {
        assert!(matches!(
            parse("label\nx\n"),
            Err(TrainError::NoFeatures { .. })
        ));
        assert!(matches!(
            parse("a,a,label\n1,2,x\n"),
            Err(TrainError::DuplicateColumn { name }) if name == "a"
        ));
        assert!(matches!(
            parse("a,label\n1,\n"),
            Err(TrainError::EmptyLabel { line: 2 })
        ));
        assert!(matches!(
            parse("a,label\n1,\"x,y\"\n"),
            Err(TrainError::CommaInName { line: 2, .. })
        ));
        assert!(matches!(
            parse("a,label\n1,\"x\n"),
            Err(TrainError::UnterminatedQuote { line: 2 })
        ));
        assert!(matches!(
            parse("a,label\n1,\"x\"y\n"),
            Err(TrainError::TextAfterQuote { line: 2 })
        ));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err =
            Dataset::from_csv_path(Path::new("/nonexistent/drover.csv"), "label").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/drover.csv"), "{err}");
    }

    #[test]
    fn hash_ignores_formatting_but_not_values() {
        let a = parse("a,label\n1.50,x\n2,y\n").unwrap();
        let b = parse("\"a\" , label\n1.5 , \"x\"\n\n2.0,y\n").unwrap();
        let c = parse("a,label\n1.5,x\n2.001,y\n").unwrap();
        assert_eq!(a.sha256_hex(), b.sha256_hex());
        assert_ne!(a.sha256_hex(), c.sha256_hex());
        assert_eq!(a.sha256_hex().len(), 64);
    }
}
