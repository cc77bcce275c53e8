//! The page shell and small rendering helpers shared by every page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::Session;

/// The pages in the navigation bar: (key, title, path).
const NAV: &[(&str, &str, &str)] = &[
    ("fleet", "Fleet", "/"),
    ("devices", "Devices", "/ui/devices"),
    ("models", "Models", "/ui/models"),
    ("rollouts", "Rollouts", "/ui/rollouts"),
    ("drift", "Drift", "/ui/drift"),
    ("retraining", "Retraining", "/ui/retraining"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            // htmx would otherwise inject an inline <style>, which the CSP refuses.
            meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
            title { (title) " · Drover" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/ui/assets/uPlot.min.css";
            link rel="stylesheet" href="/ui/assets/dashboard.css";
            script defer src="/ui/assets/htmx.min.js" {}
            script defer src="/ui/assets/uPlot.iife.min.js" {}
            script defer src="/ui/assets/dashboard.js" {}
        }
    }
}

/// A full page for a signed-in session. `body` goes into `#live`, the part
/// the live stream refreshes.
pub(super) fn page(session: &Session, active: &str, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-boost="true" hx-headers=(format!(r#"{{"x-csrf-token":"{}"}}"#, session.csrf)) {
                header {
                    nav {
                        span.brand { "Drover" }
                        @for (key, name, href) in NAV {
                            a href=(href) class=@if *key == active { "active" } { (name) }
                        }
                        span.who {
                            "signed in as " b #who { (session.actor.name) } " (" span #role { (session.actor.role) } ")"
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #live data-live="true" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    };
    (StatusCode::OK, Html(markup.into_string())).into_response()
}

/// A page without navigation (sign-in, errors).
pub(super) fn bare_page(title: &str, body: Markup) -> Html<String> {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main.narrow { (body) } }
        }
    };
    Html(m.into_string())
}

/// An error page for a signed-in session.
pub(super) fn error_page(session: &Session, status: StatusCode, detail: &str) -> Response {
    let mut r = page(session, "", "Error", html! { p.error #error { (detail) } });
    *r.status_mut() = status;
    r
}

/// Headers on every dashboard response: no inline script may run, nothing
/// may frame the pages (clickjacking the action buttons), no MIME sniffing.
pub(super) async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub(super) fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A number with `digits` decimals, or an en dash for none.
pub(super) fn num(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// Microseconds as milliseconds with two decimals, or a dash.
pub(super) fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "–".into(), |us| format!("{:.2}", us as f64 / 1000.0))
}

/// A uPlot chart: `x` in seconds since the epoch, named series of the same
/// length (`None` = gap). Rendered by `dashboard.js`; without JavaScript the
/// table that every chart sits next to carries the same numbers.
pub(super) fn chart(
    id: &str,
    title: &str,
    x: &[f64],
    series: &[(String, Vec<Option<f64>>)],
) -> Markup {
    let spec = serde_json::json!({
        "title": title,
        "x": x,
        "series": series.iter().map(|(label, values)| serde_json::json!({"label": label, "values": values})).collect::<Vec<_>>(),
    });
    html! { div.chart id=(id) data-chart=(spec.to_string()) {} }
}

/// Side-by-side bars of two frequency vectors (reference vs current) as an
/// inline SVG, readable without JavaScript.
pub(super) fn bars(labels: &[String], reference: &[f64], current: Option<&[f64]>) -> Markup {
    const W: f64 = 360.0;
    const H: f64 = 90.0;
    let n = reference.len().max(1);
    let max = reference
        .iter()
        .chain(current.unwrap_or(&[]).iter())
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let slot = W / n as f64;
    let bw = if current.is_some() {
        slot * 0.4
    } else {
        slot * 0.8
    };
    let mut svg = String::new();
    svg.push_str(&format!(
        r#"<svg class="bars" viewBox="0 0 {W} {}" width="{W}" height="{}" role="img">"#,
        H + 14.0,
        H + 14.0
    ));
    for (i, r) in reference.iter().enumerate() {
        let h = r / max * H;
        let x = i as f64 * slot + slot * 0.1;
        svg.push_str(&format!(
            r#"<rect class="ref" x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}"><title>reference {}: {r:.3}</title></rect>"#,
            H - h,
            escape(labels.get(i).map_or("", String::as_str)),
        ));
        if let Some(c) = current.and_then(|c| c.get(i)) {
            let h = c / max * H;
            svg.push_str(&format!(
                r#"<rect class="cur" x="{:.1}" y="{:.1}" width="{bw:.1}" height="{h:.1}"><title>current {}: {c:.3}</title></rect>"#,
                x + bw,
                H - h,
                escape(labels.get(i).map_or("", String::as_str)),
            ));
        }
    }
    svg.push_str("</svg>");
    PreEscaped(svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Bin labels for `edges` plus under- and overflow.
pub(super) fn bin_labels(edges: &[f32]) -> Vec<String> {
    let mut out = Vec::with_capacity(edges.len() + 1);
    for i in 0..=edges.len() {
        out.push(
            match (i.checked_sub(1).and_then(|j| edges.get(j)), edges.get(i)) {
                (None, Some(hi)) => format!("< {hi}"),
                (Some(lo), Some(hi)) => format!("{lo} – {hi}"),
                (Some(lo), None) => format!("≥ {lo}"),
                (None, None) => "all".into(),
            },
        );
    }
    out
}

/// Proportions of `counts` (all zero stays all zero).
pub(super) fn proportions(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| {
            if total == 0 {
                0.0
            } else {
                *c as f64 / total as f64
            }
        })
        .collect()
}

/// A heat colour for a PSI value (0 → pale, ≥ 0.25 → strong red).
pub(super) fn psi_style(psi: f64) -> String {
    let t = (psi / 0.25).clamp(0.0, 1.0);
    let light = 96.0 - t * 46.0;
    format!("background: hsl(8, 80%, {light:.0}%)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(num(None, 2), "–");
        assert_eq!(num(Some(f64::NAN), 2), "–");
        assert_eq!(num(Some(0.125), 2), "0.12");
        assert_eq!(bin_labels(&[1.0, 2.0]), vec!["< 1", "1 – 2", "≥ 2"]);
        assert_eq!(proportions(&[1, 3]), vec![0.25, 0.75]);
        assert_eq!(proportions(&[0, 0]), vec![0.0, 0.0]);
    }
}
