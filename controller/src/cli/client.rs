//! The HTTP client the CLI uses: JSON in and out, API errors turned into
//! readable messages.

use anyhow::{Context as _, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::ErrorBody;

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .build()
            .context("building the HTTP client")?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// The controller URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        what: &str,
        r: Result<reqwest::Response, reqwest::Error>,
    ) -> anyhow::Result<T> {
        let resp = r.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "cannot reach the controller at {} ({e}); is `drover serve` running? \
                     Set --controller or DROVER_CONTROLLER",
                    self.base
                )
            } else {
                anyhow!("{what}: {e}")
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the response"))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => anyhow!(
                    "{} ({}, HTTP {}): {}",
                    what,
                    b.error,
                    status.as_u16(),
                    b.detail
                ),
                Err(_) => anyhow!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            });
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{what}: response is not the expected JSON"))
    }

    /// GET `path`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await;
        self.finish(what, r).await
    }

    /// POST JSON to `path`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        self.finish(what, r).await
    }

    /// PUT JSON to `path`.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await;
        self.finish(what, r).await
    }
}
