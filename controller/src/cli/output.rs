//! Output: aligned tables for people, JSON for scripts (`--output json`).

use std::io::Write;

use serde::Serialize;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// Pretty JSON.
    Json,
}

/// Prints `value` as JSON.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    emit(&serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows under headers, columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        emit(parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Prints `key: value` lines.
pub(crate) fn pairs(items: &[(&str, String)]) {
    let w = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in items {
        emit(&format!("{k:<w$}  {v}"));
    }
}

/// Prints a line.
pub(crate) fn line(s: &str) {
    emit(s);
}

/// Writes `s` and a newline to stdout; every CLI print goes through here.
/// A reader that went away (`drover model list | head`) has all it wanted,
/// so a broken pipe ends the command quietly and successfully instead of
/// panicking; any other write error ends it with a failure.
pub(crate) fn emit(s: &str) {
    emit_bytes(format!("{s}\n").as_bytes());
}

/// As [`emit`], for output that is already bytes (shell completions).
pub(crate) fn emit_bytes(b: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(b).and_then(|()| out.flush()) {
        drop(out);
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        #[allow(clippy::print_stderr)]
        {
            eprintln!("error: writing output: {e}");
        }
        std::process::exit(1);
    }
}

/// `-` for missing values.
pub(crate) fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

/// Milliseconds since the epoch as a relative age (`12s ago`).
pub(crate) fn age(ms: Option<u64>, now_ms: u64) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let s = now_ms.saturating_sub(t) / 1000;
            if s < 120 {
                format!("{s}s ago")
            } else if s < 7200 {
                format!("{}m ago", s / 60)
            } else if s < 172_800 {
                format!("{}h ago", s / 3600)
            } else {
                format!("{}d ago", s / 86_400)
            }
        }
    }
}

/// Now as Unix milliseconds, for relative times in printed reports (the CLI
/// is an edge: it reads the wall clock directly).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A ratio or score with four decimals.
pub(crate) fn f4(v: f64) -> String {
    format!("{v:.4}")
}
