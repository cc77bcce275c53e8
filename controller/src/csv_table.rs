//! The one CSV reader (the `csv` crate) behind every CSV the controller
//! accepts: training datasets ([`crate::train::Dataset`]) and the reference
//! data pushed with a model ([`crate::registry::profile::parse_csv`]).
//!
//! Grammar: RFC 4180 records, one per line, comma separated, fields trimmed,
//! double quotes around a field optional (`""` inside quotes is a literal
//! quote; a quote after leading whitespace still opens a quoted field).
//! Blank lines are skipped and a UTF-8 byte-order mark is ignored. Refused,
//! with the line: a quoted field left open or spanning lines, text after a
//! closing quote, and text that is not UTF-8. Rows may have any number of
//! fields; callers check them against their header.

/// One record and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// Line number in the input (1-based).
    pub(crate) line: usize,
    /// Fields, trimmed and unquoted.
    pub(crate) fields: Vec<String>,
}

/// Why the text is not CSV.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CsvSyntaxError {
    /// A quoted field has no closing quote on its line.
    #[error("line {line}: unterminated quoted field")]
    UnterminatedQuote {
        /// 1-based line.
        line: usize,
    },
    /// Something other than a comma follows a closing quote.
    #[error("line {line}: text after a closing quote")]
    TextAfterQuote {
        /// 1-based line.
        line: usize,
    },
    /// A field is not UTF-8 text.
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 {
        /// 1-based line.
        line: usize,
    },
    /// The reader failed.
    #[error("cannot read CSV: {0}")]
    Read(String),
}

/// Reads every non-blank record of `bytes`.
pub(crate) fn read_rows(bytes: &[u8]) -> Result<Vec<Row>, CsvSyntaxError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut rows = Vec::new();
    loop {
        let start = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| CsvSyntaxError::Read(e.to_string()))?;
        if !more {
            break;
        }
        let end = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
        let line = record
            .position()
            .map_or(0, |p| usize::try_from(p.line()).unwrap_or(usize::MAX));
        let raw = bytes.get(start..end.min(bytes.len())).unwrap_or_default();
        // check_quotes counts the skipped blank lines itself.
        check_quotes(raw, line)?;
        let line = line + leading_blank_lines(raw);
        if record.iter().all(<[u8]>::is_empty) {
            continue;
        }
        let mut fields = Vec::with_capacity(record.len());
        for field in &record {
            let text = std::str::from_utf8(field).map_err(|_| CsvSyntaxError::NotUtf8 { line })?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
            fields.push(unquote(text));
        }
        rows.push(Row { line, fields });
    }
    Ok(rows)
}

/// Blank lines the reader skipped before a record are part of its raw span;
/// its reported line is where that span starts.
fn leading_blank_lines(raw: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = raw;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        if rest[..i].iter().all(|b| b.is_ascii_whitespace()) {
            n += 1;
            rest = &rest[i + 1..];
        } else {
            break;
        }
    }
    n
}

/// A field that still has quotes after trimming was quoted after leading
/// whitespace, which the `csv` crate reads literally.
fn unquote(text: &str) -> String {
    match text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|_| text.len() >= 2)
    {
        Some(inner) => inner.replace("\"\"", "\""),
        None => text.to_owned(),
    }
}

/// The `csv` crate is lenient about malformed quoting (it reads `"x"y` as
/// `xy` and lets a quote run to the end of the input); datasets are refused
/// instead, so a stray quote cannot silently merge rows.
fn check_quotes(raw: &[u8], line: usize) -> Result<(), CsvSyntaxError> {
    let text = raw.strip_suffix(b"\n").unwrap_or(raw);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut i = 0;
    let mut line = line;
    while i <= text.len() {
        while i < text.len() && matches!(text[i], b' ' | b'\t') {
            i += 1;
        }
        if text.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match text.get(i) {
                    None | Some(b'\n') => return Err(CsvSyntaxError::UnterminatedQuote { line }),
                    Some(b'"') if text.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\r') {
                i += 1;
            }
            match text.get(i) {
                None => return Ok(()),
                Some(b',') => i += 1,
                Some(b'\n') => {
                    line += 1;
                    i += 1;
                }
                Some(_) => return Err(CsvSyntaxError::TextAfterQuote { line }),
            }
        } else {
            match text[i..].iter().position(|b| matches!(b, b',' | b'\n')) {
                None => return Ok(()),
                Some(k) => {
                    if text[i + k] == b'\n' {
                        line += 1;
                    }
                    i += k + 1;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Vec<(usize, Vec<String>)> {
        read_rows(text.as_bytes())
            .unwrap()
            .into_iter()
            .map(|r| (r.line, r.fields))
            .collect()
    }

    #[test]
    fn quotes_whitespace_blank_lines_and_bom() {
        let rows =
            fields("\u{feff} a , \"b\" ,label\r\n1, 2.5 ,\"x \"\"y\"\"\"\n\n  \n-3,\"4,5\",z\n");
        assert_eq!(
            rows,
            vec![
                (1, vec!["a".into(), "b".into(), "label".into()]),
                (2, vec!["1".into(), "2.5".into(), "x \"y\"".into()]),
                (5, vec!["-3".into(), "4,5".into(), "z".into()]),
            ]
        );
    }

    #[test]
    fn malformed_quoting_names_the_line() {
        assert!(matches!(
            read_rows(b"a,label\n1,\"x\n"),
            Err(CsvSyntaxError::UnterminatedQuote { line: 2 })
        ));
        assert!(matches!(
            read_rows(b"a,label\n1,\"x"),
            Err(CsvSyntaxError::UnterminatedQuote { line: 2 })
        ));
        assert!(matches!(
            read_rows(b"a,label\n\n1,\"x\"y\n"),
            Err(CsvSyntaxError::TextAfterQuote { line: 3 })
        ));
        assert!(matches!(
            read_rows(b"a,label\n1,\xff\n"),
            Err(CsvSyntaxError::NotUtf8 { line: 2 })
        ));
    }
}
