//! A small W3C WebDriver client over reqwest, enough to drive Debian's
//! `chromium` through `chromedriver`: navigate, find, click, type, read
//! text, screenshots and the browser console log.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver (killed on drop) and one browser session.
pub(crate) struct Browser {
    _driver: tokio::process::Child,
    http: reqwest::Client,
    session: String,
    base: String,
}

/// One console message.
#[derive(Debug, Clone)]
pub(crate) struct LogEntry {
    pub(crate) level: String,
    pub(crate) message: String,
}

fn find_binary(names: &[&str]) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    for name in names {
        for dir in path.split(':').chain(["/usr/bin", "/usr/lib/chromium"]) {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return Some(p.to_string_lossy().into_owned());
            }
        }
    }
    None
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// that records every console message.
    pub(crate) async fn start() -> anyhow::Result<Browser> {
        let driver = find_binary(&["chromedriver"]).ok_or_else(|| {
            anyhow!("chromedriver not found: install the chromium and chromium-driver packages (scripts/test.sh does)")
        })?;
        let chromium = find_binary(&["chromium", "chromium-browser"])
            .ok_or_else(|| anyhow!("chromium not found: install the chromium package"))?;
        // chromedriver cannot be told port 0: take a free port and release it.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {driver}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver on port {port} not ready after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1700",
                         "--no-first-run", "--disable-extensions"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let session = r["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no session: {r}"))?
            .to_string();
        Ok(Browser {
            _driver: child,
            http,
            session,
            base,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            bail!("webdriver {path}: {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    pub(crate) async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await?;
        Ok(())
    }

    pub(crate) async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .call(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    async fn find_opt(&self, css: &str) -> anyhow::Result<Option<String>> {
        let url = format!("{}/session/{}/element", self.base, self.session);
        let resp = self
            .http
            .post(&url)
            .json(&json!({"using": "css selector", "value": css}))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v: Value = resp.json().await?;
        Ok(v["value"][ELEMENT_KEY].as_str().map(str::to_string))
    }

    /// Whether an element matching `css` is on the page now.
    pub(crate) async fn exists(&self, css: &str) -> anyhow::Result<bool> {
        Ok(self.find_opt(css).await?.is_some())
    }

    async fn find(&self, css: &str) -> anyhow::Result<String> {
        self.find_opt(css)
            .await?
            .ok_or_else(|| anyhow!("no element {css:?} on {}", "the page"))
    }

    /// The visible text of the first element matching `css`.
    pub(crate) async fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css).await?;
        Ok(self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string())
    }

    /// How many elements match `css`.
    pub(crate) async fn count(&self, css: &str) -> anyhow::Result<usize> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(v.as_array().map_or(0, Vec::len))
    }

    pub(crate) async fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await?;
        Ok(())
    }

    /// Waits until `css` matches an element whose text satisfies `pred`.
    pub(crate) async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(t) = self.text(css).await {
                if pred(&t) {
                    return Ok(t);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{css:?} did not reach the expected text within {timeout:?} (now {:?})",
                    self.text(css).await.ok()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .context("screenshot is not base64")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The console messages since the last call (chromedriver's log endpoint).
    pub(crate) async fn console(&self) -> anyhow::Result<Vec<LogEntry>> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_string(),
                        message: e["message"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    pub(crate) async fn delete_cookies(&self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "/cookie", None).await?;
        Ok(())
    }

    pub(crate) async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}
