//! A controller's Prometheus `/metrics`, read over HTTP as the tests'
//! operators would, as `series -> value` (e.g.
//! `drover_mqtt_gate_refused_total{reason="bad_password"}` -> 2).

use std::collections::BTreeMap;

use anyhow::Context as _;

/// `GET {http_url}/metrics` with `token`, parsed: comment lines are
/// skipped, and so is any line whose last field is not a number.
pub async fn scrape(http_url: &str, token: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::Client::new()
        .get(format!("{http_url}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .context("GET /metrics")?
        .error_for_status()
        .context("GET /metrics")?
        .text()
        .await
        .context("reading /metrics")?;
    Ok(parse(&text))
}

/// The exposition text as `series -> value`.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
