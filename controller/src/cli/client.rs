//! The HTTP client the CLI uses: JSON in and out, API errors turned into
//! readable messages.

use anyhow::{Context as _, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::ErrorBody;

/// A client of one controller.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:8080`) without a token.
    pub fn new(base: &str) -> anyhow::Result<ApiClient> {
        Self::with_auth(base, None, None)
    }

    /// A client sending `token` as a bearer token and, for `https://`,
    /// trusting only the CA certificates in the PEM bytes `ca` (no CA: the
    /// client trusts no server certificate at all, so HTTPS needs `--ca`).
    pub fn with_auth(
        base: &str,
        token: Option<String>,
        ca: Option<&[u8]>,
    ) -> anyhow::Result<ApiClient> {
        let mut b = reqwest::Client::builder().use_rustls_tls();
        if let Some(pem) = ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .context("--ca: not a PEM certificate bundle")?;
            if certs.is_empty() {
                anyhow::bail!("--ca: no certificate in the file");
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().context("building the HTTP client")?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            http,
            token,
        })
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
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
            .auth(self.http.get(format!("{}{path}", self.base)))
            .query(query)
            .send()
            .await;
        self.finish(what, r).await
    }

    /// GET `path` as raw bytes (artifacts).
    pub async fn get_bytes(&self, what: &str, path: &str) -> anyhow::Result<Vec<u8>> {
        let r = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await
            .with_context(|| format!("{what}: {}{path}", self.base))?;
        let status = r.status();
        let bytes = r
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the response"))?;
        if !status.is_success() {
            anyhow::bail!("{what}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes.to_vec())
    }

    /// DELETE `path`.
    pub async fn delete<T: DeserializeOwned>(&self, what: &str, path: &str) -> anyhow::Result<T> {
        let r = self
            .auth(self.http.delete(format!("{}{path}", self.base)))
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
            .auth(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await;
        self.finish(what, r).await
    }

    /// POST `body` as `application/octet-stream` to `path?query` (a
    /// streamed model upload).
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        let r = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
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
            .auth(self.http.put(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await;
        self.finish(what, r).await
    }
}
